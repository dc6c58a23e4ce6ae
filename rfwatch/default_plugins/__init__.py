"""rfwatch's built-in plugins, registered exactly like third-party ones (see rfwatch.host.manager)."""

"""Errors every layer raises and the command line turns into an exit code, in a module that imports nothing.

``ConfigError`` lives here (``rfwatch.config`` re-exports it) so that the command line can catch it without
loading the config's parser and YAML: ``rfwatch --help`` stays near the interpreter's own start (issue 23).
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration problem; ``str()`` starts with the key path."""

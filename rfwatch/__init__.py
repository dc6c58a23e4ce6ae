"""rfwatch: watch folders, classify new images with a Roboflow model, act on the result."""

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@rfwatch.hookimpl``.
hookimpl = pluggy.HookimplMarker("rfwatch")

__all__ = ["__version__", "hookimpl"]

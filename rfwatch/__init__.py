"""rfwatch: watch folders, classify new images with a Roboflow model, act on the result."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    # ``rfwatch.hookimpl`` (the marker for hook implementations) is made on first use: pluggy is imported only by
    # what deals with plugins, not by ``rfwatch --help`` or ``rfwatch status`` (issue 23, item 1).
    if name == "hookimpl":
        import pluggy

        marker = globals()["hookimpl"] = pluggy.HookimplMarker("rfwatch")
        return marker
    raise AttributeError(f"module 'rfwatch' has no attribute {name!r}")

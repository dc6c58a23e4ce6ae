"""Where a file is, as the journal records it: a named root and the path below it.

Hosts that share a journal may mount the same share at different paths (``/mnt/inbox`` on one,
``/srv/inbox`` on another). Each watch root has a name (``watch[].name``, by default the folder's own name),
and ``roots:`` in the config names other trees (an archive the rules sort into); a path below a named root is
stored as ``(name, path below it)`` and resolved through the local host's roots when read, so that both
hosts see one file. A path below no named root is stored whole (``("", "/abs/path")``): it means the same on
every host only where the same path is mounted.

Paths are kept as bytes (``os.fsencode``): file names need not be UTF-8. Step intents and results are JSON
written by actions; string values in them that are paths below a named root are stored as
``"rfwatch-root:<name>:/<path below>"`` and turned back into this host's paths when read, so that a move
journaled on one host can be finished or undone on another.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rfwatch.record import record

__all__ = ["Roots", "Location"]

_TOKEN = "rfwatch-root:"


@record
class Location:
    """A path as the journal stores it: a named root and the bytes below it."""

    root: str
    rel: bytes


class Roots:
    """Name <-> folder for this host. Named folders never nest (the config refuses it), so a path has at most
    one root."""

    def __init__(self, roots: Mapping[str, Path] | Iterable[tuple[str, Path]] = ()):
        items = roots.items() if isinstance(roots, Mapping) else roots
        self.by_name: dict[str, Path] = {}
        for name, folder in items:
            self.by_name[name] = Path(os.path.abspath(folder))
        self._prefixes = sorted(
            ((os.fsencode(p), name) for name, p in self.by_name.items()), key=lambda t: len(t[0]), reverse=True
        )

    def locate(self, path: str | os.PathLike[str]) -> Location:
        raw = os.fsencode(os.path.abspath(path))
        for prefix, name in self._prefixes:
            if raw == prefix:
                return Location(name, b"")
            if raw.startswith(prefix + b"/"):
                return Location(name, raw[len(prefix) + 1 :])
        return Location("", raw)

    def resolve(self, root: str, rel: bytes) -> Path:
        """This host's path for a stored location. A root this host does not have resolves to ``<name>:/rel``,
        which names the file for a person and exists nowhere, so that no operation touches a wrong file."""
        rel = bytes(rel)
        if not root:
            return Path(os.fsdecode(rel))
        base = self.by_name.get(root)
        if base is None:
            return Path(f"{root}:") / os.fsdecode(rel)
        return base / os.fsdecode(rel) if rel else base

    # --- paths inside JSON (step intents and results) -----------------------------------

    def to_portable(self, value: Any) -> Any:
        """JSON to store: absolute path strings below a named root become root tokens."""
        if isinstance(value, str):
            if value.startswith("/") and self._prefixes:
                loc = self.locate(value)
                if loc.root:
                    return f"{_TOKEN}{loc.root}:/{os.fsdecode(loc.rel)}"
            return value
        if isinstance(value, dict):
            return {k: self.to_portable(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.to_portable(v) for v in value]
        return value

    def from_portable(self, value: Any) -> Any:
        """JSON as read: root tokens become this host's paths."""
        if isinstance(value, str):
            if value.startswith(_TOKEN):
                name, _, rel = value[len(_TOKEN) :].partition(":/")
                return str(self.resolve(name, os.fsencode(rel)))
            return value
        if isinstance(value, dict):
            return {k: self.from_portable(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.from_portable(v) for v in value]
        return value

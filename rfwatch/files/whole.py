"""A file written whole: an interrupted write (Ctrl-C, kill -9, a full disk) leaves the file as it was or as it is
now, never half of either. For the files rfwatch writes of its own (exports, the demo's samples), not a user's.

The content goes through a temporary name beside the file, is fsynced and renamed over the old one. The temporary
name is fixed per file (``.NAME.rfwatch-tmp``, hidden, and the name the walk of crash points looks for): a write
that fails removes it, and after a kill -9 the next write to the same place writes it again and renames it away.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rfwatch.files.place import fsync_dir

__all__ = ["replaced"]


def _tmp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.rfwatch-tmp")


@contextmanager
def replaced(out: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A file (text: UTF-8, newlines as written; or ``binary``) that becomes ``out`` once the block ends without an
    error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out)
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)

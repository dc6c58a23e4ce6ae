"""An export's files written whole: an interrupted export (Ctrl-C, kill -9, a full disk) leaves each file as it was
or as it is now, never half of either.

Each file goes through a temporary name beside it, is fsynced and renamed over the old one. The temporary name is
fixed per file (``.NAME.rfwatch-tmp``, hidden, and the name the walk of crash points looks for): an export that
fails removes it, and after a kill -9 the next export to the same place writes it again and renames it away.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from rfwatch.files.place import fsync_dir

__all__ = ["replaced"]


def _tmp_name(out: Path) -> Path:
    return out.with_name(f".{out.name}.rfwatch-tmp")


@contextmanager
def replaced(out: Path) -> Iterator[TextIO]:
    """A text file (UTF-8, newlines as written) that becomes ``out`` once the block ends without an error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)

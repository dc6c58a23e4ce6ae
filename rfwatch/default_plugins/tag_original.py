"""What the ``tag`` action keeps of a file before embedding, so that undo gives back the very same bytes.

exiftool rewrites only metadata, but not always as it found it: it rewrites ``XMPToolkit``, reorders XMP and
IPTC blocks and, in a TIFF, may move strips. Taking rfwatch's keywords out again leaves a file that reads the
same and is not the same. So before the first write the original is kept, and undo of a file nobody touched
since (it still holds what rfwatch wrote) puts the original back whole, checked against its SHA-256:

- JPEG: the bytes before the first SOS marker (every APPn segment, the tables): exiftool copies the compressed
  picture from SOS on verbatim, so original head + the tagged file's tail from its SOS = the original. Kept in
  the journal with the step's intent (a few KB to a few hundred KB), so an undo on any host can use it.
- Other formats (TIFF, PNG, WebP): a copy of the whole file in the plugin's state folder (``state_dir``, on this
  host), removed by the undo that uses it.

The original goes back by a durable replace: a temporary file beside it, fsynced, renamed over the tagged file,
the folder fsynced (crash points ``tag.before_restore`` and ``tag.after_restore``). A file that already holds the
original (an undo interrupted after the rename) is left alone. Mode and modification time come back too.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from rfwatch.plugin import TMP_PREFIX, crash_point, fsync_dir, fsync_file, state_dir

__all__ = ["keep_original", "restore_original", "forget_original", "write_durably"]

#: A JPEG head larger than this (a huge ICC profile, a big preview) is kept as a whole copy instead.
JPEG_HEAD_LIMIT = 1 << 20
_SOI, _SOS = b"\xff\xd8", 0xDA


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jpeg_scan_start(data: bytes) -> int | None:
    """Offset of the first SOS marker of a JPEG, walking its segments (None if it cannot be found)."""
    if not data.startswith(_SOI):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == _SOS:
            return i
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def keep_original(config: Any, path: Path) -> dict[str, Any]:
    """Keep what undo needs to give ``path`` back byte for byte; the record goes into the step's intent."""
    data = path.read_bytes()
    st = path.stat()
    record: dict[str, Any] = {"sha256": _sha256(data), "size": len(data), "mtime_ns": st.st_mtime_ns}
    scan = jpeg_scan_start(data)
    if scan is not None and scan <= JPEG_HEAD_LIMIT:
        record["jpeg_head"] = base64.b64encode(data[:scan]).decode("ascii")
        return record
    folder = state_dir(config, "tag") / "originals"
    folder.mkdir(exist_ok=True)
    copy = folder / record["sha256"]
    if not (copy.exists() and _sha256(copy.read_bytes()) == record["sha256"]):
        write_durably(copy, data, None)
    record["copy"] = str(copy)
    return record


def restore_original(path: Path, original: dict[str, Any], tagged_sha256: str | None) -> tuple[bool, str]:
    """Put the original back: (True, what was done) or (False, why not: the caller takes keywords out instead)."""
    try:
        current = path.read_bytes()
    except OSError as exc:
        return False, f"cannot read {path.name}: {exc.strerror or exc}"
    if _sha256(current) == original["sha256"]:
        return True, f"{path.name} holds its original bytes again"  # an undo interrupted after the rename
    if tagged_sha256 is None or _sha256(current) != tagged_sha256:
        return False, "changed since rfwatch tagged it"
    if "jpeg_head" in original:
        scan = jpeg_scan_start(current)
        if scan is None:
            return False, "its JPEG structure could not be read"
        data = base64.b64decode(original["jpeg_head"]) + current[scan:]
    else:
        try:
            data = Path(original["copy"]).read_bytes()
        except OSError:
            return False, "the copy of its original is not on this host"
    if _sha256(data) != original["sha256"]:
        return False, "exiftool changed more than its metadata segments"
    write_durably(path, data, original.get("mtime_ns"), mode_of=path)
    return True, f"{path.name} restored byte for byte"


def forget_original(original: dict[str, Any]) -> None:
    """The whole copy, once the original is back (nothing to do for a JPEG head: it lives in the journal)."""
    if original.get("copy"):
        Path(original["copy"]).unlink(missing_ok=True)


def write_durably(path: Path, data: bytes, mtime_ns: int | None, mode_of: Path | None = None) -> None:
    """``path`` holds ``data`` whole or as it was: written beside it under a fixed name (a redo writes it again),
    fsynced, renamed over it. ``mode_of``: a file put back by undo (it keeps that file's permissions, and passes the
    crash points ``tag.before_restore`` and ``tag.after_restore``)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.restore")
    with open(tmp, "wb") as f:
        f.write(data)
    if mode_of is not None:
        os.chmod(tmp, mode_of.stat().st_mode & 0o7777)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    fsync_file(tmp)
    if mode_of is not None:
        crash_point("tag.before_restore")
    os.replace(tmp, path)  # the tagged file is rfwatch's own output (its hash was checked): replacing it is the point
    fsync_dir(path.parent)
    if mode_of is not None:
        crash_point("tag.after_restore")

"""Moving and copying files so that a crash at any instant leaves each file whole, in one place.

Same filesystem: one ``renameat2(RENAME_NOREPLACE)`` (or link + unlink where
that is unsupported), then fsync of both folders. Across filesystems: copy to
a temporary name in the destination folder, fsync, rename into place without
replacing, fsync the folder, then remove the source and fsync its folder
(PostgreSQL's durable_rename, Maildir's tmp-then-rename).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from rfwatch.crashpoints import crash_point
from rfwatch.record import record
from rfwatch.states import StrEnum

__all__ = [
    "CONFLICT_MODES",
    "ConflictMode",
    "TMP_PREFIX",
    "Placed",
    "sha256_file",
    "fsync_dir",
    "fsync_file",
    "rename_noreplace",
    "place_file",
    "recover_placement",
    "sidecars_of",
]


class ConflictMode(StrEnum):
    """What to do when the destination name is taken (one rule for every action that places a file)."""

    RENAME = "rename"  # "name (1).jpg", the next free name
    SKIP = "skip"  # leave the file where it is
    OVERWRITE = "overwrite"  # replace what is there
    DEDUPE = "dedupe"  # identical content there already: drop this copy; different content: rename


CONFLICT_MODES = tuple(m.value for m in ConflictMode)
#: Temporary files start with this; the default exclude pattern ``.*`` keeps watchers off them.
TMP_PREFIX = ".rfwatch-tmp-"
_COPY_CHUNK = 1024 * 1024
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc >= 2.28, or not Linux
    _renameat2 = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists; OSError(EXDEV) across filesystems."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    # Filesystems without RENAME_NOREPLACE: a hard link never replaces either.
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP) and not os.path.lexists(dst):
            os.rename(src, dst)  # last resort (FAT, some FUSE): check-then-rename
            return
        raise
    os.unlink(src)


def _with_suffix_number(dst: Path, n: int) -> Path:
    name = dst.name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    stem = re.sub(r" \(\d+\)$", "", stem)
    return dst.with_name(f"{stem} ({n}).{ext}" if ext else f"{stem} ({n})")


@record
class Placed:
    """Where a file ended up. ``outcome``: moved, copied, skipped (destination taken) or duplicate."""

    outcome: str
    path: Path
    #: The content's SHA-256, when the caller knows it (write_output does): undo removes an output only
    #: while it still has this content.
    sha256: str | None = None


def _same_content(a: Path, b: Path, a_hash: str | None) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return (a_hash or sha256_file(a)) == sha256_file(b)
    except OSError:
        return False


Record = Callable[..., None]


def _copy_to_tmp(src: Path, target: Path, record: Record | None) -> Path:
    tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}"
    if record is not None:
        record(target=str(target), tmp=str(tmp))  # before creating it: a crash leaves nothing unaccounted for
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            while chunk := fin.read(_COPY_CHUNK):
                fout.write(chunk)
            fout.flush()
            crash_point("place.after_copy")
            os.fsync(fout.fileno())
        st = src.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(tmp, st.st_mode & 0o7777)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def place_file(
    src: Path,
    dst: Path,
    *,
    keep_source: bool,
    on_conflict: ConflictMode | str = ConflictMode.RENAME,
    src_hash: str | None = None,
    record: Record | None = None,
) -> Placed:
    """Move (``keep_source=False``) or copy ``src`` to ``dst`` durably, never replacing by accident.

    ``record(target=..., tmp=...)`` is called before each side effect so the
    caller can journal its intent; :func:`recover_placement` reads it back.
    """
    if on_conflict not in CONFLICT_MODES:
        raise ValueError(f"on_conflict must be one of {', '.join(CONFLICT_MODES)}")
    on_conflict = ConflictMode(on_conflict)
    if record is not None and not dst.parent.is_dir():
        # Folders are a side effect too: journaled first, so that a crash right after making them leaves an intent
        # that says whose they are (undo removes the ones a placement made, while empty).
        record(target=str(dst), tmp=None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    crash_point("place.made_folders")
    if not keep_source:
        fsync_file(src)
    tmp: Path | None = None
    try:
        for n in range(1, 10000):
            target = dst if n == 1 else _with_suffix_number(dst, n - 1)
            if os.path.lexists(target):
                if on_conflict == "skip":
                    return Placed("skipped", target)
                if on_conflict == "dedupe" and _same_content(src, target, src_hash):
                    if record is not None:
                        record(target=str(target), tmp=None, duplicate=True)
                    crash_point("place.duplicate")
                    if not keep_source:
                        os.unlink(src)
                        fsync_dir(src.parent)
                    return Placed("duplicate", target)
                if on_conflict == "overwrite":
                    return _overwrite(src, target, keep_source, record)
                continue
            if record is not None:
                record(target=str(target), tmp=str(tmp) if tmp else None)
            try:
                if keep_source:
                    tmp = tmp or _copy_to_tmp(src, target, record)
                    crash_point("place.after_fsync")
                    rename_noreplace(tmp, target)
                    tmp = None
                else:
                    try:
                        crash_point("place.before_rename")
                        rename_noreplace(src, target)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                        tmp = tmp or _copy_to_tmp(src, target, record)
                        crash_point("place.after_fsync")
                        rename_noreplace(tmp, target)
                        tmp = None
                        fsync_dir(target.parent)
                        crash_point("place.after_tmp_rename")
                        os.unlink(src)
                        crash_point("place.after_unlink")
            except FileExistsError:
                continue  # somebody took the name between our check and the rename
            crash_point("place.after_rename")
            fsync_dir(target.parent)
            if not keep_source:
                fsync_dir(src.parent)
            return Placed("copied" if keep_source else "moved", target)
        raise FileExistsError(errno.EEXIST, "no free name", str(dst))
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _overwrite(src: Path, target: Path, keep_source: bool, record: Record | None) -> Placed:
    if record is not None:
        record(target=str(target), tmp=None, overwrite=True)
    if not keep_source:
        try:
            os.rename(src, target)
            fsync_dir(target.parent)
            fsync_dir(src.parent)
            return Placed("moved", target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    tmp = _copy_to_tmp(src, target, record)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    if not keep_source:
        os.unlink(src)
        fsync_dir(src.parent)
    return Placed("copied" if keep_source else "moved", target)


def holds(path: Path | str, sha256: str | None) -> bool:
    """Whether ``path`` is a file that still holds exactly the content of ``sha256`` (False when unknown)."""
    try:
        return sha256 is not None and sha256_file(Path(path)) == sha256
    except OSError:
        return False


def recover_placement(src: Path, target: Path, tmp: Path | None, sha256: str, keep_source: bool) -> bool:
    """After a crash mid-placement: finish it and return True, or clean up and return False (redo it).

    The target counts as ours only if it holds exactly the source's content,
    so a file that somebody else put there is never removed or claimed.
    """
    if tmp is not None and os.path.lexists(tmp):
        tmp.unlink()
        fsync_dir(tmp.parent)
    if not holds(target, sha256):
        return False
    if not keep_source and os.path.lexists(src):
        os.unlink(src)  # the crash fell between placing the target and removing the source
        fsync_dir(src.parent)
    return True


def sidecars_of(path: Path) -> list[Path]:
    """XMP sidecars that belong to ``path``: ``IMG.jpg.xmp`` always; ``IMG.xmp`` unless another file shares the stem."""
    found = []
    full = path.with_name(path.name + ".xmp")
    if full.is_file():
        found.append(full)
    for candidate in (path.with_suffix(".xmp"), path.with_suffix(".XMP")):
        if candidate != path and candidate.is_file():
            siblings = [
                p
                for p in path.parent.glob(_glob_escape(path.stem) + ".*")
                if p != path and p.suffix.lower() != ".xmp" and not p.name.endswith(".xmp")
            ]
            if not siblings:
                found.append(candidate)
            break
    return found


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)

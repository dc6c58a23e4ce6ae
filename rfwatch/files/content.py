"""A new file's content read once: its SHA-256, and its bytes kept for the decode of its upload.

The daemon hashed a file (pipeline.take) and then read it again to decode it for the upload (images.prepare).
Reading it once into memory and hashing those bytes saves the second read, and the picture classified is then
exactly the content the journal names by its hash. Files larger than ``KEEP_AT_MOST`` are hashed as a stream
and not kept (their decode reads the file again): a worker must not hold a huge file in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rfwatch.files.place import sha256_file

__all__ = ["read_and_hash", "KEEP_AT_MOST"]

#: Bytes kept per file in a worker's hands (a 12 MP JPEG is 3 to 8 MB; concurrency 8 holds at most 8 of them).
KEEP_AT_MOST = 64 * 1024 * 1024


def read_and_hash(path: Path, size: int) -> tuple[bytes | None, str]:
    """(the file's bytes, or None when larger than KEEP_AT_MOST, its SHA-256); OSError as from open()."""
    if size > KEEP_AT_MOST:
        return None, sha256_file(path)
    with open(path, "rb") as fh:
        # Exactly the size its stat gave (and one byte more, to see it grew): read(n) allocates n bytes up front.
        data = fh.read(size + 1)
    if len(data) > size:  # it grew since its stat: hashed whole, not kept; the settle check finds it changing
        return None, sha256_file(path)
    return data, hashlib.sha256(data).hexdigest()

"""CPU per 12 MP photo of hashing and preparing it, read twice (sha256 in chunks, then the decode opens the file
again: before issue 23 item 3) against read once (the bytes hashed and decoded: rfwatch.files.content).

One thread, best of 3 passes over the photos, twice in alternation. Usage: python bench/read_once.py FOLDER
(a folder of JPEGs, e.g. the 12 MP workload bench/run.py or bench/overlap.py generated under WORK/cache).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rfwatch.files.content import read_and_hash
from rfwatch.files.place import sha256_file
from rfwatch.images.prepare import prepare_image
from rfwatch.images.sizing import UploadSize

SIZE = UploadSize(max_size=1024, model_input=(224, 224))


def two_reads(f: Path) -> None:
    sha256_file(f)
    prepare_image(str(f), SIZE, 90)


def one_read(f: Path) -> None:
    data, _ = read_and_hash(f, f.stat().st_size)
    prepare_image(data if data is not None else str(f), SIZE, 90, name=str(f))


def main() -> int:
    files = sorted(Path(sys.argv[1]).rglob("*.jpg"))[:24]
    for name, fn in [("read twice", two_reads), ("read once", one_read)] * 2:
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            for f in files:
                fn(f)
            best = min(best, time.process_time() - t)
        print(f"{name}: {best / len(files) * 1000:.2f} ms CPU per file ({len(files)} files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

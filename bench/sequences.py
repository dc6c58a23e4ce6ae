"""A camera-trap card dump with sequences on versus off: files per second and peak memory of ``rfwatch run --once``.

    python bench/sequences.py [--files 5000] [--burst 5] [--concurrency 8] [--latency 0.05] [--json OUT]

The dump: ``--files`` small JPEGs (64x48, a few kB) in bursts of ``--burst`` frames 1 s apart, bursts 3 minutes
apart, capture times (EXIF DateTimeOriginal, SubSecTimeOriginal, OffsetTimeOriginal) two days old, all in one
folder (one card: ``key: "{parent}"``). Each frame is red, green or blue with some grey mixed in, so the stand-in
model (tests/roboflow_server.py, on 127.0.0.1, ``--latency`` per request) is sure of some frames and unsure of
others. Each mode copies the dump into a fresh folder and journal and runs ``rfwatch run --once`` once, as a
process of its own: wall time from start to exit (files/s) and its peak resident memory (``wait4``'s
``ru_maxrss``). The rules move every file to ``sorted/{class}/``; with sequences on, every burst must end up in
one folder (checked).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from PIL import Image  # noqa: E402
from roboflow_server import VALID_KEY, RoboflowServer  # noqa: E402

COLORS = [(220, 40, 40), (40, 200, 60), (40, 50, 220)]


def frame(color: tuple[int, int, int], grey: float, captured: dt.datetime, seed: int) -> bytes:
    c = tuple(round(v * (1 - grey) + 128 * grey) for v in color)
    img = Image.new("RGB", (64, 48), c)
    img.putpixel((seed % 64, (seed // 64) % 48), (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = captured.strftime("%Y:%m:%d %H:%M:%S")
    ifd[0x9291] = "00"
    ifd[0x9011] = captured.strftime("%z")[:3] + ":" + captured.strftime("%z")[3:]
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, exif=exif)
    return buf.getvalue()


def make_dump(folder: Path, files: int, burst: int) -> dict[str, int]:
    """Write the dump; returns {name: its burst number}."""
    folder.mkdir(parents=True)
    start = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).astimezone()
    bursts = {}
    for n in range(files):
        b, k = divmod(n, burst)
        captured = start + dt.timedelta(minutes=3 * b, seconds=k)
        color = COLORS[(b + (k == 2)) % 3]  # one frame of each burst looks like another class
        grey = 0.2 if k == 1 else 0.75  # frame 2 is clear, the others a blur
        name = f"IMG_{n:05d}.JPG"
        (folder / name).write_bytes(frame(color, grey, captured, n))
        bursts[name] = b
    return bursts


def run_mode(work: Path, dump: Path, server: RoboflowServer, sequences: bool, concurrency: int) -> dict:
    root = work / ("on" if sequences else "off")
    shutil.copytree(dump, root / "inbox")
    doc = {
        "roboflow": {"model": "colors/1", "api_url": server.url, "platform_url": "http://127.0.0.1:9"},
        "state": "state/journal.db",
        "concurrency": concurrency,
        "watch": [{"path": "inbox", "settle": 0.0}],
        "rules": [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}],
    }
    if sequences:
        doc["sequence"] = {"key": "{parent}", "gap": 60, "label": "max"}
    (root / "config.yaml").write_text(yaml.safe_dump(doc))
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, ROBOFLOW_PLATFORM_URL="http://127.0.0.1:9")
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rfwatch", "run", "-c", str(root / "config.yaml"), "--once", "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "run.log", "wb"),
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    placed = {p.name: p.parent.name for p in (root / "sorted").rglob("*.JPG")}
    return {
        "sequences": sequences,
        "exit": proc.returncode,
        "files": len(placed),
        "seconds": round(seconds, 2),
        "files_per_s": round(len(placed) / seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "placed": placed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--burst", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05, help="API latency in seconds (default 0.05)")
    ap.add_argument("--work", type=Path, help="a folder to work in (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="rfwatch-seq-bench-"))
    server = RoboflowServer().start()
    server.latency = args.latency
    server.keep_images = False
    try:
        print(f"writing {args.files} frames in bursts of {args.burst} ...", flush=True)
        bursts = make_dump(work / "dump", args.files, args.burst)
        size = sum(p.stat().st_size for p in (work / "dump").iterdir())
        results = []
        for sequences in (False, True):
            r = run_mode(work, work / "dump", server, sequences, args.concurrency)
            folders: dict[int, set[str]] = {}
            for name, folder in r.pop("placed").items():
                folders.setdefault(bursts[name], set()).add(folder)
            r["bursts_split"] = sum(len(f) > 1 for f in folders.values())
            results.append(r)
            print(
                f"sequences {'on ' if sequences else 'off'}: {r['files']}/{args.files} files in {r['seconds']} s, "
                f"{r['files_per_s']} files/s, peak RSS {r['peak_rss_mb']} MB, CPU {r['cpu_s']} s, "
                f"bursts split over folders {r['bursts_split']}/{len(folders)} (exit {r['exit']})",
                flush=True,
            )
        on = next(r for r in results if r["sequences"])
        assert on["files"] == args.files and on["bursts_split"] == 0, on
        meta = {
            "files": args.files,
            "burst": args.burst,
            "dump_kb": round(size / 1024),
            "latency": args.latency,
            "concurrency": args.concurrency,
            "python": platform.python_version(),
            "machine": f"{os.cpu_count()} cores, {platform.platform()}",
            "date": dt.date.today().isoformat(),
        }
        if args.json:
            args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(json.dumps(meta))
    finally:
        server.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

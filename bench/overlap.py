"""Issue 23, items 2 and 3: a cold ``run --once`` overlapped with the platform's answer, and the daemon's CPU per file.

Measured side by side, round robin, this tree against an older one (``--old-python``, a virtualenv whose ``rfwatch``
is the older tree): with the inference stand-in at 150 ms latency (bench/run.py's link) and the platform stand-in
answering after 150 ms,

* the empty-inbox start and exit of ``run --once`` (a fresh journal: nothing known about the model);
* a cold ``run --once`` of 24 12 MP photos (the 224x224 model), from process start to exit;
* the daemon on 48 12 MP photos at concurrency 8: CPU per file (process CPU over the run / files) and files/s,
  beside rfwatch's own preparation CPU per file (draft decode, upright, resize, encode: bench/run.py's floor).

The figures go into docs/benchmarks.md between ``<!-- kept by bench/run.py: cold-overlap -->`` and
``<!-- end cold-overlap -->`` (bench/run.py carries the block over when it rewrites the page).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform as py_platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

REPO = bench.REPO
BEGIN, END = "<!-- kept by bench/run.py: cold-overlap -->", "<!-- end cold-overlap -->"


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-python", default=None, help="python of a virtualenv holding the older rfwatch")
    ap.add_argument("--old-label", default="old")
    ap.add_argument("--runs", type=int, default=5, help="repeats of each cold run (median kept)")
    ap.add_argument("--daemon-runs", type=int, default=3, help="repeats of each daemon run (median kept)")
    ap.add_argument("--cold-files", type=int, default=24)
    ap.add_argument("--daemon-files", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.150)
    ap.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    ap.add_argument(
        "--official", action="store_true", help="time the official client too (needs bench/requirements.txt)"
    )
    ap.add_argument("--json", default=None, help="also write every measured figure to this JSON file")
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="rfwatch-overlap-"))
    work.mkdir(parents=True, exist_ok=True)
    bench.PYCACHE = work / "pycache"
    photos = bench.build_workloads(work / "cache", max(args.cold_files, args.daemon_files))["12 MP"]
    server = bench.RoboflowServer().start()
    server.latency, server.jitter = args.latency, 0.05
    server.uplink_bps = 50e6
    server.decode_images = False
    server.keep_images = False
    server.max_body = 20 * 1000 * 1000
    platform_api = bench.PlatformServer(catalog=server.catalog).start()
    platform_api.delay = args.latency
    codes = [bench.Code(label="this tree", python=sys.executable, knows_platform=True)]
    if args.old_python:
        codes.append(bench.Code(label=args.old_label, python=args.old_python, knows_platform=True))
    setups = {c.label: bench.Setup(c, bench.SIZED_MODEL, platform_api.url) for c in codes}
    for setup in setups.values():  # bytecode and file cache warm; not timed
        bench.run_cold([], server, platform_api, work, setup)
    empty: dict[str, list[dict]] = {}
    cold: dict[str, list[dict]] = {}
    daemon: dict[str, list[dict]] = {}
    for i in range(args.runs):
        for label, setup in setups.items():
            print(f"{label}: empty inbox ({i + 1}/{args.runs})", flush=True)
            empty.setdefault(label, []).append(bench.run_cold([], server, platform_api, work, setup))
            print(f"{label}: cold run of {args.cold_files} photos ({i + 1}/{args.runs})", flush=True)
            cold.setdefault(label, []).append(
                bench.run_cold(photos[: args.cold_files], server, platform_api, work, setup)
            )
    for i in range(args.daemon_runs):
        for label, setup in setups.items():
            print(f"{label}: daemon, {args.daemon_files} photos at concurrency 8 ({i + 1}/{args.daemon_runs})")
            daemon.setdefault(label, []).append(
                bench.run_rfwatch(photos[: args.daemon_files], 8, server, work, 1.0, setup)
            )
    floor = bench.cpu_floor(photos[: args.daemon_files], repeat=3)
    prepare = floor["prepare"] / floor["files"]
    if args.json:
        raw = {"empty": empty, "cold": cold, "daemon": daemon, "floor": floor}
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    official = bench.run_official(photos[: args.cold_files], server, work, bench.SIZED_MODEL) if args.official else None
    server.stop()
    platform_api.stop()

    load = os.getloadavg()[0]
    lines = [
        BEGIN,
        "## Cold start overlapped with the platform; CPU per file (issue 23 items 2 and 3)",
        "",
        f"Produced by `python bench/overlap.py {' '.join(sys.argv[1:])}` on {dt.date.today()} (Python "
        f"{py_platform.python_version()}; load average {load:.1f} at the end, on {os.cpu_count()} cores). Inference "
        f"at {args.latency * 1000:.0f} ms latency, the platform answering after {args.latency * 1000:.0f} ms, a "
        f"fresh journal for each cold run; median of {args.runs} cold runs and {args.daemon_runs} daemon runs, "
        "round robin between the trees.",
        "",
        "| tree | empty inbox start+exit s | CPU s | cold run, 24 photos s | files/s | x official | daemon 48 "
        "photos c=8: CPU ms/file | files/s | CPU / preparation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in setups:
        e, c, d = empty[label], cold[label], daemon[label]
        cpu_file = median(d, "cpu")
        ratio = f"{median(c, 'fps') / official['fps']:.1f}x" if official else "n/m"
        lines.append(
            f"| {label} | {median(e, 'seconds'):.2f} | {median(e, 'cpu'):.2f} | {median(c, 'seconds'):.2f} | "
            f"{median(c, 'fps'):.2f} | {ratio} | "
            f"{cpu_file * 1000:.0f} | "
            f"{median(d, 'fps'):.2f} | {cpu_file / prepare:.2f}x |"
        )
    lines += [
        "",
        (
            f"Official client, the same {args.cold_files} photos: {official['fps']:.2f} files/s."
            if official
            else "The official client was not timed in this run (n/m: `--official` needs bench/requirements.txt)."
        )
        + " rfwatch's preparation "
        f"alone (draft decode, upright, resize, encode; best of 3 passes in one process): {prepare * 1000:.0f} ms "
        "CPU per 12 MP photo.",
        "",
        "What changed: the model-facts request no longer holds the start (files are found, hashed and journaled "
        "while it is on its way; uploads wait for the input size and actions for the check of the rules' "
        "classes), and a new file is read once, for its hash and its decode.",
        END,
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        doc = REPO / "docs" / "benchmarks.md"
        old = doc.read_text()
        if BEGIN in old:
            head, rest = old.split(BEGIN, 1)
            old = head.rstrip("\n") + "\n" + rest.split(END, 1)[1].lstrip("\n")
        doc.write_text(old.rstrip("\n") + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

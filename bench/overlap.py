"""Issue 23, items 2 and 3: a cold ``run --once`` overlapped with the platform's answer, and the daemon's CPU per file.

Measured side by side, round robin, this tree against an older one (``--old-python``, a virtualenv whose ``rfwatch``
is the older tree): with the inference stand-in at 150 ms latency (bench/run.py's link) and the platform stand-in
answering after 150 ms,

* the empty-inbox start and exit of ``run --once`` (a fresh journal: nothing known about the model);
* a cold ``run --once`` of 24 12 MP photos (the 224x224 model), from process start to exit;
* the daemon on 48 12 MP photos at concurrency 8: CPU per file and files/s, beside rfwatch's own preparation CPU
  per file (draft decode, upright, resize, encode: bench/run.py's floor), and where the rest goes (one thread).

What "CPU per file" counts (bench/run.py's run_rfwatch): the daemon process's CPU (user and system, every thread)
from 0.5 s after its journal appears (its start-up, about 0.2 s of CPU, is over by then and not counted) until the
last file is in its class folder, divided by the files. It does count the first file's lazy imports (Pillow's
plugins, about 35 ms once, under 1 ms a file here). The stand-ins run in this process, on the same cores.

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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402
from report import write_section  # noqa: E402

REPO = bench.REPO


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def cpu_split(photos: list[Path], server, platform_api, work: Path) -> dict[str, float]:
    """CPU seconds per file, one thread, of the daemon's pipeline taking each photo (latency 0), and of its parts.

    The daemon of this tree is built in this process and its pipeline called file after file: no other thread,
    no waiting, so the thread's CPU is the file's. Its parts are measured by wrapping the functions that do them.
    """
    import shutil
    from collections import Counter

    import rfwatch.files.place as place
    import rfwatch.journal.db as journal_db
    import rfwatch.processing.pipeline as pipeline
    import rfwatch.roboflow.client as client
    from rfwatch.service.daemon import Daemon

    spent: Counter[str] = Counter()
    undo: list[tuple[object, str, object]] = []

    def timed(owner: object, name: str, part: str) -> None:
        real = getattr(owner, name)
        undo.append((owner, name, real))

        def wrapper(*args, **kw):
            t = time.thread_time()
            try:
                return real(*args, **kw)
            finally:
                spent[part] += time.thread_time() - t

        setattr(owner, name, wrapper)

    folder = Path(tempfile.mkdtemp(dir=work))
    latency = server.latency, server.jitter
    server.latency, server.jitter = 0.0, 0.0
    here = os.getcwd()
    key = os.environ.get("ROBOFLOW_API_KEY")
    os.environ["ROBOFLOW_API_KEY"] = bench.VALID_KEY
    try:
        setup = bench.Setup(bench.Code("this tree", sys.executable, True), bench.SIZED_MODEL, platform_api.url)
        cfg = bench.write_config(folder, server, 8, 1.0, setup)
        for f in photos:
            shutil.copyfile(f, folder / "inbox" / f.name)
        os.chdir(folder)
        daemon = Daemon(cfg)
        try:
            while daemon.facts.fetching():
                time.sleep(0.05)
            daemon._finish_start_check()
            watch = daemon.config.watch[0]
            first, rest = photos[0], photos[1:]
            daemon.pipeline.take(folder / "inbox" / first.name, watch, 0.0)  # lazy imports: not a file's cost
            timed(pipeline, "read_and_hash", "read and hash")
            timed(client, "prepare_image", "preparation")
            timed(client.RoboflowClient, "_post", "HTTP request")
            timed(journal_db.SqliteDatabase, "transact", "journal transactions")
            for name in ("one", "all", "scalar", "read"):
                timed(journal_db.SqliteDatabase, name, "journal reads")
            timed(place, "fsync_file", "fsync (file, folders)")
            timed(place, "fsync_dir", "fsync (file, folders)")
            t = time.thread_time()
            for f in rest:
                daemon.pipeline.take(folder / "inbox" / f.name, watch, 0.0)
            total = time.thread_time() - t
        finally:
            for owner, name, real in reversed(undo):
                setattr(owner, name, real)
            daemon._close()
    finally:
        os.chdir(here)
        if key is None:
            os.environ.pop("ROBOFLOW_API_KEY", None)
        else:
            os.environ["ROBOFLOW_API_KEY"] = key
        server.latency, server.jitter = latency
        shutil.rmtree(folder, ignore_errors=True)
    out = {part: seconds / len(rest) for part, seconds in spent.items()}
    out["everything else (rules, steps, stats, bookkeeping)"] = (total - sum(spent.values())) / len(rest)
    out["total"] = total / len(rest)
    return out


#: What the figures cannot say by themselves (kept with the block; edited by hand when the code changes).
NOTES: list[str] = [
    "What changed for the cold run (issue 23 item 2): the model-facts request no longer holds the start (files are "
    "found, hashed and journaled while it is on its way; uploads wait for the input size and actions for the check "
    "of the rules' classes), and a new file is read once, for its hash and its decode. An earlier 5-run measurement "
    "of the empty-inbox start and exit at load average 5.9 gave 0.68 s against 1.14 s for 4f3940a: under load its "
    "0.5 s target is missed. Reading a new file once (bench/read_once.py, one thread, 24 photos) measured 45.4 to "
    "48.2 ms CPU per photo for hash plus preparation against 51.0 to 51.1 ms read twice.",
    "",
    "What changed for the daemon (issue 23 item 3): a file is read and prepared one per core at a time (with eight "
    "workers on two cores all eight decoded at once, so every file of a burst reached the API late and together, "
    "the first request 0.6 s after the take, and the cores idled while all waited for their answers); a file "
    "renamed in complete is read and prepared during its 0.25 s look instead of after it (taken at its end only "
    "if unchanged and nothing was heard of it meanwhile); the HTTP client reads the environment (proxies, CA "
    "bundle, ~/.netrc) once, not on every upload (3,723 Python calls per upload before, 1,949 after).",
    "",
    "What changed since (2026-12-07, second pass), from a timeline of one cold run (when each request reached the "
    "stand-ins, and when each worker began and ended each file): the platform's two answers (the key's workspace, "
    "then the model version; the second needs the first) came at about 0.5 s, yet the first upload left 0.15 to "
    "0.3 s later. The files journaled meanwhile were put back before the new ones (``retry_jobs``), and an idle "
    "worker only looked there when its 0.2 s wait on the queue of new files ran out; a job put there now wakes one. "
    "Then Pillow's first-use work (decoders, EXIF, pillow-heif; about 15 ms in each of the first files) is done "
    "at start in a thread of its own, on a tiny picture, while the cores wait for the platform. Together, the "
    "first upload leaves about 0.07 s after the facts, and the cold run went from about 1.75 s to about 1.5 s "
    "on the timeline's machine.",
    "",
    "Decoding while the size is on its way (third pass): a cold start now decodes each new file as it is taken, "
    "for a guessed input (up to 640x640, rfwatch/images/sizing.py EARLY_INPUT), and sizes it once the real input "
    "is known; a file whose turn at a core comes after the size lets the ones decoded early go first. Measured "
    "beside the tree before it (median of 7 cold runs each, round robin, `--old-python` of that commit): on "
    "this link 1.47 s against 1.57 s (16.3 against 15.2 files/s), at 1.53 s of CPU against 1.42 s (a 12 MP file "
    "decoded at 1/4 instead of 1/8 and resized from 1000 px costs about 8 ms more); with the inference server on "
    "the LAN (`--inference-latency 0.01`, the platform still 150 ms away), where the cores bound the run, 1.22 s "
    "against 1.42 s (19.6 against 16.9 files/s).",
    "",
    "Fifth session (2026-12-07): three changes, each timed with a timeline of 5 cold runs (when each request "
    "reached the stand-ins). (1) A first run (no journal yet) asks the platform right after reading the config, "
    "while the daemon's modules load, its plugins are built and its journal is made (rfwatch/service/early.py): "
    "the first platform request arrives at 0.12 s instead of 0.17 to 0.25 s (importing requests, about 85 ms of "
    "CPU, is what is left before it). (2) A finished ``run --once`` ends with os._exit once the atexit handlers "
    "have run: freeing the interpreter took 50 to 70 ms after the run's last log line. (3) ``concurrency`` counts "
    "requests in flight, with a worker per core beyond them: a file busy with its move's fsyncs and its journal "
    "no longer holds a request slot: in an A/B run of this tree with and without it (48 photos, concurrency 8, 4 "
    "rounds each, round robin) the daemon made 26.3 against 23.6 files/s at 54 against 57 ms CPU per file; the "
    "last session's runs of this bench gave 1.08x to 1.16x the older tree's files/s. The cold run's timeline went from 1.39 to 1.59 s to 1.26 to 1.35 s. "
    "Records (rfwatch/record.py) also cut the start-up's CPU: 65 value classes no longer compile their methods.",
    "",
    "Why 25x the official client is still missed on this link (21.9x here): at the official client's 0.80 files/s "
    "25x means the 24 photos in 1.19 s. The platform's two round trips (the key's workspace, then the version; the "
    "second needs the first) bring the input size at about 0.43 s; then 24 requests at ``concurrency: 8`` (the "
    "default) go in three waves, each waiting for answers of 0.15 s latency plus up to 0.05 s jitter, and the "
    "first wave leaves 0.07 to 0.1 s after the facts (the cores are still decoding the later files early). The "
    "last answer comes near 1.2 s, and the exit follows. A model id that names its workspace "
    "(``workspace/project/version``) saves one platform round trip; this bench keeps ``project/version``, as the "
    "README's examples do. Uploading before the size is known would send pictures not sized to the model, which "
    "the README promises they are.",
    "",
    "CPU per file against the preparation (1.27x here, target 1.15x): in one thread a file costs its preparation "
    "(46.5 ms in the pipeline against the floor's best-of-3 42.1 ms) plus about 9.5 ms beyond it: 3.1 ms to read "
    "and hash it (the SHA-256 that names the content), 2.2 ms of journal reads and transactions (four, which make "
    "a kill -9 safe: rfwatch/processing/steps.py says why none merges), 1.6 ms of HTTP, 0.8 ms of fsyncs and "
    "1.9 ms of rules, steps and bookkeeping. 1.15x of 42 ms leaves 6.3 ms for all of that.",
    "",
    "Seventh session (2026-12-07): both APIs over the standard library's http.client (rfwatch/roboflow/transport.py), not requests. A first run's first question to the platform had waited for requests to load (about 0.1 s of CPU: urllib3, chardet, charset_normalizer, idna); in a timeline of 6 cold runs round robin with the tree before (6a3b91d) it reached the platform at 0.10 to 0.14 s instead of 0.17 to 0.25 s, and the first upload left 0.06 to 0.08 s sooner. `python bench/overlap.py --official --old-python <6a3b91d> --runs 7 --daemon-runs 5` then gave (medians; the official client 0.78 files/s; the preparation alone 44.9 ms per photo in that run):",
    "",
    "| tree | empty inbox start+exit s | its CPU s | cold run, 24 photos s | files/s | x official | cold run CPU s | daemon CPU ms/file | daemon files/s |",
    "|---|---|---|---|---|---|---|---|---|",
    "| http.client | 0.27 | 0.24 | 1.48 (1.43 to 1.64) | 16.24 | 20.9x | 1.90 | 59 | 26.11 |",
    "| requests (6a3b91d) | 0.37 | 0.31 | 1.57 (1.47 to 1.75) | 15.25 | 19.6x | 1.96 | 57 | 26.18 |",
    "",
    "The daemon's runs moved with the machine (this tree 63, 60, 59, 51, 53 ms per file; the tree before 64, 63, 57, 54, 54 ms, round robin): no difference shows there. In one thread (the split's way, measured in this run) the HTTP request went from 1.6 ms (the table above) to 0.77 ms per file: an upload costs the client's thread about 0.7 ms of CPU instead of 1.7 ms through requests (bench-free check: 300 POSTs of 40 kB to a local server, thread CPU). Earlier in the day, with the platform's client alone on http.client (uploads still through requests) and a slower machine (the preparation 51.8 ms), the same A/B gave 1.63 against 1.69 s (19.0x against 18.4x).",
    "",
    "Why the cold run stays near 21x here: it is bound by CPU once the facts have come. Its 1.9 s of CPU over 1.48 s on two cores is 24 preparations (about 1.1 s), the start (0.24 s), the early decodes redone at the real size, the hashes, the journal and the threads' bookkeeping; the start runs on one core while the platform's two round trips (0.3 s of latency, the second needing the first) pass. At the official client's 0.78 files/s, 25x means the 24 photos in 1.23 s.",
    "",
    "Eighth session (2026-12-07): no change for speed beyond the early ask's imports (the journal's package, urllib.request and netrc are no longer loaded before a first run's first platform request: about 25 ms of imports by `python -X importtime`). In a timeline of 8 cold runs per tree, round robin with the tree before that change, the first platform request arrived at 0.094 to 0.119 s against 0.097 to 0.117 s, within the noise, and the cold runs took 1.39 against 1.40 s (medians); the table above (this tree against the session's start, 4fa8543) shows no difference either. What a trace of single cold runs showed (trace points at each read, take, decode, sizing and request, in a copy of the tree): the first platform request leaves at 0.09 s and the second answer brings the input size at 0.45 s; the first file is read at 0.17 s and the first early decode begins at 0.21 s; by 0.45 s the two cores have decoded 8 of the 24 photos early, for the 640 px guess; the 16 left then take a whole preparation each, and the last upload leaves at about 1.09 s, at the pace of the cores (one every 23 ms), its answer at about 1.25 s. Measured alone (one thread, the same 24 photos, best of 3): a preparation for the 224 model 46.0 ms; an early decode for 640 53.8 ms plus 7.3 ms to size it for 224, so each early file costs about 15 ms more than one prepared once the size is known (about 0.06 s of the run for 8 files). Guessing 224 would help this bench and cost a second decode on every 640 model (Roboflow's default preprocessing resizes to 640): not done. At this machine's 0.77 files/s for the official client, 25x is the 24 photos in 1.25 s; this tree takes 1.38 s. The daemon's CPU per file (60 ms, 1.34x the preparation's 44.9 ms; 1.21x in one thread) keeps its parts: reading and hashing a 4.8 MB photo alone is 3.4 ms (SHA-256 2.6 ms with the CPU's SHA instructions, the read 0.8 ms), so 1.15x (51.6 ms) would leave about 3 ms for the journal, HTTP, fsyncs and bookkeeping, which take about 4.8 ms in one thread.",
    "",
    "Ninth session (2026-12-07): two changes. (1) The daemon runs four workers a core beyond the request slots instead of one (rfwatch/service/daemon.py PREPARED_AHEAD). The CPU use of a cold run, sampled every 10 ms from /proc, had shown a dip right after the first wave of uploads: all eight slots waited on the API while the two workers beyond them, each with a prepared file, waited for a slot, and the two cores ran at 0.46 for about 0.1 s; with four a core that stretch ran at 1.67 to 1.81 cores. In a timeline of 8 cold runs per tree, round robin, 1.34 against 1.40 s (medians); in this bench's daemon run beside the tree before (5 rounds), 26.3 against 25.6 files/s at 56.7 against 58.3 ms CPU per file. (2) A file's classification is committed with its first step's intent, not in a transaction of its own (rfwatch/journal/files.py, rfwatch/processing/steps.py say why a crash there costs only a second request): three transactions per file sorted by one move instead of four. In the daemon that is within the noise here (60.5 against 61.0 ms per file in a 4-round A/B, the one-thread split's journal transactions 1.5 against 1.7 ms); it shows in the journal alone (docs/benchmarks.md, the shared journal). The cold run's CPU per file beyond the preparation: 1.7 s of CPU, 0.19 s of it the start, is 63 ms a photo against the preparation's 46 ms: the early decodes for the 640 guess (15 ms more for each of 8 files), the hash (3.4 ms), the journal, the move's fsyncs and the threads. 25x stays missed (the table); the start on one core while the platform's two round trips pass and the last answer's latency (0.15 to 0.2 s after the last upload) are most of what lies above the two cores' share of the CPU.",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-python", default=None, help="python of a virtualenv holding the older rfwatch")
    ap.add_argument("--old-label", default="old")
    ap.add_argument(
        "--old-note",
        default='"old" is 4f3940a, the tree before issue 23\'s work (`--old-python` names its virtualenv).',
        help="what the older tree is, printed under the table",
    )
    ap.add_argument("--runs", type=int, default=5, help="repeats of each cold run (median kept)")
    ap.add_argument("--daemon-runs", type=int, default=5, help="repeats of each daemon run (median kept)")
    ap.add_argument("--cold-files", type=int, default=24)
    ap.add_argument("--daemon-files", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.150)
    ap.add_argument(
        "--inference-latency",
        type=float,
        default=None,
        help="the inference server's own latency (default --latency; e.g. 0.01 for a server on the LAN)",
    )
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
    inference_latency = args.latency if args.inference_latency is None else args.inference_latency
    server.latency, server.jitter = inference_latency, min(0.05, inference_latency / 3)
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
    split = cpu_split(photos[: min(args.daemon_files, 25)], server, platform_api, work)
    if args.json:
        raw = {"empty": empty, "cold": cold, "daemon": daemon, "floor": floor, "split": split}
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    official = bench.run_official(photos[: args.cold_files], server, work, bench.SIZED_MODEL) if args.official else None
    server.stop()
    platform_api.stop()

    load = os.getloadavg()[0]
    labels = list(setups)
    lines = [
        "## Cold start overlapped with the platform; CPU per file (issue 23 items 2 and 3)",
        "",
        f"Produced by `python bench/overlap.py {' '.join(sys.argv[1:])}` on {dt.date.today()} (Python "
        f"{py_platform.python_version()}; load average {load:.1f} at the end, on {os.cpu_count()} cores). Inference "
        f"at {inference_latency * 1000:.0f} ms latency, the platform answering after {args.latency * 1000:.0f} ms, a "
        f"fresh journal for each cold run; median of {args.runs} cold runs and {args.daemon_runs} daemon runs, "
        "round robin between the trees.",
        "",
        "| tree | empty inbox start+exit s | CPU s | cold run, 24 photos s | files/s | x official | daemon 48 "
        "photos c=8: CPU ms/file | files/s | p50 s | CPU / preparation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        e, c, d = empty[label], cold[label], daemon[label]
        cpu_file = median(d, "cpu")
        ratio = f"{median(c, 'fps') / official['fps']:.1f}x" if official else "n/m"
        lines.append(
            f"| {label} | {median(e, 'seconds'):.2f} | {median(e, 'cpu'):.2f} | {median(c, 'seconds'):.2f} | "
            f"{median(c, 'fps'):.2f} | {ratio} | "
            f"{cpu_file * 1000:.0f} | "
            f"{median(d, 'fps'):.2f} | {median(d, 'p50'):.2f} | {cpu_file / prepare:.2f}x |"
        )
    runs = "; ".join(
        f"{label}: " + ", ".join(f"{r['fps']:.1f} files/s at {r['cpu'] * 1000:.0f} ms" for r in daemon[label])
        for label in labels
    )
    lines += [
        "",
        (f"{args.old_note} " if args.old_python and args.old_note else "")
        + (
            f"Official client, the same {args.cold_files} photos: {official['fps']:.2f} files/s."
            if official
            else "The official client was not timed in this run (n/m: `--official` needs bench/requirements.txt)."
        )
        + " rfwatch's preparation "
        f"alone (draft decode, upright, resize, encode; best of 3 passes in one process): {prepare * 1000:.1f} ms "
        f"CPU per 12 MP photo. Daemon runs in order: {runs}.",
        "",
        "**What CPU per file counts.** The daemon process's CPU (user and system, every thread) from 0.5 s after "
        "its journal appears until the last file is in its class folder, over the 48 files: its start-up (about "
        "0.2 s of CPU, over by then) is not counted, nor (since the warm-up at start) Pillow's first-use work. "
        "Measuring from READY would change nothing: the window already opens after it.",
        "",
        f"**Where a file's CPU goes**, one thread taking {min(args.daemon_files, 25) - 1} photos in this process "
        "(the daemon's pipeline called file after file, the API answering at once; the first photo not counted):",
        "",
        "| part | ms per file |",
        "|---|---|",
        *(f"| {part} | {ms * 1000:.2f} |" for part, ms in split.items() if part != "total"),
        f"| **total** | **{split['total'] * 1000:.1f}** ({split['total'] / split['preparation']:.2f}x its preparation) |",
    ]
    if len(labels) == 2:
        new, old = (daemon[label] for label in labels)
        cpu_ratio = median(new, "cpu") / prepare
        fps_ratio = median(new, "fps") / median(old, "fps")
        start = median(empty[labels[0]], "seconds")
        lines += [
            "",
            f"Against issue 23's targets: empty-inbox start and exit at most 0.5 s: {start:.2f} s "
            f"(**{'met' if start <= 0.5 else 'missed'}** in this run); daemon CPU per file at most 1.15x the preparation: {cpu_ratio:.2f}x "
            f"(**{'met' if cpu_ratio <= 1.15 else 'missed'}**); files/s at least 1.2x the older tree's: "
            f"{fps_ratio:.2f}x (**{'met' if fps_ratio >= 1.2 else 'missed'}**).",
        ]
    body = "\n".join(lines + ["", *NOTES])
    print(body)
    if args.write:
        write_section("cold-overlap", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The journal alone: how many files per second it takes, steps and finishes, with many workers in two processes.

No images, no API: each worker does what the daemon does to the journal for one file sorted by one move (look,
take, classified, the move's intent, which commits the classification, and its result with the final state), on one
shared inbox, as two hosts scanning one share would: each process lists the inbox with the daemon's own scan
(rfwatch/service/watcher.py ``scan``) in its turn among the live scanning processes (``Journal.scan_turn``: the second
of two starts each folder half-way in), both try every file, and the claims must let exactly one take each. Double
claims (a file taken by both) are counted, and must be zero. ``--lockstep`` gives every process the same turn (the
order of rfwatch before turns: every file raced for by both).

    python bench/journal.py [--files 20000] [--processes 2] [--threads 8] [--backend postgresql|sqlite|both]
                            [--tcp] [--rounds 1] [--lockstep]

PostgreSQL comes from a throwaway cluster started here (tests/pg.py: Debian's postgresql package), fsync on,
reached over its local socket (one machine: what a daemon beside its database uses), or with ``--tcp`` over
127.0.0.1 (what a host elsewhere pays, less the network); a fresh database for each run. ``--rounds N`` runs each
backend N times, round robin. Prints one line per run; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))


def sort_by_one_move(journal, fid: int, target: Path, move=None) -> bool:
    """What the daemon journals for a classified file that one ``move`` sorts: the intent, the move itself
    (``move()``, if given: False when the file was gone), then the result. Whether the file was sorted."""
    from rfwatch.states import FileState, StepKind

    journal.files.record_intent(fid, 1, StepKind.ACTION, "sort", "move", {"target": str(target), "tmp": None})
    if move is not None and not move():
        return False
    journal.files.finish_step(
        fid,
        1,
        StepKind.ACTION,
        "sort",
        "move",
        True,
        {"outcome": "moved", "to": str(target)},
        path=target,
        final=FileState.DONE,
    )
    return True


def _rename(source: Path, target: Path) -> bool:
    try:
        os.rename(source, target)
        return True
    except FileNotFoundError:
        return False


def _worker_process(url: str, host: str, share: str, lockstep: bool, threads: int, start, go, out) -> None:
    from rfwatch.config import WatchConfig
    from rfwatch.journal import Journal, Roots, Skip
    from rfwatch.journal.holders import DAEMON
    from rfwatch.service.watcher import scan

    root = Path(share)
    journal = Journal.open(url, host=host, roots=Roots({"share": root}), synchronous="FULL", kind=DAEMON)
    _ = journal.holder  # register before the clock starts
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    start.wait()  # every process registered: each knows its turn
    turn = (0, 1) if lockstep else journal.scan_turn()
    # Listed before the clock starts (run() waits for every process's list): the journal's pace is measured, not
    # the listing's.
    for path, _st in scan(WatchConfig(root / "inbox"), turn=turn):
        todo.put(path.relative_to(root / "inbox").as_posix())
    out.put({"listed": host})
    go.wait()
    worked: list[str] = []
    lost: list[str] = []  # a move whose source was gone: a false failure in the daemon
    lock = threading.Lock()

    def work() -> None:
        mine, gone = [], []
        while True:
            try:
                name = todo.get_nowait()
            except queue.Empty:
                break
            path = root / "inbox" / name
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # the other host sorted it already
            if journal.files.screen(path, st.st_size, st.st_mtime_ns) is not None:
                continue
            fid = journal.files.take(path, st.st_size, st.st_mtime_ns, "sha-" + name, "colors/1")
            if isinstance(fid, Skip):
                continue
            # What the pipeline does after a take: the other host may have finished and moved the file on
            # between our look and our take; then ours was never a file to work on.
            if not path.exists():
                journal.files.drop(fid)
                continue
            # As the daemon does (no sequences): the classification is committed with the move's intent.
            journal.files.classified(
                fid, {"top": "red", "confidence": 0.9}, "sha-" + name, "colors/1", "red 0.90", {}, defer=True
            )
            target = root / "archive" / "red" / name
            if not sort_by_one_move(journal, fid, target, functools.partial(_rename, path, target)):
                gone.append(name)
                continue
            mine.append(name)
        with lock:
            worked.extend(mine)
            lost.extend(gone)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    began = time.perf_counter()
    cpu = time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(
        {
            "host": host,
            "worked": worked,
            "lost": lost,
            "seconds": time.perf_counter() - began,
            "cpu": time.process_time() - cpu,
        }
    )
    journal.close()


def run(url: str, files: int, processes: int, threads: int, server_cpu=None, lockstep: bool = False) -> dict:
    """``server_cpu``: a function giving the database server's CPU seconds so far (PostgreSQL), or None."""
    names = [f"cam{n % 50:02}/IMG_{n:07}.jpg" for n in range(files)]
    with tempfile.TemporaryDirectory(prefix="rfwatch-bench-share-") as share:
        for cam in {n.split("/")[0] for n in names}:
            (Path(share) / "inbox" / cam).mkdir(parents=True)
            (Path(share) / "archive" / "red" / cam).mkdir(parents=True)
        for name in names:
            (Path(share) / "inbox" / name).write_bytes(name.encode())
        ctx = mp.get_context("spawn")
        start, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker_process,
                args=(url, f"host-{i}", share, lockstep, threads, start, go, out),
            )
            for i in range(processes)
        ]
        for p in procs:
            p.start()
        time.sleep(2.0)  # every process connected and registered
        start.set()
        for _ in procs:
            out.get(timeout=600)  # its list made
        server_cpu0 = server_cpu() if server_cpu else 0.0
        began = time.perf_counter()
        go.set()
        results = [out.get(timeout=3600) for _ in procs]
        wall = time.perf_counter() - began
        server_cpu_s = (server_cpu() - server_cpu0) if server_cpu else None
        for p in procs:
            p.join()
        left = sum(1 for _ in (Path(share) / "inbox").rglob("*.jpg"))
        sorted_ = sum(1 for _ in (Path(share) / "archive").rglob("*.jpg"))
    worked = [name for r in results for name in r["worked"]]
    from rfwatch.journal import Journal

    j = Journal.open(url)
    counts = j.files.counts()
    j.close()
    return {
        "files": files,
        "processes": processes,
        "threads": threads,
        "lockstep": lockstep,
        "seconds": wall,
        "files_per_s": files / wall,
        # a file worked by two workers (both journaled it done), whichever process they were in
        "double_claims": len(worked) - len(set(worked)),
        "false_failures": sum(len(r["lost"]) for r in results),
        "worked": len(worked),
        "done_in_journal": counts.get("done", 0),
        "left_in_inbox": left,
        "sorted_on_disk": sorted_,
        "per_process": {r["host"]: len(r["worked"]) for r in results},
        "client_cpu_s": sum(r["cpu"] for r in results),
        "server_cpu_s": server_cpu_s,
        "load_average": os.getloadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--backend", choices=("postgresql", "sqlite", "both"), default="both")
    ap.add_argument("--tcp", action="store_true", help="reach PostgreSQL over 127.0.0.1, not its local socket")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--lockstep", action="store_true", help="every process scans in the same order (no turns)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    figures: dict[str, list[dict]] = {}
    cluster = None
    if args.backend in ("postgresql", "both"):
        import pg
        from hosts import postmaster_pid, tree_cpu

        cluster = pg.Cluster(pg.find_bin()).start()
    try:
        for _ in range(args.rounds):
            if args.backend in ("sqlite", "both"):
                with tempfile.TemporaryDirectory() as tmp:
                    f = run(
                        os.path.join(tmp, "journal.db"),
                        args.files,
                        args.processes,
                        args.threads,
                        lockstep=args.lockstep,
                    )
                figures.setdefault("sqlite", []).append(f)
                report("sqlite", f)
            if cluster is not None:
                url = cluster.new_database()
                if not args.tcp:  # postgresql://postgres@/db?host=/sock&port=N
                    url = f"postgresql://postgres@/{url.rsplit('/', 1)[1]}?host={cluster.sock}&port={cluster.port}"
                server = functools.partial(tree_cpu, postmaster_pid(cluster))
                f = run(url, args.files, args.processes, args.threads, server, lockstep=args.lockstep)
                name = "postgresql (tcp)" if args.tcp else "postgresql (socket)"
                figures.setdefault(name, []).append(f)
                report(name, f)
    finally:
        if cluster is not None:
            cluster.destroy()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def report(backend: str, f: dict) -> None:
    print(
        f"{backend}: {f['files']} files, {f['processes']} processes x {f['threads']} threads"
        f"{' in lockstep' if f['lockstep'] else ''}: "
        f"{f['files_per_s']:.0f} files/s ({f['seconds']:.1f} s), double claims {f['double_claims']}, "
        f"false failures {f['false_failures']}, worked {f['worked']} ({f['per_process']}), "
        f"done in the journal {f['done_in_journal']}, sorted on disk {f['sorted_on_disk']}, "
        f"left in the inbox {f['left_in_inbox']}, "
        f"client CPU {f['client_cpu_s']:.1f} s ({1000 * f['client_cpu_s'] / f['files']:.2f} ms/file)"
        + (
            f", server CPU {f['server_cpu_s']:.1f} s ({1000 * f['server_cpu_s'] / f['files']:.2f} ms/file)"
            if f["server_cpu_s"] is not None
            else ""
        )
        + f", load average {' '.join(f'{x:.2f}' for x in f['load_average'])}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

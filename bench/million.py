"""A million files on one machine: commands on a journal of 1,000,000 finished files, a restart with 10,000
pending, and the start-up scan of a tree of 1,000,000 files of which 999,000 are known.

    python bench/million.py [--files 1000000] [--runs 3] [--no-scan]

The journal is made the way a real one is, then grown: rfwatch itself sorts a few real photos with `run --once`
(against the inference stand-in on loopback), and their rows (files, steps, events) are copied with SQL to a
million, each copy with its own path, size, times and hash. 1,000 of them were taken within the last hour
(`undo --since 1h` selects those). The scan's tree holds a small file for every row (size and mtime as the
journal has them) and 1,000 new photos. Each command is timed as a process (wall, CPU from wait4, peak RSS),
the median of ``--runs``. The restart is a daemon started with NOTIFY_SOCKET, timed to READY=1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import run as bench  # noqa: E402

MTIME_NS = 1_700_000_000_000_000_000
SIZE = 16


def timed(cmd: list[str], cwd: Path, env: dict) -> dict:
    # Output goes to files, not pipes: a command that prints more than a pipe holds would block until read.
    # Peak RSS from GNU time (its child's own): the bench's process would count in a child's ru_maxrss.
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f, tempfile.NamedTemporaryFile() as rss:
        began = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], cwd=cwd, env=env, stdout=out_f, stderr=err_f
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
        peak_kb = int(Path(rss.name).read_text().split()[-1])
    code = os.waitstatus_to_exitcode(status)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_mb": peak_kb / 1024,
        "exit": code,
        "out": out.decode(errors="replace")[-400:],
        "err": err.decode(errors="replace")[-20000:],
    }


def median(runs: list[dict]) -> dict:
    out = dict(runs[0])
    for key in ("wall", "cpu", "rss_mb"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def grow(db_path: Path, files: int, known_in_tree: int, pending: int) -> None:
    """Copy the seed rows to ``files`` finished files (paths camNNN/IMG_n.jpg below the watched tree) and
    ``pending`` files waiting (classified, held by nobody)."""
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # building the bench's journal only
    seeds = db.execute("SELECT id FROM files ORDER BY id").fetchall()
    n_seeds = len(seeds)
    now = time.time()
    cols = [r[1] for r in db.execute("PRAGMA table_info(files)") if r[1] != "id"]
    root = db.execute("SELECT root FROM files LIMIT 1").fetchone()[0]
    varied = {
        "source": "CAST(printf('cam%03d/IMG_%07d.jpg', n.i / 1000, n.i) AS BLOB)",
        "path_root": "?",
        "path": "CAST(printf('cam%03d/IMG_%07d.jpg', n.i / 1000, n.i) AS BLOB)",
        "size": str(SIZE),
        "mtime_ns": str(MTIME_NS),
        "sha256": "printf('%064x', n.i)",
        # 1,000 taken within the last hour, the rest over the past year
        "created": f"CASE WHEN n.i < 1000 THEN {now} - 600 - n.i ELSE {now} - 7200 - n.i * 30 END",
        "updated": f"CASE WHEN n.i < 1000 THEN {now} - 590 - n.i ELSE {now} - 7190 - n.i * 30 END",
        "state": "CASE WHEN n.i >= ? THEN 'classified' ELSE t.state END",
        "holder": "NULL",
    }
    select = ", ".join(varied.get(c, f"t.{c}") for c in cols)
    db.execute("CREATE TEMP TABLE seeds (k INTEGER PRIMARY KEY, id INTEGER)")
    db.executemany("INSERT INTO seeds VALUES (?,?)", [(k, r[0]) for k, r in enumerate(seeds)])
    db.execute(
        f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
        INSERT INTO files ({", ".join(cols)})
        SELECT {select} FROM n JOIN seeds ON seeds.k = n.i % ? JOIN files AS t ON t.id = seeds.id
        """,
        (files + pending, root, files, n_seeds),  # in the order of the ?s: the CTE, the SELECT list, the JOIN
    )
    first_new = db.execute("SELECT MIN(id) FROM files WHERE id > ?", (seeds[-1][0],)).fetchone()[0]
    # Each copy gets its seed's steps and events.
    for table in ("steps", "events"):
        tcols = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[1] not in ("file_id", "id")]
        db.execute(
            f"""
            INSERT INTO {table} (file_id, {", ".join(tcols)})
            SELECT f.id, {", ".join("s." + c for c in tcols)} FROM files AS f
            JOIN seeds ON seeds.k = (f.id - ?) % ? JOIN {table} AS s ON s.file_id = seeds.id
            WHERE f.id >= ?
            """,
            (first_new, n_seeds, first_new),
        )
    # The seeds themselves go (their photos were moved away): the journal holds exactly the copies.
    for table in ("steps", "events", "produced"):
        db.execute(f"DELETE FROM {table} WHERE file_id < ?", (first_new,))
    db.execute("DELETE FROM files WHERE id < ?", (first_new,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("ANALYZE")
    db.close()
    # The triggers on files wrote a +1 row per copy; a daemon folds them within a minute (Files.fold_counts).
    from rfwatch.journal import Journal

    journal = Journal.open(str(db_path))
    try:
        journal.files.fold_counts()
    finally:
        journal.close()


def make_tree(tree: Path, files: int) -> None:
    """A small file for each known row (its size and mtime as journaled)."""
    payload = b"k" * SIZE
    for i in range(files):
        folder = tree / f"cam{i // 1000:03}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"IMG_{i:07}.jpg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, payload)
        os.utime(fd, ns=(MTIME_NS, MTIME_NS))
        os.close(fd)


def add_new_photos(tree: Path, photos: list[Path]) -> None:
    new = tree / "0-new"
    new.mkdir()
    for i in range(1000):
        shutil.copyfile(photos[i % len(photos)], new / f"NEW_{i:04}.jpg")
        # a different picture each (the journal would reuse a prediction for identical content)
        with open(new / f"NEW_{i:04}.jpg", "ab") as f:
            f.write(i.to_bytes(4, "big"))


def restart_to_ready(cfg: Path, cwd: Path, env: dict, timeout: float = 120.0) -> dict:
    sock_path = cwd / "notify.sock"
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(timeout)
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rfwatch", "run", "-c", str(cfg), "-q"],
        cwd=cwd,
        env=dict(env, NOTIFY_SOCKET=str(sock_path)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready = None
    try:
        while ready is None:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg.splitlines():
                ready = time.perf_counter() - began
        peak = bench.peak_rss_mb(proc.pid)  # VmHWM of the daemon itself, at READY
        cpu = bench.cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        sock.close()
    return {"wall": ready, "cpu": cpu, "rss_mb": peak, "exit": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000, help="finished files in the journal")
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-scan", action="store_true", help="skip the start-up scan of a tree of --files files")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rfwatch-bench-million-"))
    server = bench.RoboflowServer().start()
    server.decode_images = server.keep_images = False
    # Bytecode cached as an installed package has it (pip compiles on install): PYCACHE set before the environment
    # is made, so that it drops PYTHONDONTWRITEBYTECODE too. (Set after, as it was, every process compiled every
    # module it imported from source: 60 to 200 ms of each command's figure below, before 2026-12-07.)
    bench.PYCACHE = work / "pycache"
    env = bench.rfwatch_env()
    results: dict[str, dict] = {}
    try:
        photos = bench.build_small(work / "cache", 8, size=(320, 240))
        tree, inbox, state = work / "tree", work / "inbox", work / "state"
        tree.mkdir()
        inbox.mkdir()
        roboflow = {"model": bench.UNSIZED_MODEL, "api_url": server.url, "platform_url": bench.closed_port_url()}
        rules = [{"name": "sort", "then": [{"move": str(work / "sorted") + "/{class}/{name}"}]}]
        scan_cfg = work / "scan.yaml"  # watches the tree
        scan_cfg.write_text(
            json.dumps(
                {
                    "roboflow": roboflow,
                    "state": str(state / "journal.db"),
                    "watch": [{"path": str(tree), "name": "cams", "settle": 0.2}],
                    "rules": rules,
                }
            )
        )
        cmd_cfg = work / "config.yaml"  # an empty inbox; the tree is a named root so its rows resolve
        cmd_cfg.write_text(
            json.dumps(
                {
                    "roboflow": roboflow,
                    "state": str(state / "journal.db"),
                    "watch": [{"path": str(inbox), "name": "inbox", "settle": 0.2}],
                    "roots": {"cams": str(tree)},
                    "rules": rules,
                }
            )
        )
        print("seeding the journal with rfwatch run --once on 8 photos ...", flush=True)
        seed = tree / "seed"
        seed.mkdir()
        for p in photos:
            shutil.copyfile(p, seed / p.name)
        r = timed([sys.executable, "-m", "rfwatch", "run", "--once", "-q", "-c", str(scan_cfg)], work, env)
        assert r["exit"] == 0, r
        shutil.rmtree(seed)
        print(f"growing the journal to {args.files:,} finished and {args.pending:,} pending files ...", flush=True)
        t = time.perf_counter()
        grow(state / "journal.db", args.files, args.files, args.pending)
        db_bytes = (state / "journal.db").stat().st_size
        print(f"  {time.perf_counter() - t:.0f} s, {db_bytes / 1e6:.0f} MB", flush=True)
        py = sys.executable
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "status": [py, "-m", "rfwatch", "status", "-c", str(cmd_cfg)],
            "history PATH": [
                py,
                "-m",
                "rfwatch",
                "history",
                "-c",
                str(cmd_cfg),
                str(tree / f"cam{args.files // 2000:03}/IMG_{args.files // 2:07}.jpg"),
            ],
            "undo --dry-run --since 1h": [
                py,
                "-m",
                "rfwatch",
                "undo",
                "--dry-run",
                "--since",
                "1h",
                "-c",
                str(cmd_cfg),
            ],
        }
        for cmd in commands.values():  # untimed: the bytecode cache filled, the journal's pages read once
            timed(cmd, work, env)
        for _ in range(args.runs):
            for name, cmd in commands.items():
                results.setdefault(name, []).append(timed(cmd, work, env))
        # The pending files would be worked on by the daemon: time its restart to READY, then let them go
        # (they have no photos; the rows are set finished again so later runs see "nothing new").
        ready = [restart_to_ready(cmd_cfg, work, env) for _ in range(args.runs)]
        results["restart to READY (10,000 pending)"] = ready
        db = sqlite3.connect(state / "journal.db")
        db.execute("UPDATE files SET state='done', holder=NULL WHERE state NOT IN ('done')")
        db.commit()
        db.close()
        results["run --once, nothing new"] = [
            timed([py, "-m", "rfwatch", "run", "--once", "-q", "-c", str(cmd_cfg)], work, env) for _ in range(args.runs)
        ]
        if not args.no_scan:
            print(f"writing a tree of {args.files:,} known files and 1,000 new photos ...", flush=True)
            t = time.perf_counter()
            make_tree(tree, args.files)
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
            os.sync()
            # Every file known: the scan alone (nothing to classify), by its own log line.
            r = timed([py, "-m", "rfwatch", "run", "--once", "-c", str(scan_cfg)], work, env)
            m = re.search(r"scan of \S+: (\d+) file\(s\) handed on, (\d+) known passed over, in ([\d.]+) s", r["err"])
            r["scan_line"] = m.group(0) if m else "(no scan line)"
            r["files_per_s"] = int(m.group(2)) / float(m.group(3)) if m and float(m.group(3)) else float("nan")
            r["new_sorted"] = 0
            results["start-up scan, every file known (run --once)"] = [r]
            add_new_photos(tree, photos)
            r = timed([py, "-m", "rfwatch", "run", "--once", "-c", str(scan_cfg)], work, env)
            # The scanner's own line: it waits on the workers only for the 1,000 new photos, scanned last.
            m = re.search(r"scan of \S+: (\d+) file\(s\) handed on, (\d+) known passed over, in ([\d.]+) s", r["err"])
            r["scan_line"] = m.group(0) if m else "(no scan line)"
            sorted_now = sum(1 for _ in (work / "sorted").rglob("NEW_*.jpg"))
            r["new_sorted"] = sorted_now
            r["files_per_s"] = (args.files + 1000) / r["wall"]
            results["start-up scan, 1,000 new photos too (run --once)"] = [r]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = median(results["python -c pass"])
    print(f"\njournal: {args.files:,} finished files, {db_bytes / 1e6:.0f} MB ({db_bytes / args.files:.0f} bytes/file)")
    for name, runs in results.items():
        m = median(runs)
        extra = ""
        if "files_per_s" in m:
            extra = f", {m['files_per_s']:,.0f} files/s, new photos sorted {m['new_sorted']}/1000; {m['scan_line']}"
        cpu = f"CPU {m['cpu']:.3f} s ({m['cpu'] / base['cpu']:.1f}x python -c pass)" if m["cpu"] == m["cpu"] else ""
        print(f"{name}: {m['wall']:.3f} s, {cpu}, peak {m['rss_mb']:.0f} MB, exit {m['exit']}{extra}")
        if m["exit"]:
            print("   ", m.get("err", "")[-300:])
    if args.json:
        Path(args.json).write_text(json.dumps({"db_bytes": db_bytes, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

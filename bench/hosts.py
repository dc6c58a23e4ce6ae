"""Daemons on a shared journal: one on SQLite, one on PostgreSQL, two on one PostgreSQL.

    python bench/hosts.py [--files 48] [--concurrency 8] [--runs 2]

The 12 MP workload and the simulated link of bench/run.py (150 ms +- 50 ms API latency, one 50 Mbit/s uplink,
the platform API reachable, a 224x224 model). Each setup gets the same burst of files renamed into one inbox;
a file counts when it is in its class folder. PostgreSQL is a throwaway cluster from Debian's package
(tests/pg.py), reached over its local socket, fsync on. The two daemons have different host ids and watch the
same inbox: the journal's claims share the files out between them.

CPU per file is the daemons' own (user + system, from /proc) and, apart, the PostgreSQL server's (the
postmaster and its children). Two daemons on this machine share its two cores with the server and with each
other, so they cannot gain much here: their gain is on two machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import pg  # noqa: E402
import run as bench  # noqa: E402


def tree_cpu(root_pid: int) -> float:
    """CPU seconds of a process, its live children and those it has reaped (a PostgreSQL server: postmaster and
    backends, also those whose connection has closed)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root_pid:
            total += sum(int(f) for f in fields[11:15]) / bench.CLK_TCK
        elif int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / bench.CLK_TCK
    return total


def postmaster_pid(cluster: pg.Cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def one_setup(name: str, files: list[Path], daemons: int, state: str, concurrency: int, work: Path, env) -> dict:
    server, platform_url, cluster = env
    folder = Path(tempfile.mkdtemp(dir=work, prefix=name.replace(" ", "-") + "-"))
    (folder / "inbox").mkdir()
    staging = folder / "staging"
    staging.mkdir()
    for f in files:
        shutil.copyfile(f, staging / f.name)
    procs = []
    for d in range(daemons):
        cfg = folder / f"config{d}.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "roboflow": {
                        "model": bench.SIZED_MODEL,
                        "api_url": server.url,
                        "platform_url": platform_url,
                        "timeout": 120,
                    },
                    "state": state,
                    "host": f"bench-{d}",
                    "concurrency": concurrency,
                    "watch": [{"path": "inbox", "settle": 1.0}],
                    "rules": [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}],
                }
            )
        )
        procs.append(
            subprocess.Popen(
                bench.rfwatch_command(bench.Code("this tree", sys.executable, True), cfg),
                cwd=folder,
                env=bench.rfwatch_env(),
                stdout=subprocess.DEVNULL,
                stderr=open(folder / f"rfwatch{d}.log", "wb"),
            )
        )
    time.sleep(4.0)  # started, journal open, watchers up (not timed)
    cpu0 = [bench.cpu_seconds(p.pid) for p in procs]
    pm = postmaster_pid(cluster) if state.startswith("postgresql") else None
    server_cpu0 = tree_cpu(pm) if pm else 0.0
    began = time.monotonic()
    for f in files:
        os.rename(staging / f.name, folder / "inbox" / f.name)
    sorted_dir = folder / "sorted" / "red"
    deadline = began + 60 + 10 * len(files)
    done = 0
    while time.monotonic() < deadline:
        done = len(os.listdir(sorted_dir)) if sorted_dir.is_dir() else 0
        if done >= len(files):
            break
        time.sleep(0.01)
    seconds = time.monotonic() - began
    cpu = sum(bench.cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0))
    server_cpu = (tree_cpu(pm) - server_cpu0) if pm else 0.0
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)
    problems = [line for d in range(daemons) for line in bench.log_problems(folder / f"rfwatch{d}.log")]
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "setup": name,
        "files": len(files),
        "done": done,
        "seconds": seconds,
        "fps": done / seconds,
        "cpu_per_file": cpu / max(1, done),
        "db_cpu_per_file": server_cpu / max(1, done),
        "problems": problems,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--runs", type=int, default=2, help="rounds over the setups; the median is kept")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rfwatch-bench-hosts-"))
    bench.PYCACHE = work / "pycache"
    files = bench.build_workloads(work / "cache", args.files)["12 MP"][: args.files]
    server = bench.RoboflowServer().start()
    server.latency, server.jitter, server.uplink_bps = 0.150, 0.050, 50e6
    server.decode_images = server.keep_images = False
    platform_api = bench.PlatformServer(catalog=server.catalog).start()
    platform_api.delay = 0.150
    cluster = pg.Cluster(pg.find_bin()).start()
    env = (server, platform_api.url, cluster)
    results: dict[str, list[dict]] = {}
    try:
        for _ in range(args.runs):  # round robin: a slow moment does not land on one setup
            for name, daemons, state in (
                ("one daemon, SQLite", 1, "state/journal.db"),
                ("one daemon, PostgreSQL", 1, None),
                ("two daemons, one PostgreSQL", 2, None),
            ):
                url = state
                if url is None:  # the local socket: postgresql://postgres@/db?host=/sock&port=N
                    db = cluster.new_database().rsplit("/", 1)[1]
                    url = f"postgresql://postgres@/{db}?host={cluster.sock}&port={cluster.port}"
                print(f"{name} ...", flush=True)
                results.setdefault(name, []).append(one_setup(name, files, daemons, url, args.concurrency, work, env))
    finally:
        cluster.destroy()
        server.stop()
        platform_api.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = None
    for name, runs in results.items():
        r = sorted(runs, key=lambda r: r["fps"])[len(runs) // 2]
        each = ", ".join(f"{x['fps']:.2f}" for x in runs)
        base = base or r["fps"]
        print(
            f"{name}: {r['done']}/{r['files']} files, {r['fps']:.2f} files/s ({r['fps'] / base:.2f}x SQLite), "
            f"daemon CPU {r['cpu_per_file'] * 1000:.0f} ms/file, PostgreSQL CPU {r['db_cpu_per_file'] * 1000:.0f} "
            f"ms/file; runs: {each}; problems: {len(r['problems'])}"
        )
        for line in r["problems"][:3]:
            print("   ", line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

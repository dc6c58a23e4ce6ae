"""kill -9 at random moments, SIGTERM, SIGHUP: nothing is lost, nothing is duplicated."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import yaml
from helpers import DaemonProcess, files_under, rfwatch_cmd, run_cli, unique_jpeg, wait_for, write_burst, write_config
from roboflow_server import VALID_KEY

COLORS = [(230, 10, 10), (10, 230, 10), (10, 10, 230)]


def _env():
    return dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)


def _start(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        rfwatch_cmd("run", "-c", str(cfg)), env=_env(), stdout=subprocess.DEVNULL, stderr=open(log, "ab")
    )


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_each_exactly_once(tmp_path: Path, written: dict[str, bytes], places: tuple[str, ...]) -> None:
    found: dict[str, list[Path]] = {}
    for place in places:
        for p in files_under(tmp_path / place):
            if p.suffix == ".xmp":
                continue
            found.setdefault(_digest(p.read_bytes()), []).append(p)
    missing = [name for name, data in written.items() if _digest(data) not in found]
    assert not missing, f"lost: {missing[:5]}"
    dupes = {k: v for k, v in found.items() if len(v) > 1}
    assert not dupes, f"duplicated: {list(dupes.values())[:3]}"
    assert len(found) == len(written), "files appeared that nobody wrote"
    leftovers = [p for p in files_under(tmp_path) if ".rfwatch-tmp" in p.name]
    assert not leftovers, f"temporary files left: {leftovers}"


def test_kill_9_mid_burst_then_restart(tmp_path, server):
    server.delay = 0.02
    cfg = write_config(
        tmp_path,
        server,
        concurrency=4,
        settle=0.2,
        failed="failed",
        rules=[{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}],
    )
    rnd = random.Random(42)
    written = {}
    log = tmp_path / "daemon.log"
    n = 0
    for _round in range(8):
        # Killed at a random instant: during start-up recovery as well as mid-burst.
        with DaemonProcess(cfg, log):
            n = write_burst(tmp_path / "inbox", written, n, 25, 5000)  # a burst arrives while the daemon runs
            time.sleep(rnd.uniform(0.2, 1.2))
    with DaemonProcess(cfg, log) as last:
        last.wait_ready()
        assert last.terminate() == 0
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr[-2000:]
    assert files_under(tmp_path / "inbox") == []
    assert_each_exactly_once(tmp_path, written, ("inbox", "sorted", "failed"))
    for p in files_under(tmp_path / "sorted"):
        assert p.name in written and p.read_bytes() == written[p.name]
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM files WHERE state != 'done'").fetchone()[0] == 0


def test_sigterm_exits_zero_and_sighup_reloads_rules(tmp_path, server):
    cfg = write_config(tmp_path, server)
    log = tmp_path / "daemon.log"
    proc = _start(cfg, log)
    try:
        (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(COLORS[0], 1))
        wait_for(lambda: (tmp_path / "sorted" / "red" / "a.jpg").exists(), what="first rule")
        doc = yaml.safe_load(cfg.read_text())
        doc["rules"] = [{"name": "new", "then": [{"move": "elsewhere/{name}"}]}]
        cfg.write_text(yaml.safe_dump(doc))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"config reloaded" in log.read_bytes(), what="reload")
        (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg(COLORS[0], 2))
        wait_for(lambda: (tmp_path / "elsewhere" / "b.jpg").exists(), what="new rule")
        cfg.write_text("rules: [{then: [{mvoe: x}]}]\n" + cfg.read_text().split("rules:")[0])
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"reload failed, keeping the running config" in log.read_bytes(), what="failed reload")
        assert b"unknown action 'mvoe'" in log.read_bytes()
        (tmp_path / "inbox" / "c.jpg").write_bytes(unique_jpeg(COLORS[0], 3))
        wait_for(lambda: (tmp_path / "elsewhere" / "c.jpg").exists(), what="old config still running")
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0

"""Running unattended: the systemd units, sd_notify over a real socket, status, retry, outages, metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    DaemonProcess,
    DaemonThread,
    files_under,
    record_probes,
    rfwatch_cmd,
    run_cli,
    unique_jpeg,
    wait_for,
    write_config,
)
from ports import free_port
from roboflow_server import VALID_KEY, RoboflowServer

from rfwatch.service.notify import Notifier

REPO = Path(__file__).resolve().parents[1]
RED, GREEN = (230, 10, 10), (10, 230, 10)
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def _units(tmp_path: Path) -> Path:
    """The units as shipped, with ExecStart pointing at this environment's rfwatch (verify checks it exists)."""
    exe = shutil.which("rfwatch") or str(Path(sys.executable).parent / "rfwatch")
    for unit in ("rfwatch.service", "rfwatch@.service"):
        text = (REPO / "systemd" / unit).read_text().replace("/usr/local/bin/rfwatch", exe)
        (tmp_path / unit).write_text(text)
    return tmp_path


@needs_systemd
@pytest.mark.parametrize("unit", ["rfwatch.service", "rfwatch@lab.service"])
def test_units_verify_cleanly_and_are_hardened(tmp_path, unit):
    folder = _units(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(folder / unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(folder / unit)], capture_output=True, text=True
    )
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert score <= 2.0, security.stdout[-3000:]
    text = (folder / unit.replace("lab", "")).read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=rfwatch",
        "StateDirectory=rfwatch",
        "LoadCredential=roboflow:",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "NoNewPrivileges=yes",
    ):
        assert line in text, line


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.2)
    return sock


def _receive(sock: socket.socket, until: float, enough=None) -> list[tuple[float, str]]:
    """Messages until ``until``, or until ``enough(messages)`` says the test has what it waits for."""
    out: list[tuple[float, str]] = []
    while time.monotonic() < until and not (enough and enough(out)):
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            continue
    return out


SIGNAL_WHILE_WAITING = """
import os, signal, sys, threading, time
from rfwatch.service.signals import relay_signals
stop = threading.Event()
relay_signals({signal.SIGTERM: stop})
with stop._cond:  # what Event.wait holds for a moment: the signal arrives right then
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # the handler runs in this thread, between two bytecodes
sys.exit(0 if stop.wait(10) else 3)
"""


def test_a_stop_signal_arriving_inside_an_event_wait_stops_the_daemon():
    """The daemon's main loop waits on its stop event in 20 ms ticks; a SIGTERM whose handler ran while that wait
    held the event's lock hung the daemon for good (Event.set in the handler waited for its own thread). The
    handler now takes no lock: the signal is set on the event by a thread of its own."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_WAITING], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_notify_protocol_with_an_abstract_socket(tmp_path, server):
    """A real rfwatch process: READY=1, STATUS with counts, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1."""
    name = f"rfwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = _listen("\0" + name)
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 1))
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen(rfwatch_cmd("run", "-c", str(cfg)), env=env, stderr=subprocess.PIPE, text=True)
    status = re.compile(r"STATUS=1 done, 0 unmatched, 0 failed, \d+ queued")

    def enough(messages):  # (a loaded machine starts the process late: wait for what is needed, not a fixed time)
        pings = [m for _, m in messages if m == "WATCHDOG=1"]
        return len(pings) >= 6 and any(status.match(m) for _, m in messages)

    try:
        messages = _receive(sock, time.monotonic() + 60, enough)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = _receive(sock, time.monotonic() + 30, lambda ms: any(m == "STOPPING=1" for _, m in ms))
        assert proc.wait(timeout=30) == 0
    texts = [m for _, m in messages]
    assert texts and texts[0].startswith("READY=1")
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    assert len(pings) >= 6, texts
    # Every 0.5 s for a 1 s WATCHDOG_USEC: the typical gap, so that one late tick on a loaded machine is no
    # failure, while pinging at the full WATCHDOG_USEC (or not at all) is.
    gaps = sorted(b - a for a, b in zip(pings, pings[1:], strict=False))
    assert 0.3 < gaps[len(gaps) // 2] < 0.8, gaps
    assert any(status.match(m) for m in texts), texts
    assert "STOPPING=1" in [m for _, m in rest]


def test_ready_is_sent_only_once_the_watches_exist(tmp_path, server):
    path = str(tmp_path / "notify.sock")
    sock = _listen(path)
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "early.jpg").write_bytes(unique_jpeg(RED, 2))
    at_ready = []

    class Snapshot(Notifier):
        """The real notifier, plus a look at the daemon at the instant READY=1 goes out."""

        def ready(self, status=""):
            d = holder.daemon
            at_ready.append(
                (
                    len(d.watcher._observers),
                    d.watcher.alive(),
                    d.watcher.scanning() + d.watcher.found + d.queue.qsize() + d._busy + sum(d.counts.values()),
                )
            )
            super().ready(status)

    holder = DaemonThread(cfg, notifier=Snapshot({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}))
    with holder:
        pinged = lambda ms: sum(m == "WATCHDOG=1" for _, m in ms) >= 4  # noqa: E731 - (not a fixed time: see above)
        messages = [m for _, m in _receive(sock, time.monotonic() + 30, pinged)]
        wait_for(lambda: (tmp_path / "sorted" / "red" / "early.jpg").exists(), what="start-up scan result")
    assert at_ready[0][0] == 1 and at_ready[0][1], "READY=1 before the observer ran"
    assert at_ready[0][2] >= 1, "READY=1 before the start-up scan was queued"
    assert messages[0].startswith("READY=1") and messages.count("WATCHDOG=1") >= 4


def test_a_stuck_worker_stops_the_watchdog_pings(tmp_path, server, monkeypatch):
    """A worker really stuck (a hook that never returns): WATCHDOG=1 stops, so systemd restarts the service;
    once the worker is free again the pings resume."""
    # The hook waits until the test lets it go: the worker is stuck in it, as on a hung NFS mount.
    hook = ["sh", "-c", "while [ ! -e release ]; do sleep 0.02; done"]
    rules = [{"name": "hook", "then": [{"command": {"args": hook, "timeout": 120}}, {"move": "sorted/{class}/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules, timeout=0.5)
    pings: list[float] = []

    class Recording(Notifier):
        def watchdog(self):
            pings.append(time.monotonic())
            super().watchdog()

    holder = DaemonThread(cfg, notifier=Recording({"WATCHDOG_USEC": "200000"}))  # a ping every 0.1 s
    holder.daemon.STUCK_GRACE = 0.0  # stuck once busy longer than the API could take: 0.5 s x 3 retries
    limit = 0.5 * 3
    ticks: list[float] = []  # the main loop's turns: it keeps running (and deciding about pings) while stuck
    with holder as d:
        real_tick = d.daemon.watcher.tick
        monkeypatch.setattr(d.daemon.watcher, "tick", lambda: ticks.append(time.monotonic()) or real_tick())
        wait_for(lambda: len(pings) >= 3, what="pings while healthy")
        assert d.daemon.healthy()
        try:
            (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 3))
            # Its clock starts again with its request slot (a wait for the slot is not stuck): read it after that.
            wait_for(server.inference_requests, what="the file sent")
            (since,) = wait_for(lambda: list(d.daemon._busy_since.values()), what="a worker on the file")
            stuck_at = since + limit
            wait_for(lambda: ticks[-1] > stuck_at + 2.0, timeout=30, what="the main loop to run on while stuck")
            assert not d.daemon.healthy() and list(d.daemon._busy_since.values()) == [since], "not stuck in the hook"
            # The last ping may go out as the limit is reached (noted late on a loaded machine); none a second after
            # (pings came every 0.1 s before: a daemon that kept pinging would have sent about ten since).
            late = [round(p - stuck_at, 3) for p in pings if p > stuck_at + 1.0]
            assert late == [], f"WATCHDOG=1 sent while a worker was stuck (seconds past the limit: {late})"
        finally:
            released = time.monotonic()
            (tmp_path / "release").touch()  # whatever happened, so that the daemon can stop
        wait_for(lambda: (tmp_path / "sorted" / "red" / "a.jpg").exists(), what="the file, once the hook returned")
        wait_for(lambda: any(p > released for p in pings), what="pings to resume")
        assert d.daemon.healthy()


def _reload_seen(messages: list[str]) -> bool:
    """RELOADING=1, then READY=1 with the status line in the same datagram (sd_notify's reload protocol)."""
    lines = [m.split("\n") for m in messages]
    reloading = next((i for i, m in enumerate(lines) if "RELOADING=1" in m), None)
    if reloading is None:
        return False
    return any("READY=1" in m and any(x.startswith("STATUS=") for x in m) for m in lines[reloading + 1 :])


def test_sighup_says_reloading_then_ready_and_a_broken_config_keeps_the_running_one(tmp_path, server):
    cfg = write_config(tmp_path, server)
    log = tmp_path / "daemon.log"
    with DaemonProcess(cfg, log) as proc:
        proc.wait_ready()
        write_config(tmp_path, server, rules=[{"name": "new", "then": [{"move": "moved/{class}/{name}"}]}])
        seen = len(proc.messages)
        proc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _reload_seen(proc.messages[seen:]), what="RELOADING=1, then READY=1 with a STATUS=")
        assert "config reloaded: 1 rules" in log.read_text()
        (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 130))
        wait_for(lambda: (tmp_path / "moved" / "red" / "a.jpg").exists(), what="the reloaded rule at work")
        # A broken config: the daemon says it reloads, then that it is ready again, with the running config.
        cfg.write_text(cfg.read_text().replace("move:", "teleport:"))
        seen = len(proc.messages)
        proc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _reload_seen(proc.messages[seen:]), what="RELOADING=1, then READY=1 after a failed reload")
        assert "reload failed, keeping the running config" in log.read_text()
        (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg(GREEN, 131))
        wait_for(lambda: (tmp_path / "moved" / "green" / "b.jpg").exists(), what="the running config, still at work")
        assert proc.terminate() == 0


def test_status_json_reports_true_counts_and_retry_requeues(tmp_path, server):
    rules = [{"name": "reds", "when": {"class": "red"}, "then": [{"move": "sorted/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules, failed="failed")
    inbox = tmp_path / "inbox"
    for i in range(3):
        (inbox / f"r{i}.jpg").write_bytes(unique_jpeg(RED, 10 + i))
    (inbox / "g.jpg").write_bytes(unique_jpeg(GREEN, 20))
    (inbox / "broken.jpg").write_bytes(unique_jpeg(RED, 21)[:300])
    (inbox / "text.jpg").write_text("hello")
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 1
    status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    assert {k: v for k, v in status["counts"].items() if v} == {"done": 3, "unmatched": 1, "failed": 2}
    assert status["backlog"] == 0 and status["model"] == "colors/1"
    assert {Path(f["source"]).name for f in status["last_failed"]} == {"broken.jpg", "text.jpg"}
    assert any("cannot decode image" in f["error"] for f in status["last_failed"])
    assert status["plugins"] is None and status["deliveries_pending"] == {}  # plain status loads no plugin
    with_plugins = json.loads(run_cli("status", "--plugins", "-c", str(cfg), "--json").stdout)
    assert "rfwatch.default_plugins.move_copy" in with_plugins["plugins"]
    assert with_plugins["counts"] == status["counts"]
    text = run_cli("status", "-c", str(cfg)).stdout
    assert "done 3, unmatched 1, failed 2, backlog 0" in text
    # fix one failed file in place, then retry just that one
    (tmp_path / "failed" / "text.jpg").write_bytes(unique_jpeg(RED, 22))
    out = run_cli("retry", "-c", str(cfg), str(tmp_path / "failed" / "text.jpg"))
    assert out.returncode == 0 and "1 file(s) queued again" in out.stdout
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    assert status["counts"]["failed"] == 1 and status["counts"]["done"] == 4
    history = run_cli("history", "-c", str(cfg), str(inbox / "text.jpg")).stdout
    for step in ("detected", "failed: not a recognised image format", "queued again by retry", "move done", "done"):
        assert step in history, history


def test_files_wait_through_an_outage_and_are_all_processed_after(tmp_path):
    server = RoboflowServer().start()
    port = server.port
    cfg = write_config(tmp_path, server, failed="failed")
    try:
        with DaemonThread(cfg) as d:
            d.daemon.gate.min_backoff = d.daemon.gate.max_backoff = 0.5
            probes = record_probes(d.daemon.gate)
            server.stop()  # the API goes away
            for i in range(10):
                (tmp_path / "inbox" / f"o{i}.jpg").write_bytes(unique_jpeg(RED, 30 + i))
            wait_for(lambda: d.daemon.gate.reason, timeout=20, what="the daemon to notice the outage")
            assert "cannot connect" in d.daemon.status_line()
            wait_for(lambda: len(probes) >= 3, what="two probes of the API to fail")
            assert files_under(tmp_path / "sorted") == [] and not (tmp_path / "failed").exists()
            status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
            assert status["counts"]["failed"] == 0 and "cannot connect" in (status["waiting_reason"] or "")
            server = RoboflowServer(port=port).start()  # back, same address
            wait_for(lambda: len(files_under(tmp_path / "sorted")) == 10, timeout=60, what="all files after the outage")
            assert d.daemon.gate.reason is None
    finally:
        server.stop()
    assert not (tmp_path / "failed").exists()


def test_a_bad_key_makes_files_wait_and_they_resume_with_a_good_one(tmp_path, server, monkeypatch):
    monkeypatch.setenv("ROBOFLOW_API_KEY", "expired-key")
    cfg = write_config(tmp_path, server, failed="failed")
    with DaemonThread(cfg) as d:
        d.daemon.gate.permanent_backoff = 0.5
        probes = record_probes(d.daemon.gate)
        for i in range(3):
            (tmp_path / "inbox" / f"k{i}.jpg").write_bytes(unique_jpeg(GREEN, 40 + i))
        # classify.roboflow.com answers 403 for a bad key (and for an unknown model)
        wait_for(lambda: d.daemon.gate.reason and "HTTP 403" in d.daemon.gate.reason, what="403 noticed")
        wait_for(lambda: len(probes) >= 3, what="two probes with the bad key to fail")
        assert files_under(tmp_path / "sorted") == [] and not (tmp_path / "failed").exists()
        sent = len(server.inference_requests())
        # One request per file before the gate closed (3 files), then only the gate's probes, 0.5 s apart.
        assert sent <= 3 + len(probes) and sent <= 3 + 6, "files are not hammering the API one by one"
        assert min(b - a for a, b in zip(probes, probes[1:])) >= 0.45, probes  # 0.5 s apart, less a late note
        # the key is re-enabled (or the quota topped up) on Roboflow's side: the same key works again
        server.valid_keys.add("expired-key")
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 3, timeout=30, what="resumed")


def test_run_once_with_a_rejected_key_exits_promptly_and_leaves_files(tmp_path, server):
    cfg = write_config(tmp_path, server)
    for i in range(5):
        (tmp_path / "inbox" / f"q{i}.jpg").write_bytes(unique_jpeg(RED, 50 + i))
    started = time.monotonic()
    result = run_cli("run", "-c", str(cfg), "--once", env={"ROBOFLOW_API_KEY": "wrong"})
    assert time.monotonic() - started < 20
    assert result.returncode == 3
    assert "HTTP 403" in result.stderr and "unprocessed files stay for the next run" in result.stderr
    assert len(files_under(tmp_path / "inbox")) == 5
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(files_under(tmp_path / "sorted")) == 5


def test_rescan_interval_takes_files_the_watcher_missed(tmp_path, server):
    cfg = write_config(tmp_path, server, rescan_interval=0.5)
    with DaemonThread(cfg) as d:
        for observer in d.daemon.watcher._observers:  # blind, as inotify is on a network share or lost events
            observer.unschedule_all()
        (tmp_path / "inbox" / "late.jpg").write_bytes(unique_jpeg(RED, 60))
        wait_for(lambda: (tmp_path / "sorted" / "red" / "late.jpg").exists(), timeout=10, what="the reconcile scan")


def test_metrics_endpoint(tmp_path, server):
    pytest.importorskip("prometheus_client")
    port = free_port()
    cfg = write_config(tmp_path, server, metrics={"listen": f"127.0.0.1:{port}"})
    server.fail_next(503, count=1, retry_after="0")
    with DaemonThread(cfg):
        (tmp_path / "inbox" / "m.jpg").write_bytes(unique_jpeg(RED, 70))
        wait_for(lambda: (tmp_path / "sorted" / "red" / "m.jpg").exists(), what="sorted")

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

        # The file is in its folder a moment before its worker counts it (the move is journaled, then counted):
        # wait for the count itself, not only for the file (a scrape in between once read 0).
        wait_for(lambda: 'rfwatch_files_total{outcome="done"} 1.0' in scrape(), what="the file counted")
        body = scrape()
    assert 'rfwatch_files_total{outcome="done"} 1.0' in body
    # every outcome has its series from the start, at 0
    assert (
        'rfwatch_files_total{outcome="failed"} 0.0' in body and 'rfwatch_files_total{outcome="unmatched"} 0.0' in body
    )
    assert "rfwatch_classify_seconds_count 1.0" in body
    assert "rfwatch_api_retries_total 1.0" in body
    assert "rfwatch_queue_depth 0.0" in body and "# TYPE rfwatch_deliveries_pending gauge" in body
    assert re.search(r"rfwatch_last_success_timestamp_seconds \d", body)


def test_the_service_config_loads_with_the_credential(tmp_path, monkeypatch):
    (tmp_path / "roboflow").write_text("key-from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    from rfwatch.config import load_config

    cfg = load_config(REPO / "systemd" / "config.yaml")
    assert cfg.roboflow.api_key == "key-from-credential"
    assert cfg.state_path == Path("/var/lib/rfwatch/journal.db")
    assert all(str(w.path).startswith("/srv/rfwatch/") for w in cfg.watch)
    assert "ReadWritePaths=/srv/rfwatch" in (REPO / "systemd" / "rfwatch.service").read_text()


INOTIFY_QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")


def _has_inotify(pid: int) -> bool:
    try:
        return any(os.readlink(fd) == "anon_inode:inotify" for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_an_event_overflow_triggers_a_rescan(tmp_path, server):
    """A real IN_Q_OVERFLOW: the daemon's inotify queue holds 64 events, and a burst arrives while the daemon
    cannot read (stopped, as a stalled or swapped-out process is). The files whose events the kernel dropped
    are found by the rescan rfwatch starts when watchdog reports the overflow."""
    cfg = write_config(tmp_path, server)
    inbox, log = tmp_path / "inbox", tmp_path / "daemon.log"
    data = unique_jpeg(RED, 90, size=(8, 8))  # one content: a single API call, the test is about the events
    try:
        old = INOTIFY_QUEUE.read_text()
        INOTIFY_QUEUE.write_text("64\n")
    except OSError as exc:
        pytest.skip(f"cannot lower fs.inotify.max_queued_events (needs root and a writable /proc/sys): {exc}")
    proc = None
    try:
        proc = DaemonProcess(cfg, log)
        # An inotify instance keeps the limit it was created with: the system's default is restored as soon
        # as the daemon's exists, so that no other program gets the small queue.
        wait_for(lambda: _has_inotify(proc.proc.pid) or proc.proc.poll() is not None, what="the daemon's inotify")
    except BaseException:
        if proc is not None:
            proc.kill()
        raise
    finally:
        INOTIFY_QUEUE.write_text(old)
    with proc:
        proc.wait_ready()
        proc.proc.send_signal(signal.SIGSTOP)
        try:
            for n in range(200):  # at least three events each (create, modify, close): far more than 64
                (inbox / f"f{n:03}.jpg").write_bytes(data)
        finally:
            proc.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "Inotify queue overflowed; filesystem events were lost" in log.read_text(), what="overflow")
        wait_for(
            lambda: len(files_under(tmp_path / "sorted")) == 200,
            timeout=60,
            what="all 200 files sorted, those whose events were lost too",
        )
        assert "filesystem events were lost (inotify queue overflow); rescanning the watched folders" in log.read_text()
        assert proc.terminate() == 0
    assert {p.name for p in files_under(tmp_path / "sorted" / "red")} == {f"f{n:03}.jpg" for n in range(200)}
    assert files_under(inbox) == []


def test_the_inotify_watch_limit_error_names_the_sysctl(tmp_path, server, monkeypatch):
    import errno

    import rfwatch.service.watcher

    class FullObserver(rfwatch.service.watcher.Observer):
        def start(self):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(rfwatch.service.watcher, "Observer", FullObserver)
    cfg = write_config(tmp_path, server)
    import logging

    from rfwatch.service.daemon import Daemon

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("rfwatch.service.daemon").addHandler(handler)
    try:
        assert Daemon(cfg).run() == 1
    finally:
        logging.getLogger("rfwatch.service.daemon").removeHandler(handler)
    message = " ".join(r.getMessage() for r in records)
    assert "fs.inotify.max_user_watches" in message and "polling: true" in message


def test_journal_commands_work_without_access_to_the_key_file(tmp_path, server):
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 95))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    text = cfg.read_text().replace("roboflow:", "roboflow:\n  api_key_file: /nonexistent/roboflow", 1)
    cfg.write_text(text)
    env = {"ROBOFLOW_API_KEY": ""}
    status = run_cli("status", "-c", str(cfg), "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["counts"]["done"] == 1
    run = run_cli("run", "-c", str(cfg), "--once", env=env)
    assert run.returncode == 2 and "roboflow.api_key_file: cannot read /nonexistent/roboflow" in run.stderr


def test_prune_forgets_history_but_finished_files_stay_known(tmp_path, server):
    import sqlite3

    rules = [{"name": "r", "then": [{"copy": "copies/{name}"}]}]  # the originals stay in the inbox
    cfg = write_config(tmp_path, server, rules=rules)
    for i in range(3):
        (tmp_path / "inbox" / f"k{i}.jpg").write_bytes(unique_jpeg(RED, 120 + i))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    (tmp_path / "copies" / "k0.jpg").unlink()
    recent = run_cli("prune", "-c", str(cfg))  # default: 90 days, nothing that old
    assert "removed 0 events, 0 steps, 1 outputs no longer on disk" in recent.stdout
    out = run_cli("prune", "-c", str(cfg), "--older-than", "0")
    assert out.returncode == 0 and "removed 12 events, 3 steps" in out.stdout
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM files WHERE state='done'").fetchone()[0] == 3
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(server.inference_requests()) == 3, "pruned files were classified again"
    assert len(files_under(tmp_path / "copies")) == 2


def test_the_notifier_never_blocks_on_a_listener_that_stopped_reading(tmp_path):
    """A full notify socket must not stall the main loop (it would stop SIGTERM from being handled)."""
    path = f"/tmp/rfw-full-{os.getpid()}.sock"
    sock = _listen(path)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        sender = threading.Thread(target=lambda: [notifier.status(f"{i} done") for i in range(5000)], daemon=True)
        sender.start()
        sender.join(timeout=10)
        assert not sender.is_alive(), "sendto blocked on the full socket"
        assert sock.recv(4096).decode() == "STATUS=0 done"
        notifier.close()
    finally:
        sock.close()
        os.unlink(path)

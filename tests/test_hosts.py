"""Several processes and hosts on one journal: drills, each on SQLite and on PostgreSQL where it applies.

A "host" here is a folder with its own config (its own ``host:`` id) that reaches one shared folder through a
path of its own (a symlink: ``host-a/mnt`` and ``host-b/srv`` are the same share), as two machines mounting one
NFS export at different paths would. The journal is one SQLite file (processes of one machine) or one
PostgreSQL database (hosts), started by the tests themselves (tests/pg.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from helpers import DaemonProcess, JournalView, files_under, rfwatch_cmd, run_cli, unique_jpeg, wait_for, write_burst
from roboflow_server import VALID_KEY

RED = (230, 10, 10)


class Host:
    """One host's view: its config (its own paths to the shared folder) and its id."""

    def __init__(self, base: Path, name: str, mount: str, server, journal_url: str, rules: list, **extra):
        self.name = name
        self.dir = base / name
        self.dir.mkdir()
        (self.dir / mount).symlink_to(base / "share", target_is_directory=True)
        self.mount = self.dir / mount
        doc = {
            "roboflow": {
                "model": "colors/1",
                "api_url": server.url,
                "platform_url": "http://127.0.0.1:9",
                "retries": 3,
            },
            "state": journal_url,
            "host": name,
            "lease": extra.pop("lease", 2),
            "concurrency": extra.pop("concurrency", 4),
            "watch": [{"path": f"{mount}/inbox", "name": "inbox", "polling": True, "settle": 0.3}],
            "roots": {"archive": f"{mount}/archive"},
            "rules": [_on_host(rule, mount) for rule in rules],
        }
        doc.update(extra)
        self.config = self.dir / "config.yaml"
        self.config.write_text(yaml.safe_dump(doc))

    def daemon(self, *args: str) -> DaemonProcess:
        return DaemonProcess(self.config, self.dir / "daemon.log", *args)

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_cli(args[0], "-c", str(self.config), *args[1:], **kw)


def _on_host(rule: dict, mount: str) -> dict:
    """A rule whose destinations are on this host's path to the share (they resolve on the host running the step)."""
    text = json.dumps(rule).replace("ARCHIVE/", f"{mount}/archive/")
    return json.loads(text)


def _share(tmp_path: Path) -> Path:
    share = tmp_path / "share"
    (share / "inbox").mkdir(parents=True)
    (share / "archive").mkdir()
    return share


def _each_once(share: Path, written: dict[str, bytes]) -> None:
    """Every file sorted exactly once, whole; nothing left in the inbox."""
    assert files_under(share / "inbox") == []
    found = defaultdict(list)
    for p in files_under(share / "archive"):
        found[p.name].append(p)
    assert sorted(found) == sorted(written), set(written) ^ set(found)
    for name, paths in found.items():
        assert len(paths) == 1, paths
        assert paths[0].read_bytes() == written[name], name
        assert paths[0].parent.name == name.split("-")[0], paths[0]  # red-0001.jpg in sorted/red/


SORT_AND_NOTIFY = [{"name": "sort", "then": [{"move": "ARCHIVE/sorted/{class}/{name}"}, {"webhook": "RECEIVER"}]}]


@pytest.mark.long
def test_two_hosts_share_one_inbox_and_the_survivor_finishes_a_killed_hosts_files(
    tmp_path, server, receiver, journal_url
):
    """Two daemons (two host ids) poll one shared inbox; 300 files arrive; one is killed mid-burst. Every file is
    sorted exactly once and whole, every webhook event goes out with one id, and the survivor carries on the files
    the dead host held once their leases ran out."""
    share = _share(tmp_path)
    server.delay = 0.2  # files are in flight when the kill comes
    rules = json.loads(json.dumps(SORT_AND_NOTIFY).replace("RECEIVER", receiver.url))
    a = Host(tmp_path, "host-a", "mnt", server, journal_url, rules)
    b = Host(tmp_path, "host-b", "srv", server, journal_url, rules)
    written: dict[str, bytes] = {}
    n = write_burst(share / "inbox", written, 0, 100, 9000)
    with a.daemon() as da, b.daemon() as db:
        da.wait_ready()
        db.wait_ready()
        n = write_burst(share / "inbox", written, n, 100, 9000)
        wait_for(lambda: len(files_under(share / "archive")) >= 60, timeout=60, what="both at work")
        da.proc.send_signal(signal.SIGKILL)  # host A dies mid-burst, with files in hand
        da.proc.wait()
        n = write_burst(share / "inbox", written, n, 100, 9000)
        wait_for(lambda: len(files_under(share / "archive")) == 300, timeout=120, what="all 300 sorted")
        journal = JournalView(b.config)
        wait_for(lambda: journal.states() == {"done": 300}, timeout=30, what="every file done")
        wait_for(lambda: len({d.headers["webhook-id"] for d in receiver.ok()}) == 300, timeout=60, what="events")
        assert db.terminate() == 0
    _each_once(share, written)
    ids_per_file = defaultdict(set)
    for d in receiver.ok():
        ids_per_file[Path(json.loads(d.body)["data"]["source"]).name].add(d.headers["webhook-id"])
    assert sorted(ids_per_file) == sorted(written) and all(len(ids) == 1 for ids in ids_per_file.values())
    rows = journal.rows()
    by_host = {r.host for r in rows}
    assert by_host == {"host-a", "host-b"}, "both hosts took files"
    finished_by_b = [r for r in rows if r.host == "host-a" and journal.steps(r.id)[-1].host == "host-b"]
    assert finished_by_b, "the survivor carried on a file the dead host had taken"
    assert len(server.inference_requests()) >= 300  # a file's classification may be redone after the kill, once


def test_a_daemon_and_run_once_on_one_journal_classify_each_file_once(tmp_path, server):
    """The case that classified every file twice and logged false failures: a running daemon and `run --once`
    on one config. Each file is taken by one of them, classified once, and `status` is right."""
    share = _share(tmp_path)
    server.delay = 0.05
    host = Host(tmp_path, "here", "mnt", server, str(tmp_path / "journal.db"), [{"then": [{"move": "ARCHIVE/{name}"}]}])
    with host.daemon() as daemon:
        daemon.wait_ready()
        written: dict[str, bytes] = {}
        write_burst(share / "inbox", written, 0, 60, 7000)
        once = host.cli("run", "--once")
        assert once.returncode == 0, once.stderr[-2000:]
        assert "failed" not in once.stderr.lower() or "0 failed" in once.stderr, once.stderr[-2000:]
        wait_for(lambda: len(files_under(share / "archive")) == 60, timeout=60, what="all sorted")
        assert daemon.terminate() == 0
    # 60 distinct files, 60 calls: none classified by both processes (the old bug made it 120)
    assert len(server.inference_requests()) == 60, "each file classified once"
    status = json.loads(host.cli("status", "--json").stdout)
    assert status["counts"]["done"] == 60 and status["counts"]["failed"] == 0, status["counts"]
    for log in (daemon.log.read_text(), once.stderr):
        assert "No such file" not in log and ": failed:" not in log


def test_a_second_scanning_process_starts_its_scan_half_way_through_a_shared_folder(tmp_path, server):
    """With another scanning process live on the journal (a daemon of host "a-host": first by holder id), `run
    --once` of host "z-host" is second of two: its start-up scan begins half-way through the inbox, so the two would
    split a backlog instead of hashing and racing for the same files. Its first take is of a file of the second
    half; it still sorts every file."""
    from rfwatch.journal import Journal

    share = _share(tmp_path)
    for n in range(20):
        (share / "inbox" / f"{n:02}.jpg").write_bytes(unique_jpeg(RED, 4000 + n))
    url = str(tmp_path / "journal.db")
    host = Host(tmp_path, "z-host", "mnt", server, url, [{"then": [{"move": "ARCHIVE/{name}"}]}])
    other = Journal.open(url, host="a-host", kind="daemon")
    try:
        _ = other.holder  # registered, its heartbeat running: a live scanner
        once = host.cli("run", "--once")
        assert once.returncode == 0, once.stderr[-2000:]
    finally:
        other.close()
    rows = sorted(JournalView(host.config).rows(), key=lambda r: r.id)
    assert len(rows) == 20 and len(files_under(share / "archive")) == 20
    assert Path(rows[0].source).name >= "10.jpg", [Path(r.source).name for r in rows[:5]]


@pytest.mark.long
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_stopped_mid_burst_loses_nothing(tmp_path, server, request, mode):
    """The database goes away for 10 s mid-burst (PostgreSQL restarted, or ``immediate``: crashed, so that commits
    under way when it went are in doubt to rfwatch, and the restart recovers from the WAL): work waits, the status
    line says why, nothing fails or is lost, and it resumes by itself."""
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    share = _share(tmp_path)
    server.delay = 0.05
    host = Host(tmp_path, "here", "mnt", server, url, [{"then": [{"move": "ARCHIVE/sorted/{class}/{name}"}]}])
    written: dict[str, bytes] = {}
    with host.daemon() as daemon:
        daemon.wait_ready()
        n = write_burst(share / "inbox", written, 0, 60, 3000)
        wait_for(lambda: len(files_under(share / "archive")) >= 20, timeout=60, what="a third sorted")
        cluster.stop(mode)
        try:
            n = write_burst(share / "inbox", written, n, 40, 3000)
            wait_for(
                lambda: any("waiting for the journal" in m for m in daemon.messages), timeout=20, what="status line"
            )
            down = host.cli("status")
            assert down.returncode != 0 and "journal" in down.stderr and "Traceback" not in down.stderr, down.stderr
            time.sleep(10)  # the outage itself: 10 s
        finally:
            cluster.start_again()
        wait_for(lambda: len(files_under(share / "archive")) == 100, timeout=120, what="all sorted after the outage")
        journal = JournalView(host.config)
        wait_for(lambda: journal.states() == {"done": 100}, timeout=30, what="all done")
        assert daemon.terminate() == 0
    _each_once(share, written)
    text = daemon.log.read_text()
    assert "the journal answers again" in text or "journal answers again" in text, text[-3000:]


@pytest.mark.long
def test_run_once_waits_for_postgresql_stopped_mid_run(tmp_path, server, request):
    """`run --once` with the database away mid-run waits for it, as the daemon does, and finishes every file. It
    ended (exit 0, files left in the inbox): a file a worker held while waiting for the journal was counted
    nowhere, and a new file journaled just before the outage was found at its path "being processed" when tried
    again, and left."""
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    share = _share(tmp_path)
    server.delay = 0.05
    host = Host(tmp_path, "here", "mnt", server, url, [{"then": [{"move": "ARCHIVE/sorted/{class}/{name}"}]}])
    written: dict[str, bytes] = {}
    write_burst(share / "inbox", written, 0, 40, 5000)
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    log = tmp_path / "run.log"
    with (
        open(log, "wb") as out,
        subprocess.Popen(
            rfwatch_cmd("run", "-c", str(host.config), "--once"), stdout=subprocess.DEVNULL, stderr=out, env=env
        ) as proc,
    ):
        try:
            wait_for(lambda: len(files_under(share / "archive")) >= 5, timeout=60, what="a few sorted")
            cluster.stop()
            try:
                time.sleep(4)
                assert proc.poll() is None, "run --once ended while the journal was away"
            finally:
                cluster.start_again()
            assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    _each_once(share, written)
    assert JournalView(host.config).states() == {"done": 40}
    assert "journal answers again" in log.read_text(), log.read_text()[-3000:]


def test_undo_on_host_b_of_files_host_a_sorted(tmp_path, server, journal_url):
    """Host A sorts; host B, which mounts the share elsewhere, undoes: the files go back to the inbox, as B sees it."""
    share = _share(tmp_path)
    rules = [{"then": [{"move": "ARCHIVE/sorted/{class}/{name}"}]}]
    a = Host(tmp_path, "host-a", "mnt", server, journal_url, rules)
    b = Host(tmp_path, "host-b", "srv", server, journal_url, rules)
    written = {f"red-{i}.jpg": unique_jpeg(RED, 40 + i) for i in range(5)}
    for name, data in written.items():
        (share / "inbox" / name).write_bytes(data)
    assert a.cli("run", "--once").returncode == 0
    assert len(files_under(share / "archive")) == 5
    undone = b.cli("undo")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert "5 file(s): 5 undone" in undone.stdout
    assert str(b.mount / "archive") in undone.stdout and str(a.mount) not in undone.stdout  # B's own paths
    assert {p.name: p.read_bytes() for p in files_under(share / "inbox")} == written
    assert files_under(share / "archive") == []
    history = b.cli("history", str(b.mount / "inbox" / "red-0.jpg")).stdout
    assert "(on host-a)" in history and "(on host-b)" in history, history


def test_a_review_decision_served_by_host_b_is_applied_by_host_a(tmp_path, server, journal_url):
    """Host B serves the review page; host A's daemon hears of the decision and applies it."""
    from test_review import UNSURE, Api, free_port, wait_listening

    share = _share(tmp_path)
    server.classifier = lambda image: dict(UNSURE)
    rules = [
        {"name": "unsure", "when": {"max_confidence": 0.6}, "then": [{"review": "ARCHIVE/review/{name}"}]},
        {"name": "sorted", "then": [{"move": "ARCHIVE/sorted/{class}/{name}"}]},
    ]
    a = Host(tmp_path, "host-a", "mnt", server, journal_url, rules)
    b = Host(tmp_path, "host-b", "srv", server, journal_url, rules)
    port = free_port()
    (share / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 77))
    with a.daemon() as daemon:
        daemon.wait_ready()
        wait_for(lambda: (share / "archive" / "review" / "a.jpg").exists(), what="a.jpg waits for review")
        page = subprocess.Popen(
            rfwatch_cmd("review", "-c", str(b.config), "--listen", f"127.0.0.1:{port}"),
            env=dict(os.environ, ROBOFLOW_API_KEY="x"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port)
            api = Api(port)
            (item,) = api.items()["items"]
            assert item["path"] == str(b.mount / "archive" / "review" / "a.jpg")  # B's path to the file
            assert api.label(item["id"], "green")[0] == 200
            wait_for(lambda: (share / "archive" / "sorted" / "green" / "a.jpg").exists(), what="applied by A")
        finally:
            page.terminate()
            page.wait(timeout=30)
        assert daemon.terminate() == 0
    (row,) = JournalView(a.config).rows()
    assert row.state == "done" and JournalView(a.config).decisions(row.id)[0].host == "host-b"


def test_journal_copy_then_undo_from_postgresql(tmp_path, server, request):
    """An SQLite journal with undoable files copied into PostgreSQL: undo works from there, and a second copy
    copies nothing twice."""
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    share = _share(tmp_path)
    rules = [{"name": "sort", "then": [{"move": "ARCHIVE/sorted/{class}/{name}"}]}]
    host = Host(tmp_path, "here", "mnt", server, str(tmp_path / "journal.db"), rules)
    written = {f"red-{i}.jpg": unique_jpeg(RED, 60 + i) for i in range(4)}
    for name, data in written.items():
        (share / "inbox" / name).write_bytes(data)
    assert host.cli("run", "--once").returncode == 0
    copied = run_cli("journal", "copy", "-c", str(host.config), "--to", url)
    assert copied.returncode == 0, copied.stderr
    assert "copied 4 file(s)" in copied.stdout and "ids kept as they were" in copied.stdout, copied.stdout
    again = run_cli("journal", "copy", "-c", str(host.config), "--to", url)
    assert "copied 0 file(s)" in again.stdout and "(4 there already)" in again.stdout, again.stdout
    doc = yaml.safe_load(host.config.read_text())
    doc["state"] = url
    host.config.write_text(yaml.safe_dump(doc))
    history = host.cli("history", str(host.mount / "inbox" / "red-0.jpg"))
    assert "move done" in history.stdout, history.stdout + history.stderr
    undone = host.cli("undo")
    assert undone.returncode == 0 and "4 file(s): 4 undone" in undone.stdout, undone.stdout + undone.stderr
    assert {p.name: p.read_bytes() for p in files_under(share / "inbox")} == written

"""What `rfwatch status` and `rfwatch history` ask of the journal: index ranges, never a whole table (issue 23).

On a journal of a million files a scan of ``files`` or of ``outbox`` (one row per webhook per file) is most of a
second; a read of an index range stays a few ms at any size. Each statement the commands run is planned by SQLite
(EXPLAIN QUERY PLAN) on a journal that holds every kind of row: a plan that scans one of the big tables, or sorts
all of a state's rows to return five, fails here. Speed itself is measured in bench/million.py, never here.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from rfwatch.commands import status_report
from rfwatch.config import load_config
from rfwatch.journal import Journal, QueuedDelivery, Roots
from rfwatch.journal.db import Tx
from rfwatch.states import FileState

#: Tables that grow with every file (or every delivery): never read whole. (file_counts is read whole by design:
#: the daemon folds it to a row per state every minute.)
BIG = ("files", "steps", "events", "outbox", "undo_steps", "decisions", "seq_frames")
SCAN = re.compile(rf"\bSCAN ({'|'.join(BIG)})\b")


@pytest.fixture
def journal_with_everything(tmp_path) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"roboflow:\n  model: colors/1\nstate: {tmp_path / 'journal.db'}\nwatch:\n  - path: {inbox}\n"
        "rules:\n  - name: sort\n    then:\n      - move: sorted/{class}/{name}\n"
    )
    j = Journal.open(str(tmp_path / "journal.db"), roots=Roots({"inbox": inbox}))
    try:
        for i, state in enumerate([FileState.DONE] * 30 + [FileState.UNMATCHED] * 5 + [FileState.FAILED] * 3):
            fid = j.files.take(inbox / f"f{i}.jpg", 10 + i, 1, f"sha{i}", "colors/1")
            j.files.classified(fid, {"top": "red", "predictions": []}, f"sha{i}", "colors/1", "red 0.9", {})
            if i % 3 == 0:
                j.db.transact(
                    lambda tx, fid=fid: j.outbox.enqueue(
                        tx, fid, [QueuedDelivery("webhook", "http://127.0.0.1:9/hook", b"{}", f"k{fid}", "webhook")]
                    )
                )
            j.files.finish(fid, state, error="no" if state == FileState.FAILED else None)
        j.outbox.record_deliverers({"webhook": "rfwatch.default_plugins.webhook"})
    finally:
        j.close()
    return cfg


def _plans(db_path: Path, statements: list[tuple[str, tuple]]) -> list[str]:
    plain = sqlite3.connect(db_path)
    try:
        out = []
        for sql, args in statements:
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            plan = " / ".join(r[3] for r in plain.execute("EXPLAIN QUERY PLAN " + sql, args))
            out.append(f"{plan}    <- {sql}")
        return out
    finally:
        plain.close()


def _recording(monkeypatch) -> list[tuple[str, tuple]]:
    seen: list[tuple[str, tuple]] = []
    one, all_ = Tx.one, Tx.all

    def record_one(self, sql, args=()):
        seen.append((self.db.sql(sql), tuple(args)))
        return one(self, sql, args)

    def record_all(self, sql, args=()):
        seen.append((self.db.sql(sql), tuple(args)))
        return all_(self, sql, args)

    monkeypatch.setattr(Tx, "one", record_one)
    monkeypatch.setattr(Tx, "all", record_all)
    return seen


def test_status_reads_index_ranges_never_a_whole_table(journal_with_everything, monkeypatch):
    config = load_config(journal_with_everything, journal_only=True)
    seen = _recording(monkeypatch)
    report = status_report(config)
    assert report["counts"]["done"] == 30 and report["deliveries_pending"] == {"rfwatch.default_plugins.webhook": 13}
    plans = _plans(config.state_path, seen)
    assert plans, "status ran no query?"
    assert [p for p in plans if SCAN.search(p)] == [], "\n".join(plans)
    # five rows of the newest done files must not sort all of them
    assert [p for p in plans if "TEMP B-TREE FOR ORDER BY" in p and "FROM files" in p] == []


def test_the_plan_check_sees_a_scan(journal_with_everything):
    """The check above is not blind: a count of every file by state is a scan."""
    config = load_config(journal_with_everything, journal_only=True)
    (plan,) = _plans(config.state_path, [("SELECT state, COUNT(*) FROM files GROUP BY state", ())])
    assert SCAN.search(plan), plan


def test_history_reads_index_ranges_never_a_whole_table(journal_with_everything, monkeypatch, capsys):
    from rfwatch.cli import main

    config = load_config(journal_with_everything, journal_only=True)
    seen = _recording(monkeypatch)
    assert main(["history", "-c", str(journal_with_everything), str(config.watch[0].path / "f3.jpg")]) == 0
    assert "webhook" in capsys.readouterr().out  # its delivery is listed
    plans = _plans(config.state_path, seen)
    assert [p for p in plans if SCAN.search(p)] == [], "\n".join(plans)


def test_read_only_commands_end_at_once_with_all_their_output(journal_with_everything):
    """status and history end without the interpreter's teardown (rfwatch.cli.console): what they printed into a
    pipe's buffer must still arrive whole, when Python buffers stdout as it does by default."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    cfg = str(journal_with_everything)
    for argv in (["status", "--json", "-c", cfg], ["--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "rfwatch", *argv], capture_output=True, text=True, env=env, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        if argv[0] == "status":
            assert json.loads(proc.stdout)["counts"]["done"] == 30  # the whole document, parsed
        else:
            assert proc.stdout.rstrip().endswith("show program's version number and exit"), proc.stdout
    inbox = load_config(journal_with_everything, journal_only=True).watch[0].path
    proc = subprocess.run(
        [sys.executable, "-m", "rfwatch", "history", "-c", cfg, str(inbox / "f3.jpg")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0 and "webhook" in proc.stdout.splitlines()[-1], proc.stdout + proc.stderr


def test_reading_commands_write_nothing_to_the_journal(journal_with_everything):
    """status (plain and --plugins), history and undo --dry-run only read: a read-only journal, a dry run and a
    second opinion must never change it. SQLite's data_version, read on a connection of our own, moves when any
    other connection commits."""
    import os
    import subprocess
    import sys

    config = load_config(journal_with_everything, journal_only=True)
    watch = sqlite3.connect(config.state_path)
    try:
        before = watch.execute("PRAGMA data_version").fetchone()[0]
        cfg = str(journal_with_everything)
        for argv in (
            ["status", "-c", cfg],
            ["status", "--plugins", "-c", cfg],
            ["history", "-c", cfg, str(config.watch[0].path / "f3.jpg")],
            ["undo", "--dry-run", "--since", "1h", "-c", cfg],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "rfwatch", *argv], capture_output=True, text=True, timeout=60, env=os.environ
            )
            assert proc.returncode == 0, (argv, proc.stderr)
            assert watch.execute("PRAGMA data_version").fetchone()[0] == before, f"rfwatch {argv[0]} wrote"
    finally:
        watch.close()


def test_a_reader_that_left_ends_a_read_only_command_quietly_with_141(journal_with_everything):
    """`rfwatch status | head -0`: the reader is gone before the output is flushed at the fast exit. The command
    ends as a shell reports a process ended by SIGPIPE (141), with no traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # output kept until the exit's flush
    proc = subprocess.Popen(
        [sys.executable, "-m", "rfwatch", "status", "-c", str(journal_with_everything)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # long before it prints: it takes tens of ms to start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err


def test_reading_commands_answer_while_a_writer_holds_the_journal(journal_with_everything):
    """On SQLite writers take turns: a daemon's write transaction holds the journal's write lock for its span.
    A command that only reads must answer meanwhile (WAL lets it), not queue for the lock behind the daemon's
    writes (and then hold it itself), as it did when opening the journal began with a write transaction. Here
    another connection holds the lock for the whole test; SQLite's busy timeout is 30 s, the commands get 20."""
    import os
    import subprocess
    import sys

    config = load_config(journal_with_everything, journal_only=True)
    writer = sqlite3.connect(config.state_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        cfg = str(journal_with_everything)
        for argv in (
            ["status", "-c", cfg],
            ["history", "-c", cfg, str(config.watch[0].path / "f3.jpg")],
            ["undo", "--dry-run", "--since", "1h", "-c", cfg],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "rfwatch", *argv], capture_output=True, text=True, timeout=20, env=os.environ
            )
            assert proc.returncode == 0, (argv, proc.stderr)
        assert (
            "done 30"
            in subprocess.run(
                [sys.executable, "-m", "rfwatch", "status", "-c", cfg], capture_output=True, text=True, timeout=20
            ).stdout
        )
    finally:
        writer.execute("ROLLBACK")
        writer.close()

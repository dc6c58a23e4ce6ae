"""`rfwatch undo`: every action reversed, newest step first, crash-safe, and never taken again until retried.

Real processes throughout: `rfwatch run --once` and `rfwatch undo` as subprocesses, a daemon in a thread or a
process of its own, the Roboflow stand-in and a webhook receiver on 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import (
    DaemonProcess,
    DaemonThread,
    JournalView,
    files_under,
    record_takes,
    rfwatch_cmd,
    run_cli,
    unique_jpeg,
    wait_for,
    write_burst,
    write_config,
)
from metadata_reader import iptc_keywords, jpeg_non_xmp_segments, jpeg_parts, photoshop_resources, read_xmp, xmp_bytes
from ports import free_port
from roboflow_server import VALID_KEY
from standardwebhooks import Webhook

from rfwatch.crashpoints import CRASH_EXIT
from rfwatch.states import Outcome

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
RED, GREEN, BLUE = (230, 10, 10), (10, 230, 10), (10, 10, 230)
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed")

#: A sidecar a person wrote before rfwatch saw the photo: a keyword and a rating of their own.
USER_SIDECAR = """<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>
<x:xmpmeta xmlns:x='adobe:ns:meta/'>
<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>
 <rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/' xmlns:xmp='http://ns.adobe.com/xap/1.0/'>
  <xmp:Rating>3</xmp:Rating>
  <dc:subject><rdf:Bag><rdf:li>holiday</rdf:li></rdf:Bag></dc:subject>
 </rdf:Description>
</rdf:RDF>
</x:xmpmeta>
<?xpacket end='w'?>
"""


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


# --- helpers -------------------------------------------------------------------------------------------


URL_SECRET = "T00K3n-in-the-path-4f9a2c"


def undo(cfg: Path, *args: str, code: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = run_cli("undo", "-c", str(cfg), *args, env=env)
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def run_once(cfg: Path, code: int = 0) -> subprocess.CompletedProcess:
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == code, result.stderr[-3000:]
    return result


def cli_ok(*args: str) -> subprocess.CompletedProcess:
    result = run_cli(*args)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def journal_files(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Each file rfwatch knows, by the name it was found under: its state and where it is now."""
    return {r.source.name: {"path": str(r.path), "state": str(r.state)} for r in JournalView(tmp_path).rows()}


def names(folder: Path) -> set[str]:
    return {p.name for p in files_under(folder)} if folder.exists() else set()


def file_lines(stdout: str) -> list[str]:
    """The per-file lines of `rfwatch undo` (the summary lines follow them)."""
    return [line for line in stdout.splitlines() if line.startswith("/")]


def summary(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if " file(s): " in line]
    return line


def xmp_rating(path: Path) -> str | None:
    """xmp:Rating, as an attribute or an element (exiftool may write either)."""
    text = path.read_text()
    root = ET.fromstring(text[text.index("<x:xmpmeta") : text.rindex("</x:xmpmeta>") + len("</x:xmpmeta>")])
    key = "{http://ns.adobe.com/xap/1.0/}Rating"
    for el in root.iter():
        if key in el.attrib:
            return el.attrib[key]
        if el.tag == key:
            return (el.text or "").strip()
    return None


def status(cfg: Path) -> dict:
    return json.loads(cli_ok("status", "-c", str(cfg), "--json").stdout)


def counts(cfg: Path) -> dict[str, int]:
    """`rfwatch status`'s counts per state, the states with files only."""
    return {state: n for state, n in status(cfg)["counts"].items() if n}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- choosing files --------------------------------------------------------------------------------------


def test_undo_selects_by_rule_class_time_window_and_path(tmp_path, server):
    rules = [
        {"name": "reds", "when": {"class": "red"}, "then": [{"move": "reds/{name}"}]},
        {"name": "rest", "then": [{"move": "sorted/{class}/{name}"}]},
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    written: dict[str, bytes] = {}
    write_burst(inbox, written, 0, 6, 700)  # red-0000 green-0001 blue-0002 red-0003 green-0004 blue-0005
    run_once(cfg)
    between = dt.datetime.now()
    write_burst(inbox, written, 6, 6, 700)  # red-0006 green-0007 blue-0008 red-0009 green-0010 blue-0011
    run_once(cfg)
    assert names(inbox) == set() and names(tmp_path / "reds") == {n for n in written if n.startswith("red")}

    # --dry-run says what it would do, file by file, and changes nothing
    result = undo(cfg, "--rule", "reds", "--dry-run")
    assert len(file_lines(result.stdout)) == 4
    for n in ("red-0000.jpg", "red-0003.jpg", "red-0006.jpg", "red-0009.jpg"):
        assert f"move: would move the file back to {inbox / n}" in result.stdout
    assert summary(result.stdout) == "4 file(s): 4 would be undone"
    assert names(inbox) == set()
    assert {f["state"] for f in journal_files(tmp_path).values()} == {"done"}

    # a rule, until a time: the reds taken before `between`
    result = undo(cfg, "--rule", "reds", "--until", between.isoformat())
    assert names(inbox) == {"red-0000.jpg", "red-0003.jpg"}
    lines = file_lines(result.stdout)
    assert len(lines) == 2 and all(": undone: move: moved back to " in line for line in lines), result.stdout
    assert summary(result.stdout) == "2 file(s): 2 undone"
    # a PATH the other selectors leave out is named, with why, and left alone
    left_out = undo(cfg, "--rule", "reds", str(inbox / "green-0001.jpg"), code=1)
    assert f"{inbox / 'green-0001.jpg'}: not selected: --rule, --class, --since or --until" in left_out.stderr
    assert summary(left_out.stdout) == "0 file(s): no file matched"

    # a class, since a time: the greens taken after `between`
    result = undo(cfg, "--class", "green", "--since", between.isoformat())
    assert names(inbox) == {"red-0000.jpg", "red-0003.jpg", "green-0007.jpg", "green-0010.jpg"}
    assert summary(result.stdout) == "2 file(s): 2 undone"

    # paths: one by where it was found, one by where it is now
    undo(cfg, str(inbox / "blue-0002.jpg"), str(tmp_path / "sorted" / "blue" / "blue-0005.jpg"))
    assert names(inbox) == {"red-0000.jpg", "red-0003.jpg", "green-0007.jpg", "green-0010.jpg"} | {
        "blue-0002.jpg",
        "blue-0005.jpg",
    }

    # durations: the first batch was taken three hours ago, as far as the journal knows
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    db.execute("UPDATE files SET created = created - 3 * 3600 WHERE created < ?", (between.timestamp(),))
    db.commit()
    db.close()
    result = undo(cfg, "--until", "2h")
    assert {Path(line.split(":")[0]).name for line in file_lines(result.stdout)} == {"green-0001.jpg", "green-0004.jpg"}
    result = undo(cfg, "--since", "30m")
    assert {Path(line.split(":")[0]).name for line in file_lines(result.stdout)} == {
        "red-0006.jpg",
        "red-0009.jpg",
        "blue-0008.jpg",
        "blue-0011.jpg",
    }

    # every file back where it was found, as it was; nothing left in the folders rfwatch sorted into
    assert names(inbox) == set(written)
    for name, data in written.items():
        assert (inbox / name).read_bytes() == data
    assert files_under(tmp_path / "reds") == [] and files_under(tmp_path / "sorted") == []
    assert {f["state"] for f in journal_files(tmp_path).values()} == {"undone"}
    assert summary(undo(cfg).stdout) == "0 file(s): no file matched"

    bad = undo(cfg, "--since", "yesterday", code=2)
    assert "--since/--until" in bad.stderr and "2h or 3d" in bad.stderr
    stranger = undo(cfg, str(inbox / "never-seen.jpg"), code=1)
    assert f"{inbox / 'never-seen.jpg'}: no finished file" in stranger.stderr
    again = undo(cfg, str(inbox / "red-0000.jpg"), code=1)
    assert f"{inbox / 'red-0000.jpg'}: already undone" in again.stderr


def test_an_undo_that_cannot_finish_is_named_and_retry_path_gives_it_up(tmp_path, server):
    """A sorted file deleted by a person: its move cannot be undone. The undo says so, status counts it, and
    `retry PATH` (never `retry --failed`) gives the undo up; a later undo does not try the old step again."""
    rules = [{"name": "sort", "then": [{"copy": "copies/{name}"}, {"move": "sorted/{class}/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    (inbox / "red.jpg").write_bytes(unique_jpeg(RED, 31))
    run_once(cfg)
    (tmp_path / "sorted" / "red" / "red.jpg").unlink()  # a person deleted it

    result = undo(cfg, code=1)
    assert "move: could not be undone: " in result.stdout and "is no longer there" in result.stdout
    assert summary(result.stdout) == "1 file(s): 1 failed"
    assert names(tmp_path / "copies") == {"red.jpg"}, "the copy is older than the move: not reached yet"
    report = status(cfg)
    assert report["counts"]["undoing"] == 1
    assert "retry PATH gives it up" in cli_ok("status", "-c", str(cfg)).stdout
    assert "0 file(s) queued again" in cli_ok("retry", "-c", str(cfg), "--failed").stdout  # not by --failed

    retried = cli_ok("retry", "-c", str(cfg), str(inbox / "red.jpg"))
    assert "1 file(s) queued again" in retried.stdout
    history = cli_ok("history", "-c", str(cfg), str(inbox / "red.jpg")).stdout
    assert "undo given up by rfwatch retry" in history
    assert status(cfg)["counts"].get("undoing", 0) == 0
    # the old round's steps are closed: undo does not try the move again (the file is queued, not finished)
    assert summary(undo(cfg).stdout) == "0 file(s): no file matched"


#: `rfwatch retry ARGS...` in a process of its own, in which an `rfwatch undo` (a real process) finishes every file
#: at the one instant that matters: after retry chose its files, before it queues the first. Journal.requeue is
#: the narrowest public seam between the two; the undo's own lock and transactions are untouched.
RETRY_RACING_AN_UNDO = """
import subprocess, sys
from rfwatch.cli import main
from rfwatch.journal.files import Files

real_requeue = Files.requeue
raced = []

def requeue(self, file_id, *args, **kw):
    if not raced:
        raced.append(subprocess.run([sys.executable, "-m", "rfwatch", "undo", "-c", sys.argv[1]], check=True))
        print("an rfwatch undo finished meanwhile", flush=True)
    return real_requeue(self, file_id, *args, **kw)

Files.requeue = requeue
sys.exit(main(["retry", "-c", sys.argv[1], *sys.argv[2:]]))
"""


def test_a_retry_leaves_a_file_an_undo_took_in_the_meantime(tmp_path, server):
    """`retry --failed` chooses failed files, then queues each only while it is still failed: one an undo
    finished in between stays undone (retry re-queues by the states it selected by, not by its defaults)."""
    rules = [{"then": [{"move": "sorted/{class}/{name}"}, {"command": ["false"]}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    (inbox / "red.jpg").write_bytes(unique_jpeg(RED, 32))
    run_once(cfg, code=1)
    assert counts(cfg) == {"failed": 1} and names(tmp_path / "sorted") == {"red.jpg"}

    raced = subprocess.run(
        [sys.executable, "-c", RETRY_RACING_AN_UNDO, str(cfg), "--failed"],
        env=dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "an rfwatch undo finished meanwhile" in raced.stdout, raced.stdout + raced.stderr
    assert "1 file(s): 1 undone" in raced.stdout
    assert f"{tmp_path / 'sorted' / 'red' / 'red.jpg'}: not queued: it is undone now" in raced.stderr, raced.stderr
    assert "0 file(s) queued again" in raced.stdout and raced.returncode == 1
    assert counts(cfg) == {"undone": 1}
    assert "queued again by retry" not in cli_ok("history", "-c", str(cfg), str(inbox / "red.jpg")).stdout
    run_once(cfg)  # and nothing takes it: it stays where the undo put it
    assert names(inbox) == {"red.jpg"} and names(tmp_path / "sorted") == set()


def test_plain_retry_and_retry_failed_leave_undone_files_alone(tmp_path, server):
    """Only `retry --undone` (or a PATH) queues an undone file again: plain `retry` and `retry --failed` take
    failed files only, so a file a person put back with undo stays put."""
    cfg = write_config(tmp_path, server)
    inbox = tmp_path / "inbox"
    data = unique_jpeg(RED, 33)
    (inbox / "red.jpg").write_bytes(data)
    run_once(cfg)
    assert summary(undo(cfg).stdout) == "1 file(s): 1 undone"
    for args in ([], ["--failed"]):
        result = cli_ok("retry", "-c", str(cfg), *args)
        assert "0 file(s) queued again" in result.stdout, (args, result.stdout)
        assert counts(cfg) == {"undone": 1}, args
    run_once(cfg)
    assert names(inbox) == {"red.jpg"} and names(tmp_path / "sorted") == set()
    assert "1 file(s) queued again" in cli_ok("retry", "-c", str(cfg), "--undone").stdout
    run_once(cfg)
    assert names(inbox) == set() and (tmp_path / "sorted" / "red" / "red.jpg").read_bytes() == data


def test_an_undo_killed_before_its_move_never_takes_a_photo_put_under_the_name_since(tmp_path, server):
    """Crash recovery of a move back counts the target as its own only if it holds the very content it placed:
    kill an undo once its intent is journaled, put another photo under the original name, run undo again, and
    both photos are kept (the original as `name (1).jpg`)."""
    cfg = write_config(tmp_path, server)
    inbox = tmp_path / "inbox"
    original, other = unique_jpeg(RED, 51), unique_jpeg(GREEN, 52)
    (inbox / "a.jpg").write_bytes(original)
    run_once(cfg)
    crash = undo(cfg, env={"RFWATCH_CRASH_AT": "undo.intent"}, code=CRASH_EXIT)
    assert "crash point undo.intent reached" in crash.stderr
    assert names(inbox) == set(), "the undo died before it moved anything"
    (inbox / "a.jpg").write_bytes(other)  # a person puts another photo under that name meanwhile

    result = undo(cfg)
    assert summary(result.stdout) == "1 file(s): 1 undone", result.stdout
    assert f"moved back to {inbox / 'a (1).jpg'} ({inbox / 'a.jpg'} is taken by other content)" in result.stdout
    assert (inbox / "a.jpg").read_bytes() == other
    assert (inbox / "a (1).jpg").read_bytes() == original
    assert files_under(tmp_path / "sorted") == []


def test_an_undo_killed_after_moving_a_file_back_finishes_that_move_once(tmp_path, server):
    """Each undo step is journaled before it runs: an undo killed the instant the file is back (its result not
    yet recorded) is finished by the next undo from the step's intent, not tried again from where the file was."""
    cfg = write_config(tmp_path, server, rules=[{"then": [{"copy": "copies/{name}"}, {"move": "sorted/{name}"}]}])
    inbox = tmp_path / "inbox"
    data = unique_jpeg(RED, 54)
    (inbox / "a.jpg").write_bytes(data)
    run_once(cfg)
    crash = undo(cfg, env={"RFWATCH_CRASH_AT": "place.after_rename"}, code=CRASH_EXIT)
    assert "crash point place.after_rename reached" in crash.stderr
    assert names(inbox) == {"a.jpg"} and names(tmp_path / "sorted") == set()
    # Back in the watched folder, not yet recorded there: a daemon that looks now leaves it to the undo.
    run_once(cfg)
    assert names(inbox) == {"a.jpg"} and len(journal_files(tmp_path)) == 1, "the file put back was taken as new"

    result = undo(cfg)
    assert summary(result.stdout) == "1 file(s): 1 undone", result.stdout
    (line,) = file_lines(result.stdout)
    assert f"move: moved back to {inbox / 'a.jpg'}" in line and "could not" not in line, line
    assert names(inbox) == {"a.jpg"} and (inbox / "a.jpg").read_bytes() == data
    assert names(tmp_path / "copies") == set()
    assert journal_files(tmp_path)["a.jpg"] == {"path": str(inbox / "a.jpg"), "state": "undone"}


#: `rfwatch undo ARGS...` in a process of its own, in which an `rfwatch retry` (a real process) queues the chosen
#: file again at the instant that matters: after undo chose its files, before it takes the first. Undoer.select
#: is the narrowest public seam between the two.
UNDO_RACING_A_RETRY = """
import subprocess, sys
from rfwatch.cli import main
from rfwatch.processing.undo import Undoer

real_select = Undoer.select

def select(self, chosen):
    rows = real_select(self, chosen)
    subprocess.run([sys.executable, "-m", "rfwatch", "retry", "-c", sys.argv[1], "--failed"], check=True)
    print("an rfwatch retry queued the files meanwhile", flush=True)
    return rows

Undoer.select = select
sys.exit(main(["undo", "-c", sys.argv[1], *sys.argv[2:]]))
"""


def test_an_undo_skips_a_file_a_retry_took_after_it_was_chosen(tmp_path, server):
    """An undo takes a file only if nothing changed it since it was chosen: one a retry queued in between is the
    retry's (it is said so, and the file is processed, not undone)."""
    rules = [{"then": [{"move": "sorted/{class}/{name}"}, {"command": ["false"]}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "red.jpg").write_bytes(unique_jpeg(RED, 34))
    run_once(cfg, code=1)
    raced = subprocess.run(
        [sys.executable, "-c", UNDO_RACING_A_RETRY, str(cfg)],
        env=dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "an rfwatch retry queued the files meanwhile" in raced.stdout, raced.stdout + raced.stderr
    assert "1 file(s) queued again" in raced.stdout
    assert summary(raced.stdout) == "1 file(s): 1 skipped", raced.stdout
    assert "it changed meanwhile" in raced.stdout
    assert counts(cfg) == {"classified": 1}, "the retry's file was undone under it"
    assert names(tmp_path / "sorted") == {"red.jpg"} and names(tmp_path / "inbox") == set()


def test_an_undo_killed_after_a_step_is_recorded_does_not_do_it_again(tmp_path, server):
    """An undo killed after a step's undo was recorded (the file back, the file not yet marked undone): the next
    undo finishes the file without moving it a second time (no `a (1).jpg`)."""
    cfg = write_config(tmp_path, server)
    inbox = tmp_path / "inbox"
    data = unique_jpeg(RED, 55)
    (inbox / "a.jpg").write_bytes(data)
    run_once(cfg)
    crash = undo(cfg, env={"RFWATCH_CRASH_AT": "undo.step_finished"}, code=CRASH_EXIT)
    assert "crash point undo.step_finished reached" in crash.stderr
    assert counts(cfg) == {"undoing": 1} and names(inbox) == {"a.jpg"}
    result = undo(cfg)
    assert summary(result.stdout) == "1 file(s): 1 undone", result.stdout
    assert names(inbox) == {"a.jpg"} and (inbox / "a.jpg").read_bytes() == data
    assert journal_files(tmp_path)["a.jpg"] == {"path": str(inbox / "a.jpg"), "state": "undone"}


def test_a_file_whose_history_was_pruned_is_reported_failed(tmp_path, server):
    """prune forgets the steps, and with them the means to undo: such a file is reported as failed (saying so
    and where it came from) and left where it is."""
    cfg = write_config(tmp_path, server)
    inbox = tmp_path / "inbox"
    (inbox / "a.jpg").write_bytes(unique_jpeg(RED, 56))
    run_once(cfg)
    cli_ok("prune", "-c", str(cfg), "--older-than", "0")
    result = undo(cfg, code=1)
    assert summary(result.stdout) == "1 file(s): 1 failed", result.stdout
    assert f"its history was pruned (rfwatch prune): nothing says how to undo it; it came from {inbox / 'a.jpg'}" in (
        result.stdout
    )
    assert names(tmp_path / "sorted") == {"a.jpg"} and names(inbox) == set()
    assert counts(cfg) == {"done": 1}


# --- every action kind ----------------------------------------------------------------------------------------


@needs_exiftool
def test_steps_journaled_by_an_rfwatch_from_before_undo_are_undone_as_far_as_they_say(tmp_path, server, receiver):
    """A journal written before undo existed: results without "dropped", a copy's hash, what tag found, or a
    webhook's receiver. Moves and duplicates come back, an unchanged copy goes, and what cannot be reversed
    from the record (tag, webhook) is reported, not claimed."""
    rules = [
        {
            "then": [
                {"copy": "copies/{name}"},
                {"tag": {"mode": "sidecar"}},
                {"move": {"to": "sorted/{name}", "on_conflict": "dedupe"}},
                {"webhook": receiver.url},
            ]
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    a, b = unique_jpeg(RED, 41), unique_jpeg(GREEN, 42)
    (inbox / "a.jpg").write_bytes(a)
    (inbox / "b.jpg").write_bytes(b)
    (tmp_path / "sorted").mkdir()
    (tmp_path / "sorted" / "b.jpg").write_bytes(b)  # b was sorted by hand already: a duplicate, dropped
    run_once(cfg)
    old_shapes = {  # what each action recorded before this version (git show b46155d:rfwatch/default_plugins/)
        "copy": ("outcome", "from", "to"),
        "move": ("outcome", "from", "to"),
        "tag": ("keywords", "embedded", "sidecar"),
        "webhook": ("queued",),
    }
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    for rowid, action, result in db.execute("SELECT rowid, action, result FROM steps").fetchall():
        doc = {k: v for k, v in json.loads(result).items() if k in old_shapes[action]}
        db.execute("UPDATE steps SET result=? WHERE rowid=?", (json.dumps(doc), rowid))
    db.commit()
    db.close()

    result = undo(cfg)
    assert summary(result.stdout) == "2 file(s): 2 partly undone", result.stdout
    assert "tagged before rfwatch recorded a way back" in result.stdout
    assert "no file.undone event sent: no receiver recorded" in result.stdout
    assert (inbox / "a.jpg").read_bytes() == a and (inbox / "b.jpg").read_bytes() == b
    assert (tmp_path / "sorted" / "b.jpg").read_bytes() == b, "the person's own copy stays"
    assert names(tmp_path / "copies") == set(), "unchanged copies are removed"


@needs_exiftool
def test_every_action_kind_is_reversed(tmp_path, server, receiver):
    rules = [
        {
            "name": "all",
            "then": [
                {"copy": "copies/{name}"},
                {"annotate": "annotated/{class}/{name}"},
                {"tag": {"mode": "sidecar", "keywords": ["{class}", "rfwatch"]}},
                {"move": "sorted/{class}/{name}"},
                {"log": "results.jsonl"},
                {"command": ["sh", "-c", 'echo "$1" >> ran.txt', "sh", "{name}"]},
                # a Slack-style URL: the secret is in the path, where no redaction of query values sees it
                {"webhook": {"url": f"{receiver.url}/{URL_SECRET}", "secret": SECRET}},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    originals = {"a.jpg": unique_jpeg(RED, 1), "b.jpg": unique_jpeg(GREEN, 2)}
    for name, data in originals.items():
        (inbox / name).write_bytes(data)
    (inbox / "b.jpg.xmp").write_text(USER_SIDECAR)  # b has a sidecar of its own: rfwatch adds to it
    ran = run_once(cfg)
    assert names(tmp_path / "sorted") == {"a.jpg", "a.jpg.xmp", "b.jpg", "b.jpg.xmp"}
    assert read_xmp(tmp_path / "sorted" / "green" / "b.jpg.xmp")["subject"] == ["holiday", "green", "rfwatch"]
    wait_for(lambda: len(receiver.ok()) == 2, what="the file.processed events")

    result = undo(cfg)
    lines = file_lines(result.stdout)
    assert len(lines) == 2 and all(": undone: " in line for line in lines), result.stdout
    assert "partly" not in result.stdout
    assert summary(result.stdout) == "2 file(s): 2 undone"
    assert "nothing to reverse for: command, log" in result.stdout

    # moved back with its sidecar; the sidecar rfwatch created is gone, the person's one is as it was
    assert names(inbox) == {"a.jpg", "b.jpg", "b.jpg.xmp"}
    for name, data in originals.items():
        assert (inbox / name).read_bytes() == data
    sidecar = read_xmp(inbox / "b.jpg.xmp")
    assert sidecar["subject"] == ["holiday"] and sidecar["rfwatch"] == {}
    assert xmp_rating(inbox / "b.jpg.xmp") == "3"
    # the copies and the annotated copies are removed; nothing is left where rfwatch sorted
    for folder in ("copies", "annotated", "sorted"):
        assert files_under(tmp_path / folder) == [], folder
    # a log line and a command that ran stay what they are, and the command is not run again
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2
    assert sorted((tmp_path / "ran.txt").read_text().split()) == ["a.jpg", "b.jpg"]

    # the receiver hears file.undone, signed, for the event it had: same URL, new event ids
    wait_for(lambda: len(receiver.ok()) == 4, what="the file.undone events")
    verifier = Webhook(SECRET)
    events = [verifier.verify(d.body, d.headers) for d in receiver.ok()]
    assert all(d.path == f"/hook/{URL_SECRET}" for d in receiver.ok())
    processed = {e["id"]: e for e in events if e["type"] == "file.processed"}
    undone = [e for e in events if e["type"] == "file.undone"]
    assert len(processed) == 2 and len(undone) == 2 and not {e["id"] for e in undone} & set(processed)
    assert {e["data"]["source"] for e in undone} == {str(inbox / "a.jpg"), str(inbox / "b.jpg")}
    assert {e["data"]["undone"]["queued"] for e in undone} == set(processed)

    # the journal keeps the whole history, the undo included
    history = cli_ok("history", "-c", str(cfg), str(inbox / "a.jpg")).stdout
    for expected in (
        "move done:",
        "undo webhook: file.undone event msg_",
        "undo command: a command that ran cannot be reversed",
        "undo log: a log record stays in the log",
        f"undo move: moved back to {inbox / 'a.jpg'}",
        "undo tag: removed a.jpg.xmp",
        f"undo annotate: {tmp_path / 'annotated' / 'red' / 'a.jpg'} removed",
        f"undo copy: copy {tmp_path / 'copies' / 'a.jpg'} removed",
        "undone (undone)",
    ):
        assert expected in history, f"{expected!r} not in:\n{history}"
    assert history.index("undo move") < history.index("undo copy"), "newest first"
    # the file.undone event goes last, once the file is back, so that it says where the file is now
    assert history.index("undo webhook") > history.index("undo copy")
    assert history.count(": delivered ") == 2, history  # file.processed and file.undone
    # the URL's secret is in no log line, step, event body or log record: nothing that reaches a receiver or a
    # log file (the outbox row that delivers to it holds the address, as the config does, and `history` shows
    # the operator where each delivery went)
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    journal_text = str(db.execute("SELECT * FROM steps").fetchall() + db.execute("SELECT * FROM events").fetchall())
    journal_text += str(db.execute("SELECT * FROM undo_steps").fetchall())
    db.close()
    bodies = "".join(d.body.decode() for d in receiver.ok())
    for where, text in {
        "run output": ran.stdout + ran.stderr,
        "undo output": result.stdout + result.stderr,
        "journal steps and events": journal_text,
        "webhook bodies": bodies,
        "log action": (tmp_path / "results.jsonl").read_text(),
    }.items():
        assert URL_SECRET not in text, f"the webhook URL's secret is in the {where}"
    report = status(cfg)
    assert report["counts"]["undone"] == 2 and report["backlog"] == 0

    # the next run does not take them again
    run_once(cfg)
    assert names(inbox) == {"a.jpg", "b.jpg", "b.jpg.xmp"} and files_under(tmp_path / "sorted") == []
    assert {f["state"] for f in journal_files(tmp_path).values()} == {"undone"}


def test_undo_exits_only_once_its_file_undone_events_are_out(tmp_path, server, receiver):
    """More files than delivery threads: every file.undone event reached the receiver when rfwatch undo exits
    (no process is left to send them later)."""
    rules = [{"name": "all", "then": [{"move": "sorted/{name}"}, {"webhook": {"url": receiver.url}}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    originals = {f"f{n}.jpg": unique_jpeg(RED, 80 + n) for n in range(10)}
    for name, data in originals.items():
        (tmp_path / "inbox" / name).write_bytes(data)
    run_once(cfg)
    wait_for(lambda: len(receiver.ok()) == 10, what="the file.processed events")
    assert summary(undo(cfg).stdout) == "10 file(s): 10 undone"
    undone = [d for d in receiver.ok() if json.loads(d.body)["type"] == "file.undone"]
    assert len(undone) == 10, "rfwatch undo exited before its events were sent"


def test_a_file_goes_back_where_it_was_found_never_replacing_anything(tmp_path, server):
    cfg = write_config(tmp_path, server, failed="failed")
    inbox = tmp_path / "inbox"
    # f and g fail (the API refuses them) and go to failed:; a retry sorts f, g stays failed, unclassified
    server.fail_next(400, count=2)
    f, g = unique_jpeg(BLUE, 3), unique_jpeg(BLUE, 4)
    (inbox / "f.jpg").write_bytes(f)
    (inbox / "g.jpg").write_bytes(g)
    run_once(cfg, code=1)
    assert names(tmp_path / "failed") == {"f.jpg", "g.jpg"}
    cli_ok("retry", "-c", str(cfg), str(inbox / "f.jpg"))
    # a arrives with a sidecar of its own
    a = unique_jpeg(RED, 1)
    (inbox / "a.jpg").write_bytes(a)
    (inbox / "a.jpg.xmp").write_text(USER_SIDECAR)
    run_once(cfg)
    assert names(tmp_path / "sorted") == {"a.jpg", "a.jpg.xmp", "f.jpg"} and names(inbox) == set()
    assert names(tmp_path / "failed") == {"g.jpg"}

    # meanwhile somebody put another photo (and its sidecar) under a's old name
    other = unique_jpeg(GREEN, 2)
    (inbox / "a.jpg").write_bytes(other)
    (inbox / "a.jpg.xmp").write_text("their own sidecar")

    result = undo(cfg)
    taken = f"moved back to {inbox / 'a (1).jpg'} ({inbox / 'a.jpg'} is taken by other content)"
    (a_line,) = [line for line in file_lines(result.stdout) if "a.jpg" in line.split(":")[0]]
    assert taken in a_line, result.stdout
    (f_line,) = [line for line in file_lines(result.stdout) if "f.jpg" in line.split(":")[0]]
    assert f"move: moved back to {tmp_path / 'failed' / 'f.jpg'}; " in f_line
    assert f"; quarantine: moved back to {inbox / 'f.jpg'}" in f_line
    (g_line,) = [line for line in file_lines(result.stdout) if "g.jpg" in line.split(":")[0]]
    assert f"{tmp_path / 'failed' / 'g.jpg'}: undone: quarantine: moved back to {inbox / 'g.jpg'}" == g_line
    assert summary(result.stdout) == "3 file(s): 3 undone"
    # a and its sidecar went to the next free name; the other photo and its sidecar are untouched
    assert (inbox / "a (1).jpg").read_bytes() == a
    assert (inbox / "a (1).jpg.xmp").read_text() == USER_SIDECAR
    assert (inbox / "a.jpg").read_bytes() == other
    assert (inbox / "a.jpg.xmp").read_text() == "their own sidecar"
    # f went back past failed: to where rfwatch first found it; g straight from failed:
    assert (inbox / "f.jpg").read_bytes() == f and (inbox / "g.jpg").read_bytes() == g
    assert files_under(tmp_path / "failed") == [] and files_under(tmp_path / "sorted") == []
    known = journal_files(tmp_path)
    assert known["a.jpg"] == {"path": str(inbox / "a (1).jpg"), "state": "undone"}
    assert known["f.jpg"] == {"path": str(inbox / "f.jpg"), "state": "undone"}
    assert known["g.jpg"] == {"path": str(inbox / "g.jpg"), "state": "undone"}

    # the next run takes the newcomer, and neither of the files put back
    run_once(cfg)
    assert (tmp_path / "sorted" / "green" / "a.jpg").read_bytes() == other
    assert names(inbox) == {"a (1).jpg", "a (1).jpg.xmp", "f.jpg", "g.jpg"}


def test_undo_after_a_retry_reverses_the_new_round_only(tmp_path, server):
    cfg = write_config(tmp_path, server)
    inbox = tmp_path / "inbox"
    c = unique_jpeg(RED, 5)
    (inbox / "c.jpg").write_bytes(c)
    run_once(cfg)
    undo(cfg)
    cli_ok("retry", "-c", str(cfg), str(inbox / "c.jpg"))
    run_once(cfg)
    assert (tmp_path / "sorted" / "red" / "c.jpg").read_bytes() == c and names(inbox) == set()
    other = unique_jpeg(GREEN, 6)
    (inbox / "c.jpg").write_bytes(other)  # the name is taken by another photo now

    result = undo(cfg)
    (line,) = file_lines(result.stdout)
    assert line.count("moved back") == 1, f"the first round was undone already: {line}"
    assert f"moved back to {inbox / 'c (1).jpg'} ({inbox / 'c.jpg'} is taken by other content)" in line
    assert journal_files(tmp_path)["c.jpg"] == {"path": str(inbox / "c (1).jpg"), "state": "undone"}
    history = cli_ok("history", "-c", str(cfg), str(inbox / "c.jpg")).stdout
    assert history.count("undo move: moved back") == 2 and history.count("undone (undone)") == 2, history

    # the other photo is a new file to the next run; the one put back is not
    run_once(cfg)
    assert (tmp_path / "sorted" / "green" / "c.jpg").read_bytes() == other
    assert (inbox / "c (1).jpg").read_bytes() == c and names(inbox) == {"c (1).jpg"}


def test_a_copy_edited_since_rfwatch_wrote_it_is_kept(tmp_path, server):
    rules = [
        {
            "name": "r",
            "then": [{"copy": "copies/{name}"}, {"annotate": "annotated/{name}"}, {"move": "sorted/{name}"}],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    originals = {"a.jpg": unique_jpeg(RED, 1), "b.jpg": unique_jpeg(GREEN, 2)}
    for name, data in originals.items():
        (inbox / name).write_bytes(data)
    (inbox / "a.jpg.xmp").write_text(USER_SIDECAR)
    run_once(cfg)
    copies, annotated = tmp_path / "copies", tmp_path / "annotated"
    assert names(copies) == {"a.jpg", "a.jpg.xmp", "b.jpg"} and names(annotated) == {"a.jpg", "b.jpg"}
    # somebody edits a's copy and its sidecar, and b's annotated copy
    with open(copies / "a.jpg", "ab") as fh:
        fh.write(b"edited")
    (copies / "a.jpg.xmp").write_text(USER_SIDECAR.replace("holiday", "edited"))
    (annotated / "b.jpg").write_bytes(unique_jpeg(BLUE, 9))
    edited = {p: p.read_bytes() for p in (copies / "a.jpg", copies / "a.jpg.xmp", annotated / "b.jpg")}

    result = undo(cfg)
    assert names(copies) == {"a.jpg", "a.jpg.xmp"} and names(annotated) == {"b.jpg"}
    for path, data in edited.items():
        assert path.read_bytes() == data, f"{path} was changed by rfwatch undo"
    kept = [line for line in result.stdout.splitlines() if line.startswith("kept (changed since rfwatch wrote them): ")]
    assert len(kept) == 1, result.stdout
    for path in edited:
        assert str(path) in kept[0], f"{path} not reported as kept: {kept[0]}"
    # the originals came back all the same
    assert names(inbox) == {"a.jpg", "a.jpg.xmp", "b.jpg"}
    for name, data in originals.items():
        assert (inbox / name).read_bytes() == data
    assert (inbox / "a.jpg.xmp").read_text() == USER_SIDECAR


# --- tag: lossless ------------------------------------------------------------------------------------------


def _exiftool_xmp(paths: list[Path]) -> dict[str, dict]:
    """Every XMP field exiftool reads, per file; XMPToolkit names whichever program serialised the packet."""
    out = subprocess.run(["exiftool", "-j", "-G1", "-XMP:all", *map(str, paths)], capture_output=True, check=True)
    docs = {}
    for doc in json.loads(out.stdout):
        source = doc.pop("SourceFile")
        docs[source] = {k: v for k, v in doc.items() if k != "XMP-x:XMPToolkit"}
    return docs


def _app13(path: Path) -> list[list[tuple[int, bytes, bytes]]]:
    """Each APP13's Photoshop resources, IPTC included, byte for byte; the IPTC digest (0x0425) sorted last,
    where exiftool puts it back when it brings it in step with the IPTC (its value must be the original's)."""
    out = []
    for marker, payload in jpeg_parts(path)[0]:
        if marker == 0xED:
            resources = photoshop_resources(payload)
            out.append([r for r in resources if r[0] != 0x0425] + [r for r in resources if r[0] == 0x0425])
    return out


@needs_exiftool
def test_an_embedded_tag_comes_out_losslessly(tmp_path, server, samples):
    rules = [
        {
            "name": "tag",
            "then": [
                {"tag": {"mode": "embed", "keywords": ["{class}", "rfwatch"], "hierarchy": "rfwatch"}},
                {"move": "sorted/{class}/{name}"},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    jpg = samples / "jpg"
    chosen = [p for p in sorted(jpg.glob("*.jpg")) if p.name != "corrupted.jpg"]
    chosen += [jpg / "xmp" / "BlueSquare.jpg", jpg / "gps" / "DSCN0010.jpg", jpg / "orientation" / "portrait_6.jpg"]
    originals = {p.name: p for p in chosen}
    for name, src in originals.items():
        shutil.copyfile(src, inbox / name)
    with_icc = [n for n, p in originals.items() if any(m == 0xE2 for m, _ in jpeg_parts(p)[0])]
    with_xmp = [n for n, p in originals.items() if xmp_bytes(p)]
    with_iptc = [n for n, p in originals.items() if iptc_keywords(p)]
    assert len(with_icc) >= 3 and len(with_xmp) >= 3 and with_iptc == ["BlueSquare.jpg"], "the sample set changed"
    run_once(cfg)
    tagged = {p.name: p for p in files_under(tmp_path / "sorted")}
    assert set(tagged) == set(originals)
    for name, path in tagged.items():
        assert "rfwatch" in read_xmp(path)["subject"] and "rfwatch" in iptc_keywords(path), name

    result = undo(cfg)
    assert summary(result.stdout) == f"{len(originals)} file(s): {len(originals)} undone"
    assert names(inbox) == set(originals) and files_under(tmp_path / "sorted") == []
    before = _exiftool_xmp(list(originals.values()))
    after = _exiftool_xmp([inbox / n for n in originals])
    for name, original in originals.items():
        path = inbox / name
        # the compressed image data, and EXIF, maker notes, ICC and every other block, byte for byte
        assert jpeg_parts(path)[1] == jpeg_parts(original)[1], f"{name}: image data changed"
        assert jpeg_non_xmp_segments(path) == jpeg_non_xmp_segments(original), f"{name}: metadata blocks changed"
        # IPTC as it was, byte for byte (no keyword, no character set left behind)
        assert _app13(path) == _app13(original), f"{name}: IPTC changed"
        assert iptc_keywords(path) == iptc_keywords(original), name
        if name not in with_xmp:
            assert path.read_bytes() == original.read_bytes(), f"{name}: not the file it was"
            continue
        # XMP re-serialised: the same keywords and fields, none of rfwatch's
        assert read_xmp(path) == read_xmp(original), name
        assert after[str(path)] == before[str(original)], name


@needs_exiftool
def test_undo_works_from_the_record_after_the_rule_is_gone_and_keeps_what_a_person_added(tmp_path, server, receiver):
    hook = {"webhook": {"url": receiver.url, "secret": SECRET}}
    rules = [
        {
            "name": "tagged",
            "then": [{"tag": {"mode": "both", "keywords": ["{class}", "auto"]}}, hook, {"move": "sorted/{name}"}],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox, sorted_ = tmp_path / "inbox", tmp_path / "sorted"
    originals = {"a.jpg": unique_jpeg(RED, 1), "b.jpg": unique_jpeg(RED, 2)}
    for name, data in originals.items():
        (inbox / name).write_bytes(data)
    run_once(cfg)
    assert names(sorted_) == {"a.jpg", "a.jpg.xmp", "b.jpg", "b.jpg.xmp"}
    # a person adds a keyword of their own to a, in the image and in the sidecar rfwatch created
    edit = ["exiftool", "-q", "-overwrite_original", "-XMP-dc:Subject+=keeper"]
    subprocess.run([*edit, str(sorted_ / "a.jpg"), str(sorted_ / "a.jpg.xmp")], check=True)
    # and the config changes: no rule tags or moves any more (the webhook stays, for its secret)
    write_config(tmp_path, server, rules=[{"name": "other", "then": [{"copy": "copies/{name}"}, hook]}])

    result = undo(cfg)
    assert summary(result.stdout) == "2 file(s): 2 undone", result.stdout
    assert names(inbox) == {"a.jpg", "a.jpg.xmp", "b.jpg"} and files_under(sorted_) == []
    kept = tmp_path / "originals"
    kept.mkdir()
    for name, data in originals.items():
        (kept / name).write_bytes(data)
        assert jpeg_parts(inbox / name)[1] == jpeg_parts(kept / name)[1], f"{name}: image data changed"
    # b was left as rfwatch wrote it: all of rfwatch's metadata is gone, the sidecar too
    assert xmp_bytes(inbox / "b.jpg") is None and iptc_keywords(inbox / "b.jpg") == []
    # a keeps exactly what the person added, in the image and in the sidecar
    for path in (inbox / "a.jpg", inbox / "a.jpg.xmp"):
        xmp = read_xmp(path)
        assert xmp["subject"] == ["keeper"] and xmp["rfwatch"] == {}, (path, xmp)
    assert iptc_keywords(inbox / "a.jpg") == []
    assert "changed since: the rest kept" in result.stdout
    wait_for(lambda: len(receiver.ok()) == 4, what="file.processed and file.undone for both")


def test_two_undos_at_once_share_the_files_and_undo_each_once(tmp_path, server):
    """Undos claim files one by one (as daemons do): two at once on one journal undo every file exactly once, and
    a file the other one holds is reported as skipped, never undone twice."""
    cfg = write_config(tmp_path, server)
    written = {f"{n:02}.jpg": unique_jpeg(RED, 100 + n) for n in range(30)}
    for name, data in written.items():
        (tmp_path / "inbox" / name).write_bytes(data)
    run_once(cfg)
    assert len(names(tmp_path / "sorted" / "red")) == 30
    procs = [subprocess.Popen(rfwatch_cmd("undo", "-c", str(cfg)), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    undone = [line for out in outputs for line in file_lines(out) if ": undone: " in line]
    others = [line for out in outputs for line in file_lines(out) if ": undone: " not in line]
    assert len(undone) == 30, outputs  # each file by exactly one of them
    assert all(": skipped: " in line for line in others), others
    assert names(tmp_path / "inbox") == set(written) and names(tmp_path / "sorted") == set()
    assert JournalView(cfg).states() == {"undone": 30}


# --- crashes ------------------------------------------------------------------------------------------------

CRASH_POINTS = (
    "undo.step_begun",
    "undo.intent",
    "place.before_rename",
    "place.after_rename",
    "undo.step_finished",
    "undo.finished",
)


def _each_once(tmp_path: Path, written: dict[str, bytes]) -> None:
    """Every photo is in exactly one place, whole: back where it was found or still where rfwatch sorted it."""
    found: dict[str, list[Path]] = {}
    for place in ("inbox", "sorted"):
        for p in files_under(tmp_path / place):
            found.setdefault(digest(p.read_bytes()), []).append(p)
    expected = {digest(data) for data in written.values()}
    assert expected - set(found) == set(), "lost"
    assert {k: v for k, v in found.items() if len(v) > 1} == {}, "duplicated"
    assert set(found) == expected, "files appeared that nobody wrote"


def test_kill_9_during_an_undo_of_200_files_then_undo_again(tmp_path, server):
    cfg = write_config(
        tmp_path,
        server,
        rules=[{"name": "r", "then": [{"copy": "copies/{name}"}, {"move": "sorted/{class}/{name}"}]}],
    )
    inbox = tmp_path / "inbox"
    written: dict[str, bytes] = {}
    write_burst(inbox, written, 0, 200, 9000)
    run_once(cfg)
    assert len(files_under(tmp_path / "sorted")) == 200 and len(files_under(tmp_path / "copies")) == 200
    rnd = random.Random(14)

    # stopped dead at each crash point in turn, somewhere in the middle
    for point in CRASH_POINTS:
        crash = undo(cfg, env={"RFWATCH_CRASH_AT": f"{point}:{rnd.randint(2, 12)}"}, code=CRASH_EXIT)
        assert f"crash point {point} reached" in crash.stderr
        _each_once(tmp_path, written)
        if point != "undo.finished":  # the file it died on says so, and nothing else takes it meanwhile
            assert status(cfg)["counts"]["undoing"] >= 1
    # killed at random moments while it works
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    for _ in range(3):
        left = len(files_under(tmp_path / "sorted"))
        proc = subprocess.Popen(
            rfwatch_cmd("undo", "-c", str(cfg)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda n=left: len(files_under(tmp_path / "sorted")) < n, interval=0.01, what="the undo at work")
        time.sleep(rnd.uniform(0, 0.25))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the undo finished before it was killed: the test proves nothing"
        _each_once(tmp_path, written)
    assert files_under(tmp_path / "sorted"), "the interruptions left nothing to do: the test proves nothing"

    result = undo(cfg)
    assert "failed" not in summary(result.stdout), result.stdout
    # every file back exactly once, as it was; every copy removed; no temporary file left
    assert names(inbox) == set(written)
    for name, data in written.items():
        assert (inbox / name).read_bytes() == data
    assert files_under(tmp_path / "sorted") == [] and files_under(tmp_path / "copies") == []
    assert [p for p in files_under(tmp_path) if ".rfwatch-tmp" in p.name] == []
    # each undo step happened once, as the history tells it
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall() == [("undone", 200)]
    per_file = db.execute(
        "SELECT file_id,"
        " SUM(message LIKE 'undo move: moved back to %'),"
        " SUM(message LIKE 'undo copy: %'),"
        " SUM(message LIKE 'undone (%')"
        " FROM events GROUP BY file_id"
    ).fetchall()
    db.close()
    assert len(per_file) == 200 and {row[1:] for row in per_file} == {(1, 1, 1)}
    assert summary(undo(cfg).stdout) == "0 file(s): no file matched"
    run_once(cfg)  # and the next run leaves them where they are
    assert names(inbox) == set(written) and files_under(tmp_path / "sorted") == []


# --- a running daemon ---------------------------------------------------------------------------------------


def _states(tmp_path: Path, state: str) -> set[str]:
    return {name for name, f in journal_files(tmp_path).items() if f["state"] == state}


@needs_exiftool
def test_a_running_daemon_leaves_restored_files_until_retry_takes_them(tmp_path, server):
    # Files wait in the last step until the gate exists: while they do, `status` must count them as queued.
    # The tag rewrites each file, and its undo rewrites it again in the inbox: a change the watcher sees.
    gate = tmp_path / "gate"
    gate.touch()
    wait_gate = ["sh", "-c", "while [ ! -e gate ]; do sleep 0.05; done"]
    steps = [{"tag": {"mode": "embed"}}, {"move": "sorted/{class}/{name}"}, {"command": wait_gate}]
    rules = [{"name": "r", "then": steps}]
    # enough workers for every file to wait at the gate at once
    cfg = write_config(tmp_path, server, rules=rules, failed="failed", rescan_interval=0.5, concurrency=8)
    inbox, sorted_ = tmp_path / "inbox", tmp_path / "sorted"
    originals = {f"{c}.jpg": unique_jpeg(RED, n) for n, c in enumerate("abcd")}
    with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        server.fail_next(400)  # the API refuses f once: it goes to failed:
        (inbox / "f.jpg").write_bytes(unique_jpeg(RED, 10))
        wait_for(lambda: _states(tmp_path, "failed") == {"f.jpg"}, what="f failed")
        for name, data in originals.items():
            (inbox / name).write_bytes(data)
        wait_for(lambda: _states(tmp_path, "done") == set(originals), what="a-d sorted")

        result = undo(cfg, *(str(inbox / n) for n in originals))
        assert summary(result.stdout) == "4 file(s): 4 undone"
        assert names(inbox) == set(originals)
        for name, data in originals.items():
            assert (inbox / name).read_bytes() == data
        # The daemon is watching: a photo that arrives now is sorted, the ones put back are not (with a positive
        # barrier on the daemon's takes: test_a_daemon_looks_at_files_put_back_and_leaves_them).
        (inbox / "s.jpg").write_bytes(unique_jpeg(GREEN, 20))
        wait_for(lambda: "s.jpg" in _states(tmp_path, "done"), what="the newcomer sorted")
        assert names(inbox) == set(originals)
        assert _states(tmp_path, "undone") == set(originals)
        assert len(journal_files(tmp_path)) == 6, "a file put back was taken as a new one"

        # retry, with no signal and no restart: the failed file, then one undone file by name, then the rest
        gate.unlink()
        cli_ok("retry", "-c", str(cfg), str(inbox / "f.jpg"))
        wait_for(lambda: (sorted_ / "red" / "f.jpg").exists(), what="f taken again")  # no signal, no restart
        assert status(cfg)["backlog"] == 1  # it waits at the gate, queued

        cli_ok("retry", "-c", str(cfg), str(inbox / "a.jpg"))
        wait_for(lambda: (sorted_ / "red" / "a.jpg").exists(), what="a taken again")
        assert names(inbox) == {"b.jpg", "c.jpg", "d.jpg"}
        report = status(cfg)
        assert report["backlog"] == 2 and report["counts"]["undone"] == 3

        cli_ok("retry", "-c", str(cfg), "--undone")
        wait_for(lambda: names(inbox) == set(), what="b-d taken again")
        report = status(cfg)
        assert report["backlog"] == 5 and report["counts"]["undone"] == 0

        gate.touch()
        wait_for(lambda: len(_states(tmp_path, "done")) == 6, timeout=10, what="all done")
        assert status(cfg)["backlog"] == 0
        assert daemon.terminate() == 0
    assert {p.name for p in files_under(sorted_ / "red")} == {*originals, "f.jpg"}


def _let_be(takes: list, folder: Path, wanted: Any) -> bool:
    """Whether the daemon's workers took each of ``wanted`` (names in ``folder``) and left it alone."""
    skipped = {p.name for p, attempt in list(takes) if p.parent == folder and attempt.outcome == Outcome.SKIPPED}
    return set(wanted) <= skipped


def test_a_daemon_looks_at_files_put_back_and_leaves_them(tmp_path, server):
    """A file put back by undo lands in a watched folder: a running daemon sees it, and does not take it again
    (a positive barrier: each put-back file went through a worker, which let it be)."""
    cfg = write_config(tmp_path, server, rescan_interval=0.3)
    inbox = tmp_path / "inbox"
    originals = {f"{c}.jpg": unique_jpeg(RED, 60 + n) for n, c in enumerate("ab")}
    daemon = DaemonThread(cfg)
    takes = record_takes(daemon.daemon)
    with daemon:
        for name, data in originals.items():
            (inbox / name).write_bytes(data)
        wait_for(lambda: _states(tmp_path, "done") == set(originals), what="both sorted")
        assert summary(undo(cfg).stdout) == "2 file(s): 2 undone"
        wait_for(lambda: _let_be(takes, inbox, originals), timeout=10, what="the daemon looked at both")
        assert names(inbox) == set(originals) and files_under(tmp_path / "sorted") == []
        assert _states(tmp_path, "undone") == set(originals) and len(journal_files(tmp_path)) == 2
    for name, data in originals.items():
        assert (inbox / name).read_bytes() == data


def _waiting(api: str) -> list[dict]:
    try:
        return requests.get(f"{api}/items", timeout=5).json()["items"]
    except requests.ConnectionError:  # not serving yet
        return []


def test_files_in_review_and_labelled_in_review_go_back(tmp_path, server):
    port = free_port()
    rules = [
        {"name": "unsure", "when": {"max_confidence": 0.95}, "then": [{"review": "review/{name}"}]},
        {"name": "sorted", "then": [{"move": "sorted/{class}/{name}"}]},
    ]
    cfg = write_config(tmp_path, server, rules=rules, review={"listen": f"127.0.0.1:{port}"})
    inbox = tmp_path / "inbox"
    originals = {"r1.jpg": unique_jpeg(RED, 1), "r2.jpg": unique_jpeg(RED, 2)}
    api = f"http://127.0.0.1:{port}/api"
    daemon = DaemonThread(cfg)
    takes = record_takes(daemon.daemon)
    with daemon:
        for name, data in originals.items():
            (inbox / name).write_bytes(data)
        wait_for(lambda: names(tmp_path / "review") == set(originals), what="both waiting for review")
        items = wait_for(lambda: len(_waiting(api)) == 2 and _waiting(api), what="the review page")
        (r1,) = [item["id"] for item in items if item["name"] == "r1.jpg"]
        answer = requests.post(f"{api}/items/{r1}/label", json={"class": "green"}, timeout=5)
        assert answer.status_code == 200, answer.text
        wait_for(lambda: (tmp_path / "sorted" / "green" / "r1.jpg").exists(), timeout=5, what="the label applied")

        # by the person's label: r1 (the model said red)
        result = undo(cfg, "--class", "green")
        (line,) = file_lines(result.stdout)
        assert "decision: the review decision stays in the history" in line
        assert f"review: moved back to {inbox / 'r1.jpg'}" in line
        assert "nothing to reverse for: decision" in result.stdout
        # by the model's class: r2, still waiting
        result = undo(cfg, "--class", "red")
        (line,) = file_lines(result.stdout)
        assert f"review: moved back to {inbox / 'r2.jpg'}" in line
        assert requests.get(f"{api}/items", timeout=5).json()["waiting"] == 0
        # the daemon sees both land in its inbox, looks, and lets them be
        wait_for(lambda: _let_be(takes, inbox, originals), timeout=10, what="the daemon looked at both")
        assert names(inbox) == set(originals)
        assert {f["state"] for f in journal_files(tmp_path).values()} == {"undone"}
    for name, data in originals.items():
        assert (inbox / name).read_bytes() == data
    assert files_under(tmp_path / "review") == [] and files_under(tmp_path / "sorted") == []
    assert {f["state"] for f in journal_files(tmp_path).values()} == {"undone"}


# --- plugins ------------------------------------------------------------------------------------------------

PLUGIN = '''
from rfwatch.plugin import hookimpl, remove_output, write_output


class Stamp:
    """Writes a small text file per photo; offers no undo."""

    def __init__(self, options):
        self.folder = options

    def __call__(self, ctx):
        out = ctx.config.resolve(self.folder) / (ctx.path.stem + ".txt")
        placed = write_output(ctx, out, lambda tmp: tmp.write_text(ctx.prediction.top))
        return {"to": str(placed.path), "sha256": placed.sha256}


class Note(Stamp):
    """The same, with an undo that says where the photo is when it runs."""

    def undo(self, ctx, result):
        removed = remove_output(result["to"], result["sha256"])
        return {"outcome": "undone", "detail": f"note {removed}; the photo is at {ctx.path}"}


@hookimpl
def register_actions(register):
    register("stamp", Stamp)
    register("note", Note)
'''


def test_a_plugin_action_without_undo_leaves_the_file_partly_undone(tmp_path, server):
    (tmp_path / "stamps.py").write_text(PLUGIN)
    rules = [{"name": "r", "then": [{"note": "notes"}, {"move": "sorted/{name}"}, {"stamp": "stamps"}]}]
    cfg = write_config(tmp_path, server, rules=rules, plugins=["stamps.py"])
    inbox = tmp_path / "inbox"
    a = unique_jpeg(RED, 1)
    (inbox / "a.jpg").write_bytes(a)
    run_once(cfg)
    assert names(tmp_path / "notes") == {"a.txt"} and names(tmp_path / "stamps") == {"a.txt"}

    result = undo(cfg)
    (line,) = file_lines(result.stdout)
    assert ": partly undone: " in line
    assert "stamp: stamp offers no undo" in line
    # newest first: the note's undo runs after the move was undone, and sees the photo back in the inbox
    assert f"note: note removed; the photo is at {inbox / 'a.jpg'}" in line
    assert summary(result.stdout) == "1 file(s): 1 partly undone"
    assert "partly undone: these actions offer no undo: stamp" in result.stdout
    assert (inbox / "a.jpg").read_bytes() == a
    assert names(tmp_path / "notes") == set() and names(tmp_path / "stamps") == {"a.txt"}
    assert journal_files(tmp_path)["a.jpg"]["state"] == "undone"


def test_a_duplicate_that_was_dropped_comes_back_once_even_after_a_crash(tmp_path, server):
    rules = [{"name": "r", "then": [{"move": {"to": "sorted/{class}/photo.jpg", "on_conflict": "dedupe"}}]}]
    cfg = write_config(tmp_path, server, rules=rules, concurrency=1)
    inbox = tmp_path / "inbox"
    data = unique_jpeg(RED, 1)
    (inbox / "a.jpg").write_bytes(data)
    run_once(cfg)
    (inbox / "b.jpg").write_bytes(data)  # the same photo again: dropped as a duplicate of photo.jpg
    run_once(cfg)
    assert names(inbox) == set() and names(tmp_path / "sorted") == {"photo.jpg"}

    # b comes back first (newest first); the undo dies the instant its copy is in place
    crash = undo(cfg, env={"RFWATCH_CRASH_AT": "place.after_rename:1"}, code=CRASH_EXIT)
    assert "crash point place.after_rename reached" in crash.stderr
    assert names(inbox) == {"b.jpg"}
    result = undo(cfg)
    assert names(inbox) == {"a.jpg", "b.jpg"} and files_under(tmp_path / "sorted") == []
    assert summary(result.stdout) == "2 file(s): 2 undone"
    assert f"the dropped duplicate is back at {inbox / 'b.jpg'}" in result.stdout
    assert (inbox / "a.jpg").read_bytes() == data and (inbox / "b.jpg").read_bytes() == data

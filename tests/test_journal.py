"""The journal's contract, on every backend: SQLite (a file) and PostgreSQL (a throwaway cluster, tests/pg.py).

Each test runs once per backend (the ``journal_url`` fixture). Several Journal handles on one database stand for
several processes or hosts: each registers as a holder of its own, with its own host id.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import back_to_schema_4, wait_for

from rfwatch.journal import (
    SCHEMA_VERSION,
    AlreadyDecided,
    ClaimLost,
    DecisionKind,
    Journal,
    NotWaiting,
    QueuedDelivery,
    Roots,
    SchemaTooNew,
    Skip,
)
from rfwatch.journal.copy import copy_journal
from rfwatch.states import FileState, StepKind

INBOX = Path("/srv/a/inbox")


def open_as(url: str, host: str = "host-a", lease: float = 60.0, roots: dict | None = None) -> Journal:
    return Journal.open(url, host=host, lease=lease, roots=Roots(roots if roots is not None else {"inbox": INBOX}))


@pytest.fixture
def a(journal_url):
    j = open_as(journal_url, "host-a")
    yield j
    j.close()


@pytest.fixture
def b(journal_url):
    j = open_as(journal_url, "host-b")
    yield j
    j.close()


def take(j: Journal, name: str = "x.jpg", size: int = 10, mtime: int = 1) -> int | Skip:
    return j.files.take(INBOX / name, size, mtime, "sha-" + name, "colors/1")


# --- taking files ------------------------------------------------------------------------------------------


def test_a_file_is_taken_by_one_process(a, b):
    first = take(a)
    assert isinstance(first, int)
    again = take(b)
    assert again == Skip("being processed", first)
    assert a.files.get(first).holder == a.holder.id and a.files.get(first).host == "host-a"


def test_processes_that_scan_take_turns_by_their_place_among_the_live_scanners(journal_url):
    """Two scanning processes (a daemon, a run --once) get turns 0 and 1 of 2, so their scans of a shared folder
    start at different points; a command that does not scan is not counted, and a scanner alone again scans from
    the start."""
    daemon = Journal.open(journal_url, host="host-a", roots=Roots({"inbox": INBOX}), kind="daemon")
    once = Journal.open(journal_url, host="host-b", roots=Roots({"inbox": INBOX}), kind="run --once")
    command = Journal.open(journal_url, host="host-b", roots=Roots({"inbox": INBOX}), kind="command")
    try:
        _ = daemon.holder, once.holder, command.holder  # all three registered
        turns = {daemon.holder.id: daemon.scan_turn(), once.holder.id: once.scan_turn()}
        assert sorted(turns.values()) == [(0, 2), (1, 2)]
        assert turns[min(turns)] == (0, 2)  # by holder id: every process works out the same order
        assert command.scan_turn() == (0, 1)
        daemon.close()
        assert once.scan_turn() == (0, 1)
    finally:
        for j in (daemon, once, command):
            j.close()


def test_a_file_finished_meanwhile_is_not_taken_again(a, b):
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {})
    a.files.finish(fid, FileState.UNMATCHED)  # left in place
    assert take(b) == Skip("already unmatched", fid)
    assert b.files.screen(INBOX / "x.jpg", 10, 1) == Skip("already unmatched", fid)
    # the same name with other content is a new file
    assert isinstance(take(b, size=11), int)


def test_a_file_another_process_finishes_during_the_take_is_not_taken_again(a, b):
    """B takes the file while A's transaction that finishes it in place is still open: B's insert waits for A's
    commit, and then finds the finished row (on PostgreSQL its look after the insert needs a snapshot of its own,
    taken after that wait: one statement's snapshot predates it)."""
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {})
    taken: list[int | Skip] = []
    with a.db.write() as tx:  # A's finish, under way
        tx.run("UPDATE files SET state=?, holder=NULL WHERE id=?", (FileState.UNMATCHED, fid))
        taker = threading.Thread(target=lambda: taken.append(take(b)))
        taker.start()
        if a.dialect == "postgresql":
            waiting = (
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type='Lock' AND datname=current_database()"
            )
            wait_for(lambda: a.db.scalar(waiting) == 1, timeout=10, what="B's take to wait for A's transaction")
        else:
            time.sleep(0.3)  # (SQLite: B waits at its BEGIN IMMEDIATE; nothing to look at)
        assert taker.is_alive()
    taker.join(timeout=30)
    assert taken == [Skip("already unmatched", fid)]
    assert b.files.counts() == {"unmatched": 1}


def _events(j: Journal, fid: int) -> list[str]:
    return [message for _, message, _ in j.files.events(fid)]


def test_a_transition_of_independent_statements_is_one_transaction_all_or_nothing(a, b):
    """``transact(..., independent=True)`` (one statement on PostgreSQL): a failed claim check writes nothing of
    it, wherever the check stands; one that asks for an answer runs as a transaction; its notification wakes
    the other processes."""
    fid = take(a)
    event = "INSERT INTO events (file_id, at, message, host) VALUES (?, 1.0, ?, 'h')"

    def lost(tx):
        tx.send(event, (fid, "before the check"))
        tx.check("UPDATE files SET last_error='x' WHERE id=? AND holder=?", (fid, "nobody"), lambda: ClaimLost(fid))
        tx.send(event, (fid, "after the check"))

    with pytest.raises(ClaimLost):
        a.db.transact(lost, independent=True)
    assert _events(a, fid) == ["detected /srv/a/inbox/x.jpg"] and a.files.get(fid).last_error is None

    def asks(tx):
        tx.send(event, (fid, "one"))
        return tx.scalar("SELECT COUNT(*) FROM events WHERE file_id=?", (fid,))

    assert a.db.transact(asks, independent=True) == 2
    feed = b.db.changes()
    try:

        def quiet() -> bool:  # listening, and what was committed before has been said
            if feed.changed():
                return False
            time.sleep(0.6)
            return not feed.changed()

        wait_for(quiet, timeout=20, what="the feed to listen")

        def kept(tx):
            tx.check("UPDATE files SET last_error='y' WHERE id=? AND holder=?", (fid, a.holder.id), Exception)
            tx.send(event, (fid, "two"))
            tx.notify()

        assert a.db.transact(kept, independent=True) is None
        assert _events(b, fid)[-2:] == ["one", "two"] and b.files.get(fid).last_error == "y"
        wait_for(feed.changed, timeout=10, what="B to hear of A's commit")
    finally:
        feed.close()


def test_a_step_naming_one_output_twice_or_writing_thousands_is_journaled(a, tmp_path):
    """One statement on PostgreSQL may write a row once, and carry at most 65,535 parameters: an output spelled two
    ways is one mark, and a step that wrote 14,000 files (5 parameters a mark) is journaled all the same."""
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {})
    out, again = tmp_path / "out.txt", tmp_path / "sub" / ".." / "out.txt"
    (tmp_path / "sub").mkdir()
    a.files.record_intent(fid, 1, StepKind.ACTION, "r", "copy", {"target": str(out), "output_target": str(again)})
    out.write_bytes(b"copied")
    a.files.finish_step(fid, 1, StepKind.ACTION, "r", "copy", True, {"outcome": "copied"}, produced=[out, again])
    many = tmp_path / "many"
    many.mkdir()
    outputs = [many / f"{n}.txt" for n in range(14000)]
    for path in outputs:
        path.write_bytes(b"x")
    a.files.record_intent(fid, 2, StepKind.ACTION, "r", "unpack", {})
    a.files.finish_step(fid, 2, StepKind.ACTION, "r", "unpack", True, {"outcome": "unpacked"}, produced=outputs)
    for path in (out, outputs[0], outputs[-1]):
        st = path.stat()
        assert a.files.screen(path, st.st_size, st.st_mtime_ns) == Skip("written by rfwatch"), path
    assert [step.state for step in a.files.steps(fid)] == ["done", "done"]


def test_a_file_sorted_by_one_move_costs_four_statements_on_postgresql(pg_cluster):
    """Each transition of a sorted file is one statement on PostgreSQL (the server's own count, in
    pg_stat_statements): the look, the take (a function), the move's intent (which commits the classification, as
    the daemon has it wait for that: see test_a_classification_waits_for_the_files_next_transition), its result."""
    journal_url = pg_cluster.new_database()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from journal import sort_by_one_move

    j = open_as(journal_url)
    try:
        _ = j.holder
        j.db.transact(lambda tx: tx.run("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        take(j, "warm.jpg")  # (the heartbeat's and registering's statements are left out below)
        counted = (
            "SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE"
            " datname = current_database()) AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%holders%'"
        )
        j.db.scalar("SELECT pg_stat_statements_reset()")
        path = INBOX / "x.jpg"
        assert j.files.screen(path, 10, 1) is None
        fid = take(j)
        j.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {}, defer=True)
        sort_by_one_move(j, fid, INBOX / "sorted" / "x.jpg")
        assert j.db.scalar(counted) == 4, j.db.all(
            "SELECT calls, query FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"
        )
        assert j.files.get(fid).state == FileState.DONE
    finally:
        j.close()


def test_a_classification_waits_for_the_files_next_transition(a, b):
    """``classified(defer=True)``: the answer is this process's until the file's next transition commits it with
    its own writes; a process that dies before that leaves the file detected (classified again, nothing else)."""
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {"inference_id": "i-1"}, defer=True)
    mine, theirs = a.files.get(fid), b.files.get(fid)
    assert (mine.state, mine.prediction, mine.attempts, mine.support) == (
        FileState.CLASSIFIED,
        {"top": "red"},
        1,
        {"inference_id": "i-1"},
    )
    assert (theirs.state, theirs.prediction, theirs.attempts) == (FileState.DETECTED, None, 0)
    assert a.files.cached_prediction("sha-x.jpg", "colors/1") == {"top": "red"}  # identical content, here
    assert b.files.cached_prediction("sha-x.jpg", "colors/1") is None
    a.files.record_intent(fid, 1, StepKind.ACTION, "sort", "move", {"target": str(INBOX / "red" / "x.jpg")})
    theirs = b.files.get(fid)
    assert (theirs.state, theirs.prediction, theirs.attempts) == (FileState.CLASSIFIED, {"top": "red"}, 1)
    assert theirs.support == {"inference_id": "i-1"}
    assert b.files.cached_prediction("sha-x.jpg", "colors/1") == {"top": "red"}
    a.files.finish_step(fid, 1, StepKind.ACTION, "sort", "move", True, {"outcome": "moved"}, final=FileState.DONE)
    assert b.files.get(fid).attempts == 1  # committed once: the result's transition carries nothing more
    lines = [m for _, m, _ in b.files.events(fid)]
    assert lines[0].startswith("detected") and lines[1] == "classified red 0.9 (inference_id i-1)", lines
    assert lines[2].startswith("move done") and lines[3] == "done", lines

    # The next transition may be the final state itself (no rule matched): the same, in one statement.
    other = take(a, "y.jpg")
    a.files.classified(other, {"top": "blue"}, "sha-y.jpg", "colors/1", "blue 0.8", {}, defer=True)
    a.files.finish(other, FileState.UNMATCHED)
    row = b.files.get(other)
    assert (row.state, row.prediction, row.attempts) == (FileState.UNMATCHED, {"top": "blue"}, 1)
    assert [m for _, m, _ in b.files.events(other)][1:] == ["classified blue 0.8", "unmatched"]


def test_a_classification_lost_with_its_process_leaves_the_file_detected(journal_url):
    """A crash before the file's next transition: the answer was never journaled; another process resumes the
    file from detected (it asks the API again), and nothing says it was classified."""
    a = open_as(journal_url, "host-a", lease=0.5)
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {}, defer=True)
    a.close()  # (its heartbeat stops: as a process killed)
    b = open_as(journal_url, "host-b", lease=0.5)
    try:
        time.sleep(1.0)
        row = b.files.claim(fid)
        assert row is not None and (row.state, row.prediction, row.attempts) == (FileState.DETECTED, None, 0)
        assert b.files.cached_prediction("sha-x.jpg", "colors/1") is None
        assert [m for _, m, _ in b.files.events(fid)] == [f"detected {INBOX / 'x.jpg'}"]
    finally:
        b.close()


def test_a_waiting_classification_is_settled_alone_and_forgotten_when_the_file_was_taken_over(a, b):
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {}, defer=True)
    a.files.settle(fid)  # the job ends without a transition: committed alone
    assert b.files.get(fid).state == FileState.CLASSIFIED
    assert b.files.cached_prediction("sha-x.jpg", "colors/1") == {"top": "red"}
    a.files.settle(fid)  # nothing waits any more: nothing written
    assert b.files.get(fid).attempts == 1

    other = take(a, "y.jpg")
    a.files.classified(other, {"top": "blue"}, "sha-y.jpg", "colors/1", "blue 0.8", {}, defer=True)
    a.db.transact(lambda tx: tx.run("UPDATE files SET holder=NULL WHERE id=?", (other,)))  # (taken over meanwhile)
    assert a.files.get(other).state == FileState.DETECTED  # the row moved on without it: not shown as ours
    with pytest.raises(ClaimLost):
        a.files.settle(other)
    assert a.files.get(other).state == FileState.DETECTED  # not this process's answer to keep any more
    assert a.files.cached_prediction("sha-y.jpg", "colors/1") is None


def test_known_in_lists_a_folders_own_files_as_screen_would_skip_them(a, tmp_path):
    """The start-up scan's one query per folder: exactly the names screen() would skip, in that folder only."""
    for n, name in enumerate(("x.jpg", "sub/x.jpg", "sub/deeper/y.jpg", "caf\u00e9 \udcff.jpg")):
        fid = a.files.take(INBOX / name, 10, 5, f"sha-{n}", "colors/1")
        a.files.classified(fid, {"top": "red"}, f"sha-{n}", "colors/1", "red 0.9", {})
        a.files.finish(fid, FileState.UNMATCHED)
    fid = take(a, "sub/moved.jpg")  # sorted away: known where it is now, not where it was found
    a.files.classified(fid, {"top": "red"}, "sha-m", "colors/1", "red 0.9", {})
    a.files.finish(fid, FileState.DONE, path=INBOX / "sub" / "sorted" / "moved.jpg")
    assert a.files.known_in(INBOX) == {"x.jpg": {(10, 5)}, "caf\u00e9 \udcff.jpg": {(10, 5)}}
    assert a.files.known_in(INBOX / "sub") == {"x.jpg": {(10, 5)}}
    assert a.files.known_in(INBOX / "sub" / "sorted") == {"moved.jpg": {(10, 1)}}
    assert a.files.known_in(INBOX / "su") == {}  # a prefix of a folder's name is another folder
    for name, sizes in a.files.known_in(INBOX).items():
        for size, mtime in sizes:
            assert a.files.screen(INBOX / name, size, mtime) is not None
    # a file outside every named root is known by its absolute path
    fid = a.files.take(tmp_path / "loose.jpg", 3, 4, "sha-loose", "colors/1")
    a.files.finish(fid, FileState.FAILED, "bad")
    assert a.files.known_in(tmp_path) == {"loose.jpg": {(3, 4)}}


def test_a_path_a_step_is_about_to_write_is_kept_from_watchers_until_its_result(a, b, tmp_path):
    """A copy lands in a watched folder before its step's result commits: from the intent on, no process takes
    what is at the target; the result marks the file exactly as written; a step that wrote nothing lets go."""
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red 0.9", {})
    copy, other = tmp_path / "copy.jpg", tmp_path / "other.jpg"
    a.files.record_intent(fid, 1, StepKind.ACTION, "r", "copy", {"src": str(INBOX / "x.jpg"), "target": str(copy)})
    undoing = tmp_path / "undo-target.jpg"
    a.undo.claim_path(fid, undoing)  # an undo's claim, in produced (the file at work all the same)
    # not written yet, and not gone: journal prune keeps the claims of work under way
    assert b.files.prune(time.time() + 3600)["outputs no longer on disk"] == 0
    assert _written(b, undoing, b"put back") == Skip("written by rfwatch")
    copy.write_bytes(b"copied")
    st = copy.stat()
    assert b.files.screen(copy, st.st_size, st.st_mtime_ns) == Skip("written by rfwatch")
    assert b.files.take(copy, st.st_size, st.st_mtime_ns, "sha-c", "colors/1") == Skip("written by rfwatch")
    a.files.finish_step(fid, 1, StepKind.ACTION, "r", "copy", True, {"outcome": "copied"}, produced=[copy])
    assert b.files.screen(copy, st.st_size, st.st_mtime_ns) == Skip("written by rfwatch")
    assert b.files.screen(copy, st.st_size + 1, st.st_mtime_ns) is None, "exactly as written, from then on"
    # A step that failed (or found a duplicate and wrote nothing) leaves no claim: a person's file there is new.
    a.files.record_intent(fid, 2, StepKind.ACTION, "r", "copy", {"target": str(other)})
    a.files.finish_step(fid, 2, StepKind.ACTION, "r", "copy", False, {"error": "disk full"})
    a.files.record_intent(fid, 3, StepKind.ACTION, "r", "copy", {"target": str(other), "duplicate": True})
    a.files.record_intent(fid, 4, StepKind.ACTION, "r", "thumb", {"output_target": str(other), "output_duplicate": 1})
    other.write_bytes(b"a person's")
    assert b.files.screen(other, other.stat().st_size, other.stat().st_mtime_ns) is None


def _written(j: Journal, path: Path, content: bytes) -> Skip | None:
    path.write_bytes(content)
    return j.files.screen(path, path.stat().st_size, path.stat().st_mtime_ns)


def test_a_claim_holds_over_an_old_mark_and_beside_another_files_claim_until_its_own_result(a, b, tmp_path):
    """A path with a mark already (an output a person deleted, one a step overwrites) is claimed all the same; two
    files placing under one name at once each keep it claimed until their own result; a file that ends without
    its step's result (the rules changed across a crash) lets go of what the step claimed."""
    x, y = take(a, "x.jpg"), take(a, "y.jpg")
    thumb, same, left = tmp_path / "thumb.jpg", tmp_path / "same.jpg", tmp_path / "left.jpg"
    # an earlier output at thumb.jpg, marked, then deleted by a person
    a.files.record_intent(x, 1, StepKind.ACTION, "r", "thumb", {"output_target": str(thumb)})
    assert _written(a, thumb, b"old thumbnail") == Skip("written by rfwatch")
    a.files.finish_step(x, 1, StepKind.ACTION, "r", "thumb", True, {}, produced=[thumb])
    thumb.unlink()
    a.files.record_intent(x, 2, StepKind.ACTION, "r", "thumb", {"output_target": str(thumb)})
    assert _written(b, thumb, b"a new, longer thumbnail") == Skip("written by rfwatch")
    # x and y both aim at same.jpg; y's rename wins, x goes on to another name and finishes first
    a.files.record_intent(y, 1, StepKind.ACTION, "r", "copy", {"target": str(same)})
    a.files.record_intent(x, 3, StepKind.ACTION, "r", "copy", {"target": str(same)})
    assert _written(b, same, b"y's copy") == Skip("written by rfwatch")
    a.files.finish_step(x, 3, StepKind.ACTION, "r", "copy", True, {}, produced=[tmp_path / "same (1).jpg"])
    assert b.files.screen(same, same.stat().st_size, same.stat().st_mtime_ns) == Skip("written by rfwatch")
    a.files.finish_step(y, 1, StepKind.ACTION, "r", "copy", True, {}, produced=[same])
    assert b.files.screen(same, same.stat().st_size, same.stat().st_mtime_ns) == Skip("written by rfwatch")
    # the other order: the first to claim finishes first, elsewhere; the second's claim holds
    other = tmp_path / "other.jpg"
    a.files.record_intent(x, 4, StepKind.ACTION, "r", "copy", {"target": str(other)})
    a.files.record_intent(y, 2, StepKind.ACTION, "r", "copy", {"target": str(other)})
    a.files.finish_step(x, 4, StepKind.ACTION, "r", "copy", True, {}, produced=[tmp_path / "other (1).jpg"])
    assert _written(b, other, b"y's second copy") == Skip("written by rfwatch")
    a.files.finish_step(y, 2, StepKind.ACTION, "r", "copy", True, {}, produced=[other])
    # a step begun and never finished: the file's end lets go of its claim (a round ending in review, too)
    a.files.record_intent(y, 3, StepKind.ACTION, "r", "copy", {"target": str(left)})
    a.files.finish(y, FileState.DONE)
    assert _written(b, left, b"a person's photo") is None
    waiting = tmp_path / "waiting.jpg"
    a.files.record_intent(x, 5, StepKind.ACTION, "r", "copy", {"target": str(waiting)})
    a.files.wait_for_review(x, "waiting for review")
    assert _written(b, waiting, b"another photo") is None


def test_a_decision_a_daemon_began_to_apply_is_not_taken_back_as_unapplied(a, b, tmp_path):
    """A daemon died applying a decision (its decision step written, an action's intent claiming its target): the
    page cannot take it back as if nothing had happened (the file may have moved); whoever claims it next
    finishes the round, and the claim holds meanwhile."""
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red", {})
    review = Path("/srv/a/review/x.jpg")
    a.files.finish_step(fid, 1, StepKind.ACTION, "unsure", "review", True, {"to": str(review)}, path=review)
    a.files.wait_for_review(fid, "waiting for review: in review/")
    b.decisions.decide(fid, DecisionKind.LABEL, ("green",))
    target = tmp_path / "green" / "x.jpg"
    assert a.files.claim(fid) is not None
    round_start = a.files.get(fid).round_start
    a.files.finish_step(fid, round_start, StepKind.DECISION, "", "decision", True, {"kind": "label"})
    a.files.record_intent(fid, round_start + 1, StepKind.ACTION, "r", "move", {"target": str(target)})
    a.files.release(fid)  # (as its lease running out would)
    assert b.decisions.take_back_unapplied(fid) is None
    assert b.files.get(fid).state == FileState.DECIDED
    target.parent.mkdir()
    assert _written(b, target, b"moved before the crash") == Skip("written by rfwatch")
    # before any step of its round, a decision is taken back at once
    other = take(a, "y.jpg")
    a.files.classified(other, {"top": "red"}, "sha-y.jpg", "colors/1", "red", {})
    a.files.finish_step(other, 1, StepKind.ACTION, "unsure", "review", True, {"to": str(review)})
    a.files.wait_for_review(other, "waiting for review")
    b.decisions.decide(other, DecisionKind.LABEL, ("green",))
    assert b.decisions.take_back_unapplied(other) is not None and b.files.get(other).state == FileState.REVIEW


def test_a_claim_holds_while_its_holder_beats_and_lapses_when_it_stops(journal_url):
    a, b = open_as(journal_url, "host-a", lease=1.0), open_as(journal_url, "host-b", lease=1.0)
    try:
        fid = take(a)
        assert b.files.claim(fid) is None, "a live holder's file"
        assert fid not in b.files.claimable()
        # A works on the file for several leases: its heartbeat keeps the claim its own all along.
        alive = "SELECT {now} - started FROM holders WHERE id=?"
        wait_for(lambda: a.db.scalar(alive, (a.holder.id,)) > 3.5, timeout=10, what="three leases to pass")
        assert b.files.claim(fid) is None and fid not in b.files.claimable(), "a claim lapsed while its holder beat"
        a._heartbeat.stop()  # host A dies (its heartbeat stops): after the lease its claims are free
        row = wait_for(lambda: b.files.claim(fid), timeout=10, what="the lease to run out")
        assert row.holder == b.holder.id
        with pytest.raises(ClaimLost):  # A, back, may not carry on a file B holds now
            a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red", {})
        with pytest.raises(ClaimLost):  # nor journal a step of it, nor finish it
            a.files.record_intent(fid, 1, StepKind.ACTION, "sort", "move", {"target": str(INBOX / "y.jpg")})
        with pytest.raises(ClaimLost):
            a.files.finish(fid, FileState.FAILED, "late")
        assert b.files.steps(fid) == [] and b.files.get(fid).state == FileState.DETECTED
        b.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red", {})
        assert b.files.get(fid).state == FileState.CLASSIFIED
    finally:
        b.close()
        a.db.close()


KILLED_HOLDER = """
import os, sys
from pathlib import Path
from rfwatch.journal import Journal, Roots
j = Journal.open(sys.argv[1], host="host-a", roots=Roots({"inbox": Path("/srv/a/inbox")}))
fid = j.files.take(Path("/srv/a/inbox/x.jpg"), 10, 1, "sha", "colors/1")
print(fid, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_killed_process_of_this_host_lets_go_at_once(journal_url):
    """Same host, same pid namespace: a holder whose process is gone is dead without waiting for the lease."""
    out = subprocess.run([sys.executable, "-c", KILLED_HOLDER, journal_url], capture_output=True, text=True)
    assert out.returncode == -9, out.stderr
    fid = int(out.stdout)
    j = open_as(journal_url, "host-a")  # the lease is 60 s: only the reaping makes this immediate
    try:
        j.holders.reap_local("host-a")
        assert j.files.claimable() == [fid]
        assert j.files.claim(fid) is not None
    finally:
        j.close()


def test_another_hosts_process_is_never_judged_by_its_pid(journal_url):
    """A holder of another host (or another pid namespace) is alive while it beats, whatever its pid is here."""
    out = subprocess.run(
        [sys.executable, "-c", KILLED_HOLDER.replace('host="host-a"', 'host="elsewhere"'), journal_url],
        capture_output=True,
        text=True,
    )
    fid = int(out.stdout)
    j = open_as(journal_url, "host-a")
    try:
        j.holders.reap_local("host-a")
        assert j.files.claim(fid) is None, "claims of another host lapse with their lease only"
    finally:
        j.close()


def test_a_clean_stop_releases_claims_at_once(a, b):
    fid = take(a)
    a.close()
    assert b.files.claim(fid) is not None


def test_drop_forgets_a_row_taken_for_a_file_that_vanished(a):
    fid = take(a)
    a.files.drop(fid)
    with pytest.raises(KeyError):
        a.files.get(fid)
    assert isinstance(take(a), int)


def test_a_file_waiting_for_review_or_being_undone_keeps_its_path(a, b):
    """Only one row rfwatch works on may name a path: new content there is not taken while a file waits for a
    person or an undo works on it."""
    waiting = take(a, "w.jpg")
    a.files.classified(waiting, {"top": "red"}, "sha-w.jpg", "colors/1", "red", {})
    a.files.wait_for_review(waiting, "waiting for review")
    assert take(b, "w.jpg", size=11) == Skip("being processed", waiting)
    assert b.files.screen(INBOX / "w.jpg", 11, 1) == Skip("being processed", waiting)
    undoing = take(a, "u.jpg")
    a.files.finish(undoing, FileState.DONE)
    assert a.undo.claim(a.files.get(undoing))
    assert take(b, "u.jpg", size=11) == Skip("being processed", undoing)


# --- steps ----------------------------------------------------------------------------------------------------


def test_a_step_is_written_with_its_intent_and_finished_with_the_files_state(a):
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red", {})
    assert a.files.resume_step(fid, 1) == (None, None)
    a.files.record_intent(fid, 1, StepKind.ACTION, "sort", "move", {"target": str(INBOX / "sub" / "x.jpg")})
    state, intent = a.files.resume_step(fid, 1)
    assert (state, intent) == ("pending", {"target": str(INBOX / "sub" / "x.jpg")})
    dest = Path("/elsewhere/x.jpg")
    a.files.finish_step(
        fid, 1, StepKind.ACTION, "sort", "move", True, {"to": str(dest)}, path=dest, final=FileState.DONE
    )
    row = a.files.get(fid)
    assert (row.state, row.path, row.source, row.rule, row.holder) == (
        FileState.DONE,
        dest,
        INBOX / "x.jpg",
        "sort",
        None,
    )
    (step,) = a.files.steps(fid)
    assert (step.kind, step.state, step.result, step.host) == (StepKind.ACTION, "done", {"to": str(dest)}, "host-a")
    assert "move done" in " ".join(m for _, m, _ in a.files.events(fid))


def test_paths_below_a_named_root_read_as_each_hosts_own(journal_url):
    """One share at /srv/a/inbox on host A and /mnt/b/inbox on host B: the same file, steps included."""
    a = open_as(journal_url, "host-a", roots={"inbox": INBOX})
    b = open_as(journal_url, "host-b", roots={"inbox": Path("/mnt/b/inbox")})
    try:
        fid = take(a, "sub/x.jpg")
        a.files.record_intent(fid, 1, StepKind.ACTION, "r", "move", {"target": str(INBOX / "done" / "x.jpg")})
        row = b.files.get(fid)
        assert row.source == Path("/mnt/b/inbox/sub/x.jpg") and row.watch_root == Path("/mnt/b/inbox")
        assert b.files.resume_step(fid, 1)[1] == {"target": "/mnt/b/inbox/done/x.jpg"}
        assert b.files.history_for(Path("/mnt/b/inbox/sub/x.jpg"))[0].id == fid
        # one file, wherever it is mounted: host B cannot take it as new at its own path
        again = b.files.take(Path("/mnt/b/inbox/sub/x.jpg"), 10, 1, "sha-sub/x.jpg", "colors/1")
        assert again == Skip("being processed", fid)
    finally:
        a.close()
        b.close()


def test_requeue_changes_only_the_states_asked_for(a, b):
    fid = take(a)
    a.files.finish(fid, FileState.FAILED, "boom")
    assert b.files.requeue(fid, (FileState.UNDONE,)) is None, "not undone: left alone"
    row = b.files.requeue(fid, (FileState.FAILED,))
    assert row.state == FileState.DETECTED and row.holder is None
    assert b.files.requeue(fid, (FileState.FAILED,)) is None, "taken meanwhile: not queued twice"


def test_identical_content_is_classified_once(a):
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red", {"inference_id": "1"})
    assert a.files.cached_prediction("sha-x.jpg", "colors/1") == {"top": "red"}
    assert a.files.cached_prediction("sha-x.jpg", "colors/2") is None


# --- decisions ---------------------------------------------------------------------------------------------------


def test_a_decision_is_taken_once(a, b):
    fid = take(a)
    a.files.classified(fid, {"top": "red"}, "sha-x.jpg", "colors/1", "red", {})
    with pytest.raises(NotWaiting):
        b.decisions.decide(fid, DecisionKind.LABEL, ("green",))
    review = Path("/srv/a/review/x.jpg")  # the review action's step, as the pipeline journals it
    a.files.finish_step(fid, 1, StepKind.ACTION, "unsure", "review", True, {"to": str(review)}, path=review)
    a.files.wait_for_review(fid, "waiting for review: in review/")
    assert [r.id for r in b.decisions.waiting()] == [fid] and b.decisions.count_waiting() == 1
    decision = b.decisions.decide(fid, DecisionKind.LABEL, ("green",), by="page")
    assert decision.host == "host-b"
    with pytest.raises(AlreadyDecided):
        a.decisions.decide(fid, DecisionKind.REJECT)
    assert a.files.get(fid).state == FileState.DECIDED and a.decisions.latest(fid).classes == ("green",)
    assert a.files.claim(fid) is not None  # a decided file is work again, for whoever claims it


# --- undo -------------------------------------------------------------------------------------------------------------


def test_an_undo_claim_compares_state_and_time(a, b):
    fid = take(a)
    a.files.finish(fid, FileState.DONE)
    row = b.files.get(fid)
    stale = a.files.get(fid)
    assert b.undo.claim(row)
    assert not a.undo.claim(stale), "another undo holds it"
    assert not a.undo.claim(a.files.get(fid)), "chosen after B claimed it: B's undo is alive and holds it"
    b.undo.finish_step(fid, 1, "move", {"outcome": "undone"})
    b.undo.finish(fid, INBOX / "x.jpg", "undone", None, None)
    assert a.files.get(fid).state == FileState.UNDONE and a.undo.closed(fid) == {1}


def test_an_interrupted_undo_is_given_up_only_when_its_holder_is_gone(journal_url):
    a, b = open_as(journal_url, "host-a", lease=1.0), open_as(journal_url, "host-b", lease=1.0)
    try:
        fid = take(a)
        a.files.finish(fid, FileState.DONE)
        assert a.undo.claim(a.files.get(fid))
        row = b.files.get(fid)
        assert not b.undo.give_up(row), "an undo works on it"
        a._heartbeat.stop()
        wait_for(lambda: b.undo.give_up(row), timeout=10, what="the undo's lease to run out")
        assert b.files.get(fid).state == FileState.UNDONE
    finally:
        b.close()
        a.db.close()


# --- the schema ------------------------------------------------------------------------------------------------------


def test_an_older_rfwatch_refuses_a_newer_schema_naming_both_versions(journal_url):
    j = open_as(journal_url)
    j.db.transact(lambda tx: tx.run("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),)))
    j.close()
    with pytest.raises(SchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"):
        open_as(journal_url)


def test_the_journal_id_is_stable_and_delivery_ids_derive_from_it(journal_url):
    first = open_as(journal_url)
    ident, key = first.id, first.delivery_id(7, 2, "webhook")
    first.close()
    again = open_as(journal_url, "host-b")
    try:
        assert again.id == ident and again.delivery_id(7, 2, "webhook") == key
    finally:
        again.close()


def test_a_transaction_the_database_rolls_back_is_run_again(request):
    """PostgreSQL rolls a transaction back when a concurrent one changed what it read (a serialization failure):
    the transition is run again, on what is committed now, instead of failing."""
    url = request.getfixturevalue("pg_cluster").new_database()
    a, b = open_as(url, "host-a"), open_as(url, "host-b")
    try:
        a.db.transact(lambda tx: tx.run("INSERT INTO meta (key, value) VALUES ('probe', '0')"))
        calls = []

        def bump(tx):
            calls.append(tx.scalar("SELECT value FROM meta WHERE key='probe'"))
            if len(calls) == 1:  # the first attempt reads, then another process changes the row under it
                b.db.transact(lambda other: other.run("UPDATE meta SET value='b' WHERE key='probe'"))
            tx.run("UPDATE meta SET value=? WHERE key='probe'", (calls[-1] + "+a",))
            return len(calls)

        def serializable(tx):
            tx.run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return bump(tx)

        assert a.db.transact(serializable) == 2
        assert calls == ["0", "b"] and a.db.scalar("SELECT value FROM meta WHERE key='probe'") == "b+a"
    finally:
        a.close()
        b.close()


class _Lost(Exception):
    pass


def test_a_failed_check_or_statement_commits_nothing_of_its_transaction(a):
    """On PostgreSQL a transaction's statements and checks go to the server without waiting for each answer
    (pipeline mode) and COMMIT goes with them: a check that changed no row, or a statement that failed, must
    still roll all of it back, statements before and after it included, and leave the connection fit for the
    next transaction."""
    count = "SELECT COUNT(*) FROM meta WHERE key LIKE 't-%'"
    insert = "INSERT INTO meta (key, value) VALUES (?, ?)"
    missing = ("UPDATE meta SET value=? WHERE key=?", ("x", "no such key"), _Lost)

    def check_between(tx):
        tx.send(insert, ("t-before", "1"))
        tx.check(*missing)
        tx.send(insert, ("t-after", "1"))

    def check_then_wait(tx):
        tx.check(*missing)
        tx.run("UPDATE meta SET value=value WHERE key=?", ("t-none",))  # waits: the failed check is raised here
        tx.send(insert, ("t-late", "1"))

    def duplicate(tx):
        tx.send(insert, ("t-dup", "1"))
        tx.send(insert, ("t-dup", "2"))  # the primary key refuses it

    for _ in range(3):  # more times than the pool has connections, each given back after a failure
        for fn in (check_between, check_then_wait):
            with pytest.raises(_Lost):
                a.db.transact(fn)
        with pytest.raises(Exception, match="(?i)unique|duplicate"):
            a.db.transact(duplicate)
        assert a.db.scalar(count) == 0

    class _Second(Exception):
        """The second check's own error: the one raised when the second of two checks fails."""

    def second_of_two_fails(tx):
        tx.send(insert, ("t-first", "1"))
        tx.check("UPDATE meta SET value=? WHERE key=?", ("2", "t-first"), _Lost)  # changes its row
        tx.check("UPDATE meta SET value=? WHERE key=?", ("x", "no such key"), _Second)

    with pytest.raises(_Second):  # not the first check's error: the server answered that one
        a.db.transact(second_of_two_fails)
    assert a.db.scalar(count) == 0

    def passing(tx):
        tx.send(insert, ("t-ok", "1"))
        tx.check("UPDATE meta SET value=? WHERE key=?", ("2", "t-ok"), _Lost)
        return tx.scalar("SELECT value FROM meta WHERE key=?", ("t-ok",))

    assert a.db.transact(passing) == "2"
    assert a.db.scalar("SELECT value FROM meta WHERE key='t-ok'") == "2" and a.db.scalar(count) == 1


def test_a_copy_keeps_the_journal_id_and_pending_deliveries(tmp_path, journal_url):
    """rfwatch journal copy into an empty database: the journal id, the files and the pending deliveries (same
    ids, no lease) carry over; a second copy copies nothing twice."""
    src_url = str(tmp_path / "source" / "journal.db")
    src = open_as(src_url)
    fid = take(src)
    key = src.delivery_id(fid, 1, "webhook")
    queued = [QueuedDelivery("webhook", "http://127.0.0.1:9/hook", b"{}", key, "webhook")]

    def enqueue(tx):  # the webhook the step queued, in the step's transaction
        src.outbox.enqueue(tx, fid, queued)

    src.files.finish_step(fid, 1, StepKind.ACTION, "r", "webhook", True, {}, final=FileState.DONE, also=enqueue)
    src.outbox.record_deliverers({"webhook": "rfwatch.default_plugins.webhook"})
    src.close()
    src, dst = open_as(src_url), open_as(journal_url, "host-b")
    try:
        report = copy_journal(src, dst)
        assert (report.files, report.same_ids) == (1, True)
        again = open_as(journal_url, "host-c")
        assert again.id == src.id and again.delivery_id(fid, 1, "webhook") == key
        row = again.outbox.get(key)
        assert (row["state"], row["lease"], row["file_id"]) == ("pending", None, fid)
        assert again.files.get(fid).state == FileState.DONE
        # status on the copy: the counts (the triggers counted the rows copied in) and each delivery's plugin
        assert again.files.counts() == {"done": 1}
        assert again.outbox.deliverers() == {"webhook": "rfwatch.default_plugins.webhook"}
        again.close()
        second = copy_journal(src, dst)
        assert (second.files, second.already) == (0, 1)
        assert dst.db.scalar("SELECT COUNT(*) FROM files") == 1
        assert dst.files.counts() == {"done": 1}  # nothing counted twice
    finally:
        src.close()
        dst.close()


def test_a_folder_beside_a_named_root_is_not_below_it():
    roots = Roots({"inbox": INBOX})
    beside = Path("/srv/a/inbox-old/x.jpg")
    assert (roots.locate(beside).root, roots.locate(beside).rel) == ("", os.fsencode(beside))
    assert roots.to_portable({"to": str(beside)}) == {"to": str(beside)}
    assert roots.locate(INBOX / "x.jpg").rel == b"x.jpg"


def test_model_facts_fetched_again_replace_the_cached_ones(a):
    a.facts.put("colors/1", {"classes": ["red"]}, 1.0)
    a.facts.put("colors/1", {"classes": ["red", "green"]}, 2.0)
    assert a.facts.get("colors/1") == {"classes": ["red", "green"]}


def test_change_feed_hears_another_process(a, b):
    feed = a.changes()
    try:
        feed.changed()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and feed.changed():
            time.sleep(0.05)  # drain whatever opening the journal said
        fid = take(b)
        b.files.finish(fid, FileState.FAILED, "x")
        b.files.requeue(fid, (FileState.FAILED,))
        wait_for(feed.changed, timeout=5, what="the change to be heard")
    finally:
        feed.close()


LEGACY = """
CREATE TABLE files (id INTEGER PRIMARY KEY, path BLOB NOT NULL, source BLOB NOT NULL, watch_root BLOB NOT NULL,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL,
  prediction TEXT, rule TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, created REAL NOT NULL,
  updated REAL NOT NULL, support TEXT, round_start INTEGER NOT NULL DEFAULT 1);
CREATE TABLE steps (file_id INTEGER NOT NULL, seq INTEGER NOT NULL, rule TEXT NOT NULL, action TEXT NOT NULL,
  state TEXT NOT NULL, intent TEXT, result TEXT, updated REAL NOT NULL, PRIMARY KEY (file_id, seq));
CREATE TABLE predictions (sha256 TEXT NOT NULL, model TEXT NOT NULL, prediction TEXT NOT NULL, created REAL NOT NULL,
  PRIMARY KEY (sha256, model));
CREATE TABLE produced (path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, file_id INTEGER);
CREATE TABLE events (file_id INTEGER NOT NULL, at REAL NOT NULL, message TEXT NOT NULL);
CREATE TABLE outbox (id TEXT PRIMARY KEY, url TEXT NOT NULL, body BLOB NOT NULL, state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_status INTEGER, last_error TEXT,
  created REAL NOT NULL, delivered REAL, plugin TEXT NOT NULL DEFAULT 'rfwatch.default_plugins.webhook',
  kind TEXT NOT NULL DEFAULT 'webhook', file_id INTEGER, result TEXT, lease TEXT);
PRAGMA user_version=2;
"""


def test_a_journal_of_rfwatch_0_1_is_upgraded_in_place(tmp_path):
    """Paths were absolute and steps named by action: the upgrade keeps every file known and every step undoable."""
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    db.executescript(LEGACY)
    src, dst = os.fsencode(INBOX / "x.jpg"), os.fsencode("/archive/red/x.jpg")
    db.execute(
        "INSERT INTO files VALUES (1,?,?,?,10,1,'sha','colors/1','done','{\"top\": \"red\"}','sort',1,NULL,1,2,NULL,1)",
        (dst, src, os.fsencode(INBOX)),
    )
    result = '{"outcome": "moved", "from": "/srv/a/inbox/x.jpg", "to": "/archive/red/x.jpg"}'
    db.execute("INSERT INTO steps VALUES (1,1,'sort','move','done',NULL,?,2)", (result,))
    db.execute("INSERT INTO steps VALUES (1,0,'','quarantine','done',NULL,NULL,2)")
    db.execute("INSERT INTO events VALUES (1, 1, 'detected')")
    db.execute(
        "INSERT INTO outbox (id, url, body, state, next_at, created, lease) VALUES ('m', 'u', x'01', 'pending', 9e9, 1, 'pid 4')"
    )
    db.commit()
    db.close()
    j = Journal.open(str(path), roots=Roots({"inbox": INBOX}))
    try:
        row = j.files.get(1)
        assert (row.root, row.source, row.path, row.state) == (
            "inbox",
            INBOX / "x.jpg",
            Path("/archive/red/x.jpg"),
            "done",
        )
        kinds = {s.seq: s.kind for s in j.files.steps(1)}
        assert kinds == {0: StepKind.QUARANTINE, 1: StepKind.ACTION}
        assert j.files.steps(1)[1].result["from"] == str(INBOX / "x.jpg")
        assert j.files.screen(Path("/archive/red/x.jpg"), 10, 1) == Skip("already done", 1)
        assert j.outbox.get("m")["next_at"] == 0 and j.outbox.get("m")["lease"] is None  # a 0.1 lease is no lease
        assert j.id == str(path)  # delivery ids of steps redone after the upgrade are the ones 0.1 gave
    finally:
        j.close()


def test_a_history_line_must_be_text(a):
    """The time is keyword-only: a time passed where a line goes (a merge once did) is refused, not journaled."""
    fid = take(a)
    with pytest.raises(TypeError, match="event lines must be text"):
        a.db.transact(lambda tx: a.files.event(tx, fid, "detected", 12.5))
    assert [m for _, m, _ in a.files.events(fid)] == [f"detected {INBOX / 'x.jpg'}"]


# --- counting files without counting them ------------------------------------------------------------------


def _counted(j: Journal) -> dict[str, int]:
    """The files per state, counted the slow way: what counts() must always equal."""
    return {r["state"]: int(r["n"]) for r in j.db.all("SELECT state, COUNT(*) AS n FROM files GROUP BY state")}


def test_counts_follow_every_change_of_state_and_a_fold_keeps_them(a, b):
    ids = [take(a, f"f{i}.jpg") for i in range(6)]
    assert a.files.counts() == _counted(a) == {"detected": 6}
    for fid in ids[:4]:
        a.files.classified(fid, {"top": "red"}, "sha", "colors/1", "red 0.9", {})
    a.files.finish(ids[0], FileState.DONE)
    a.files.finish(ids[1], FileState.FAILED, error="no")
    assert b.files.requeue(ids[1], (FileState.FAILED,)) is not None  # another process's change counts the same
    a.files.drop(ids[5])  # a row forgotten
    assert b.files.counts() == _counted(a)
    assert sum(b.files.counts().values()) == 5
    assert a.files.fold_counts(above=0)
    assert a.db.scalar("SELECT COUNT(*) FROM file_counts") == len(_counted(a))  # one row per state left
    assert b.files.counts() == _counted(a)
    assert not a.files.fold_counts()  # a few rows: nothing to fold
    a.files.finish(ids[2], FileState.DONE)
    assert a.files.counts() == _counted(a)


def test_folds_running_beside_transitions_count_nothing_twice(journal_url):
    """Two processes change states while two others fold over and over: the sums stay exact (on PostgreSQL a fold
    is one statement, and a fold running at once blocks on the same rows, then finds them gone)."""
    import threading

    workers = [open_as(journal_url, f"host-{n}") for n in range(4)]
    try:
        stop = threading.Event()
        errors: list[BaseException] = []

        def change(j: Journal, prefix: str) -> None:
            try:
                for i in range(60):
                    fid = take(j, f"{prefix}{i}.jpg")
                    j.files.classified(fid, {"top": "red"}, "sha", "colors/1", "red 0.9", {})
                    j.files.finish(fid, FileState.DONE if i % 3 else FileState.UNMATCHED)
            except BaseException as exc:  # reported below
                errors.append(exc)

        def fold(j: Journal) -> None:
            try:
                while not stop.is_set():
                    j.files.fold_counts(above=0)
            except BaseException as exc:
                errors.append(exc)

        folders = [threading.Thread(target=fold, args=(j,)) for j in workers[2:]]
        changers = [threading.Thread(target=change, args=(j, p)) for j, p in zip(workers[:2], "pq", strict=True)]
        for t in folders + changers:
            t.start()
        for t in changers:
            t.join()
        stop.set()
        for t in folders:
            t.join()
        assert errors == []
        assert workers[0].files.counts() == _counted(workers[0]) == {"done": 80, "unmatched": 40}
    finally:
        for j in workers:
            j.close()


def test_a_schema_4_journal_is_upgraded_with_its_counts(journal_url):
    j = open_as(journal_url)
    fid = take(j)
    take(j, "y.jpg")
    j.files.classified(fid, {"top": "red"}, "sha", "colors/1", "red 0.9", {})
    j.files.finish(fid, FileState.DONE)
    j.db.transact(lambda tx: back_to_schema_4(tx, j.dialect))
    j.close()
    again = open_as(journal_url)
    try:
        assert again.db.scalar("SELECT value FROM meta WHERE key='schema_version'") == str(SCHEMA_VERSION) == "7"
        assert again.files.counts() == {"done": 1, "detected": 1}
        again.files.finish(take(again, "z.jpg"), FileState.FAILED, error="x")
        assert again.files.counts() == _counted(again) == {"done": 1, "detected": 1, "failed": 1}  # triggers too
    finally:
        again.close()


def test_the_plugin_that_delivers_each_kind_is_remembered_for_status(a, b):
    a.outbox.record_deliverers({"webhook": "rfwatch.default_plugins.webhook", "chat": "chatplug"})
    b.outbox.record_deliverers({"chat": "chatplug2"})  # a later process with another plugin for it
    assert a.outbox.deliverers() == {"webhook": "rfwatch.default_plugins.webhook", "chat": "chatplug2"}


def test_an_upgrade_to_schema_5_counts_a_change_committed_while_it_runs(request):
    """PostgreSQL: an older rfwatch still writing while a newer one upgrades the shared journal. A state change
    under way when the upgrade starts commits while the upgrade waits for it: it must be in the counts (counted
    before the triggers existed and committed after the count, it would be in neither, for good)."""
    import threading

    import psycopg

    url = request.getfixturevalue("pg_cluster").new_database()
    j = open_as(url)
    fid = take(j)
    j.db.transact(lambda tx: back_to_schema_4(tx, j.dialect))
    j.close()
    writer = psycopg.connect(url)  # the older rfwatch, in the middle of a transition
    writer.execute("UPDATE files SET state='failed' WHERE id=%s", (fid,))
    upgraded: list[Journal] = []
    upgrade = threading.Thread(target=lambda: upgraded.append(open_as(url, "host-new")))
    upgrade.start()
    watcher = psycopg.connect(url, autocommit=True)
    try:
        wait_for(
            lambda: watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type='Lock' AND datname=current_database()"
            ).fetchone(),
            timeout=20,
            what="the upgrade waiting for the writer",
        )
        writer.commit()
        upgrade.join(timeout=30)
        (new,) = upgraded
        assert new.files.counts() == _counted(new) == {"failed": 1}
        new.close()
    finally:
        writer.close()
        watcher.close()


def test_why_files_wait_is_the_newest_error_among_them_not_the_newest_files(a):
    """status's "waiting:" line. A daemon puts files back untried while the API refuses them (they wait at its gate
    with no error of their own), so the newest waiting file may carry none: the reason is the newest error."""
    assert a.files.latest_error(FileState.DETECTED) is None
    tried = take(a, "tried.jpg")
    a.files.attempt_failed(tried, "HTTP 402: the workspace is out of credits")
    time.sleep(0.01)  # the untried file is the one changed last
    untried = take(a, "untried.jpg")
    assert a.files.recent((FileState.DETECTED,), limit=1)[0].id == untried
    assert a.files.latest_error(FileState.DETECTED) == "HTTP 402: the workspace is out of credits"

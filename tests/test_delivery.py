"""The outbox shared by processes: a daemon and `rfwatch undo` (or `rfwatch review`) empty the same table.

Real processes on one journal, delivering over HTTP to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from helpers import wait_for
from webhook_receiver import Receiver

from rfwatch.crashpoints import CRASH_EXIT
from rfwatch.journal import Journal
from rfwatch.processing.delivery import Delivered, Deliveries, QueuedDelivery

#: One process emptying the outbox, as a daemon does: 4 threads, each row posted with its id.
SENDER = """
import sys, time
import requests
from rfwatch.processing.delivery import Deliveries, Delivered, Retry
from rfwatch.journal import Journal

def post(d):
    resp = requests.post(d.target, data=d.payload, headers={"webhook-id": d.id}, timeout=10)
    return Delivered(resp.status_code) if resp.ok else Retry(f"HTTP {resp.status_code}")

outbox = Deliveries(Journal(sys.argv[1]), deliverers={"test": ("test", post)}, threads=4)
outbox.start()
outbox.flush(time.monotonic() + float(sys.argv[2]))
outbox.stop()
"""


def _queue(journal_path: Path, url: str, n: int) -> list[str]:
    journal = Journal(journal_path)
    outbox = Deliveries(journal)
    keys = [f"msg_{i:04d}" for i in range(n)]
    with journal.transaction() as db:
        outbox.write(
            db, None, [QueuedDelivery("test", url, f'{{"n": {i}}}'.encode(), k, "test") for i, k in enumerate(keys)]
        )
    journal.close()
    return keys


def _sender(journal_path: Path, seconds: float, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SENDER, str(journal_path), str(seconds)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _states(journal_path: Path) -> Counter:
    journal = Journal(journal_path)
    try:
        return Counter(r["state"] for r in journal.fetch_all("SELECT state FROM outbox"))
    finally:
        journal.close()


def test_an_answer_is_not_recorded_over_another_process_lease(tmp_path):
    """A lease that ran out and was taken by another process: the late answer leaves the row to that process."""
    db = tmp_path / "journal.db"
    (key,) = _queue(db, "http://127.0.0.1:9/hook", 1)
    journal = Journal(db)
    with journal.transaction() as tx:
        tx.execute("UPDATE outbox SET lease='pid 1 another' WHERE id=?", (key,))
    sent = []
    outbox = Deliveries(journal, deliverers={"test": ("test", lambda d: sent.append(d.id) or Delivered(200))})
    outbox.deliver_one(journal.fetch_one("SELECT * FROM outbox WHERE id=?", (key,)))
    row = journal.fetch_one("SELECT state, lease FROM outbox WHERE id=?", (key,))
    assert sent == [key] and (row["state"], row["lease"]) == ("pending", "pid 1 another")
    journal.close()


def test_two_processes_emptying_one_outbox_send_each_delivery_once(tmp_path):
    receiver = Receiver().start()
    receiver.delay = 0.01  # a receiver that takes a moment: both processes are at work at once
    try:
        db = tmp_path / "journal.db"
        keys = _queue(db, receiver.url, 200)
        senders = [_sender(db, 60), _sender(db, 60)]
        for proc in senders:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
        ids = Counter(d.headers["webhook-id"] for d in receiver.deliveries)
        assert set(ids) == set(keys)
        assert [k for k, n in ids.items() if n > 1] == [], "a delivery was sent by both processes"
        assert _states(db) == Counter({"delivered": 200})
        assert len(receiver.deliveries) == 200
    finally:
        receiver.stop()


def test_a_delivery_leased_by_a_killed_process_goes_out_when_the_next_one_starts(tmp_path):
    receiver = Receiver().start()
    try:
        db = tmp_path / "journal.db"
        (key,) = _queue(db, receiver.url, 1)
        # killed after the receiver had it, before the answer was recorded: the row is still leased to it
        dead = _sender(db, 30, env=dict(os.environ, RFWATCH_CRASH_AT="delivery.after_send:1"))
        dead.communicate(timeout=60)
        assert dead.returncode == CRASH_EXIT
        assert _states(db) == Counter({"pending": 1}) and len(receiver.deliveries) == 1
        started = time.monotonic()
        alive = _sender(db, 30)
        alive.communicate(timeout=60)
        # not after the lease's 10 minutes: at once, and (at least once, as documented) the receiver hears it again
        assert time.monotonic() - started < 20
        wait_for(lambda: _states(db) == Counter({"delivered": 1}), timeout=5, what="delivered by the next process")
        assert [d.headers["webhook-id"] for d in receiver.deliveries] == [key, key]
        journal = Journal(db)
        row = journal.fetch_one("SELECT body, lease FROM outbox WHERE id=?", (key,))
        journal.close()
        assert bytes(row["body"]) == b"" and row["lease"] is None  # delivered: the payload is not kept
    finally:
        receiver.stop()


def test_a_deliverer_keeps_state_between_attempts_and_failed_rows_can_be_queued_again(tmp_path):
    """Delivery.keep / Delivery.state (an upload's image id), failed_by_plugin and requeue_failed: the methods the
    review uploads need from the outbox, pinned for the journal's rebuild."""
    from rfwatch.processing.delivery import Failed, Retry

    db = tmp_path / "journal.db"
    (key,) = _queue(db, "http://127.0.0.1:9/hook", 1)
    seen: list[dict | None] = []

    def two_calls(d):
        seen.append(d.state)
        if d.state is None:
            d.keep({"image_id": "abc"})  # the first call got this far, then the second one failed
            return Retry("annotate: no answer")
        return Failed("refused for good")

    journal = Journal(db)
    outbox = Deliveries(journal, deliverers={"test": ("the-plugin", two_calls)})
    assert outbox.failed_by_plugin() == {"the-plugin": 0}
    outbox.deliver_one(journal.fetch_one("SELECT * FROM outbox WHERE id=?", (key,)))
    journal.close()
    journal = Journal(db)  # a restart: the state is in the row
    outbox = Deliveries(journal, deliverers={"test": ("the-plugin", two_calls)})
    outbox.deliver_one(journal.fetch_one("SELECT * FROM outbox WHERE id=?", (key,)))
    assert seen == [None, {"image_id": "abc"}]
    assert outbox.failed_by_plugin() == {"the-plugin": 1}
    assert Deliveries(journal).failed_by_plugin() == {"test": 1}  # without deliverers: the plugin column

    # A keep from a process whose lease was taken over is not written.
    with journal.transaction() as tx:
        tx.execute("UPDATE outbox SET state='pending', lease='pid 1 another', result=NULL WHERE id=?", (key,))
    outbox._delivery(journal.fetch_one("SELECT * FROM outbox WHERE id=?", (key,))).keep({"image_id": "zzz"})
    assert journal.fetch_one("SELECT result FROM outbox WHERE id=?", (key,))["result"] is None
    with journal.transaction() as tx:
        tx.execute("UPDATE outbox SET state='failed', lease=NULL, result='{\"image_id\": \"abc\"}' WHERE id=?", (key,))

    # The payload stayed with the failed row: queued again, from scratch (no state, no attempts).
    with journal.transaction() as tx:  # a row that failed before failed rows kept their payload
        tx.execute(
            "INSERT INTO outbox (id, plugin, kind, url, body, state, next_at, created) "
            "VALUES ('old', 'test', 'test', 'x', x'', 'failed', 0, 0)"
        )
    assert outbox.requeue_failed("test") == (1, 1)
    row = journal.fetch_one("SELECT state, attempts, result, body FROM outbox WHERE id=?", (key,))
    assert (row["state"], row["attempts"], row["result"]) == ("pending", 0, None) and bytes(row["body"])
    assert outbox.untried([key]) == 1
    journal.close()

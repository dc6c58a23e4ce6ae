"""The outbox shared by processes: daemons, `rfwatch undo` and `rfwatch review`, on one host or several, empty the
same table. Real processes on one journal (SQLite and PostgreSQL), delivering over HTTP to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from helpers import wait_for
from webhook_receiver import Receiver

from rfwatch.crashpoints import CRASH_EXIT
from rfwatch.host.delivery import Delivered, Failed, Gone, Retry
from rfwatch.journal import Journal, QueuedDelivery
from rfwatch.processing.delivery import Deliveries

#: One process emptying the outbox, as a daemon does: 4 threads, each row posted with its id.
SENDER = """
import sys, time
import requests
from rfwatch.host.delivery import Delivered, Retry
from rfwatch.journal import Journal
from rfwatch.processing.delivery import Deliveries

def post(d):
    resp = requests.post(d.target, data=d.payload, headers={"webhook-id": d.id}, timeout=10)
    return Delivered(resp.status_code) if resp.ok else Retry(f"HTTP {resp.status_code}")

journal = Journal.open(sys.argv[1], host=sys.argv[3])
outbox = Deliveries(journal, deliverers={"test": ("test", post)}, threads=4)
outbox.start()
outbox.flush(time.monotonic() + float(sys.argv[2]))
outbox.stop()
journal.close()
"""


def _queue(url: str, target: str, n: int) -> list[str]:
    journal = Journal.open(url)
    keys = [f"msg_{i:04d}" for i in range(n)]
    queued = [QueuedDelivery("test", target, f'{{"n": {i}}}'.encode(), k, "test") for i, k in enumerate(keys)]
    journal.db.transact(lambda tx: journal.outbox.enqueue(tx, None, queued))
    journal.close()
    return keys


def _sender(url: str, seconds: float, host: str = "host-a", env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SENDER, url, str(seconds), host],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _states(url: str) -> Counter:
    journal = Journal.open(url)
    try:
        return Counter(d["state"] for d in journal.outbox.list())
    finally:
        journal.close()


def test_an_answer_is_not_recorded_over_another_process_lease(journal_url):
    """A row leased to another live process: this process's late answer leaves the row to that one."""
    (key,) = _queue(journal_url, "http://127.0.0.1:9/hook", 1)
    other, mine = Journal.open(journal_url, host="other"), Journal.open(journal_url, host="mine")
    try:
        leased = other.outbox.claim()
        assert leased is not None and leased.id == key
        assert mine.outbox.claim() is None, "a row leased to a live process is not leased again"
        sent = []
        outbox = Deliveries(mine, deliverers={"test": ("test", lambda d: sent.append(d.id) or Delivered(200))})
        outbox.deliver_one(leased)
        row = mine.outbox.get(key)
        assert sent == [key] and (row["state"], row["lease"]) == ("pending", other.holder.id)
    finally:
        other.close()
        mine.close()


@pytest.mark.parametrize(
    "late_answer",
    [Retry("HTTP 503", status=503), Failed("HTTP 400", status=400), Delivered(200)],
    ids=["retry", "failed", "delivered"],
)
def test_a_late_answer_leaves_a_row_another_process_is_delivering(journal_url, late_answer):
    """Whatever a late answer says (one to retry, a failure, a success), it is recorded only while the row is
    still leased to this process: a row another process (really running) has claimed stays its own."""
    receiver = Receiver().start()
    receiver.delay = 2.0  # the other process holds its lease while the receiver takes its time
    try:
        (key,) = _queue(journal_url, receiver.url, 1)
        other = _sender(journal_url, 30)
        journal = Journal.open(journal_url, host="host-b")
        outbox = Deliveries(journal, deliverers={"test": ("test", lambda d: late_answer)})
        try:
            leased = wait_for(lambda: (journal.outbox.get(key) or {}).get("lease"), timeout=20, what="a lease")
            assert leased.startswith(f"host-a/{other.pid}/"), leased  # a host id, a pid and a token
            row = journal.outbox.get(key)
            from rfwatch.journal import DeliveryRow

            late = DeliveryRow(key, "test", "test", row["url"], bytes(row["body"]), 0, None, row["created"])
            outbox.deliver_one(late)  # this process answers late, for a row it does not hold
            row = journal.outbox.get(key)
            assert (row["state"], row["lease"], row["attempts"]) == ("pending", leased, 0), dict(row)
            out, err = other.communicate(timeout=60)
            assert other.returncode == 0, err
            row = journal.outbox.get(key)
            assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 204)
            assert [d.headers["webhook-id"] for d in receiver.deliveries] == [key]
        finally:
            journal.close()
            if other.poll() is None:
                other.kill()
                other.wait()
    finally:
        receiver.stop()


def test_two_processes_emptying_one_outbox_send_each_delivery_once(journal_url):
    """Two processes (two hosts, as far as the journal knows) share the outbox: every delivery goes out once."""
    receiver = Receiver().start()
    receiver.delay = 0.01  # a receiver that takes a moment: both processes are at work at once
    try:
        keys = _queue(journal_url, receiver.url, 200)
        senders = [_sender(journal_url, 60, host="host-a"), _sender(journal_url, 60, host="host-b")]
        for proc in senders:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
        ids = Counter(d.headers["webhook-id"] for d in receiver.deliveries)
        assert set(ids) == set(keys)
        assert [k for k, n in ids.items() if n > 1] == [], "a delivery was sent by both processes"
        assert _states(journal_url) == Counter({"delivered": 200})
        assert len(receiver.deliveries) == 200
    finally:
        receiver.stop()


def test_a_delivery_leased_by_a_killed_process_goes_out_when_the_next_one_starts(journal_url):
    """On one host a killed process's leases are free as soon as another process looks (its pid is gone), not
    after the lease's time."""
    receiver = Receiver().start()
    try:
        (key,) = _queue(journal_url, receiver.url, 1)
        # killed after the receiver had it, before the answer was recorded: the row is still leased to it
        dead = _sender(journal_url, 30, env=dict(os.environ, RFWATCH_CRASH_AT="delivery.after_send:1"))
        dead.communicate(timeout=60)
        assert dead.returncode == CRASH_EXIT
        assert _states(journal_url) == Counter({"pending": 1}) and len(receiver.deliveries) == 1
        started = time.monotonic()
        alive = _sender(journal_url, 30)
        alive.communicate(timeout=60)
        # at once, and (at least once, as documented) the receiver hears it again, with the same id
        assert time.monotonic() - started < 20
        wait_for(lambda: _states(journal_url) == Counter({"delivered": 1}), timeout=5, what="delivered by the next")
        assert [d.headers["webhook-id"] for d in receiver.deliveries] == [key, key]
        journal = Journal.open(journal_url)
        row = journal.outbox.get(key)
        journal.close()
        assert bytes(row["body"]) == b"" and row["lease"] is None  # delivered: the payload is not kept
    finally:
        receiver.stop()


def test_a_lease_of_another_host_is_free_only_when_its_heartbeat_stops(journal_url):
    """Across hosts a pid means nothing: a holder of another host keeps its lease while its heartbeat is fresh,
    and loses it once the heartbeat is older than the lease."""
    (key,) = _queue(journal_url, "http://127.0.0.1:9/hook", 1)
    far = Journal.open(journal_url, host="far-away", lease=1.0)
    near = Journal.open(journal_url, host="here", lease=1.0)
    try:
        assert far.outbox.claim() is not None
        assert near.outbox.claim() is None  # far-away's heartbeat is fresh
        far._heartbeat.stop()  # far-away stops beating (its host died): after the lease its rows are free
        taken = wait_for(lambda: near.outbox.claim(), timeout=10, what="the lease to run out")
        assert taken.id == key
        assert near.outbox.get(key)["lease"] == near.holder.id
    finally:
        near.close()
        far.db.close()


def test_a_deliverer_keeps_state_between_attempts_and_failed_rows_can_be_queued_again(journal_url):
    """Delivery.keep / Delivery.state (an upload's image id), failed_by_plugin and requeue_failed: what the review
    uploads need from the outbox, across a restart and under another process's lease."""
    (key,) = _queue(journal_url, "http://127.0.0.1:9/hook", 1)
    seen: list[dict | None] = []

    def two_calls(d):
        seen.append(d.state)
        if d.state is None:
            d.keep({"image_id": "abc"})  # the first call got this far, then the second one failed
            return Retry("annotate: no answer", after=0)
        return Failed("refused for good")

    journal = Journal.open(journal_url)
    outbox = Deliveries(journal, deliverers={"test": ("the-plugin", two_calls)})
    assert outbox.failed_by_plugin() == {"the-plugin": 0}
    outbox.deliver_one(journal.outbox.claim())
    journal.close()
    journal = Journal.open(journal_url)  # a restart: the state is in the row
    outbox = Deliveries(journal, deliverers={"test": ("the-plugin", two_calls)})
    outbox.deliver_one(wait_for(journal.outbox.claim, timeout=5, what="due again"))
    assert seen == [None, {"image_id": "abc"}]
    assert outbox.failed_by_plugin() == {"the-plugin": 1}
    # without deliverers loaded (`rfwatch status`): the plugin the last process that delivered recorded ...
    assert Deliveries(journal).failed_by_plugin() == {"test": 1}  # (none did yet: the plugin that queued it)
    outbox.remember()  # as the daemon does at its start
    assert Deliveries(journal).failed_by_plugin() == {"the-plugin": 1}
    journal.db.transact(lambda tx: tx.run("DELETE FROM deliverers"))
    assert Deliveries(journal).failed_by_plugin() == {"test": 1}  # ... else the plugin that queued it

    # The payload stayed with the failed row: queued again, from scratch (no state, no attempts).
    assert outbox.requeue_failed("test") == (1, 0)
    row = journal.outbox.get(key)
    assert (row["state"], row["attempts"], row["result"]) == ("pending", 0, None) and bytes(row["body"])
    assert journal.outbox.untried([key]) == 1

    # A keep from a process whose lease another process holds now is not written.
    other = Journal.open(journal_url, host="other")
    try:
        leased = other.outbox.claim()
        assert leased is not None and leased.id == key
        stale = outbox._delivery(leased)
        stale.keep({"image_id": "zzz"})
        assert journal.outbox.get(key)["result"] is None
    finally:
        other.close()
        journal.close()


def test_a_410_stops_every_pending_delivery_to_that_target(journal_url):
    """A receiver that answers 410 Gone wants nothing more: the other rows queued for it stop too (they are never
    sent), rows for other targets stay, and nothing is queued for it later."""
    gone_url, other_url = "http://127.0.0.1:9/gone", "http://127.0.0.1:9/other"
    first, second = _queue(journal_url, gone_url, 2)
    journal = Journal.open(journal_url)
    try:
        journal.db.transact(
            lambda tx: journal.outbox.enqueue(tx, None, [QueuedDelivery("test", other_url, b"{}", "other", "test")])
        )
        sent = []
        outbox = Deliveries(journal, deliverers={"test": ("test", lambda d: sent.append(d.id) or Gone("HTTP 410"))})
        row = journal.outbox.claim()
        assert row is not None and row.id in (first, second)
        outbox.deliver_one(row)
        states = {d["id"]: d["state"] for d in journal.outbox.list()}
        assert states == {first: "gone", second: "gone", "other": "pending"}
        assert journal.outbox.is_gone(gone_url) and not journal.outbox.is_gone(other_url)
        assert sent == [row.id]
    finally:
        journal.close()


def test_an_error_is_kept_redacted_and_status_prints_it_so(journal_url, tmp_path):
    """A third party's deliverer may quote its own secret in an error. The delivering process knows the secret
    (the plugin registered it) and keeps the error redacted; `rfwatch status`, which loads no plugin and so never
    learns the secret, prints what was kept."""
    from rfwatch.processing.outbox_view import DeliveryView
    from rfwatch.redact import register_secret

    secret = "chat-token-" + "Zq9" * 6
    register_secret(secret)
    (key,) = _queue(journal_url, "http://127.0.0.1:9/hook", 1)
    journal = Journal.open(journal_url)
    try:
        outbox = Deliveries(journal, deliverers={"test": ("chatplug", lambda d: Failed(f"refused {secret}"))})
        outbox.deliver_one(journal.outbox.claim())
        kept = journal.outbox.get(key)["last_error"]
        assert secret not in kept and kept.startswith("refused ")
        lines = DeliveryView(journal).problems()
        assert any("failed for good: 1" in line for line in lines) and secret not in "".join(lines)
    finally:
        journal.close()

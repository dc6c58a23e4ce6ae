"""The threads that empty the outbox: each due delivery to its plugin's deliverer, the answer journaled.

Deliveries go out on their own threads, so a slow receiver never holds up sorting. Every attempt is leased to one
process in the journal (rfwatch.journal.outbox): a daemon, ``rfwatch undo`` and a daemon on another host share the
outbox and never send one row at once. What each answer means is in rfwatch.host.delivery.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from rfwatch.crashpoints import crash_point
from rfwatch.host.delivery import (
    Delivered,
    Delivery,
    DeliveryAnswer,
    DeliveryPolicy,
    Failed,
    Gone,
    Retry,
)
from rfwatch.journal import DeliveryRow, JournalUnavailable
from rfwatch.processing.outbox_view import DeliveryView
from rfwatch.redact import redact

__all__ = ["Deliveries"]

log = logging.getLogger(__name__)


@dataclass
class Deliveries(DeliveryView):
    """The delivery threads of one process, over the journal's outbox (what it holds: DeliveryView)."""

    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    threads: int = 4
    _wake: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _workers: list[threading.Thread] = field(default_factory=list, init=False, repr=False)
    #: Started (start()) but with its threads spawned only once there is something to deliver (see start).
    _armed: bool = field(default=False, init=False, repr=False)
    _spawn_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def requeue_failed(self, kind: str) -> tuple[int, int]:
        """``rfwatch retry --uploads``: see Outbox.requeue_failed. A running daemon's threads take them at once."""
        counts = self.journal.outbox.requeue_failed(kind)
        if counts[0]:
            self.wake()
        return counts

    # --- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Deliver from now on. The threads start at once only if the outbox holds deliveries still to make;
        otherwise on the first one queued (wake) or seen queued by another process (notice): a run whose rules
        deliver nothing starts none, and polls nothing."""
        self._stop.clear()
        self._armed = True
        self.notice()

    def notice(self) -> None:
        """Start the threads if deliveries are waiting (queued by another process, or left from an earlier run)."""
        if not self._armed or self._workers:
            return
        try:
            due = self.journal.outbox.next_due()
        except JournalUnavailable:
            due = 0.0  # cannot tell: the threads wait for the journal themselves
        if due is not None:
            self._spawn()

    def _spawn(self) -> None:
        with self._spawn_lock:
            if self._workers or not self._armed:
                return
            self._workers = [
                threading.Thread(target=self._run, name=f"rfwatch-delivery-{i}", daemon=True)
                for i in range(self.threads)
            ]
            for t in self._workers:
                t.start()

    def wake(self) -> None:
        if self._armed and not self._workers:
            self._spawn()
        self._wake.set()

    def stop(self) -> None:
        with self._spawn_lock:
            self._armed = False
            workers, self._workers = self._workers, []
        self._stop.set()
        self._wake.set()
        for t in workers:
            t.join(timeout=10)

    def flush(self, deadline: float, keys: Collection[str] | None = None) -> None:
        """Wait until every delivery not yet tried (of ``keys``, else all) had its first attempt, or ``deadline``
        (time.monotonic()): before ``run --once`` or ``undo`` exits. This process's threads or another's make it."""
        while time.monotonic() < deadline:
            try:
                if not self.journal.outbox.untried(keys):
                    return
            except JournalUnavailable:
                pass
            self.wake()
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivered = self._one()
            except Exception as exc:  # the journal away or failing: this thread must outlive it, and try again
                if isinstance(exc, JournalUnavailable):
                    log.debug("delivery thread: %s; trying again in a second", exc)
                else:
                    log.exception("delivery thread: unexpected error; trying again in a second")
                self._stop.wait(1.0)
                continue
            if delivered:
                continue
            # Asleep until the next retry is due (so the backoff schedule is kept), a new delivery is queued
            # (wake), or a second has passed (rows another process queued or released).
            due = self.journal.outbox.next_due()
            self._wake.wait(timeout=max(0.01, min(1.0, (due if due is not None else time.time() + 1) - time.time())))
            self._wake.clear()

    def _one(self) -> bool:
        """Deliver one due row, if there is one (True)."""
        row = self.journal.outbox.claim()
        if row is None:
            return False
        try:
            self.deliver_one(row)
        except JournalUnavailable:
            raise  # the answer could not be recorded: the lease lapses and the row is tried again
        except Exception:
            log.exception("delivery %s failed unexpectedly", row.id)
            self._record(self._delivery(row), Retry("unexpected error (see the log)"))
        return True

    def deliver_one(self, row: DeliveryRow) -> DeliveryAnswer:
        """Hand one leased row to its deliverer and journal the answer."""
        delivery = self._delivery(row)
        entry = self.deliverers.get(delivery.kind)
        if entry is None:
            answer: DeliveryAnswer = Retry(f"no plugin in the running config delivers {delivery.kind!r}")
        else:
            crash_point("delivery.before_send")
            try:
                answer = entry[1](delivery)
            except Exception as exc:  # a deliverer that raises is retried like a failed attempt
                log.exception("plugin %s failed delivering %s", entry[0], delivery.id)
                answer = Retry(redact(f"{type(exc).__name__}: {exc}"))
            crash_point("delivery.after_send")
        self._record(delivery, answer)
        return answer

    def _record(self, d: Delivery, answer: DeliveryAnswer) -> None:
        outbox = self.journal.outbox
        # Redacted before it is kept: this process knows every secret the plugins registered, and `rfwatch
        # status` prints the kept error without loading them (a third party's deliverer may quote its token).
        if not isinstance(answer, Delivered) and answer.error:
            answer = dataclasses.replace(answer, error=redact(answer.error))
        if isinstance(answer, Delivered):
            outbox.delivered(d.id, answer.status, answer.result)
            log.debug("%s %s delivered to %s", d.kind, d.id, redact(d.target))
        elif isinstance(answer, Gone):
            outbox.gone(d.id, d.target, answer.status, answer.error)
            log.warning("%s %s to %s: target gone: %s", d.kind, d.id, redact(d.target), answer.error)
        elif isinstance(answer, Failed):
            outbox.failed(d.id, answer.status, answer.error)
            log.warning("%s %s to %s: failed for good: %s", d.kind, d.id, redact(d.target), answer.error)
        else:
            delay = self.policy.delay(d.attempts + 1)
            if answer.after is not None:
                delay = min(self.policy.max_delay, max(0.0, answer.after))
            outbox.retry(d.id, answer.status, answer.error, time.time() + delay)
            log.warning("%s %s to %s: %s; will retry", d.kind, d.id, redact(d.target), answer.error)

    def _delivery(self, row: DeliveryRow) -> Delivery:
        return Delivery(
            row.id,
            row.kind,
            row.target,
            row.payload,
            row.attempts,
            row.file_id,
            row.created,
            row.state,
            lambda state, delivery_id=row.id: self.journal.outbox.keep(delivery_id, state),
        )

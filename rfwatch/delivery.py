"""Durable delivery for plugins: the outbox, and the threads that empty it.

A plugin's action queues a delivery with ``ctx.deliver(kind, payload, key=..., target=...)``. The row is
written in the same transaction as the step's own journal row, so a crash never loses one (the step and
its delivery commit together) nor duplicates one (a redone step queues the same ``key`` again, which is
ignored). Deliveries go out on their own threads, so a slow receiver never holds up sorting: each due row
is handed to the deliverer its plugin registered for that ``kind`` (hook ``register_deliverers``), and
the answer decides what happens next:

- :class:`Delivered`: done; its ``result`` (a Roboflow image id, an HTTP status) is kept for ``history``;
- :class:`Retry` (or an exception): tried again after an exponential backoff (2 s, 4 s, 8 s ... up to an
  hour, +-25 % jitter so that many rows do not retry in lockstep), or after ``Retry-After`` when the
  receiver said when; across restarts, since the schedule is in the table;
- :class:`Gone`: the target said it wants nothing more (a webhook's 410): every pending row for it stops,
  and later ones are not queued;
- :class:`Failed`: this one delivery can never succeed (a receiver that refuses it for good).

The table is ``outbox`` in the journal's database (the webhook plugin created it under that name before
deliveries moved into the core; its rows carry on).
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from .crashpoints import crash_point
from .redact import redact

if TYPE_CHECKING:
    from .journal import Journal

__all__ = [
    "Delivery",
    "Delivered",
    "Retry",
    "Gone",
    "Failed",
    "DeliveryAnswer",
    "Deliverer",
    "QueuedDelivery",
    "Deliveries",
    "DeliveryPolicy",
]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,          -- the plugin's key (a webhook's webhook-id): the same on every attempt
    url TEXT NOT NULL,            -- the target: a URL, a project; a target that is gone gets nothing more
    body BLOB NOT NULL,           -- the payload
    state TEXT NOT NULL,          -- pending | delivered | gone | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created REAL NOT NULL,
    delivered REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
CREATE TABLE IF NOT EXISTS gone_urls (url TEXT PRIMARY KEY, at REAL NOT NULL);
"""
#: Columns added since the webhook plugin's own table: rows it left behind are webhooks.
_ADDED_COLUMNS = {
    "plugin": "TEXT NOT NULL DEFAULT 'rfwatch.default_plugins.webhook'",
    "kind": "TEXT NOT NULL DEFAULT 'webhook'",
    "file_id": "INTEGER",
    "result": "TEXT",
}


# --- what plugins see ----------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One queued delivery, as its deliverer receives it."""

    id: str
    kind: str
    target: str
    payload: bytes
    #: Attempts made before this one.
    attempts: int
    file_id: int | None
    created: float

    def json(self) -> Any:
        """The payload parsed as JSON (it was queued as a dict or list)."""
        return json.loads(self.payload)


@dataclass(frozen=True)
class Delivered:
    status: int | None = None
    #: Kept in the journal and shown by ``history`` (e.g. {"image_id": ...}).
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Retry:
    error: str
    status: int | None = None
    #: Seconds the receiver asked to wait (Retry-After); None: the backoff schedule.
    after: float | None = None


@dataclass(frozen=True)
class Gone:
    """The target wants nothing more: stop every pending delivery to it, queue none later."""

    error: str
    status: int | None = None


@dataclass(frozen=True)
class Failed:
    """This delivery can never succeed; it is kept, with the error, for ``history``."""

    error: str
    status: int | None = None


DeliveryAnswer = Union[Delivered, Retry, Gone, Failed]  # noqa: UP007 - a runtime alias on Python 3.10
Deliverer = Callable[[Delivery], DeliveryAnswer]


@dataclass(frozen=True)
class QueuedDelivery:
    """What an action asked to deliver; written with its step (see FileContext.deliver)."""

    kind: str
    target: str
    payload: bytes
    key: str
    plugin: str


@dataclass
class DeliveryPolicy:
    base: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 0.25

    def delay(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones: base * 2**(attempts-1), +-jitter."""
        nominal = min(self.max_delay, self.base * 2 ** max(0, min(attempts - 1, 20)))
        return nominal * random.uniform(1 - self.jitter, 1 + self.jitter)


# --- the outbox ------------------------------------------------------------------------


@dataclass
class Deliveries:
    """The outbox in the journal's database, and the threads that deliver from it."""

    journal: Journal
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    threads: int = 4
    #: kind -> (plugin name, deliverer); replaced as a whole when the config is reloaded.
    deliverers: dict[str, tuple[str, Deliverer]] = field(default_factory=dict)
    _wake: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _claimed: set[str] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _workers: list[threading.Thread] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.journal.ensure_schema(_SCHEMA)
        with self.journal.transaction() as db:
            present = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            for name, decl in _ADDED_COLUMNS.items():
                if name not in present:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")

    # queueing (inside a step's transaction)

    def is_gone(self, target: str) -> bool:
        return self.journal.fetch_one("SELECT 1 FROM gone_urls WHERE url=?", (target,)) is not None

    @staticmethod
    def write(db: sqlite3.Connection, file_id: int | None, queued: list[QueuedDelivery]) -> None:
        """Insert ``queued`` in the caller's transaction (the step's); a key queued before is left as it is."""
        now = time.time()
        for q in queued:
            crash_point("delivery.before_enqueue")
            db.execute(
                "INSERT OR IGNORE INTO outbox (id, plugin, kind, file_id, url, body, state, next_at, created)"
                " VALUES (?,?,?,?,?,?,'pending',?,?)",
                (q.key, q.plugin, q.kind, file_id, q.target, q.payload, now, now),
            )

    # reading

    def pending_by_plugin(self) -> dict[str, int]:
        rows = self.journal.fetch_all("SELECT plugin, COUNT(*) AS n FROM outbox WHERE state='pending' GROUP BY plugin")
        return {r["plugin"]: r["n"] for r in rows}

    def pending(self) -> int:
        return sum(self.pending_by_plugin().values())

    def gone_targets(self, kind: str) -> list[str]:
        """Targets of ``kind`` that said they want nothing more (a webhook receiver's 410)."""
        rows = self.journal.fetch_all(
            "SELECT url FROM gone_urls WHERE url IN (SELECT url FROM outbox WHERE kind=?) ORDER BY url", (kind,)
        )
        return [r["url"] for r in rows]

    def failing(self, kind: str) -> list[dict[str, Any]]:
        """Pending deliveries of ``kind`` that failed at least once, per target: how many, the last error."""
        rows = self.journal.fetch_all(
            "SELECT url, COUNT(*) AS n, MAX(attempts) AS attempts, last_error FROM outbox"
            " WHERE kind=? AND state='pending' AND attempts>0 GROUP BY url ORDER BY url",
            (kind,),
        )
        return [dict(r) for r in rows]

    def for_file(self, file_id: int) -> list[dict[str, Any]]:
        rows = self.journal.fetch_all(
            "SELECT id, kind, url, state, attempts, last_status, last_error, result, created, delivered, next_at"
            " FROM outbox WHERE file_id=? ORDER BY created, id",
            (file_id,),
        )
        return [dict(r, result=json.loads(r["result"]) if r["result"] else None) for r in rows]

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        row = self.journal.fetch_one("SELECT * FROM outbox WHERE id=?", (delivery_id,))
        return dict(row) if row else None

    def prune(self, older_than: float) -> int:
        with self.journal.transaction() as db:
            return db.execute(
                "DELETE FROM outbox WHERE state IN ('delivered','gone','failed') AND created < ?", (older_than,)
            ).rowcount

    # delivering

    def start(self) -> None:
        self._stop.clear()
        self._workers = [
            threading.Thread(target=self._run, name=f"rfwatch-delivery-{i}", daemon=True) for i in range(self.threads)
        ]
        for t in self._workers:
            t.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._workers:
            t.join(timeout=10)
        self._workers = []

    def flush(self, deadline: float) -> None:
        """Deliver what is due now (first attempts), until ``deadline`` (time.monotonic()); before --once exits."""
        while time.monotonic() < deadline:
            row = self.journal.fetch_one(
                "SELECT 1 FROM outbox WHERE state='pending' AND attempts=0 AND next_at<=? LIMIT 1", (time.time(),)
            )
            if row is None:
                return
            self.wake()
            time.sleep(0.05)

    def _due(self, limit: int = 16) -> list[sqlite3.Row]:
        return self.journal.fetch_all(
            "SELECT id, plugin, kind, url, body, attempts, file_id, created FROM outbox"
            " WHERE state='pending' AND next_at<=? ORDER BY next_at LIMIT ?",
            (time.time(), limit),
        )

    @contextmanager
    def _claim(self) -> Iterator[sqlite3.Row | None]:
        with self._lock:
            row = next((r for r in self._due() if r["id"] not in self._claimed), None)
            if row is not None:
                self._claimed.add(row["id"])
        try:
            yield row
        finally:
            if row is not None:
                with self._lock:
                    self._claimed.discard(row["id"])

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._claim() as row:
                if row is not None:
                    try:
                        self.deliver_one(row)
                    except Exception:
                        log.exception("delivery %s failed unexpectedly", row["id"])
                    continue
            # Asleep until the next retry is due (so the backoff schedule is kept), a new delivery is queued
            # (wake), or a second has passed (rows another process queued: rfwatch undo, a review page).
            self._wake.wait(timeout=max(0.01, min(1.0, self._next_due() - time.time())))
            self._wake.clear()

    def _next_due(self) -> float:
        row = self.journal.fetch_one("SELECT MIN(next_at) FROM outbox WHERE state='pending'")
        return row[0] if row and row[0] is not None else time.time() + 1.0

    def deliver_one(self, row: sqlite3.Row) -> DeliveryAnswer:
        delivery = Delivery(
            row["id"], row["kind"], row["url"], bytes(row["body"]), row["attempts"], row["file_id"], row["created"]
        )
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
        now = time.time()
        with self.journal.transaction() as db:
            if isinstance(answer, Delivered):
                db.execute(
                    "UPDATE outbox SET state='delivered', attempts=attempts+1, last_status=?, last_error=NULL,"
                    " result=?, delivered=? WHERE id=?",
                    (answer.status, json.dumps(answer.result) if answer.result else None, now, d.id),
                )
            elif isinstance(answer, Gone):
                db.execute("INSERT OR REPLACE INTO gone_urls (url, at) VALUES (?,?)", (d.target, now))
                db.execute(
                    "UPDATE outbox SET state='gone', attempts=attempts+(id=?), last_status=?, last_error=?"
                    " WHERE url=? AND state='pending'",
                    (d.id, answer.status, answer.error[:500], d.target),
                )
            elif isinstance(answer, Failed):
                db.execute(
                    "UPDATE outbox SET state='failed', attempts=attempts+1, last_status=?, last_error=? WHERE id=?",
                    (answer.status, answer.error[:500], d.id),
                )
            else:
                delay = self.policy.delay(d.attempts + 1)
                if answer.after is not None:
                    delay = min(self.policy.max_delay, max(0.0, answer.after))
                db.execute(
                    "UPDATE outbox SET attempts=attempts+1, last_status=?, last_error=?, next_at=? WHERE id=?",
                    (answer.status, answer.error[:500], now + delay, d.id),
                )
        what = {Delivered: "delivered", Gone: "target gone", Failed: "failed for good"}.get(type(answer))
        if what == "delivered":
            log.debug("%s %s delivered to %s", d.kind, d.id, redact(d.target))
        elif what is not None:
            log.warning("%s %s to %s: %s: %s", d.kind, d.id, redact(d.target), what, answer.error)  # type: ignore[union-attr]
        else:
            log.warning("%s %s to %s: %s; will retry", d.kind, d.id, redact(d.target), answer.error)  # type: ignore[union-attr]

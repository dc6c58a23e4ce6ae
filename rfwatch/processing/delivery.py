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
- :class:`Failed`: this one delivery can never succeed (a receiver that refuses it for good). The row keeps its
  payload, so that ``rfwatch retry --uploads`` (:meth:`Deliveries.requeue_failed`) can send it again once the
  cause is put right.

A deliverer whose delivery takes several calls (an upload, then its label) keeps what it learnt between attempts
with ``delivery.keep(state)`` (a JSON dict, written at once, before the next call is made) and finds it in
``delivery.state`` on the next attempt, across restarts: an image the platform accepted is not sent again.

The table is ``outbox`` in the journal's database (the webhook plugin created it under that name before
deliveries moved into the core; its rows carry on).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from rfwatch.crashpoints import crash_point
from rfwatch.redact import redact

if TYPE_CHECKING:
    from rfwatch.journal import Journal

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
    # JSON: a delivered row's result; while pending, the state its deliverer kept (Delivery.keep)
    "result": "TEXT",
    # "pid <n>" while a process delivers the row (its next_at is then the lease's end): see Deliveries._claim.
    "lease": "TEXT",
}
#: How long a claimed row is left to the process delivering it before another may try (a deliverer's
#: timeout is well below this). A crashed process's leases are released when the next one starts delivering.
LEASE = 600.0
_DONE_BODY = b""  # a delivered (or gone) row keeps its outcome, not its payload; a failed one keeps both
#: This process, as its leases name it: the pid, and a token that tells a reused pid from this process.
_LEASE_OWNER = f"pid {os.getpid()} {uuid.uuid4().hex[:12]}"
#: An answer is recorded only while the row is still this process's (or nobody's: deliver_one called directly):
#: a lease that ran out and was taken by another process leaves the row to that one.
_OURS = " AND (lease IS NULL OR lease=?)"


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
    #: What the deliverer kept with :meth:`keep` on an earlier attempt (None: nothing yet).
    state: dict[str, Any] | None = None
    #: Writes ``state`` for this delivery at once (see keep); set by Deliveries.
    _keep: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False, compare=False)

    def json(self) -> Any:
        """The payload parsed as JSON (it was queued as a dict or list)."""
        return json.loads(self.payload)

    def keep(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (JSON) for this delivery's next attempts, committed before this returns.

        For a deliverer that makes several calls for one delivery: what an earlier call achieved (an image
        id) survives a crash, a restart or a Retry, and the next attempt finds it in ``state``.
        """
        if self._keep is not None:
            self._keep(state)


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
        """Deliveries not yet delivered, per plugin (see _per_plugin)."""
        return {plugin: n for plugin, n in self._per_plugin("pending").items() if n}

    def failed_by_plugin(self) -> dict[str, int]:
        """Deliveries that failed for good, per plugin: every plugin that queued any (or, in a process that
        delivers, that registered a deliverer) is there, at 0 when none failed, so that metrics have the series
        from the start."""
        counts = dict.fromkeys(sorted(plugin for plugin, _ in self.deliverers.values()), 0)
        counts.update(self._per_plugin("failed"))
        return counts

    def _per_plugin(self, state: str) -> dict[str, int]:
        """Rows in ``state`` per plugin, every plugin with rows included (at 0). A row is counted for the plugin
        that delivers its kind when one is registered here: the ``plugin`` column names the step that queued it,
        which for a review upload is rfwatch's decision step ("rfwatch"), not the review plugin."""
        rows = self.journal.fetch_all(
            "SELECT kind, plugin, SUM(state=?) AS n FROM outbox GROUP BY kind, plugin", (state,)
        )
        counts: dict[str, int] = {}
        for r in rows:
            plugin = self.deliverers[r["kind"]][0] if r["kind"] in self.deliverers else r["plugin"]
            counts[plugin] = counts.get(plugin, 0) + int(r["n"] or 0)
        return counts

    def failed(self, kind: str) -> list[dict[str, Any]]:
        """Deliveries of ``kind`` that failed for good, per target: how many, and the latest one's error."""
        rows = self.journal.fetch_all(
            "SELECT url, COUNT(*) AS n, (SELECT last_error FROM outbox o2 WHERE o2.url=o.url AND o2.kind=o.kind"
            " AND o2.state='failed' ORDER BY created DESC LIMIT 1) AS last_error FROM outbox o"
            " WHERE kind=? AND state='failed' GROUP BY url ORDER BY url",
            (kind,),
        )
        return [dict(r) for r in rows]

    def requeue_failed(self, kind: str) -> tuple[int, int]:
        """Queue every failed delivery of ``kind`` again, as if new: (queued again, left failed).

        Its retry schedule starts over and what its deliverer kept is dropped (a fresh attempt asks the receiver
        anew); the last error stays until the next attempt replaces it. Rows that failed before failed rows kept
        their payload cannot be sent again and are left as they are. A running daemon takes the rows within a
        second (its delivery threads look for due rows that often).
        """
        with self.journal.transaction() as db:
            queued = db.execute(
                "UPDATE outbox SET state='pending', attempts=0, next_at=?, lease=NULL, result=NULL"
                " WHERE kind=? AND state='failed' AND length(body)>0",
                (time.time(), kind),
            ).rowcount
            left = db.execute("SELECT COUNT(*) FROM outbox WHERE kind=? AND state='failed'", (kind,)).fetchone()[0]
        if queued:
            self.wake()
        return queued, left

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
        self.release_dead_leases()
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

    def flush(self, deadline: float, keys: Collection[str] | None = None) -> None:
        """Wait until every delivery not yet tried (of ``keys``, else all) had its first attempt, or ``deadline``
        (time.monotonic()): before ``run --once`` or ``undo`` exits. This process's threads or another's
        (a running daemon's) make the attempt."""
        while time.monotonic() < deadline and self.untried(keys):
            self.wake()
            time.sleep(0.05)

    def untried(self, keys: Collection[str] | None = None) -> int:
        """Pending deliveries (of ``keys``, else all) with no attempt made yet."""
        only = f" AND id IN ({','.join('?' * len(keys))})" if keys else ""
        row = self.journal.fetch_one(
            f"SELECT COUNT(*) FROM outbox WHERE state='pending' AND attempts=0{only}", tuple(keys or ())
        )
        return row[0] if row else 0

    def release_dead_leases(self) -> int:
        """Rows claimed by a process that is gone (killed mid-delivery) are due again now."""
        released = 0
        for row in self.journal.fetch_all("SELECT id, lease FROM outbox WHERE state='pending' AND lease IS NOT NULL"):
            if not _alive(row["lease"]):
                with self.journal.transaction() as db:
                    released += db.execute(
                        "UPDATE outbox SET lease=NULL, next_at=? WHERE id=? AND lease=?",
                        (time.time(), row["id"], row["lease"]),
                    ).rowcount
        return released

    @contextmanager
    def _claim(self) -> Iterator[sqlite3.Row | None]:
        """A due row, leased to this process in the database: no other thread, and no other process (a daemon
        and ``rfwatch undo`` share the outbox), delivers it at the same time."""
        now = time.time()
        due = self.journal.fetch_all(
            "SELECT id FROM outbox WHERE state='pending' AND next_at<=? ORDER BY next_at LIMIT 16", (now,)
        )
        for candidate in due:
            with self.journal.transaction() as db:
                taken = db.execute(
                    "UPDATE outbox SET next_at=?, lease=? WHERE id=? AND state='pending' AND next_at<=?",
                    (now + LEASE, _LEASE_OWNER, candidate["id"], now),
                ).rowcount
            if taken:
                yield self.journal.fetch_one(
                    "SELECT id, plugin, kind, url, body, attempts, file_id, created, result FROM outbox WHERE id=?",
                    (candidate["id"],),
                )
                return
        yield None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delivered = self._one()
            except Exception:  # the journal busy or failing: this thread must outlive it, and try again
                log.exception("delivery thread: unexpected error; trying again in a second")
                self._stop.wait(1.0)
                continue
            if delivered:
                continue
            # Asleep until the next retry is due (so the backoff schedule is kept), a new delivery is queued
            # (wake), or a second has passed (rows another process queued: rfwatch undo, a review page).
            self._wake.wait(timeout=max(0.01, min(1.0, self._next_due() - time.time())))
            self._wake.clear()

    def _one(self) -> bool:
        """Deliver one due row, if there is one (True)."""
        with self._claim() as row:
            if row is None:
                return False
            try:
                self.deliver_one(row)
            except Exception:
                log.exception("delivery %s failed unexpectedly", row["id"])
                self._record(self._delivery(row), Retry("unexpected error (see the log)"))
            return True

    def _next_due(self) -> float:
        row = self.journal.fetch_one("SELECT MIN(next_at) FROM outbox WHERE state='pending'")
        return row[0] if row and row[0] is not None else time.time() + 1.0

    def deliver_one(self, row: sqlite3.Row) -> DeliveryAnswer:
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
        now = time.time()
        with self.journal.transaction() as db:
            if isinstance(answer, Delivered):
                db.execute(
                    "UPDATE outbox SET state='delivered', attempts=attempts+1, last_status=?, last_error=NULL,"
                    " result=?, delivered=?, body=?, lease=NULL WHERE id=?" + _OURS,
                    (answer.status, json.dumps(answer.result) if answer.result else None, now, _DONE_BODY, d.id)
                    + (_LEASE_OWNER,),
                )
            elif isinstance(answer, Gone):
                db.execute("INSERT OR REPLACE INTO gone_urls (url, at) VALUES (?,?)", (d.target, now))
                db.execute(
                    "UPDATE outbox SET state='gone', attempts=attempts+(id=?), last_status=?, last_error=?,"
                    " body=?, lease=NULL WHERE url=? AND state='pending'",
                    (d.id, answer.status, answer.error[:500], _DONE_BODY, d.target),
                )
            elif isinstance(answer, Failed):
                # The payload stays: `rfwatch retry --uploads` (requeue_failed) sends it again.
                db.execute(
                    "UPDATE outbox SET state='failed', attempts=attempts+1, last_status=?, last_error=?,"
                    " lease=NULL WHERE id=?" + _OURS,
                    (answer.status, answer.error[:500], d.id, _LEASE_OWNER),
                )
            else:
                delay = self.policy.delay(d.attempts + 1)
                if answer.after is not None:
                    delay = min(self.policy.max_delay, max(0.0, answer.after))
                db.execute(
                    "UPDATE outbox SET attempts=attempts+1, last_status=?, last_error=?, next_at=?, lease=NULL"
                    " WHERE id=?" + _OURS,
                    (answer.status, answer.error[:500], now + delay, d.id, _LEASE_OWNER),
                )
        what = {Delivered: "delivered", Gone: "target gone", Failed: "failed for good"}.get(type(answer))
        if what == "delivered":
            log.debug("%s %s delivered to %s", d.kind, d.id, redact(d.target))
        elif what is not None:
            log.warning("%s %s to %s: %s: %s", d.kind, d.id, redact(d.target), what, answer.error)  # type: ignore[union-attr]
        else:
            log.warning("%s %s to %s: %s; will retry", d.kind, d.id, redact(d.target), answer.error)  # type: ignore[union-attr]

    def _delivery(self, row: sqlite3.Row) -> Delivery:
        kept = row["result"] if "result" in row.keys() else None
        try:
            state = json.loads(kept) if kept else None
        except ValueError:
            state = None
        return Delivery(
            row["id"],
            row["kind"],
            row["url"],
            bytes(row["body"]),
            row["attempts"],
            row["file_id"],
            row["created"],
            state if isinstance(state, dict) else None,
            lambda new, delivery_id=row["id"]: self._keep(delivery_id, new),
        )

    def _keep(self, delivery_id: str, state: dict[str, Any]) -> None:
        """Delivery.keep: the state in the row's result column while it is pending (and this process's)."""
        with self.journal.transaction() as db:
            db.execute(
                "UPDATE outbox SET result=? WHERE id=? AND state='pending'" + _OURS,
                (json.dumps(state), delivery_id, _LEASE_OWNER),
            )


def _alive(lease: str) -> bool:
    """Whether the process named by a lease (``pid <n> <token>``; the journal is local) still runs."""
    if lease == _LEASE_OWNER:
        return True
    try:
        pid = int(lease.split()[1])
        if pid == os.getpid():
            return False  # this pid, another token: a process before this one (in a container, pid 1 again)
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, IndexError):
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True

"""The outbox: deliveries plugins queued (webhooks, uploads), their leases and their outcomes.

A delivery is written in the same transaction as the step that queued it, under the plugin's key (a webhook's
``webhook-id``), so a redone step queues nothing twice. Each attempt is made by one process: a due row is leased
to its holder (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock does the same), and the
answer is recorded only while the lease is still that holder's. A holder that dies mid-send loses the lease when
its heartbeat ages out; the next attempt, by any host, sends the same id and body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from rfwatch.crashpoints import crash_point
from rfwatch.journal.db import Database, Dialect, Tx
from rfwatch.record import record
from rfwatch.states import DeliveryState

__all__ = ["Outbox", "QueuedDelivery", "DeliveryRow"]

_DONE_BODY = b""  # a delivered (or failed, or gone) row keeps its outcome, not its payload
#: Leased to nobody alive: not even to this process (its other threads must not send the row twice).
_UNLEASED = "(lease IS NULL OR lease NOT IN (SELECT id FROM holders WHERE heartbeat > {now} - ?))"


@record
class QueuedDelivery:
    """What an action asked to deliver; written with its step."""

    kind: str
    target: str
    payload: bytes
    key: str
    plugin: str


@record
class DeliveryRow:
    """One row of ``outbox``: a delivery, its target, its state and its lease."""

    id: str
    plugin: str
    kind: str
    target: str
    payload: bytes
    attempts: int
    file_id: int | None
    created: float
    #: What its deliverer kept on an earlier attempt (``Delivery.keep``), while it is pending.
    state: dict[str, Any] | None = None


class Outbox:
    def __init__(self, db: Database, host: str, holder: Any, lease: float):
        self.db = db
        self.host = host
        self._holder = holder
        self.lease = lease

    # --- queueing (inside a step's transaction) ------------------------------------------

    def enqueue(self, tx: Tx, file_id: int | None, queued: list[QueuedDelivery]) -> None:
        """Insert ``queued`` in the caller's transaction; a key queued before is left as it is."""
        now = time.time()
        for q in queued:
            crash_point("delivery.before_enqueue")
            tx.send(
                "INSERT INTO outbox (id, plugin, kind, file_id, url, body, state, next_at, created)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (q.key, q.plugin, q.kind, file_id, q.target, q.payload, DeliveryState.PENDING, now, now),
            )
        if queued:
            tx.notify()

    def cancel_pending(self, tx: Tx, file_id: int, kind: str, why: str) -> int:
        """In the caller's transaction: the file's pending deliveries of ``kind`` never go out (a review decision
        taken back: its label must not arrive after the next one). One being sent right now may still arrive."""
        return tx.run(
            "UPDATE outbox SET state=?, last_error=?, lease=NULL WHERE file_id=? AND kind=? AND state=?",
            (DeliveryState.CANCELLED, why[:500], file_id, kind, DeliveryState.PENDING),
        )

    def is_gone(self, target: str) -> bool:
        return self.db.one("SELECT 1 FROM gone_urls WHERE url=?", (target,)) is not None

    # --- delivering ----------------------------------------------------------------------------

    def claim(self) -> DeliveryRow | None:
        """A due row, leased to this process: no other thread or process sends it meanwhile."""
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == Dialect.POSTGRESQL else ""
        holder = self._holder()

        def lease(tx: Tx) -> Any:
            row = tx.one(
                f"SELECT id, plugin, kind, url, body, attempts, file_id, created, result FROM outbox"
                f" WHERE state=? AND next_at<=? AND {_UNLEASED} ORDER BY next_at LIMIT 1{lock}",
                (DeliveryState.PENDING, now, self.lease),
            )
            if row is not None:
                tx.run("UPDATE outbox SET lease=?, host=? WHERE id=?", (holder, self.host, row["id"]))
            return row

        row = self.db.transact(lease)
        if row is None:
            return None
        try:
            kept = json.loads(row["result"]) if row["result"] else None
        except ValueError:
            kept = None
        return DeliveryRow(
            row["id"],
            row["plugin"],
            row["kind"],
            row["url"],
            bytes(row["body"]),
            row["attempts"],
            row["file_id"],
            row["created"],
            kept if isinstance(kept, dict) else None,
        )

    def keep(self, delivery_id: str, state: dict[str, Any]) -> bool:
        """A deliverer's state between attempts: in the row's ``result`` while it is pending (and ours)."""
        return self._record(
            "UPDATE outbox SET result=? WHERE id=? AND state='pending'", (json.dumps(state), delivery_id)
        )

    def delivered(self, delivery_id: str, status: int | None, result: dict[str, Any] | None) -> bool:
        """Record success; False if the lease was lost meanwhile (another process owns the row now)."""
        now = time.time()
        return self._record(
            "UPDATE outbox SET state=?, attempts=attempts+1, last_status=?, last_error=NULL, result=?, delivered=?,"
            " body=?, lease=NULL WHERE id=?",
            (DeliveryState.DELIVERED, status, json.dumps(result) if result else None, now, _DONE_BODY, delivery_id),
        )

    def failed(self, delivery_id: str, status: int | None, error: str) -> bool:
        """Record that this delivery can never succeed (its payload is kept: ``rfwatch retry`` may send it again
        once the cause is put right)."""
        return self._record(
            "UPDATE outbox SET state=?, attempts=attempts+1, last_status=?, last_error=?, lease=NULL WHERE id=?"
            " AND state=?",  # a row cancelled meanwhile stays cancelled, with its reason
            (DeliveryState.FAILED, status, error[:500], delivery_id, DeliveryState.PENDING),
        )

    def retry(self, delivery_id: str, status: int | None, error: str, next_at: float) -> bool:
        """Record a failed attempt; the row is due again at ``next_at``."""
        return self._record(
            "UPDATE outbox SET attempts=attempts+1, last_status=?, last_error=?, next_at=?, lease=NULL WHERE id=?"
            " AND state=?",  # a row cancelled meanwhile stays cancelled, with its reason
            (status, error[:500], next_at, delivery_id, DeliveryState.PENDING),
        )

    def _record(self, sql: str, args: tuple) -> bool:
        # Only while the row is still this process's (or nobody's: a delivery made directly, as tests do).
        me = self._holder()
        return bool(self.db.transact(lambda tx: tx.run(sql + " AND (lease IS NULL OR lease=?)", (*args, me))))

    def gone(self, delivery_id: str, target: str, status: int | None, error: str) -> None:
        """The target wants nothing more: every pending delivery to it stops, and none is queued later."""
        now = time.time()

        def record(tx: Tx) -> None:
            tx.run(
                "INSERT INTO gone_urls (url, at) VALUES (?,?) ON CONFLICT (url) DO UPDATE SET at=excluded.at",
                (target, now),
            )
            tx.run(
                "UPDATE outbox SET state=?, attempts=attempts+(CASE WHEN id=? THEN 1 ELSE 0 END), last_status=?,"
                " last_error=?, body=?, lease=NULL WHERE url=? AND state=?",
                (DeliveryState.GONE, delivery_id, status, error[:500], _DONE_BODY, target, DeliveryState.PENDING),
            )

        self.db.transact(record)

    def release_all(self, holder: str) -> int:
        """A holder that stops cleanly: its leases are free at once (nothing was sent under them after this)."""
        return self.db.transact(lambda tx: tx.run("UPDATE outbox SET lease=NULL WHERE lease=?", (holder,)))

    def requeue_failed(self, kind: str) -> tuple[int, int]:
        """Every delivery of ``kind`` that failed for good is due again, as if new: (queued again, left failed).

        Its retry schedule starts over and what its deliverer kept is dropped (a fresh attempt asks the receiver
        anew). Rows that failed before failed rows kept their payload cannot be sent again and stay failed.
        """
        now = time.time()

        def queue(tx: Tx) -> tuple[int, int]:
            queued = tx.run(
                "UPDATE outbox SET state=?, attempts=0, next_at=?, lease=NULL, result=NULL"
                " WHERE kind=? AND state=? AND LENGTH(body) > 0",
                (DeliveryState.PENDING, now, kind, DeliveryState.FAILED),
            )
            left = tx.scalar("SELECT COUNT(*) FROM outbox WHERE kind=? AND state=?", (kind, DeliveryState.FAILED))
            if queued:
                tx.notify()
            return queued, int(left or 0)

        return self.db.transact(queue)

    # --- reading ---------------------------------------------------------------------------------

    def counts(self, state: str) -> list[tuple[str, str, int]]:
        """(kind, plugin that queued it, how many) of the deliveries in ``state``: a range of the (state, next_at)
        index, never the whole outbox (one row per webhook per file: a million after a million files). The
        plugins that deliver, at 0, come from record_deliverers."""
        rows = self.db.all(
            "SELECT kind, plugin, COUNT(*) AS n FROM outbox WHERE state=? GROUP BY kind, plugin", (state,)
        )
        return [(r["kind"], r["plugin"], int(r["n"] or 0)) for r in rows]

    def record_deliverers(self, plugins: dict[str, str]) -> None:
        """Which plugin delivers each kind (kind -> plugin), as a process that loaded the plugins found: ``status``
        names deliveries by it without loading them."""
        if not plugins:
            return

        def record(tx: Tx) -> None:
            for kind, plugin in sorted(plugins.items()):
                tx.run(
                    "INSERT INTO deliverers (kind, plugin, seen) VALUES (?,?,{now}) ON CONFLICT (kind) DO UPDATE"
                    " SET plugin=excluded.plugin, seen=excluded.seen",
                    (kind, plugin),
                )

        self.db.transact(record)

    def deliverers(self) -> dict[str, str]:
        """kind -> the plugin that delivers it, as last recorded (record_deliverers)."""
        return {r["kind"]: r["plugin"] for r in self.db.all("SELECT kind, plugin FROM deliverers")}

    def failed_targets(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Deliveries of ``kind`` (None: of every kind) that failed for good, per kind and target: how many, and
        the latest one's error."""
        which = "" if kind is None else " AND kind=?"
        rows = self.db.all(
            f"SELECT kind, url, COUNT(*) AS n FROM outbox WHERE state=?{which} GROUP BY kind, url ORDER BY kind, url",
            (DeliveryState.FAILED, *([] if kind is None else [kind])),
        )
        out = []
        for r in rows:
            error = self.db.scalar(
                "SELECT last_error FROM outbox WHERE state=? AND kind=? AND url=? ORDER BY created DESC LIMIT 1",
                (DeliveryState.FAILED, r["kind"], r["url"]),
            )
            out.append({"kind": r["kind"], "url": r["url"], "n": r["n"], "last_error": error})
        return out

    def gone_targets(self, kind: str | None = None) -> list[str]:
        """Targets of ``kind`` (None: of any kind, from gone_urls alone, without reading the outbox) that said they
        want nothing more (a webhook receiver's 410)."""
        if kind is None:
            return [r["url"] for r in self.db.all("SELECT url FROM gone_urls ORDER BY url")]
        rows = self.db.all(
            "SELECT url FROM gone_urls WHERE url IN (SELECT url FROM outbox WHERE kind=?) ORDER BY url", (kind,)
        )
        return [r["url"] for r in rows]

    def failing(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Pending deliveries of ``kind`` (None: of every kind) that failed at least once, per kind and target: how
        many, the attempts, the last error."""
        which = "" if kind is None else " AND kind=?"
        rows = self.db.all(
            "SELECT kind, url, COUNT(*) AS n, MAX(attempts) AS attempts, MAX(last_error) AS last_error FROM outbox"
            f" WHERE state=? AND attempts>0{which} GROUP BY kind, url ORDER BY kind, url",
            (DeliveryState.PENDING, *([] if kind is None else [kind])),
        )
        return [dict(r) for r in rows]

    def for_file(self, file_id: int) -> list[dict[str, Any]]:
        rows = self.db.all(
            "SELECT id, kind, url, state, attempts, last_status, last_error, result, created, delivered, next_at, host"
            " FROM outbox WHERE file_id=? ORDER BY created, id",
            (file_id,),
        )
        return [dict(dict(r), result=json.loads(r["result"]) if r["result"] else None) for r in rows]

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every delivery (of ``kind``), oldest first, without payloads."""
        only = " WHERE kind=?" if kind else ""
        rows = self.db.all(
            "SELECT id, plugin, kind, file_id, url, state, attempts, last_status, last_error, result, created,"
            f" delivered, next_at, lease, host FROM outbox{only} ORDER BY created, id",
            (kind,) if kind else (),
        )
        return [dict(dict(r), result=json.loads(r["result"]) if r["result"] else None) for r in rows]

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        row = self.db.one("SELECT * FROM outbox WHERE id=?", (delivery_id,))
        return dict(row) if row else None

    def untried(self, keys: Collection[str] | None = None) -> int:
        """Pending deliveries (of ``keys``, else all) with no attempt made yet."""
        only = f" AND id IN ({','.join('?' * len(keys))})" if keys else ""
        return int(
            self.db.scalar(
                f"SELECT COUNT(*) FROM outbox WHERE state=? AND attempts=0{only}",
                (DeliveryState.PENDING, *(keys or ())),
            )
            or 0
        )

    def next_due(self) -> float | None:
        return self.db.scalar("SELECT MIN(next_at) FROM outbox WHERE state=?", (DeliveryState.PENDING,))

    def prune(self, older_than: float) -> int:
        return self.db.transact(
            lambda tx: tx.run(
                "DELETE FROM outbox WHERE state IN (?,?,?,?) AND created < ?",
                (
                    DeliveryState.DELIVERED,
                    DeliveryState.GONE,
                    DeliveryState.FAILED,
                    DeliveryState.CANCELLED,
                    older_than,
                ),
            )
        )

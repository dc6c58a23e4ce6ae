"""The journal: every file rfwatch took, each step taken on it, and everything waiting to happen.

The only place that knows the tables (a test keeps it so). Callers use its parts' named transitions:

- ``journal.files``: take a file, claim it, classify, begin and finish steps, finish, requeue (files.py);
- ``journal.undo``: claim a file for undo, begin and finish undo steps, finish or give up (undo.py);
- ``journal.decisions``: a person's label or reject (decisions.py);
- ``journal.outbox``: enqueue, lease and record deliveries (outbox.py);
- ``journal.facts``: the model facts cache (facts.py);
- ``journal.sequences``: frames waiting for their sequence, and closed sequences (sequences.py);
- ``journal.holders``: the processes working on the journal, and their heartbeats (holders.py).

SQLite by default (a file; several processes on one host share it), PostgreSQL when one machine is not enough
(``state: postgresql://...``); see db.py for what differs. Paths are recorded below named roots (locations.py),
so hosts that mount one share at different paths see one file.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rfwatch.journal.db import (
    ChangeFeed,
    Database,
    Dialect,
    JournalUnavailable,
    Tx,
    display_url,
    is_postgres_url,
    open_database,
)
from rfwatch.journal.decisions import AlreadyDecided, Decision, DecisionKind, Decisions, NotWaiting
from rfwatch.journal.facts import FactsStore
from rfwatch.journal.files import ClaimLost, FileRow, Files, Skip, StepRow, utf8_text
from rfwatch.journal.holders import DEFAULT_LEASE, Heartbeat, Holder, Holders, default_host
from rfwatch.journal.locations import Roots
from rfwatch.journal.outbox import DeliveryRow, Outbox, QueuedDelivery
from rfwatch.journal.schema import SCHEMA_VERSION, SchemaTooNew, ensure_schema
from rfwatch.journal.sequences import Decided, Member, SequenceOf, SequenceRow, Sequences
from rfwatch.journal.undo import UndoRecords

if TYPE_CHECKING:
    from rfwatch.config import Config

__all__ = [
    "Journal",
    "open_journal",
    "FileRow",
    "StepRow",
    "Skip",
    "ClaimLost",
    "Decision",
    "DecisionKind",
    "AlreadyDecided",
    "NotWaiting",
    "QueuedDelivery",
    "DeliveryRow",
    "Sequences",
    "SequenceRow",
    "SequenceOf",
    "Member",
    "Decided",
    "Roots",
    "JournalUnavailable",
    "SchemaTooNew",
    "SCHEMA_VERSION",
    "DEFAULT_LEASE",
    "Dialect",
    "Tx",
    "utf8_text",
    "is_postgres_url",
    "display_url",
]


class Journal:
    """One process's handle on the journal. Thread-safe.

    The process registers as a holder (with a heartbeat thread) only when it first claims something, so commands
    that only read (``status``, ``history``) leave no trace.
    """

    def __init__(
        self,
        db: Database,
        roots: Roots | None = None,
        host: str | None = None,
        lease: float = DEFAULT_LEASE,
        kind: str = "rfwatch",
        legacy_id: str | None = None,
    ):
        self.db = db
        self.roots = roots or Roots()
        self.host = host or default_host()
        self.lease = lease
        self.kind = kind
        try:
            self.id = ensure_schema(db, self.roots, legacy_id)
        except BaseException:
            db.close()
            raise
        self.holders = Holders(db, lease)
        self.files = Files(db, self.roots, self.host, self._holder_id, lease)
        self.undo = UndoRecords(db, self.files)
        self.decisions = Decisions(db, self.files)
        self.outbox = Outbox(db, self.host, self._holder_id, lease)
        self.facts = FactsStore(db)
        self.sequences = Sequences(db, self.files, self.host)
        self._holder: Holder | None = None
        self._heartbeat: Heartbeat | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, **kw) -> Journal:
        """A journal at ``url``: a ``postgresql://`` URL or an SQLite file (created if missing)."""
        synchronous = kw.pop("synchronous", "FULL")
        return cls(open_database(url, synchronous=synchronous), legacy_id=None if is_postgres_url(url) else url, **kw)

    @property
    def display(self) -> str:
        """Where the journal is, fit for a log line (no password)."""
        return self.db.display

    @property
    def dialect(self) -> Dialect:
        return self.db.dialect

    # --- this process as a holder of claims ------------------------------------------------

    def _holder_id(self) -> str:
        return self.holder.id

    @property
    def holder(self) -> Holder:
        """This process as it names itself in its claims (registered, with a heartbeat, at first use)."""
        with self._lock:
            if self._holder is None:
                holder = Holder.new(self.host, self.kind)
                self.holders.register(holder)
                self._holder, self._heartbeat = holder, Heartbeat(self.holders, holder)
            return self._holder

    def scan_turn(self) -> tuple[int, int]:
        """This process's place among the live processes that scan (``(rank, of)``; see watcher.scan)."""
        return self.holders.turn(self.holder)

    def fresh(self) -> bool:
        """Whether this process's claims surely still hold (its heartbeat reached the database lately)."""
        return self._heartbeat is None or self._heartbeat.fresh()

    def delivery_id(self, *parts: object) -> str:
        """A delivery's key, the same on every host and after every crash: from the journal's id and ``parts``."""
        import uuid  # here, not at the top: status and history never need it (uuid loads platform)

        return uuid.uuid5(uuid.NAMESPACE_URL, "#".join([self.id, *map(str, parts)])).hex

    def changes(self) -> ChangeFeed:
        return self.db.changes()

    def close(self) -> None:
        """Release this process's claims (another process may carry its files on at once) and disconnect."""
        with self._lock:
            holder, heartbeat, self._holder, self._heartbeat = self._holder, self._heartbeat, None, None
        if heartbeat is not None:
            heartbeat.stop()
        if holder is not None:
            try:
                self.files.release_all(holder.id)
                self.outbox.release_all(holder.id)
                self.holders.remove(holder)
            except JournalUnavailable:
                pass  # the database is away: the claims lapse with the lease
        self.db.close()


def open_journal(config: Config, kind: str = "rfwatch", **kw) -> Journal:
    """The journal a config names (``state:``), with its named roots, host id and lease."""
    url = config.journal_url
    return Journal(
        open_database(url, synchronous=kw.pop("synchronous", "FULL")),
        roots=Roots(config.named_roots),
        host=config.host,  # None: the machine's host name (holders.default_host)
        lease=config.lease,
        kind=kind,
        legacy_id=None if is_postgres_url(url) else url,
        **kw,
    )

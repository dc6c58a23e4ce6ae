"""A person's decisions about files that wait for review, journaled before they take effect.

A decision (a label, or a reject) is one transaction: the decision row, the file's state ``decided`` and the start
of a new round of steps. Whoever served the page (the daemon, ``rfwatch review`` on its own, another host) wrote
it; every daemon on the journal hears of it (a notification on PostgreSQL, the file's change on SQLite) and one of
them applies it, once, whatever crashes in between.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rfwatch.crashpoints import crash_point
from rfwatch.journal.db import Database, Tx
from rfwatch.journal.files import FileRow, Files
from rfwatch.journal.holders import FREE
from rfwatch.record import record
from rfwatch.states import FileState, StrEnum

__all__ = ["Decision", "DecisionKind", "Decisions", "AlreadyDecided", "NotWaiting"]

_FREE = FREE.format(col="holder")


class DecisionKind(StrEnum):
    LABEL = "label"
    REJECT = "reject"


class NotWaiting(LookupError):
    """No such file waits for review."""


class AlreadyDecided(RuntimeError):
    """The file was decided already (here or on another page)."""


@record
class Decision:
    """A person's label or reject for a file that waited for review."""

    file_id: int
    round: int
    kind: DecisionKind
    classes: tuple[str, ...]
    decided: float
    by: str | None
    host: str | None = None
    taken_back: float | None = None

    def json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "classes": list(self.classes), "decided": self.decided, "by": self.by}


class Decisions:
    def __init__(self, db: Database, files: Files):
        self.db = db
        self.files = files

    def decide(
        self, file_id: int, kind: DecisionKind, classes: tuple[str, ...] = (), by: str | None = None
    ) -> Decision:
        """Record a decision for a waiting file; NotWaiting or AlreadyDecided otherwise. Nothing moves yet."""
        now = time.time()
        host = self.files.host

        def record(tx: Tx) -> Decision:
            row = tx.one("SELECT state, round_start FROM files WHERE id=?", (file_id,))
            if row is None:
                raise NotWaiting(file_id)
            if row["state"] != FileState.REVIEW:
                if tx.one("SELECT 1 FROM decisions WHERE file_id=?", (file_id,)):
                    raise AlreadyDecided(file_id)
                raise NotWaiting(file_id)
            # A round taken back on the page keeps its row: the next decision gets a round of its own.
            last = tx.scalar("SELECT MAX(round) FROM decisions WHERE file_id=?", (file_id,))
            decision = Decision(file_id, max(row["round_start"], (last or 0) + 1), kind, tuple(classes), now, by, host)
            # The steps that apply it start after every step so far (the review step among them).
            if not tx.run(
                "UPDATE files SET state=?, round_start=?, updated=? WHERE id=? AND state=?",
                (FileState.DECIDED, Files.next_seq(tx, file_id), now, file_id, FileState.REVIEW),
            ):
                raise AlreadyDecided(file_id)
            tx.run(
                "INSERT INTO decisions (file_id, round, kind, classes, decided, by, host) VALUES (?,?,?,?,?,?,?)",
                (file_id, decision.round, str(kind), json.dumps(list(classes)), now, by, host),
            )
            what = "rejected" if kind == DecisionKind.REJECT else "labelled " + ", ".join(classes)
            self.files.event(tx, file_id, f"{what} in review" + (f" by {by}" if by else ""), at=now)
            tx.notify()  # a daemon (on any host) applies it
            return decision

        decision = self.db.transact(record)
        crash_point("review.decided")
        return decision

    def take_back_unapplied(self, file_id: int, by: str | None = None) -> Decision | None:
        """A decision no daemon has begun to apply: the file waits again, in one transaction (None when the file
        is not ``decided``, a daemon holds it now, or one began to apply it)."""
        now = time.time()
        me = self.files._holder()

        def revert(tx: Tx) -> Decision | None:
            row = tx.one(
                "SELECT * FROM decisions WHERE file_id=? AND taken_back IS NULL ORDER BY round DESC LIMIT 1", (file_id,)
            )
            if row is None:
                return None
            # A daemon began to apply it (its decision step, an action's intent) and died before it finished: the
            # round is under way (a file may have moved already), and whoever claims the file next finishes it;
            # the page takes it back the undo way then.
            if Files.round_begun(tx, file_id):
                return None
            # Its decision step was never written (the daemon writes it once it holds the file): the round starts
            # where it would have.
            if not tx.run(
                f"UPDATE files SET state=?, round_start=?, holder=NULL, updated=? WHERE id=? AND state=? AND {_FREE}",
                (FileState.REVIEW, Files.next_seq(tx, file_id), now, file_id, FileState.DECIDED, me, self.files.lease),
            ):
                return None
            self.mark_taken_back(tx, file_id, now, by)
            return _decision(row)

        return self.db.transact(revert)

    def mark_taken_back(self, tx: Tx, file_id: int, now: float, by: str | None = None) -> None:
        """In the caller's transaction: the file's standing decision is taken back (the file waits again)."""
        tx.run(
            "UPDATE decisions SET taken_back=? WHERE file_id=? AND taken_back IS NULL",
            (now, file_id),
        )
        self.files.event(tx, file_id, "decision taken back in review" + (f" by {by}" if by else ""), at=now)

    def latest(self, file_id: int) -> Decision | None:
        row = self.db.one(
            "SELECT * FROM decisions WHERE file_id=? AND taken_back IS NULL ORDER BY round DESC LIMIT 1", (file_id,)
        )
        return _decision(row) if row is not None else None

    def standing(self) -> dict[int, Decision]:
        """Each file's standing decision (its latest not taken back), by file id: what ``rfwatch export``
        reports as a person's classification."""
        rows = self.db.all("SELECT * FROM decisions WHERE taken_back IS NULL ORDER BY file_id, round")
        return {r["file_id"]: _decision(r) for r in rows}  # later rounds overwrite earlier ones

    def history(self, file_id: int) -> list[Decision]:
        """Every decision on the file, oldest first."""
        return [_decision(r) for r in self.db.all("SELECT * FROM decisions WHERE file_id=? ORDER BY round", (file_id,))]

    def waiting(self) -> list[FileRow]:
        """Files that wait for a person, oldest first."""
        rows = self.db.all("SELECT * FROM files WHERE state=? ORDER BY updated, id", (FileState.REVIEW,))
        return [self.files._row(r) for r in rows]

    def waiting_keys(self) -> list[tuple[int, float]]:
        """(id, updated) of every file that waits for a person: from the ``files_state`` index alone, so a page
        that keeps its own copy of each row reads only those it has not seen (see rfwatch.review.listing)."""
        rows = self.db.all("SELECT id, updated FROM files WHERE state=? ORDER BY updated, id", (FileState.REVIEW,))
        return [(int(r["id"]), float(r["updated"])) for r in rows]

    def waiting_rows(self, ids: list[int]) -> list[FileRow]:
        """The rows of these files that still wait for a person (in chunks: a query has a bounded size)."""
        out: list[FileRow] = []
        for n in range(0, len(ids), 500):
            chunk = ids[n : n + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.all(f"SELECT * FROM files WHERE state=? AND id IN ({marks})", (FileState.REVIEW, *chunk))
            out += [self.files._row(r) for r in rows]
        return out

    def count_waiting(self) -> int:
        return int(self.db.scalar("SELECT COUNT(*) FROM files WHERE state=?", (FileState.REVIEW,)))


def _decision(row: Any) -> Decision:
    return Decision(
        row["file_id"],
        row["round"],
        DecisionKind(row["kind"]),
        tuple(json.loads(row["classes"])),
        row["decided"],
        row["by"],
        row["host"],
        row["taken_back"],
    )

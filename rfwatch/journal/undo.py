"""Undo records: each step ``rfwatch undo`` reversed, journaled like the steps themselves.

An undo step's row is written with its first intent (or its result), the file's new place and content with the
result, in one transaction. A file being undone is ``undoing`` and held by the undoing process (a lease, like
any claim): a review decision, a retry or a daemon's worker each change a file only from the state they expect,
so ``undoing`` keeps all of them off, and an undo killed half way leaves the file to the next undo once its lease
has run out. While an undo works on a file it keeps every watcher off the paths it moves the file through (a
``produced`` mark that holds whatever is there), until the file is undone and recorded as it is then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rfwatch.crashpoints import crash_point
from rfwatch.journal.db import Database, Tx
from rfwatch.journal.files import ANY_SIZE, ClaimLost, FileRow, Files, utf8_text
from rfwatch.journal.holders import FREE
from rfwatch.states import FileState, StepState, UndoState

__all__ = ["UndoRecords", "ANY_SIZE"]

_FREE = FREE.format(col="holder")


class UndoRecords:
    def __init__(self, db: Database, files: Files):
        self.db = db
        self.files = files

    def _holder(self) -> str:
        return self.files._holder()

    # --- reading --------------------------------------------------------------------------

    def closed(self, file_id: int) -> set[int]:
        """Steps undone in an earlier undo of the file (a retry ran the rules again since): never again."""
        rows = self.db.all("SELECT seq FROM undo_steps WHERE file_id=? AND state=?", (file_id, UndoState.CLOSED))
        return {r["seq"] for r in rows}

    def resume(self, file_id: int, seq: int) -> tuple[UndoState | None, Any]:
        """(state, the result when done, else the intent) of an undo step begun by an earlier, interrupted undo."""
        row = self.db.one("SELECT state, intent, result FROM undo_steps WHERE file_id=? AND seq=?", (file_id, seq))
        if row is None:
            return None, None
        state = UndoState(row["state"])
        doc = row["result"] if state == UndoState.DONE else row["intent"]
        return state, self.files.roots.from_portable(json.loads(doc)) if doc else None

    def pending_intents(self, file_id: int) -> list[dict[str, Any]]:
        """The intents of the file's undo steps begun and never finished (cut by a crash, or failed)."""
        rows = self.db.all(
            "SELECT intent FROM undo_steps WHERE file_id=? AND state=? AND intent IS NOT NULL ORDER BY seq",
            (file_id, UndoState.PENDING),
        )
        return [self.files.roots.from_portable(json.loads(r["intent"])) for r in rows]

    # --- the file -------------------------------------------------------------------------

    def claim(self, row: FileRow) -> bool:
        """Take the file for this undo, unless anything changed its row since it was selected.

        Comparing ``updated`` too catches a file retried and failed again in between (same state, another
        path), whose steps were read from the old row. A file an interrupted undo left ``undoing`` is taken
        only once that undo's holder is gone.
        """
        now = time.time()
        me = self._holder()

        def take(tx: Tx) -> bool:
            taken = tx.run(
                f"UPDATE files SET state=?, holder=?, updated=? WHERE id=? AND state=? AND updated=? AND {_FREE}",
                (FileState.UNDOING, me, now, row.id, row.state, row.updated, me, self.files.lease),
            )
            if taken and row.state != FileState.UNDOING:
                self.files.event(tx, row.id, f"undoing (was {row.state})", at=now)
            return bool(taken)

        return self.db.transact(take)

    def finish(self, file_id: int, path: Path, outcome: str, size: int | None, mtime_ns: int | None) -> None:
        """The file is undone: where it is now, recorded so that no watcher takes it, and no longer held."""

        def undone(tx: Tx, now: float) -> None:
            self.files.event(tx, file_id, utf8_text(f"undone ({outcome})") or "undone", at=now)

        self._end(file_id, path, size, mtime_ns, FileState.UNDONE, undone)
        crash_point("undo.finished")

    def back_to_review(
        self,
        file_id: int,
        path: Path,
        size: int | None,
        mtime_ns: int | None,
        also: Callable[[Tx, float], None],
    ) -> None:
        """A decision taken back: its round's steps are undone, and the file waits for review again where it is.

        One transaction: the file ``review`` (its next round after every step so far), the undone steps closed
        (no later undo reverses them again), and ``also`` (the decision marked taken back, its uploads cancelled).
        """
        self._end(file_id, path, size, mtime_ns, FileState.REVIEW, also)
        crash_point("review.taken_back")

    def _end(
        self,
        file_id: int,
        path: Path,
        size: int | None,
        mtime_ns: int | None,
        state: FileState,
        also: Callable[[Tx, float], None],
    ) -> None:
        now = time.time()
        root, rel = self.files._loc(path)
        me = self._holder()

        def record(tx: Tx) -> None:
            # The undo's claims (whatever is at a path) give way to the file as it is now, exactly.
            tx.run("DELETE FROM produced WHERE file_id=? AND size=?", (file_id, ANY_SIZE))
            if size is not None:
                tx.run("UPDATE files SET size=?, mtime_ns=? WHERE id=?", (size, mtime_ns, file_id))
                self.files._mark_produced(tx, path, size, mtime_ns, file_id)
            # Back in review, the next round of steps starts after every step so far (the undone ones included).
            again = ", round_start=?, last_error=NULL" if state == FileState.REVIEW else ""
            args = (Files.next_seq(tx, file_id),) if state == FileState.REVIEW else ()
            if not tx.run(
                f"UPDATE files SET state=?, path_root=?, path=?, holder=NULL{again}, updated=? WHERE id=? AND state=?"
                " AND holder=?",
                (state, root, rel, *args, now, file_id, FileState.UNDOING, me),
            ):
                raise ClaimLost(file_id)
            tx.run(
                "UPDATE undo_steps SET state=? WHERE file_id=? AND state=?", (UndoState.CLOSED, file_id, UndoState.DONE)
            )
            also(tx, now)

        self.db.transact(record)

    def give_up(self, row: FileRow) -> bool:
        """End an undo that cannot finish (a step whose file is gone fails every time): the steps not undone stay
        as they are, the file is ``undone`` where it is, and ``rfwatch retry`` can queue it again.

        False while a live undo holds the file, or when the file is not ``undoing``.
        """
        now = time.time()
        kept = json.dumps({"outcome": "kept", "detail": "not undone: the undo was given up by rfwatch retry"})
        me = self._holder()

        def end(tx: Tx) -> bool:
            if not tx.run(
                f"UPDATE files SET state=?, holder=NULL, updated=? WHERE id=? AND state=? AND {_FREE}",
                (FileState.UNDONE, now, row.id, FileState.UNDOING, me, self.files.lease),
            ):
                return False
            # Every step of the file counts as dealt with: a later undo starts from the next round's steps.
            tx.run(
                "INSERT INTO undo_steps (file_id, seq, action, state, result, updated, host)"
                " SELECT file_id, seq, action, ?, ?, ?, ? FROM steps WHERE file_id=? AND state=?"
                " ON CONFLICT (file_id, seq) DO NOTHING",
                (UndoState.CLOSED, kept, now, self.files.host, row.id, StepState.DONE),
            )
            tx.run("UPDATE undo_steps SET state=? WHERE file_id=?", (UndoState.CLOSED, row.id))
            tx.run("DELETE FROM produced WHERE file_id=? AND size=?", (row.id, ANY_SIZE))  # the undo's claims
            self.files.event(
                tx, row.id, utf8_text(f"undo given up by rfwatch retry; the file stays at {row.path}"), at=now
            )
            return True

        return self.db.transact(end)

    # --- steps -------------------------------------------------------------------------------

    def record_intent(self, file_id: int, seq: int, action: str, intent: dict[str, Any]) -> None:
        """What the undo step is about to do; a ``target`` it will put the file at is claimed from watchers first."""
        now = time.time()
        doc = json.dumps(self.files.roots.to_portable(intent))

        me = self._holder()

        def record(tx: Tx) -> None:
            self._mine(tx, file_id, now, me)
            tx.run(
                "INSERT INTO undo_steps (file_id, seq, action, state, intent, updated, host) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (file_id, seq) DO UPDATE SET intent=excluded.intent, updated=excluded.updated",
                (file_id, seq, action, UndoState.PENDING, doc, now, self.files.host),
            )
            if isinstance(intent.get("target"), str):  # about to put the file there (place_file's intent)
                self._claim_path(tx, Path(intent["target"]), file_id)

        self.db.transact(record)
        crash_point("undo.intent")

    def claim_path(self, file_id: int, path: Path) -> None:
        """Keep every watcher off ``path`` while the undo works on the file there (see the module's docstring)."""
        self.db.transact(lambda tx: self._claim_path(tx, path, file_id))

    def _claim_path(self, tx: Tx, path: Path, file_id: int) -> None:
        root, rel = self.files._loc(path)
        tx.run(
            "INSERT INTO produced (path_root, path, size, mtime_ns, file_id) VALUES (?,?,?,?,?)"
            " ON CONFLICT (path_root, path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,"
            " file_id=excluded.file_id",
            (root, rel, ANY_SIZE, ANY_SIZE, file_id),
        )

    def finish_step(
        self,
        file_id: int,
        seq: int,
        action: str,
        result: dict[str, Any],
        *,
        path: Path | None = None,
        sha256: str | None = None,
        also: Callable[[Tx], None] | None = None,
    ) -> None:
        """An undo step's result, with the file's place and content now and the events it queued, at once."""
        now = time.time()
        doc = json.dumps(self.files.roots.to_portable(result), default=str)

        me = self._holder()

        def record(tx: Tx) -> None:
            self._mine(tx, file_id, now, me)
            tx.run(
                "INSERT INTO undo_steps (file_id, seq, action, state, result, updated, host) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT (file_id, seq) DO UPDATE SET state=excluded.state, result=excluded.result,"
                " updated=excluded.updated, host=excluded.host",
                (file_id, seq, action, UndoState.DONE, doc, now, self.files.host),
            )
            if path is not None:
                root, rel = self.files._loc(path)
                tx.run("UPDATE files SET path_root=?, path=? WHERE id=?", (root, rel, file_id))
            if sha256 is not None:
                tx.run("UPDATE files SET sha256=? WHERE id=?", (sha256, file_id))
            if also is not None:
                also(tx)
            self.files.event(tx, file_id, f"undo {action}: {result.get('detail') or result.get('outcome')}", at=now)

        self.db.transact(record)
        crash_point("undo.step_finished")

    def _mine(self, tx: Tx, file_id: int, now: float, me: str) -> None:
        if not tx.run(
            "UPDATE files SET updated=? WHERE id=? AND state=? AND holder=?", (now, file_id, FileState.UNDOING, me)
        ):
            raise ClaimLost(file_id)

"""Files and their steps: the record of every file rfwatch took, and each step taken on it.

A file's row goes ``detected -> classified -> done | unmatched | failed``; review adds ``review`` (waiting for a
person) and ``decided`` (a person's label, to be applied), undo adds ``undoing`` and ``undone``. A file is worked
on by one process at a time: the row names its holder (see :mod:`rfwatch.journal.holders`), and every transition
a worker makes checks that the claim is still its own (:class:`ClaimLost` otherwise). Two processes that see one
new file race to insert its row; a partial unique index on the path of every file rfwatch still owns lets only
one win.

Steps are journaled so that a crash at any instant is survived: an action records its intent (what it is about to
do) before each side effect, and the step's result is committed with the file's new place, the files it wrote and
the deliveries it queued, in one transaction. A step is written first with its intent, or with its result when it
recorded none: a row saying only "begun" would tell recovery nothing (a step without an intent is redone either
way), so it would cost a transaction per step for nothing. The last step of a round commits the file's final state
with its own result.

A file's classification (the model's answer) may wait in memory for the file's next transition and be committed
with it (``classified(..., defer=True)``): the first step's intent, the final state when no rule matched, a
failure, or a frame's wait for its sequence (:meth:`Files.hold_for_sequence`). Nothing outside the journal is done between the two (the rules are evaluated; no file is touched), so a
crash in between loses only the answer: the file is found as detected and classified again, one more request to
the API and nothing else, as when a crash came during the request itself. It saves a file one transaction (a
commit, and on SQLite an fsync). Until it is committed the answer is this process's alone: its reads of the row
(:meth:`Files.get`) and of the prediction kept for identical content see it; another process sees the file as
detected, held by this one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from rfwatch.crashpoints import crash_point
from rfwatch.journal.db import Database, Dialect, Tx
from rfwatch.journal.holders import FREE
from rfwatch.journal.locations import Roots
from rfwatch.journal.schema import TERMINAL_STATES_SQL, WORKING_STATES_SQL
from rfwatch.record import record
from rfwatch.states import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    FileState,
    StepKind,
    StepState,
)

__all__ = ["Files", "FileRow", "StepRow", "ClaimLost", "Skip", "utf8_text", "ANY_SIZE"]

_FREE = FREE.format(col="holder")
_ACTIVE_SQL = "(" + ",".join(f"'{s}'" for s in ACTIVE_STATES) + ")"
#: The size (and mtime) of an undo's claim in ``produced``: no watcher takes whatever is at that path (see
#: rfwatch.journal.undo). A step of a file's rules claims the paths it is about to write in ``claims`` instead.
ANY_SIZE = -1


def utf8_text(text: str | None) -> str | None:
    """Text columns must be valid UTF-8; file names need not be (their bytes are kept in BLOB columns)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


class ClaimLost(Exception):
    """Another process holds the file now (this one's lease ran out): this process must leave it alone."""


@record
class Skip:
    """Why a file was not taken, and the row that has it (if any)."""

    reason: str
    file_id: int | None = None


@record
class FileRow:
    """One row of ``files``: a file, where it is now, what the model said and its state."""

    id: int
    path: Path
    source: Path
    #: The watched folder it was found in (this host's path for it).
    watch_root: Path
    #: That folder's name.
    root: str
    size: int
    mtime_ns: int
    sha256: str
    model: str
    state: FileState
    prediction: dict[str, Any] | None
    rule: str | None
    attempts: int
    last_error: str | None
    created: float
    updated: float
    support: dict[str, str] | None
    round_start: int
    holder: str | None
    host: str | None


@record
class StepRow:
    """One row of ``steps``: an action a file's rules ran, its intent and its result."""

    file_id: int
    seq: int
    kind: StepKind
    rule: str
    action: str
    state: StepState
    intent: dict[str, Any] | None
    result: Any
    updated: float
    host: str | None


@record
class _Unjournaled:
    """A classification waiting for its file's next transition (see the module's docstring)."""

    #: The file's columns as ``classified`` sets them (``attempts`` is counted up besides).
    columns: dict[str, Any]
    #: This process's holder id, which the file's row names while the classification may be committed.
    holder: str
    sha256: str
    model: str
    doc: str
    at: float
    message: str


class Files:
    def __init__(self, db: Database, roots: Roots, host: str, holder: Callable[[], str], lease: float):
        self.db = db
        self.roots = roots
        self.host = host
        self._holder = holder  # the holder id, registered at the first claim
        self.lease = lease
        # By file id, and its prediction by content (sha256, model); each file's entry is touched only by the worker
        # that has the file (single dict operations: no lock needed).
        self._unjournaled: dict[int, _Unjournaled] = {}
        self._unjournaled_content: dict[tuple[str, str], str] = {}

    # --- rows -------------------------------------------------------------------------

    def _row(self, r: Any) -> FileRow:
        waiting = self._unjournaled.get(r["id"]) if self._unjournaled else None
        # This process's classification, not committed yet: what the row will say. Not once the row has moved on
        # without it (another process took the file over while this one could not reach the journal).
        if waiting is not None and r["state"] == FileState.DETECTED and r["holder"] == waiting.holder:
            r = {**r, **waiting.columns, "attempts": r["attempts"] + 1}
        return FileRow(
            id=r["id"],
            path=self.roots.resolve(r["path_root"], r["path"]),
            source=self.roots.resolve(r["root"], r["source"]),
            watch_root=self.roots.resolve(r["root"], b"") if r["root"] else self.roots.resolve("", r["source"]).parent,
            root=r["root"],
            size=r["size"],
            mtime_ns=r["mtime_ns"],
            sha256=r["sha256"],
            model=r["model"],
            state=FileState(r["state"]),
            prediction=json.loads(r["prediction"]) if r["prediction"] else None,
            rule=r["rule"],
            attempts=r["attempts"],
            last_error=r["last_error"],
            created=r["created"],
            updated=r["updated"],
            support=json.loads(r["support"]) if r["support"] else None,
            round_start=r["round_start"],
            holder=r["holder"],
            host=r["host"],
        )

    def _step(self, r: Any) -> StepRow:
        return StepRow(
            file_id=r["file_id"],
            seq=r["seq"],
            kind=StepKind(r["kind"]),
            rule=r["rule"],
            action=r["action"],
            state=StepState(r["state"]),
            intent=self.roots.from_portable(json.loads(r["intent"])) if r["intent"] else None,
            result=self.roots.from_portable(json.loads(r["result"])) if r["result"] else None,
            updated=r["updated"],
            host=r["host"],
        )

    def _loc(self, path: str | os.PathLike[str]) -> tuple[str, bytes]:
        loc = self.roots.locate(path)
        return loc.root, loc.rel

    def _json(self, value: Any) -> str:
        return json.dumps(self.roots.to_portable(value), default=str)

    def event(self, tx: Tx, file_id: int, *messages: str, at: float | None = None) -> None:
        """Add lines to a file's history, inside the caller's transaction (one statement for all of them)."""
        if not all(isinstance(m, str) for m in messages):  # a time passed where a line goes (at= is keyword-only)
            raise TypeError(f"event lines must be text: {messages!r}")
        at = at or time.time()
        self._lines(tx, file_id, [(at, m) for m in messages])

    def _lines(self, tx: Tx, file_id: int, lines: list[tuple[float, str]]) -> None:
        """History lines (time, text), in this order, in one statement."""
        values = ",".join(["(?,?,?,?)"] * len(lines))
        args = [v for at, m in lines for v in (file_id, at, utf8_text(m), self.host)]
        tx.send(f"INSERT INTO events (file_id, at, message, host) VALUES {values}", args)

    def _mine(
        self,
        tx: Tx,
        file_id: int,
        now: float,
        me: str,
        sets: dict[str, Any] | None = None,
        touch: bool = True,
        messages: Iterable[str] = (),
    ) -> None:
        """Raise ClaimLost unless this process (holder ``me``) still holds the file; set ``sets`` (column names
        are rfwatch's own, never input) and, with ``touch``, ``updated`` in the same statement; add ``messages`` to
        its history. On PostgreSQL the check goes on without waiting, with the transaction's other statements, and
        ClaimLost is raised before the commit.

        A classification of the file waiting to be journaled (``classified(..., defer=True)``) is committed here,
        with the transition: its columns in the same UPDATE (one row is written once per statement on PostgreSQL),
        its line before ``messages`` in the same INSERT (the history keeps its order)."""
        # Without touch (a step's intent, which changes nothing of the file's own) the update sets the holder to
        # itself: it still locks the row and checks the claim, but changes no indexed column, so PostgreSQL may write
        # it beside the old version (HOT) instead of into each of the files table's seven indexes.
        waiting = self._unjournaled.get(file_id)
        lines = [(now, m) for m in messages]
        counted = ""
        if waiting is not None:
            cols = {**waiting.columns, "updated": now, **(sets or {})}
            counted = ", attempts=attempts+1"
            lines.insert(0, (waiting.at, waiting.message))
            tx.send(
                "INSERT INTO predictions (sha256, model, prediction, created) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                (waiting.sha256, waiting.model, waiting.doc, waiting.at),
            )
            tx.after_commit(lambda: self._forget(file_id, waiting))  # the journal answers for it now
        else:
            cols = {"updated": now, **(sets or {})} if touch or sets else {"holder": me}
        assign = ", ".join(f"{c}=?" for c in cols) + counted
        tx.check(
            f"UPDATE files SET {assign} WHERE id=? AND holder=?",
            (*cols.values(), file_id, me),
            lambda: ClaimLost(file_id),
        )
        if lines:
            self._lines(tx, file_id, lines)

    def _forget(self, file_id: int, waiting: _Unjournaled) -> None:
        """Let go of a waiting classification (committed, or not to be): unless a newer one replaced it."""
        if self._unjournaled.get(file_id) is waiting:
            del self._unjournaled[file_id]
        key = (waiting.sha256, waiting.model)
        if self._unjournaled_content.get(key) is waiting.doc:
            del self._unjournaled_content[key]

    def _final_sets(self, state: FileState, error: str | None = None) -> dict[str, Any]:
        """The file's columns for a new state; a process lets go of a file that is finished or waits for a person."""
        sets: dict[str, Any] = {"state": state, "last_error": utf8_text(error)}
        if state in TERMINAL_STATES or state == FileState.REVIEW:
            sets["holder"] = None
        return sets

    # --- reading ------------------------------------------------------------------------

    def get(self, file_id: int) -> FileRow:
        row = self.db.one("SELECT * FROM files WHERE id=?", (file_id,))
        if row is None:
            raise KeyError(file_id)
        return self._row(row)

    def screen(self, path: Path, size: int, mtime_ns: int) -> Skip | None:
        """Before a file is hashed: why it needs no new work (rfwatch wrote it; this very file is known; a row
        rfwatch still works on is at this path), or None."""
        root, rel = self._loc(path)
        with self.db.read() as tx:
            row = _look(tx, root, rel, size, mtime_ns)
        if _written_by_rfwatch(row, size, mtime_ns):
            return Skip("written by rfwatch")
        if row["id"] is None:
            return None
        if (row["size"], row["mtime_ns"]) == (size, mtime_ns):
            return Skip(f"already {row['state']}", row["id"])
        # rfwatch is still working on the file here (a crash came after a tag rewrote it in place, before the
        # step was journaled): the journal's row carries it on; it is not a new file.
        return Skip("being processed", row["id"])

    def known_in(self, folder: Path) -> dict[str, set[tuple[int, int]]]:
        """The files directly in ``folder`` the journal knows, by name: the (size, mtime_ns) of each row there
        and of each output rfwatch wrote there. A start-up scan skips a file that matches, as :meth:`screen`
        would, with one query per folder instead of one per file."""
        root, rel = self._loc(folder)
        prefix = rel + b"/" if rel else b""
        if self.db.dialect == Dialect.POSTGRESQL:
            direct = "position(?::bytea in substring(path from ?)) = 0"
        else:
            direct = "instr(substr(path, ?), ?) = 0"
        direct_args: tuple[Any, ...] = (
            (b"/", len(prefix) + 1) if self.db.dialect == Dialect.POSTGRESQL else (len(prefix) + 1, b"/")
        )
        where = "path_root=? AND " + (f"path >= ? AND path < ? AND {direct}" if prefix else direct)
        args = (root, prefix, prefix[:-1] + b"0", *direct_args) if prefix else (root, *direct_args)
        known: dict[str, set[tuple[int, int]]] = {}
        with self.db.read() as tx:
            rows = tx.all(f"SELECT path, size, mtime_ns FROM files WHERE {where}", args)
            rows += tx.all(f"SELECT path, size, mtime_ns FROM produced WHERE size >= 0 AND {where}", args)
        for r in rows:
            name = os.fsdecode(bytes(r["path"])[len(prefix) :])
            known.setdefault(name, set()).add((r["size"], r["mtime_ns"]))
        return known

    def was_found_at(self, path: Path) -> bool:
        """Whether a file was ever taken from ``path`` (it may have been moved on since)."""
        root, rel = self._loc(path)
        return (
            self.db.one(
                "SELECT 1 FROM files WHERE (root=? AND source=?) OR (path_root=? AND path=?) LIMIT 1",
                (root, rel, root, rel),
            )
            is not None
        )

    def cached_prediction(self, sha256: str, model: str) -> dict[str, Any] | None:
        doc = self._unjournaled_content.get((sha256, model)) or self.db.scalar(
            "SELECT prediction FROM predictions WHERE sha256=? AND model=?", (sha256, model)
        )
        return json.loads(doc) if doc else None

    def claimable(self) -> list[int]:
        """Files a worker of this process may carry on: new, classified or decided, held by nobody alive."""
        rows = self.db.all(
            f"SELECT id FROM files WHERE state IN {_ACTIVE_SQL} AND {_FREE} ORDER BY id",
            (self._holder(), self.lease),
        )
        return [r["id"] for r in rows]

    def steps(self, file_id: int) -> list[StepRow]:
        return [self._step(r) for r in self.db.all("SELECT * FROM steps WHERE file_id=? ORDER BY seq", (file_id,))]

    def step(self, file_id: int, seq: int) -> StepRow | None:
        row = self.db.one("SELECT * FROM steps WHERE file_id=? AND seq=?", (file_id, seq))
        return self._step(row) if row else None

    def events(self, file_id: int) -> list[tuple[float, str, str | None]]:
        rows = self.db.all("SELECT at, message, host FROM events WHERE file_id=? ORDER BY id", (file_id,))
        return [(r["at"], r["message"], r["host"]) for r in rows]

    def history_for(self, path: Path) -> list[FileRow]:
        root, rel = self._loc(path)
        rows = self.db.all(
            "SELECT * FROM files WHERE (path_root=? AND path=?) OR (root=? AND source=?) ORDER BY id",
            (root, rel, root, rel),
        )
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Files per state: the sum of the +1/-1 rows the triggers on ``files`` wrote (see schema.COUNT_TABLES),
        a read of a few rows where counting the files themselves is a scan of a million index entries."""
        rows = self.db.all("SELECT state, SUM(n) AS n FROM file_counts GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows if r["n"]}

    #: Rows file_counts may hold before fold_counts folds them (a few transitions' worth; the sum stays cheap).
    FOLD_ABOVE = 256

    def fold_counts(self, above: int | None = None) -> bool:
        """Fold file_counts into one row per state, when it holds more than ``above`` rows; whether it did.

        PostgreSQL: one statement (the rows deleted are exactly the rows summed, on one snapshot); a fold running
        at once elsewhere blocks on the same rows and then finds them gone, so nothing is counted twice. SQLite:
        the write lock makes the two statements one step."""
        limit = self.FOLD_ABOVE if above is None else above
        if int(self.db.scalar("SELECT COUNT(*) FROM file_counts") or 0) <= limit:
            return False

        def fold(tx: Tx) -> None:
            if self.db.dialect == Dialect.POSTGRESQL:
                tx.run(
                    "WITH gone AS (DELETE FROM file_counts RETURNING state, n)"
                    " INSERT INTO file_counts (state, n) SELECT state, SUM(n) FROM gone GROUP BY state"
                    " HAVING SUM(n) <> 0"
                )
                return
            last = tx.scalar("SELECT MAX(rowid) FROM file_counts")
            tx.run(
                "INSERT INTO file_counts (state, n) SELECT state, SUM(n) FROM file_counts WHERE rowid <= ?"
                " GROUP BY state HAVING SUM(n) <> 0",
                (last,),
            )
            tx.run("DELETE FROM file_counts WHERE rowid <= ?", (last,))

        self.db.transact(fold)
        return True

    def recent(self, states: Collection[str], limit: int = 5) -> list[FileRow]:
        """The ``limit`` files changed last among ``states``, newest first.

        One query per state, each reading its newest rows from the end of the (state, updated) index: with
        ``state IN (...)`` the engine sorted every row of those states (a million done files: most of status's
        time)."""
        rows = [
            r
            for state in states
            for r in self.db.all(
                "SELECT * FROM files WHERE state=? ORDER BY updated DESC, id DESC LIMIT ?", (state, limit)
            )
        ]
        rows.sort(key=lambda r: (r["updated"], r["id"]), reverse=True)
        return [self._row(r) for r in rows[:limit]]

    def latest_error(self, state: str) -> str | None:
        """The error of the file changed last among those in ``state`` that carry one (status: why files wait).

        Not simply the newest file's: a daemon puts files back untried while the API refuses (they wait at its
        gate with no error of their own), so the newest waiting file may have none."""
        row = self.db.one(
            "SELECT last_error FROM files WHERE state=? AND last_error IS NOT NULL ORDER BY updated DESC, id DESC"
            " LIMIT 1",
            (state,),
        )
        return row["last_error"] if row else None

    def rows_in_state(self, states: Collection[str], paths: Iterable[Path] | None = None) -> list[FileRow]:
        """Files in one of ``states``: all of them, or the newest row for each of ``paths`` (now or first seen)."""
        marks = ",".join("?" * len(states))
        paths = list(paths or [])
        if not paths:
            rows = self.db.all(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", tuple(states))
            return [self._row(r) for r in rows]
        out = []
        for p in paths:
            root, rel = self._loc(p)
            row = self.db.one(
                f"SELECT * FROM files WHERE ((path_root=? AND path=?) OR (root=? AND source=?)) AND state IN ({marks})"
                " ORDER BY id DESC LIMIT 1",
                (root, rel, root, rel, *states),
            )
            if row:
                out.append(self._row(row))
        return out

    def select(
        self,
        states: Collection[str],
        *,
        since: float | None = None,
        until: float | None = None,
        rule: str | None = None,
        paths: Collection[Path] = (),
        with_done_steps_if: str | None = None,
    ) -> list[FileRow]:
        """Files for ``rfwatch undo``, newest first: in ``states``, taken since/until, a rule of this name acted
        on them, at or from one of ``paths``. ``with_done_steps_if``: files in that state qualify only when a
        step of theirs is done (a file no rule matched has nothing to reverse unless a review sent it through
        the rules)."""
        marks = ",".join("?" * len(states))
        sql, args = f"SELECT * FROM files WHERE state IN ({marks})", list(states)
        if with_done_steps_if is not None:
            # EXISTS, by the steps' key: IN (SELECT ...) would list the done steps of every file first
            sql += " AND (state != ? OR EXISTS (SELECT 1 FROM steps s WHERE s.file_id=files.id AND s.state=?))"
            args += [with_done_steps_if, StepState.DONE]
        if since is not None:
            sql, args = sql + " AND created >= ?", [*args, since]
        if until is not None:
            sql, args = sql + " AND created <= ?", [*args, until]
        if rule is not None:
            sql += " AND (rule=? OR EXISTS (SELECT 1 FROM steps s WHERE s.file_id=files.id AND s.rule=?))"
            args += [rule, rule]
        if paths:
            locs = [self._loc(p) for p in paths]
            holes = " OR ".join(["(path_root=? AND path=?) OR (root=? AND source=?)"] * len(locs))
            sql += f" AND ({holes})"
            for root, rel in locs:
                args += [root, rel, root, rel]
        # With a time window, the files_created index finds the few files in it; "+id" keeps the planner from
        # walking the whole table in id order to spare the sort of those few (a million rows: 0.7 s against 3 ms).
        order = " ORDER BY +id DESC" if since is not None or until is not None else " ORDER BY id DESC"
        return [self._row(r) for r in self.db.all(sql + order, tuple(args))]

    def classified_between(self, since: float | None = None, until: float | None = None) -> list[FileRow]:
        """Files the model classified (``rfwatch export``), oldest first: taken since/until (Unix times), with
        a prediction, and not put back by an undo (an undone file is the operator's "never happened")."""
        undone = (FileState.UNDONE, FileState.UNDOING)
        sql = "SELECT * FROM files WHERE prediction IS NOT NULL AND state NOT IN (?,?)"
        args: list[Any] = [*undone]
        if since is not None:
            sql, args = sql + " AND created >= ?", [*args, since]
        if until is not None:
            sql, args = sql + " AND created <= ?", [*args, until]
        return [self._row(r) for r in self.db.all(sql + " ORDER BY created, id", tuple(args))]

    # --- taking a file -------------------------------------------------------------------

    def take(self, path: Path, size: int, mtime_ns: int, sha256: str, model: str) -> int | Skip:
        """Journal a new file, claimed by this process; a Skip if another process has it or it needs no work.

        One transaction: the insert loses to a row rfwatch still works on at this path (another process took it
        first), and a row for this very file that another process finished meanwhile is found after the insert
        (at READ COMMITTED its finish would have made the insert wait, so no window is left).
        """
        root, rel = self._loc(path)
        now = time.time()
        holder = self._holder()
        if self.db.dialect == Dialect.POSTGRESQL:  # the same, in one statement (schema.TAKE_FUNCTION)
            row = self.db.call(
                "SELECT taken, skip, other FROM rfwatch_take(?,?,?,?,?,?,?,?,?,?)",
                (root, rel, size, mtime_ns, sha256, model, now, holder, self.host, utf8_text(f"detected {path}")),
            )
            assert row is not None
            if row["taken"] is None:
                return Skip(row["skip"], row["other"])
            crash_point("journal.created")
            return int(row["taken"])

        def insert(tx: Tx) -> int | Skip:
            # One statement for the common case: no insert over a file rfwatch wrote itself (its produced mark).
            file_id = tx.scalar(
                "INSERT INTO files (root, source, path_root, path, size, mtime_ns, sha256, model, state, created,"
                " updated, holder, host) SELECT ?,?,?,?,?,?,?,?,?,?,?,?,? WHERE NOT EXISTS (SELECT 1 FROM produced"
                " WHERE path_root=? AND path=? AND (size=-1 OR (size=? AND mtime_ns=?)))"
                " AND NOT EXISTS (SELECT 1 FROM claims WHERE path_root=? AND path=?)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (
                    *(root, rel, root, rel, size, mtime_ns, sha256, model, FileState.DETECTED, now, now, holder),
                    *(self.host, root, rel, size, mtime_ns, root, rel),
                ),
            )
            if file_id is None:
                if _written_by_rfwatch(_look(tx, root, rel, size, mtime_ns), size, mtime_ns):
                    return Skip("written by rfwatch")
                other = tx.one(
                    f"SELECT id, holder FROM files WHERE path_root=? AND path=? AND state IN {WORKING_STATES_SQL}",
                    (root, rel),
                )
                return Skip("being processed", other["id"] if other else None)
            done = tx.one(
                f"SELECT id, state FROM files WHERE path_root=? AND path=? AND size=? AND mtime_ns=? AND id != ?"
                f" AND state IN {TERMINAL_STATES_SQL} ORDER BY id DESC LIMIT 1",
                (root, rel, size, mtime_ns, file_id),
            )
            if done is not None:  # finished by another process between our look and our insert
                tx.run("DELETE FROM files WHERE id=?", (file_id,))
                return Skip(f"already {done['state']}", done["id"])
            self.event(tx, file_id, f"detected {path}", at=now)
            return int(file_id)

        taken = self.db.transact(insert)
        if not isinstance(taken, Skip):
            crash_point("journal.created")
        return taken

    def drop(self, file_id: int) -> None:
        """Forget a row just taken for a file that vanished or changed before any work was done on it."""

        me = self._holder()

        def forget(tx: Tx) -> None:
            if tx.run("DELETE FROM files WHERE id=? AND holder=? AND state=?", (file_id, me, FileState.DETECTED)):
                tx.run("DELETE FROM events WHERE file_id=?", (file_id,))

        self.db.transact(forget)

    def claim(self, file_id: int, states: Collection[str] = ACTIVE_STATES) -> FileRow | None:
        """Take a journaled file for this process (to carry on from its last step); None if another live
        process has it or it is no longer in ``states``."""
        marks = ",".join("?" * len(states))
        me = self._holder()

        def take(tx: Tx) -> Any:
            if not tx.run(
                f"UPDATE files SET holder=? WHERE id=? AND state IN ({marks}) AND {_FREE}",
                (me, file_id, *states, me, self.lease),
            ):
                return None
            return tx.one("SELECT * FROM files WHERE id=?", (file_id,))

        row = self.db.transact(take)
        return self._row(row) if row is not None else None

    def release(self, file_id: int) -> None:
        me = self._holder()
        self.db.transact(lambda tx: tx.run("UPDATE files SET holder=NULL WHERE id=? AND holder=?", (file_id, me)))

    def release_all(self, holder: str) -> int:
        def free(tx: Tx) -> int:
            n = tx.run("UPDATE files SET holder=NULL WHERE holder=?", (holder,))
            if n:
                tx.notify()  # files another process may carry on now
            return n

        return self.db.transact(free)

    # --- classifying ------------------------------------------------------------------------

    def classified(
        self,
        file_id: int,
        prediction: dict[str, Any],
        sha256: str,
        model: str,
        summary: str,
        support: dict[str, str] | None = None,
        *,
        defer: bool = False,
    ) -> None:
        """The file has its prediction (kept for identical content too). ``support``: ids for Roboflow support
        (None: the prediction was reused). ``defer``: commit it with the file's next transition (the module's
        docstring says when that is safe); :meth:`settle` commits it alone."""
        now = time.time()
        doc = json.dumps(prediction)
        if support is None:
            message = f"classified {summary} (cached prediction for identical content)"
        else:
            ids = "; ".join(f"{k} {v}" for k, v in support.items())
            message = f"classified {summary}" + (f" ({ids})" if ids else "")
        columns = {
            "state": FileState.CLASSIFIED,
            "prediction": doc,
            "support": json.dumps(support) if support else None,
            "last_error": None,
            "updated": now,
        }
        waiting = _Unjournaled(columns, self._holder(), sha256, model, doc, now, message)
        self._unjournaled[file_id] = waiting
        if defer:
            self._unjournaled_content[(sha256, model)] = doc
        else:
            try:
                self._commit_waiting(file_id, waiting)
            except BaseException:
                self._forget(file_id, waiting)  # not journaled: raised to the caller, as any failed transition
                raise
        crash_point("journal.classified")

    def settle(self, file_id: int) -> None:
        """Commit the file's classification if it still waits for a transition (its job ends without one: a step
        waits for a plugin, say); a file another process took over meanwhile is not ours to write: forgotten."""
        waiting = self._unjournaled.get(file_id)
        if waiting is None:
            return
        try:
            self._commit_waiting(file_id, waiting)
        except ClaimLost:
            self._forget(file_id, waiting)  # the process that has the file now classifies it
            raise

    def _commit_waiting(self, file_id: int, waiting: _Unjournaled) -> None:
        self.db.transact(lambda tx: self._mine(tx, file_id, waiting.at, waiting.holder), independent=True)

    def attempt_failed(self, file_id: int, error: str) -> None:
        """A transient failure: the file stays queued."""
        now = time.time()
        me = self._holder()

        def record(tx: Tx) -> None:
            tx.check(
                "UPDATE files SET attempts=attempts+1, last_error=?, updated=? WHERE id=? AND holder=?",
                (utf8_text(error), now, file_id, me),
                lambda: ClaimLost(file_id),
            )
            self.event(tx, file_id, f"attempt failed: {error}", at=now)

        self.db.transact(record, independent=True)

    # --- steps ------------------------------------------------------------------------------

    def resume_step(self, file_id: int, seq: int) -> tuple[StepState | None, Any]:
        """(state, intent) of a step begun before (a crash or an outage interrupted it), or (None, None)."""
        row = self.db.one("SELECT state, intent, result FROM steps WHERE file_id=? AND seq=?", (file_id, seq))
        if row is None:
            return None, None
        state = StepState(row["state"])
        if state == StepState.DONE:
            return state, self.roots.from_portable(json.loads(row["result"])) if row["result"] else None
        return state, self.roots.from_portable(json.loads(row["intent"])) if row["intent"] else None

    def record_intent(
        self, file_id: int, seq: int, kind: StepKind, rule: str, action: str, intent: dict[str, Any]
    ) -> None:
        """What the step is about to do, before it does it; the step's row is written with its first intent."""
        now = time.time()
        doc = self._json(intent)

        me = self._holder()  # resolved before the transaction (registering takes one of its own)

        def record(tx: Tx) -> None:
            self._mine(tx, file_id, now, me, touch=False)  # (with a classification waiting for it: see _mine)
            tx.send(
                "INSERT INTO steps (file_id, seq, kind, rule, action, state, intent, updated, host)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (file_id, seq) DO UPDATE SET intent=excluded.intent,"
                " updated=excluded.updated, host=excluded.host",
                (file_id, seq, kind, utf8_text(rule), action, StepState.PENDING, doc, now, self.host),
            )
            for claimed in claims:  # kept from watchers until the step's result (see schema.CLAIM_TABLES)
                tx.send(
                    "INSERT INTO claims (path_root, path, file_id) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    (*claimed, file_id),
                )

        claims = {self._loc(path): path for path in _output_claims(intent)}  # each row once (one statement)
        self.db.transact(record, independent=True)
        crash_point("journal.intent")

    def finish_step(
        self,
        file_id: int,
        seq: int,
        kind: StepKind,
        rule: str,
        action: str,
        ok: bool,
        result: Any,
        *,
        path: Path | None = None,
        sha256: str | None = None,
        produced: Iterable[Path] = (),
        also: Callable[[Tx], None] | None = None,
        final: FileState | None = None,
        final_message: str | None = None,
    ) -> None:
        """Record a step's result, with what it changed, in one transaction.

        ``path``: where the file is now, if the step moved it; ``sha256``: its content now, if the step rewrote
        it; ``produced``: files it wrote (no watcher takes them); ``also(tx)``: more writes in the same transaction
        (the step's deliveries); ``final``: the file's state after this step (the last of its round), if any.
        """
        now = time.time()
        doc = self._json(result)
        # One mark per row (the table's key: two spellings of one path are one row): two writes of one row cannot go
        # in one statement (db.transact's ``independent``).
        located = ((*self._loc(m[0]), *m[1:]) for m in map(_produced_mark, produced) if m is not None)
        marks = list({mark[:2]: mark for mark in located}.values())  # (root, rel, size, mtime_ns), by root and rel
        state = StepState.DONE if ok else StepState.FAILED

        me = self._holder()  # resolved before the transaction (registering takes one of its own)

        sets: dict[str, Any] = {}
        if kind == StepKind.ACTION:  # the rule that matched, not rfwatch's own bookkeeping steps
            sets["rule"] = utf8_text(rule)
        if path is not None:
            sets["path_root"], sets["path"] = self._loc(path)
        if sha256 is not None:
            sets["sha256"] = sha256
        if final is not None:
            sets.update(self._final_sets(final))
        messages = [f"{action} {'done' if ok else 'failed'}: " + _brief_json(result, 500)]
        if final is not None:
            messages.append(final_message or final)

        def record(tx: Tx) -> None:
            self._mine(tx, file_id, now, me, sets, messages=messages)
            # The step's claims (record_intent) give way to the files it wrote, exactly as they are now.
            tx.send("DELETE FROM claims WHERE file_id=?", (file_id,))
            tx.send(
                "INSERT INTO steps (file_id, seq, kind, rule, action, state, result, updated, host)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (file_id, seq) DO UPDATE SET state=excluded.state,"
                " result=excluded.result, updated=excluded.updated, host=excluded.host",
                (file_id, seq, kind, utf8_text(rule), action, state, doc, now, self.host),
            )
            for mark in marks:
                self._mark_located(tx, *mark, file_id)
            if also is not None:
                also(tx)

        self.db.transact(record, independent=True)
        crash_point("journal.step_finished")
        if final is not None and final in TERMINAL_STATES:
            crash_point("journal.finished")

    # --- states -----------------------------------------------------------------------------

    def holder_id(self) -> str:
        """This process's holder id (registered at first use): for transactions of other journal modules."""
        return self._holder()

    def hold_for_sequence(self, tx: Tx, file_id: int, me: str, message: str) -> None:
        """Inside the caller's transaction: a classified frame waits for its sequence (no process holds it)."""
        now = time.time()
        self._mine(tx, file_id, now, me, messages=[message])
        tx.run("UPDATE files SET state=?, last_error=NULL, holder=NULL WHERE id=?", (FileState.WAITING, file_id))

    def release_from_sequence(self, tx: Tx, file_ids: list[int], message: str) -> None:
        """Inside the caller's transaction: the frames of a sequence that closed are classified files again, with
        their actions to run (by any process)."""
        now = time.time()
        for file_id in file_ids:
            tx.run(
                "UPDATE files SET state=?, holder=NULL, updated=? WHERE id=? AND state=?",
                (FileState.CLASSIFIED, now, file_id, FileState.WAITING),
            )
            self.event(tx, file_id, message, at=now)

    def wait_for_review(self, file_id: int, message: str) -> None:
        """The file waits for a person (no process holds it meanwhile)."""
        now = time.time()

        me = self._holder()  # resolved before the transaction (registering takes one of its own)

        def record(tx: Tx) -> None:
            self._mine(tx, file_id, now, me, self._final_sets(FileState.REVIEW), messages=[message])
            tx.send("DELETE FROM claims WHERE file_id=?", (file_id,))  # its round is over (a step left unfinished)

        self.db.transact(record, independent=True)

    def finish(self, file_id: int, state: FileState, error: str | None = None, path: Path | None = None) -> None:
        assert state in TERMINAL_STATES
        now = time.time()

        me = self._holder()  # resolved before the transaction (registering takes one of its own)

        sets = self._final_sets(state, error)
        if path is not None:
            sets["path_root"], sets["path"] = self._loc(path)

        def record(tx: Tx) -> None:
            self._mine(tx, file_id, now, me, sets, messages=[state + (f": {error}" if error else "")])
            # A step begun and never finished (the rules changed across a crash): what it claimed is let go.
            tx.send("DELETE FROM claims WHERE file_id=?", (file_id,))

        self.db.transact(record, independent=True)
        crash_point("journal.finished")

    def requeue(self, file_id: int, states: Collection[str]) -> FileRow | None:
        """Queue a failed or undone file again (``rfwatch retry``); None if its state is no longer one of
        ``states`` (an undo or a worker took it since it was chosen: it keeps it).

        A failed file's failed steps run again (with the person's label when its round began with one); an
        undone file (back where it was found, or wherever an undo that could not finish left it) and a file a
        person rejected go through a new round of rules (the earlier steps and their undoing stay in its
        history).
        """
        now = time.time()

        def queue(tx: Tx) -> Any:
            row = tx.one("SELECT * FROM files WHERE id=?", (file_id,))
            if row is None or row["state"] not in states:
                return None
            first = tx.one("SELECT kind, result FROM steps WHERE file_id=? AND seq=?", (file_id, row["round_start"]))
            decided = first is not None and first["kind"] == StepKind.DECISION
            rejected = decided and json.loads(first["result"] or "{}").get("kind") == "reject"
            state = FileState.CLASSIFIED if row["prediction"] else FileState.DETECTED
            if row["state"] in (FileState.UNDONE, FileState.UNDOING) or rejected:
                tx.run("UPDATE files SET round_start=? WHERE id=?", (self.next_seq(tx, file_id), file_id))
                tx.run("DELETE FROM produced WHERE path_root=? AND path=?", (row["path_root"], row["path"]))
            else:
                tx.run("DELETE FROM steps WHERE file_id=? AND state=?", (file_id, StepState.FAILED))
                if decided:  # the round a person's label began: it carries on with the label
                    state = FileState.DECIDED
            if not tx.run(
                "UPDATE files SET state=?, last_error=NULL, holder=NULL, updated=? WHERE id=? AND state=?",
                (state, now, file_id, row["state"]),
            ):
                return None
            self.event(tx, file_id, "queued again by retry", at=now)
            tx.notify()
            return tx.one("SELECT * FROM files WHERE id=?", (file_id,))

        row = self.db.transact(queue)
        return self._row(row) if row is not None else None

    @staticmethod
    def round_begun(tx: Tx, file_id: int) -> bool:
        """In the caller's transaction: whether the file's current round has a step (begun or done)."""
        return (
            tx.one(
                "SELECT 1 FROM steps WHERE file_id=? AND seq >= (SELECT round_start FROM files WHERE id=?) LIMIT 1",
                (file_id, file_id),
            )
            is not None
        )

    @staticmethod
    def next_seq(tx: Tx, file_id: int) -> int:
        """The first free step number: where a new round of rules starts."""
        return (tx.scalar("SELECT MAX(seq) FROM steps WHERE file_id=?", (file_id,)) or 0) + 1

    # --- files rfwatch wrote --------------------------------------------------------------------

    def _mark_produced(self, tx: Tx, path: Path, size: int, mtime_ns: int, file_id: int | None) -> None:
        self._mark_located(tx, *self._loc(path), size, mtime_ns, file_id)

    def _mark_located(self, tx: Tx, root: str, rel: bytes, size: int, mtime_ns: int, file_id: int | None) -> None:
        tx.send(
            "INSERT INTO produced (path_root, path, size, mtime_ns, file_id) VALUES (?,?,?,?,?)"
            " ON CONFLICT (path_root, path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns,"
            " file_id=excluded.file_id",
            (root, rel, size, mtime_ns, file_id),
        )

    def add_produced(self, path: Path, file_id: int | None) -> None:
        """Remember a file rfwatch wrote (size and mtime as they are now), so that no watcher takes it."""
        mark = _produced_mark(path)
        if mark is not None:
            self.db.transact(lambda tx: self._mark_produced(tx, *mark, file_id))

    # --- housekeeping ---------------------------------------------------------------------------

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget the step-by-step history of files finished before ``older_than`` (a Unix time).

        Each file's row stays: it is what keeps a finished file from being processed again.
        """
        finished = f"SELECT id FROM files WHERE state IN {TERMINAL_STATES_SQL} AND updated < ?"
        counts: dict[str, int] = {}
        gone = [
            (m["path_root"], m["path"], m["size"], m["mtime_ns"])
            # an undo's claim names a path the undo is about to write: not gone, not yet there
            for m in self.db.all(
                "SELECT path_root, path, size, mtime_ns FROM produced WHERE size >= 0 OR NOT EXISTS (SELECT 1 FROM"
                f" files WHERE files.id = produced.file_id AND files.state IN {WORKING_STATES_SQL})"
            )
            # only marks this host can see: another host's roots are its own to prune
            if (not m["path_root"] or m["path_root"] in self.roots.by_name)
            and not os.path.lexists(self.roots.resolve(m["path_root"], m["path"]))
        ]

        def prune(tx: Tx) -> None:
            counts["events"] = tx.run(f"DELETE FROM events WHERE file_id IN ({finished})", (older_than,))
            counts["steps"] = tx.run(f"DELETE FROM steps WHERE file_id IN ({finished})", (older_than,))
            # each mark as it was read (one written meanwhile is another's, and stays)
            tx.many("DELETE FROM produced WHERE path_root=? AND path=? AND size=? AND mtime_ns=?", gone)
            counts["outputs no longer on disk"] = len(gone)
            # claims of files no longer at work (a step's result or the file's end lets go of them: a backstop)
            tx.run(
                f"DELETE FROM claims WHERE file_id NOT IN (SELECT id FROM files WHERE state IN {WORKING_STATES_SQL})"
            )

        self.db.transact(prune)
        return counts


#: What the journal knows of a path: whether a step claims it, the mark rfwatch left there, and the newest row at it
#: that rfwatch still works on or that is this very file (its size and mtime). One statement: one snapshot (a step's
#: result that turns its claim into a mark is seen whole or not at all) and one round trip.
_LOOK = (
    "SELECT EXISTS (SELECT 1 FROM claims WHERE path_root=? AND path=?) AS claimed,"
    " p.size AS mark_size, p.mtime_ns AS mark_mtime_ns, f.id, f.state, f.size, f.mtime_ns"
    " FROM (SELECT 1 AS one) AS one LEFT JOIN produced p ON p.path_root=? AND p.path=?"
    " LEFT JOIN (SELECT id, state, size, mtime_ns FROM files WHERE path_root=? AND path=?"
    f" AND (state IN {WORKING_STATES_SQL} OR (size=? AND mtime_ns=?)) ORDER BY id DESC LIMIT 1) AS f ON 1=1"
)


def _look(tx: Tx, root: str, rel: bytes, size: int, mtime_ns: int) -> Any:
    row = tx.one(_LOOK, (root, rel, root, rel, root, rel, size, mtime_ns))
    assert row is not None  # (one row always: the joins are LEFT)
    return row


def _written_by_rfwatch(look: Any, size: int, mtime_ns: int) -> bool:
    """Whether what is at this path now is rfwatch's (``look``: a row of _LOOK): a step is writing there (a claim),
    an undo is at work there (a mark of ANY_SIZE), or rfwatch wrote exactly this (its mark's size and mtime)."""
    mark = look["mark_size"], look["mark_mtime_ns"]
    return bool(look["claimed"]) or mark[0] == ANY_SIZE or mark == (size, mtime_ns)


def _output_claims(intent: dict[str, Any]) -> list[Path]:
    """The paths a step's intent says it is about to write: place_file's ``target`` (a move or a copy) and
    write_output's ``output_target``, unless what is there already is kept (``duplicate``: nothing is written)."""
    claims = []
    for key, kept in (("target", "duplicate"), ("output_target", "output_duplicate")):
        if isinstance(intent.get(key), str) and not intent.get(kept):
            claims.append(Path(intent[key]))
    return claims


def _produced_mark(path: Path) -> tuple[Path, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_size, st.st_mtime_ns


def _brief_json(doc: Any, limit: int) -> str:
    """JSON for a history line, whole: never cut mid-string. Too long, a mapping keeps its short values and names
    the keys it leaves out (the steps table keeps the whole result)."""
    text = json.dumps(doc, default=str, ensure_ascii=False)
    if len(text) <= limit or not isinstance(doc, dict):
        return text
    kept: dict[str, Any] = {}
    left: list[str] = []
    for key, value in doc.items():
        part = json.dumps(value, default=str, ensure_ascii=False)
        if len(part) <= limit // 4 and len(json.dumps(kept, default=str)) + len(part) + len(key) < limit * 3 // 4:
            kept[key] = value
        else:
            left.append(str(key))
    if left:
        kept["left out here"] = left
    return json.dumps(kept, default=str, ensure_ascii=False)

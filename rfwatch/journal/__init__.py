"""The journal: SQLite (WAL) record of every file, its prediction and each step taken.

A file's row goes ``detected -> classified -> done | unmatched | failed``; the review and undo features
add ``review`` (waiting for a person), ``decided`` (a person's label, to be applied) and ``undone``.
Before any side effect, the step and the action's intent are committed, so after a crash a restart can
finish or safely redo each step. Paths are stored as bytes (``os.fsencode``) because file names need
not be UTF-8.

Other modules keep their own tables in the same database (deliveries, model facts, review decisions,
undo steps) through :meth:`Journal.ensure_schema` and :meth:`Journal.transaction`; this module knows
none of them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfwatch.crashpoints import crash_point
from rfwatch.states import ACTIVE_STATES, TERMINAL_STATES, UNFINISHED_STATES, FileState, StepState

__all__ = ["Journal", "FileRow", "StepRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL,          -- where the file is now
    source BLOB NOT NULL,        -- where it was found
    watch_root BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    prediction TEXT,             -- the documented JSON
    rule TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_path ON files(path);
CREATE INDEX IF NOT EXISTS files_source ON files(source);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE TABLE IF NOT EXISTS steps (
    file_id INTEGER NOT NULL REFERENCES files(id),
    seq INTEGER NOT NULL,
    rule TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,         -- pending | done | failed
    intent TEXT,                 -- what the action said it was about to do (JSON)
    result TEXT,                 -- its result or error (JSON)
    updated REAL NOT NULL,
    PRIMARY KEY (file_id, seq)
);
CREATE TABLE IF NOT EXISTS predictions (
    sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    prediction TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (sha256, model)
);
CREATE TABLE IF NOT EXISTS produced (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    file_id INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    file_id INTEGER NOT NULL,
    at REAL NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_file ON events(file_id);
"""
#: Steps rfwatch itself runs (a move into failed:, applying a review decision): not a rule's actions.
_INTERNAL_STEPS = frozenset({"quarantine", "decision"})

#: Changes to a journal written by an earlier version, applied in order once (PRAGMA user_version).
_MIGRATIONS: tuple[str, ...] = (
    # 1: what Roboflow support needs to find a request: inference_id and request-id headers (JSON).
    "ALTER TABLE files ADD COLUMN support TEXT",
    # 2: the first step of the current round of rules: a review decision or a retry after an undo runs the
    #    rules again, and its steps follow the earlier ones instead of replacing them (history stays whole).
    "ALTER TABLE files ADD COLUMN round_start INTEGER NOT NULL DEFAULT 1",
)


def _migrate(db: sqlite3.Connection) -> None:
    while True:
        db.execute("BEGIN IMMEDIATE")  # the version is read inside: two processes may open a journal at once
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= len(_MIGRATIONS):
                db.execute("COMMIT")
                return
            db.execute(_MIGRATIONS[version])
            db.execute(f"PRAGMA user_version={version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def path_blob(path: str | os.PathLike[str]) -> bytes:
    """A path as stored: its bytes, so that names that are not UTF-8 survive."""
    return os.fsencode(path)


def blob_path(blob: bytes) -> Path:
    return Path(os.fsdecode(blob))


def utf8_text(text: str | None) -> str | None:
    """Text columns must be valid UTF-8; file names need not be (their bytes are kept in BLOB columns)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class FileRow:
    id: int
    path: Path
    source: Path
    watch_root: Path
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

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> FileRow:
        return cls(
            id=r["id"],
            path=blob_path(r["path"]),
            source=blob_path(r["source"]),
            watch_root=blob_path(r["watch_root"]),
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
        )


@dataclass(frozen=True)
class StepRow:
    file_id: int
    seq: int
    rule: str
    action: str
    state: StepState
    intent: dict[str, Any] | None
    result: Any
    updated: float

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> StepRow:
        return cls(
            file_id=r["file_id"],
            seq=r["seq"],
            rule=r["rule"],
            action=r["action"],
            state=StepState(r["state"]),
            intent=json.loads(r["intent"]) if r["intent"] else None,
            result=json.loads(r["result"]) if r["result"] else None,
            updated=r["updated"],
        )


class Journal:
    """Thread-safe: one connection guarded by a lock (SQLite writes are serial anyway)."""

    def __init__(self, path: str | os.PathLike[str], synchronous: str = "FULL"):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed intent survives power loss, not only a process crash.
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(_SCHEMA)
            _migrate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- for modules that keep their own tables here ---------------------------------

    def ensure_schema(self, script: str) -> None:
        """Create a module's own tables (``CREATE ... IF NOT EXISTS``)."""
        with self._lock:
            self._db.executescript(script)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back if the block raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def fetch_one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def fetch_all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def data_version(self) -> int:
        """Changes when another connection (another process: retry, undo, a review page) commits."""
        return self.fetch_one("PRAGMA data_version")[0]

    def event(self, db: sqlite3.Connection, file_id: int, message: str, at: float | None = None) -> None:
        """Add a line to a file's history, inside the caller's transaction."""
        db.execute("INSERT INTO events VALUES (?,?,?)", (file_id, at or time.time(), utf8_text(message)))

    # --- lookups --------------------------------------------------------------

    def get(self, file_id: int) -> FileRow:
        row = self.fetch_one("SELECT * FROM files WHERE id=?", (file_id,))
        if row is None:
            raise KeyError(file_id)
        return FileRow.from_row(row)

    def was_found_at(self, path: Path) -> bool:
        """Whether a file was ever taken from ``path`` (it may have been moved on since)."""
        blob = path_blob(path)
        return self.fetch_one("SELECT 1 FROM files WHERE source=? OR path=? LIMIT 1", (blob, blob)) is not None

    def known(self, path: Path, size: int, mtime_ns: int) -> FileRow | None:
        """A row for this very file (same path, size and mtime), if any: it needs no new work."""
        row = self.fetch_one(
            "SELECT * FROM files WHERE path=? AND size=? AND mtime_ns=? ORDER BY id DESC LIMIT 1",
            (path_blob(path), size, mtime_ns),
        )
        return FileRow.from_row(row) if row else None

    def unfinished_at(self, path: Path) -> int | None:
        """The row of a file rfwatch is still working on at ``path`` (any size: a step may have rewritten it)."""
        marks = ",".join("?" * len(UNFINISHED_STATES))
        row = self.fetch_one(
            f"SELECT id FROM files WHERE path=? AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
            (path_blob(path), *UNFINISHED_STATES),
        )
        return row["id"] if row else None

    def is_produced(self, path: Path, size: int, mtime_ns: int) -> bool:
        """Whether rfwatch wrote this very file; a mark with size -1 holds whatever is there (an undo at work)."""
        row = self.fetch_one("SELECT size, mtime_ns FROM produced WHERE path=?", (path_blob(path),))
        return row is not None and (row["size"] == -1 or (row["size"] == size and row["mtime_ns"] == mtime_ns))

    def active_ids(self) -> list[int]:
        """Files a worker should carry on with (new, classified, or with a person's decision to apply)."""
        marks = ",".join("?" * len(ACTIVE_STATES))
        return [
            r["id"] for r in self.fetch_all(f"SELECT id FROM files WHERE state IN ({marks}) ORDER BY id", ACTIVE_STATES)
        ]

    def cached_prediction(self, sha256: str, model: str) -> dict[str, Any] | None:
        row = self.fetch_one("SELECT prediction FROM predictions WHERE sha256=? AND model=?", (sha256, model))
        return json.loads(row["prediction"]) if row else None

    def steps(self, file_id: int) -> list[StepRow]:
        return [
            StepRow.from_row(r) for r in self.fetch_all("SELECT * FROM steps WHERE file_id=? ORDER BY seq", (file_id,))
        ]

    def step(self, file_id: int, seq: int) -> StepRow | None:
        row = self.fetch_one("SELECT * FROM steps WHERE file_id=? AND seq=?", (file_id, seq))
        return StepRow.from_row(row) if row else None

    def events(self, file_id: int) -> list[tuple[float, str]]:
        return [
            (r["at"], r["message"])
            for r in self.fetch_all("SELECT at, message FROM events WHERE file_id=? ORDER BY rowid", (file_id,))
        ]

    def history_for(self, path: Path) -> list[FileRow]:
        blob = path_blob(path)
        rows = self.fetch_all("SELECT * FROM files WHERE path=? OR source=? ORDER BY id", (blob, blob))
        return [FileRow.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self.fetch_all("SELECT state, COUNT(*) AS n FROM files GROUP BY state")}

    def recent(self, states: tuple[str, ...], limit: int = 5) -> list[FileRow]:
        marks = ",".join("?" * len(states))
        rows = self.fetch_all(
            f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY updated DESC, id DESC LIMIT ?", (*states, limit)
        )
        return [FileRow.from_row(r) for r in rows]

    def rows_in_state(self, states: tuple[str, ...], paths: list[Path] | None = None) -> list[FileRow]:
        """Files in one of ``states``: all of them, or the newest row for each of ``paths`` (now or first seen)."""
        marks = ",".join("?" * len(states))
        if not paths:
            rows = self.fetch_all(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", states)
            return [FileRow.from_row(r) for r in rows]
        out = []
        for p in paths:
            blob = path_blob(p)
            row = self.fetch_one(
                f"SELECT * FROM files WHERE (path=? OR source=?) AND state IN ({marks}) ORDER BY id DESC LIMIT 1",
                (blob, blob, *states),
            )
            if row:
                out.append(FileRow.from_row(row))
        return out

    # --- changes ---------------------------------------------------------------

    def create(self, path: Path, watch_root: Path, size: int, mtime_ns: int, sha256: str, model: str) -> int:
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO files (path, source, watch_root, size, mtime_ns, sha256, model, state, created, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    path_blob(path),
                    path_blob(path),
                    path_blob(watch_root),
                    size,
                    mtime_ns,
                    sha256,
                    model,
                    FileState.DETECTED,
                    now,
                    now,
                ),
            )
            file_id = int(cur.lastrowid)
            self.event(db, file_id, f"detected {path}", now)
        crash_point("journal.created")
        return file_id

    def classified(
        self,
        file_id: int,
        prediction: dict[str, Any],
        sha256: str,
        model: str,
        summary: str,
        support: dict[str, str] | None = None,
    ) -> None:
        """The file has its prediction. ``support``: the answer's inference_id and request ids (None: reused)."""
        now = time.time()
        doc = json.dumps(prediction)
        if support is None:
            message = f"classified {summary} (cached prediction for identical content)"
        else:
            ids = "; ".join(f"{k} {v}" for k, v in support.items())
            message = f"classified {summary}" + (f" ({ids})" if ids else "")
        with self.transaction() as db:
            db.execute(
                "UPDATE files SET state=?, prediction=?, support=?, attempts=attempts+1, last_error=NULL,"
                " updated=? WHERE id=?",
                (FileState.CLASSIFIED, doc, json.dumps(support) if support else None, now, file_id),
            )
            db.execute("INSERT OR IGNORE INTO predictions VALUES (?,?,?,?)", (sha256, model, doc, now))
            self.event(db, file_id, message, now)
        crash_point("journal.classified")

    def store_prediction(self, sha256: str, model: str, prediction: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO predictions VALUES (?,?,?,?)",
                (sha256, model, json.dumps(prediction), time.time()),
            )

    def attempt_failed(self, file_id: int, error: str) -> None:
        """A transient failure: the file stays queued."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE files SET attempts=attempts+1, last_error=?, updated=? WHERE id=?",
                (utf8_text(error), now, file_id),
            )
            self.event(db, file_id, f"attempt failed: {error}", now)

    def begin_step(self, file_id: int, seq: int, rule: str, action: str) -> dict[str, Any] | None:
        """Mark a step pending; return the intent recorded by an earlier, interrupted run of it."""
        now = time.time()
        with self.transaction() as db:
            row = db.execute("SELECT intent FROM steps WHERE file_id=? AND seq=?", (file_id, seq)).fetchone()
            if row is not None:
                return json.loads(row["intent"]) if row["intent"] else None
            db.execute(
                "INSERT INTO steps VALUES (?,?,?,?,?,NULL,NULL,?)",
                (file_id, seq, utf8_text(rule), action, StepState.PENDING, now),
            )
            if action not in _INTERNAL_STEPS:  # the rule that matched, not rfwatch's own bookkeeping steps
                db.execute("UPDATE files SET rule=?, updated=? WHERE id=?", (utf8_text(rule), now, file_id))
        crash_point("journal.step_begun")
        return None

    def pending_intent(self, file_id: int, seq: int) -> dict[str, Any] | None:
        """The intent an interrupted (still pending) step recorded, if any."""
        step = self.step(file_id, seq)
        return step.intent if step is not None and step.state == StepState.PENDING else None

    def record_intent(self, file_id: int, seq: int, intent: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE steps SET intent=?, updated=? WHERE file_id=? AND seq=?",
                (json.dumps(intent), time.time(), file_id, seq),
            )
        crash_point("journal.intent")

    def finish_step(
        self,
        file_id: int,
        seq: int,
        ok: bool,
        result: Any,
        path: Path | None = None,
        also: Callable[[sqlite3.Connection], None] | None = None,
        sha256: str | None = None,
    ) -> None:
        """Record a step's result; ``also`` writes more in the same transaction (the step's deliveries).

        ``path``: where the file is now, if the step moved it; ``sha256``: its content now, if the step rewrote it.
        """
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE steps SET state=?, result=?, updated=? WHERE file_id=? AND seq=?",
                (StepState.DONE if ok else StepState.FAILED, json.dumps(result, default=str), now, file_id, seq),
            )
            if path is not None:
                db.execute("UPDATE files SET path=?, updated=? WHERE id=?", (path_blob(path), now, file_id))
            if sha256 is not None:
                db.execute("UPDATE files SET sha256=? WHERE id=?", (sha256, file_id))
            if also is not None:
                also(db)
            action = db.execute("SELECT action FROM steps WHERE file_id=? AND seq=?", (file_id, seq)).fetchone()
            self.event(
                db,
                file_id,
                f"{action['action'] if action else 'step'} {'done' if ok else 'failed'}: "
                + json.dumps(result, default=str)[:500],
                now,
            )
        crash_point("journal.step_finished")

    def add_produced(self, path: Path, file_id: int | None, db: sqlite3.Connection | None = None) -> None:
        """Remember a file rfwatch wrote (size and mtime as they are now), so that no watcher takes it."""
        try:
            st = os.stat(path)
        except OSError:
            return
        row = (path_blob(path), st.st_size, st.st_mtime_ns, file_id)
        if db is not None:
            db.execute("INSERT OR REPLACE INTO produced VALUES (?,?,?,?)", row)
            return
        with self.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO produced VALUES (?,?,?,?)", row)

    def set_state(self, file_id: int, state: FileState, message: str, error: str | None = None) -> None:
        """A non-terminal change of state (a file waiting for review), with a line in its history."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "UPDATE files SET state=?, last_error=?, updated=? WHERE id=?",
                (state, utf8_text(error), now, file_id),
            )
            self.event(db, file_id, message, now)

    def finish(self, file_id: int, state: FileState, error: str | None = None, path: Path | None = None) -> None:
        assert state in TERMINAL_STATES
        now = time.time()
        with self.transaction() as db:
            if path is not None:
                db.execute("UPDATE files SET path=? WHERE id=?", (path_blob(path), file_id))
            db.execute(
                "UPDATE files SET state=?, last_error=?, updated=? WHERE id=?", (state, utf8_text(error), now, file_id)
            )
            self.event(db, file_id, state + (f": {error}" if error else ""), now)
        crash_point("journal.finished")

    def next_seq(self, db: sqlite3.Connection, file_id: int) -> int:
        """The first free step number: where a new round of rules starts."""
        return (db.execute("SELECT MAX(seq) FROM steps WHERE file_id=?", (file_id,)).fetchone()[0] or 0) + 1

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget the step-by-step history of files finished before ``older_than`` (a Unix time).

        Each file's row stays: it is what keeps a finished file from being processed again.
        """
        marks = ",".join("?" * len(TERMINAL_STATES))
        finished = f"SELECT id FROM files WHERE state IN ({marks}) AND updated < ?"
        args = (*TERMINAL_STATES, older_than)
        counts: dict[str, int] = {}
        with self.transaction() as db:
            counts["events"] = db.execute(f"DELETE FROM events WHERE file_id IN ({finished})", args).rowcount
            counts["steps"] = db.execute(f"DELETE FROM steps WHERE file_id IN ({finished})", args).rowcount
            gone = [row[0] for row in db.execute("SELECT path FROM produced") if not os.path.lexists(blob_path(row[0]))]
            db.executemany("DELETE FROM produced WHERE path=?", [(p,) for p in gone])
            counts["outputs no longer on disk"] = len(gone)
        return counts

    def requeue(self, file_id: int, states: Collection[str] = (FileState.FAILED, FileState.UNDONE)) -> FileRow | None:
        """Queue a failed or undone file again (``rfwatch retry``); None if its state is no longer one of ``states``.

        A failed file's failed steps run again (with the person's label when its round began with one); an
        undone file (back where it was found, or wherever an undo that could not finish left it) and a file a
        person rejected go through a new round of rules (the earlier steps and their undoing stay in its
        history). The state is checked in the same transaction: an undo or a worker that took the file since
        it was chosen keeps it.
        """
        now = time.time()
        with self.transaction() as db:
            row = FileRow.from_row(db.execute("SELECT * FROM files WHERE id=?", (file_id,)).fetchone())
            if row.state not in states:
                return None
            first = db.execute(
                "SELECT action, result FROM steps WHERE file_id=? AND seq=?", (file_id, row.round_start)
            ).fetchone()
            decided = first is not None and first["action"] == "decision"
            rejected = decided and json.loads(first["result"] or "{}").get("kind") == "reject"
            state = FileState.CLASSIFIED if row.prediction else FileState.DETECTED
            if row.state in (FileState.UNDONE, FileState.UNDOING) or rejected:
                db.execute("UPDATE files SET round_start=? WHERE id=?", (self.next_seq(db, file_id), file_id))
                db.execute("DELETE FROM produced WHERE path=?", (path_blob(row.path),))
            else:
                db.execute("DELETE FROM steps WHERE file_id=? AND state=?", (file_id, StepState.FAILED))
                if decided:  # the round a person's label began: it carries on with the label
                    state = FileState.DECIDED
            db.execute("UPDATE files SET state=?, last_error=NULL, updated=? WHERE id=?", (state, now, file_id))
            self.event(db, file_id, "queued again by retry", now)
        return self.get(file_id)

"""The journal: SQLite (WAL) record of every file, its prediction and each step taken.

A row goes detected -> classified -> done | unmatched | failed. Before any
side effect, the step and the action's intent are committed, so after a crash
a restart can finish or safely redo each step. Paths are stored as bytes
(``os.fsencode``) because file names need not be UTF-8.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Journal", "FileRow", "TERMINAL_STATES", "ACTIVE_STATES"]

TERMINAL_STATES = ("done", "unmatched", "failed")
ACTIVE_STATES = ("detected", "classified")

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


def _b(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(path)


def _p(blob: bytes) -> Path:
    return Path(os.fsdecode(blob))


def _t(text: str | None) -> str | None:
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
    state: str
    prediction: dict[str, Any] | None
    rule: str | None
    attempts: int
    last_error: str | None
    created: float
    updated: float

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> FileRow:
        return cls(
            id=r["id"],
            path=_p(r["path"]),
            source=_p(r["source"]),
            watch_root=_p(r["watch_root"]),
            size=r["size"],
            mtime_ns=r["mtime_ns"],
            sha256=r["sha256"],
            model=r["model"],
            state=r["state"],
            prediction=json.loads(r["prediction"]) if r["prediction"] else None,
            rule=r["rule"],
            attempts=r["attempts"],
            last_error=r["last_error"],
            created=r["created"],
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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- lookups --------------------------------------------------------------

    def get(self, file_id: int) -> FileRow:
        row = self._one("SELECT * FROM files WHERE id=?", (file_id,))
        if row is None:
            raise KeyError(file_id)
        return FileRow.from_row(row)

    def was_found_at(self, path: Path) -> bool:
        """Whether a file was ever taken from ``path`` (it may have been moved on since)."""
        return self._one("SELECT 1 FROM files WHERE source=? OR path=? LIMIT 1", (_b(path), _b(path))) is not None

    def known(self, path: Path, size: int, mtime_ns: int) -> FileRow | None:
        """A row for this very file (same path, size and mtime), if any: it needs no new work."""
        row = self._one(
            "SELECT * FROM files WHERE path=? AND size=? AND mtime_ns=? ORDER BY id DESC LIMIT 1",
            (_b(path), size, mtime_ns),
        )
        return FileRow.from_row(row) if row else None

    def is_produced(self, path: Path, size: int, mtime_ns: int) -> bool:
        row = self._one("SELECT size, mtime_ns FROM produced WHERE path=?", (_b(path),))
        return row is not None and row["size"] == size and row["mtime_ns"] == mtime_ns

    def active_ids(self) -> list[int]:
        return [r["id"] for r in self._all("SELECT id FROM files WHERE state IN ('detected','classified') ORDER BY id")]

    def cached_prediction(self, sha256: str, model: str) -> dict[str, Any] | None:
        row = self._one("SELECT prediction FROM predictions WHERE sha256=? AND model=?", (sha256, model))
        return json.loads(row["prediction"]) if row else None

    def steps(self, file_id: int) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM steps WHERE file_id=? ORDER BY seq", (file_id,))

    def events(self, file_id: int) -> list[tuple[float, str]]:
        return [
            (r["at"], r["message"])
            for r in self._all("SELECT at, message FROM events WHERE file_id=? ORDER BY rowid", (file_id,))
        ]

    def history_for(self, path: Path) -> list[FileRow]:
        rows = self._all("SELECT * FROM files WHERE path=? OR source=? ORDER BY id", (_b(path), _b(path)))
        return [FileRow.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._all("SELECT state, COUNT(*) AS n FROM files GROUP BY state")}

    def recent(self, states: tuple[str, ...], limit: int = 5) -> list[FileRow]:
        marks = ",".join("?" * len(states))
        rows = self._all(
            f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY updated DESC, id DESC LIMIT ?", (*states, limit)
        )
        return [FileRow.from_row(r) for r in rows]

    def failed_rows(self, paths: list[Path] | None = None) -> list[FileRow]:
        if paths:
            out = []
            for p in paths:
                row = self._one(
                    "SELECT * FROM files WHERE (path=? OR source=?) AND state='failed' ORDER BY id DESC LIMIT 1",
                    (_b(p), _b(p)),
                )
                if row:
                    out.append(FileRow.from_row(row))
            return out
        return [FileRow.from_row(r) for r in self._all("SELECT * FROM files WHERE state='failed' ORDER BY id")]

    def outbox_depth(self) -> int:
        """Webhook events not yet delivered (the webhook plugin owns that table)."""
        if self._one("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'") is None:
            return 0
        return self._one("SELECT COUNT(*) FROM outbox WHERE state='pending'")[0]

    def integrity_check(self) -> str:
        return self._one("PRAGMA integrity_check")[0]

    # --- changes ---------------------------------------------------------------

    def create(self, path: Path, watch_root: Path, size: int, mtime_ns: int, sha256: str, model: str) -> int:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO files (path, source, watch_root, size, mtime_ns, sha256, model, state, created, updated)"
                " VALUES (?,?,?,?,?,?,?,'detected',?,?)",
                (_b(path), _b(path), _b(watch_root), size, mtime_ns, sha256, model, now, now),
            )
            file_id = int(cur.lastrowid)
            db.execute("INSERT INTO events VALUES (?,?,?)", (file_id, now, _t(f"detected {path}")))
        return file_id

    def event(self, file_id: int, message: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events VALUES (?,?,?)", (file_id, time.time(), _t(message)))

    def classified(self, file_id: int, prediction: dict[str, Any], sha256: str, model: str, cached: bool) -> None:
        now = time.time()
        doc = json.dumps(prediction)
        with self._tx() as db:
            db.execute(
                "UPDATE files SET state='classified', prediction=?, attempts=attempts+1, last_error=NULL,"
                " updated=? WHERE id=?",
                (doc, now, file_id),
            )
            db.execute("INSERT OR IGNORE INTO predictions VALUES (?,?,?,?)", (sha256, model, doc, now))
            db.execute(
                "INSERT INTO events VALUES (?,?,?)",
                (
                    file_id,
                    now,
                    f"classified {prediction.get('top') or prediction.get('predicted_classes')}"
                    + (" (cached prediction for identical content)" if cached else ""),
                ),
            )

    def store_prediction(self, sha256: str, model: str, prediction: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO predictions VALUES (?,?,?,?)",
                (sha256, model, json.dumps(prediction), time.time()),
            )

    def attempt_failed(self, file_id: int, error: str) -> None:
        """A transient failure: the file stays queued."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE files SET attempts=attempts+1, last_error=?, updated=? WHERE id=?", (_t(error), now, file_id)
            )
            db.execute("INSERT INTO events VALUES (?,?,?)", (file_id, now, _t(f"attempt failed: {error}")))

    def begin_step(self, file_id: int, seq: int, rule: str, action: str) -> dict[str, Any] | None:
        """Mark a step pending; return the intent recorded by an earlier, interrupted run of it."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state, intent FROM steps WHERE file_id=? AND seq=?", (file_id, seq)).fetchone()
            if row is not None:
                return json.loads(row["intent"]) if row["intent"] else None
            db.execute(
                "INSERT INTO steps VALUES (?,?,?,?,'pending',NULL,NULL,?)", (file_id, seq, _t(rule), action, now)
            )
            db.execute("UPDATE files SET rule=?, updated=? WHERE id=?", (_t(rule), now, file_id))
        return None

    def pending_intent(self, file_id: int, seq: int) -> dict[str, Any] | None:
        """The intent an interrupted (still pending) step recorded, if any."""
        row = self._one("SELECT intent FROM steps WHERE file_id=? AND seq=? AND state='pending'", (file_id, seq))
        return json.loads(row["intent"]) if row and row["intent"] else None

    def step_state(self, file_id: int, seq: int) -> str | None:
        row = self._one("SELECT state FROM steps WHERE file_id=? AND seq=?", (file_id, seq))
        return row["state"] if row else None

    def step_result(self, file_id: int, seq: int) -> Any:
        row = self._one("SELECT result FROM steps WHERE file_id=? AND seq=?", (file_id, seq))
        return json.loads(row["result"]) if row and row["result"] else None

    def record_intent(self, file_id: int, seq: int, intent: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET intent=?, updated=? WHERE file_id=? AND seq=?",
                (json.dumps(intent), time.time(), file_id, seq),
            )

    def finish_step(self, file_id: int, seq: int, ok: bool, result: Any, path: Path | None = None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET state=?, result=?, updated=? WHERE file_id=? AND seq=?",
                ("done" if ok else "failed", json.dumps(result, default=str), now, file_id, seq),
            )
            if path is not None:
                db.execute("UPDATE files SET path=?, updated=? WHERE id=?", (_b(path), now, file_id))
            action = db.execute("SELECT action FROM steps WHERE file_id=? AND seq=?", (file_id, seq)).fetchone()
            db.execute(
                "INSERT INTO events VALUES (?,?,?)",
                (
                    file_id,
                    now,
                    f"{action['action'] if action else 'step'} {'done' if ok else 'failed'}: "
                    + json.dumps(result, default=str)[:500],
                ),
            )

    def set_path(self, file_id: int, path: Path) -> None:
        with self._tx() as db:
            db.execute("UPDATE files SET path=?, updated=? WHERE id=?", (_b(path), time.time(), file_id))

    def add_produced(self, path: Path, file_id: int | None) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO produced VALUES (?,?,?,?)", (_b(path), st.st_size, st.st_mtime_ns, file_id)
            )

    def finish(self, file_id: int, state: str, error: str | None = None, path: Path | None = None) -> None:
        assert state in TERMINAL_STATES
        now = time.time()
        with self._tx() as db:
            if path is not None:
                db.execute("UPDATE files SET path=? WHERE id=?", (_b(path), file_id))
            db.execute("UPDATE files SET state=?, last_error=?, updated=? WHERE id=?", (state, _t(error), now, file_id))
            db.execute("INSERT INTO events VALUES (?,?,?)", (file_id, now, _t(state + (f": {error}" if error else ""))))

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget the step-by-step history of files finished before ``older_than`` (a Unix time).

        Each file's row stays: it is what keeps a finished file from being processed again.
        """
        finished = "SELECT id FROM files WHERE state IN ('done','unmatched','failed') AND updated < ?"
        counts: dict[str, int] = {}
        with self._tx() as db:
            counts["events"] = db.execute(f"DELETE FROM events WHERE file_id IN ({finished})", (older_than,)).rowcount
            counts["steps"] = db.execute(f"DELETE FROM steps WHERE file_id IN ({finished})", (older_than,)).rowcount
            if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone():
                counts["webhook events"] = db.execute(
                    "DELETE FROM outbox WHERE state IN ('delivered','gone') AND created < ?", (older_than,)
                ).rowcount
            gone = [row[0] for row in db.execute("SELECT path FROM produced") if not os.path.lexists(_p(row[0]))]
            db.executemany("DELETE FROM produced WHERE path=?", [(p,) for p in gone])
            counts["outputs no longer on disk"] = len(gone)
        return counts

    def requeue(self, file_id: int) -> None:
        """Put a failed file back in the queue (``rfwatch retry``): its failed steps will run again."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM steps WHERE file_id=? AND state='failed'", (file_id,))
            row = db.execute("SELECT prediction FROM files WHERE id=?", (file_id,)).fetchone()
            state = "classified" if row and row["prediction"] else "detected"
            db.execute("UPDATE files SET state=?, last_error=NULL, updated=? WHERE id=?", (state, now, file_id))
            db.execute("INSERT INTO events VALUES (?,?,?)", (file_id, now, "queued again by retry"))

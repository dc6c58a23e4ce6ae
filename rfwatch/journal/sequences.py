"""Sequences: bursts of frames decided together (tables ``sequences`` and ``seq_frames``).

A frame is recorded when it is taken (its key and capture time: :meth:`Sequences.arrive`), waits once classified
(:meth:`Sequences.wait`: the file's state is ``waiting``, held by no process), and is released when its sequence
closes. Which frames make one sequence is decided when it closes, from every frame of the key recorded by then:
frames are taken and classified by many workers (and hosts) in any order, so a frame classified early never splits
a burst whose other frames are still on their way.

Closing is one transaction (:meth:`Sequences.close_due`): the sequence's row, each frame's place in it and its
files set ``classified`` again (with their actions still to run, as any classified file) are committed together,
so a crash leaves the sequence either open, with every frame waiting, or closed, with every frame ready. Several
processes and hosts look for sequences to close; a lock (SQLite's write lock, a PostgreSQL advisory lock) lets
one at a time look, and the one that looks after another sees what that one closed: each sequence is closed by
exactly one of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import field, fields
from typing import Any, NamedTuple

from rfwatch.crashpoints import crash_point
from rfwatch.journal.db import Database, Dialect, Tx
from rfwatch.journal.files import Files
from rfwatch.record import record
from rfwatch.states import FileState, StrEnum

__all__ = ["Sequences", "SequenceRow", "FrameRow", "SequenceOf", "OpenSequence", "Member", "Decided", "CloseWhy"]

#: Taken by whoever closes sequences or lets a frame wait (PostgreSQL; SQLite's writes are serialized anyway).
_LOCK = 7262617463680002
_PENDING_SQL = f"('{FileState.DETECTED}','{FileState.CLASSIFIED}','{FileState.WAITING}')"


class CloseWhy(StrEnum):
    LATER = "a frame captured more than gap later arrived"
    QUIET = "no new frame of its key for gap seconds"
    END = "nothing left to read (run --once)"


@record
class SequenceRow:
    """A closed sequence: its frames' key and capture times, and the label they share."""

    id: int
    key: str
    first_capture: float
    last_capture: float
    frames: int
    label: str
    confidence: float
    method: str
    empty: bool
    why: str
    closed: float
    host: str | None


@record
class FrameRow:
    """A frame of a sequence: its key, capture time and, once closed, its sequence and place."""

    file_id: int
    key: str
    capture: float
    gap: float
    arrived: float
    sequence_id: int | None
    frame: int | None
    frame_class: str | None
    frame_confidence: float | None


class SequenceOf(NamedTuple):
    """A frame's sequence, as exports read it (:meth:`Sequences.of_files`); unpacks as (sequence_id, frame, frames,
    label, confidence, ...)."""

    sequence_id: int
    frame: int
    frames: int
    label: str
    confidence: float
    #: The frame's capture time (Unix seconds: EXIF DateTimeOriginal with its sub-seconds and offset, else mtime).
    captured: float
    #: The sequence's key: the watched folder's name, "/", the rendered ``sequence.key`` (a camera, say).
    key: str
    #: Whether every frame of the sequence was of an empty class.
    empty: bool


@record
class OpenSequence:
    """Frames of one key that wait together (for ``status``)."""

    key: str
    frames: int
    #: Of which classified and waiting (the others are still being classified).
    waiting: int
    first_capture: float
    last_capture: float
    #: Seconds since a frame of this key last arrived (the database's clock).
    quiet_for: float
    gap: float


@record
class Member:
    """A frame handed to the labelling function."""

    file_id: int
    capture: float
    prediction: dict[str, Any]


@record
class Decided:
    """A sequence's label, and each frame's own class and confidence (by file id)."""

    label: str
    confidence: float
    method: str
    empty: bool
    frames: dict[int, tuple[str, float]] = field(default_factory=dict)


Decide = Callable[[str, list[Member]], Decided]
_SEQ_FIELDS = tuple(f.name for f in fields(SequenceRow))
_FRAME_FIELDS = tuple(f.name for f in fields(FrameRow))


class Sequences:
    def __init__(self, db: Database, files: Files, host: str):
        self.db = db
        self.files = files
        self.host = host

    def _lock(self, tx: Tx) -> None:
        if self.db.dialect == Dialect.POSTGRESQL:
            tx.run(f"SELECT pg_advisory_xact_lock({_LOCK})")

    # --- rows ---------------------------------------------------------------------------

    @staticmethod
    def _seq(r: Any) -> SequenceRow:
        return SequenceRow(**{**{k: r[k] for k in _SEQ_FIELDS}, "empty": bool(r["empty"])})

    @staticmethod
    def _frame(r: Any) -> FrameRow:
        return FrameRow(**{k: r[k] for k in _FRAME_FIELDS})

    # --- reading ------------------------------------------------------------------------

    def frame(self, file_id: int) -> FrameRow | None:
        row = self.db.one("SELECT * FROM seq_frames WHERE file_id=?", (file_id,))
        return self._frame(row) if row else None

    def get(self, sequence_id: int) -> SequenceRow | None:
        row = self.db.one("SELECT * FROM sequences WHERE id=?", (sequence_id,))
        return self._seq(row) if row else None

    def members(self, sequence_id: int) -> list[FrameRow]:
        """A closed sequence's frames, by their place in it."""
        rows = self.db.all("SELECT * FROM seq_frames WHERE sequence_id=? ORDER BY frame, file_id", (sequence_id,))
        return [self._frame(r) for r in rows]

    def of_files(self, file_ids: Collection[int]) -> dict[int, SequenceOf]:
        """Each file's sequence (files outside a closed sequence are left out): for exports and reports."""
        out: dict[int, SequenceOf] = {}
        ids = list(file_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self.db.all(
                "SELECT f.file_id, f.frame, f.capture, s.id, s.frames, s.label, s.confidence, s.key, s.empty"
                " FROM seq_frames f"
                f" JOIN sequences s ON s.id = f.sequence_id WHERE f.file_id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
            )
            for r in rows:
                out[r["file_id"]] = SequenceOf(
                    r["id"],
                    r["frame"],
                    r["frames"],
                    r["label"],
                    r["confidence"],
                    r["capture"],
                    r["key"],
                    bool(r["empty"]),
                )
        return out

    def open_sequences(self) -> list[OpenSequence]:
        """Frames that wait for their sequence, grouped as they would close now."""
        with self.db.read() as tx:
            now, by_key = _open_groups(tx)
        out = []
        for key, (groups, last_arrival) in by_key.items():
            for g in groups:
                out.append(
                    OpenSequence(
                        key=key,
                        frames=len(g),
                        waiting=sum(r["state"] == FileState.WAITING for r in g),
                        first_capture=g[0]["capture"],
                        last_capture=g[-1]["capture"],
                        quiet_for=max(0.0, now - last_arrival),
                        gap=g[-1]["gap"],
                    )
                )
        return out

    def file_ids(self, sequence_id: int) -> list[int]:
        return [m.file_id for m in self.members(sequence_id)]

    # --- a frame arrives, waits --------------------------------------------------------

    def arrive(self, file_id: int, key: str, capture: float, gap: float) -> None:
        """Record a frame as it is taken (again after a crash: the first record stands)."""
        self.db.transact(
            lambda tx: tx.run(
                "INSERT INTO seq_frames (file_id, key, capture, gap, arrived) VALUES (?,?,?,?,{now})"
                " ON CONFLICT (file_id) DO NOTHING",
                (file_id, key, capture, gap),
            )
        )

    def wait(self, file_id: int, frame_class: str, frame_confidence: float) -> SequenceRow | None:
        """A classified frame waits for its sequence (None), held by no process; or, when a sequence it belongs to
        closed before it arrived (it was taken late), it joins that one at its end and carries on at once."""
        me = self.files.holder_id()

        def record(tx: Tx) -> SequenceRow | None:
            self._lock(tx)
            fr = tx.one("SELECT * FROM seq_frames WHERE file_id=?", (file_id,))
            if fr is None:
                raise LookupError(f"file {file_id} has no frame record")
            if fr["sequence_id"] is not None:
                return self._seq(tx.one("SELECT * FROM sequences WHERE id=?", (fr["sequence_id"],)))
            late = tx.one(
                "SELECT * FROM sequences WHERE key=? AND first_capture - ? <= ? AND last_capture + ? >= ?"
                " ORDER BY id DESC LIMIT 1",
                (fr["key"], fr["gap"], fr["capture"], fr["gap"], fr["capture"]),
            )
            if late is None:
                self.files.hold_for_sequence(tx, file_id, me, "classified; waiting for its sequence to close")
                return None
            tx.run("UPDATE sequences SET frames=frames+1 WHERE id=?", (late["id"],))
            tx.run(
                "UPDATE seq_frames SET sequence_id=?, frame=?, frame_class=?, frame_confidence=? WHERE file_id=?",
                (late["id"], late["frames"] + 1, frame_class, frame_confidence, file_id),
            )
            self.files.event(
                tx, file_id, f"joined sequence {late['id']} after it closed, as frame {late['frames'] + 1}"
            )
            return self._seq(tx.one("SELECT * FROM sequences WHERE id=?", (late["id"],)))

        placed = self.db.transact(record)
        if placed is None:
            crash_point("sequence.waiting")
        return placed

    # --- closing -------------------------------------------------------------------------

    def close_due(self, decide: Decide, final: bool = False) -> list[SequenceRow]:
        """Close every sequence that is due, each with its label from ``decide``; the sequences this process closed.

        Due: a later group of its key exists (a frame captured more than gap after its last one arrived), or no
        frame of its key arrived for gap seconds (the database's clock), or ``final`` (``run --once`` has
        nothing left to read). A group with a frame still being classified waits for it.
        """

        with self.db.read() as tx:  # most looks find nothing due: no write lock taken for them
            if not self._due(tx, final):
                return []

        def close(tx: Tx) -> list[SequenceRow]:
            self._lock(tx)
            closed = [
                self._close(tx, key, group, decide(key, members), why, now)
                for key, group, members, why, now in self._due(tx, final)
            ]
            if closed:
                tx.notify()  # frames any process may carry on now
            return closed

        closed = self.db.transact(close)
        if closed:
            crash_point("sequence.closed")
        return closed

    def _due(self, tx: Tx, final: bool) -> list[tuple[str, list[Any], list[Member], str, float]]:
        """(key, rows, members, why, now) of each group due to close."""
        if tx.one("SELECT 1 FROM seq_frames WHERE sequence_id IS NULL LIMIT 1") is None:
            return []
        now, by_key = _open_groups(tx)
        out = []
        for key, (groups, last_arrival) in by_key.items():
            for n, group in enumerate(groups):
                if any(r["state"] != FileState.WAITING for r in group):
                    continue  # a frame is still being classified
                if n < len(groups) - 1:
                    why = CloseWhy.LATER
                elif now - last_arrival >= group[-1]["gap"]:
                    why = CloseWhy.QUIET
                elif final:
                    why = CloseWhy.END
                else:
                    continue
                members = [Member(r["file_id"], r["capture"], json.loads(r["prediction"] or "{}")) for r in group]
                out.append((key, group, members, str(why), now))
        return out

    def _close(self, tx: Tx, key: str, group: list[Any], decided: Decided, why: str, now: float) -> SequenceRow:
        seq_id = tx.scalar(
            "INSERT INTO sequences (key, first_capture, last_capture, frames, label, confidence, method, empty, why,"
            " closed, host) VALUES (?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (
                key,
                group[0]["capture"],
                group[-1]["capture"],
                len(group),
                decided.label,
                decided.confidence,
                decided.method,
                int(decided.empty),
                str(why),
                now,
                self.host,
            ),
        )
        for place, r in enumerate(group, 1):
            cls, conf = decided.frames.get(r["file_id"], ("", 0.0))
            tx.run(
                "UPDATE seq_frames SET sequence_id=?, frame=?, frame_class=?, frame_confidence=? WHERE file_id=?",
                (seq_id, place, cls, conf, r["file_id"]),
            )
        message = (
            f"sequence {seq_id} closed ({why}): {len(group)} frame(s), {decided.label} {decided.confidence:.2f}"
            f" ({decided.method})"
        )
        self.files.release_from_sequence(tx, [r["file_id"] for r in group], message)
        return self._seq(tx.one("SELECT * FROM sequences WHERE id=?", (seq_id,)))


def _open_groups(tx: Tx) -> tuple[float, dict[str, tuple[list[list[Any]], float]]]:
    """(the database's clock, {key: (its open groups, when a frame of it last arrived)})."""
    now = tx.scalar("SELECT {now}")
    rows = tx.all(
        "SELECT sf.*, f.state, f.prediction FROM seq_frames sf JOIN files f ON f.id = sf.file_id"
        f" WHERE sf.sequence_id IS NULL AND f.state IN {_PENDING_SQL} ORDER BY sf.key, sf.capture, sf.file_id"
    )
    return now, {key: (groups, max(r["arrived"] for g in groups for r in g)) for key, groups in _groups(rows).items()}


def _groups(rows: list[Any]) -> dict[str, list[list[Any]]]:
    """Rows sorted by key and capture time, split where a frame is more than gap after the one before."""
    out: dict[str, list[list[Any]]] = {}
    for r in rows:
        groups = out.setdefault(r["key"], [])
        if groups and r["capture"] - groups[-1][-1]["capture"] <= max(r["gap"], groups[-1][-1]["gap"]):
            groups[-1].append(r)
        else:
            groups.append([r])
    return out

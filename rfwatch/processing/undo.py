"""``rfwatch undo``: reverse exactly what rfwatch did, file by file, newest step first; crash-safe.

Each step of a finished file is undone by the action that did it (``undo(ctx, result)``, see
docs/plugins.md), from its recorded result: a moved file goes back (never replacing anything), a copy or an
annotated copy is removed while unchanged, keywords come out of the metadata, a webhook receiver gets a
``file.undone`` event. A move into ``failed:`` is undone here. Every undo step is journaled before it runs,
with the action's intent, and finished with its deliveries in one transaction, like the steps themselves:
kill -9 during an undo, run it again, and nothing is lost or done twice. A file undone is left in state
``undone``, with its history, and is not taken again by a watcher (its path is recorded as produced) until
``rfwatch retry`` names it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import inspect
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfwatch.config import Config
from rfwatch.crashpoints import crash_point
from rfwatch.files.place import sha256_file
from rfwatch.files.restore import move_back
from rfwatch.host.context import FileContext
from rfwatch.host.rules import BoundAction, Rule
from rfwatch.journal import FileRow, Journal, StepRow, path_blob, utf8_text
from rfwatch.processing.decisions import DecisionKind, Decisions, labelled_prediction
from rfwatch.processing.delivery import Deliveries, QueuedDelivery
from rfwatch.redact import redact
from rfwatch.roboflow.result import Prediction
from rfwatch.states import FileState, StepState

__all__ = ["UndoFilter", "Undoer", "FileUndo", "parse_when"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS undo_steps (
    file_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,        -- the step undone
    action TEXT NOT NULL,
    state TEXT NOT NULL,         -- pending | done | failed | closed (done, and the file was undone since)
    intent TEXT,                 -- what the undo said it was about to do (JSON)
    result TEXT,                 -- {"outcome": undone | kept | nothing | partial, "detail"} (JSON)
    updated REAL NOT NULL,
    PRIMARY KEY (file_id, seq)
);
"""
#: Files in these states can be undone (a file waiting for review too: it goes back from the review folder;
#: an unmatched one when a step ran before no rule matched, such as its quarantine; one an interrupted undo
#: left ``undoing``).
UNDOABLE = (FileState.DONE, FileState.FAILED, FileState.REVIEW, FileState.UNMATCHED, FileState.UNDOING)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: An undo step of a file that was undone since: a retry ran the rules again, and a later undo reverses
#: only the new round's steps (and any earlier step not undone yet), never these again.
_CLOSED = "closed"


def parse_when(text: str, now: float | None = None) -> float:
    """``2h``, ``3d``, ``30m`` (that long ago) or an ISO date/time (local time unless it says otherwise)."""
    now = time.time() if now is None else now
    m = _DURATION.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a duration such as 2h or 3d, or a date/time such as 2026-11-27T14:00, got {text!r}"
        ) from None
    return when.timestamp()


@dataclass(frozen=True)
class UndoFilter:
    rule: str | None = None
    cls: str | None = None
    since: float | None = None
    until: float | None = None
    paths: tuple[Path, ...] = ()


@dataclass
class FileUndo:
    """What undoing one file came to (one line of ``rfwatch undo``'s output)."""

    row: FileRow
    lines: list[str] = field(default_factory=list)
    #: undone | partly undone | nothing to undo | skipped | failed
    outcome: str = "undone"
    kept: list[str] = field(default_factory=list)
    nothing: list[str] = field(default_factory=list)
    no_undo: list[str] = field(default_factory=list)


class _UndoStep:
    """The journal side of one undo step (what ``ctx.intent``/``produced``/``deliver`` record while it runs)."""

    def __init__(self, undoer: Undoer, file_id: int, seq: int, owner: str):
        self.undoer, self.file_id, self.seq, self.owner = undoer, file_id, seq, owner
        self.queued: list[QueuedDelivery] = []

    def intent(self, detail: dict[str, Any]) -> None:
        with self.undoer.journal.transaction() as db:
            db.execute(
                "UPDATE undo_steps SET intent=?, updated=? WHERE file_id=? AND seq=?",
                (json.dumps(detail), time.time(), self.file_id, self.seq),
            )
            if isinstance(detail.get("target"), str):  # about to put the file there (place_file's intent)
                _claim(db, Path(detail["target"]), self.file_id)
        crash_point("undo.intent")

    def produced(self, path: Path) -> None:
        with self.undoer.journal.transaction() as db:
            _claim(db, path, self.file_id)

    def delivery_id(self, parts: tuple[str, ...]) -> str:
        name = "#".join([str(self.undoer.journal.path), str(self.file_id), f"undo{self.seq}", *parts])
        return uuid.uuid5(uuid.NAMESPACE_URL, name).hex

    def deliver(self, kind: str, target: str, payload: bytes, key: str) -> bool:
        if self.undoer.deliveries.is_gone(target):
            return False
        self.queued.append(QueuedDelivery(kind, target, payload, key, self.owner))
        return True


class Undoer:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        rules: tuple[Rule, ...],
        actions: dict[str, tuple[Callable[[Any], Any], str]],
        deliveries: Deliveries,
        dry_run: bool = False,
    ):
        self.config = config
        self.journal = journal
        self.rules = rules
        self.actions = actions
        self.deliveries = deliveries
        self.decisions = Decisions(journal)
        self.dry_run = dry_run
        self._lock_fd: int | None = None
        #: The deliveries this undo queued (file.undone events): ``rfwatch undo`` sees them out before it exits.
        self.queued_keys: list[str] = []
        journal.ensure_schema(_SCHEMA)

    def lock(self) -> bool:
        """One ``rfwatch undo`` at a time per journal (held until the process ends); False if another runs.

        Two undos of the same interrupted (``undoing``) file would both carry it on.
        """
        self._lock_fd = undo_lock(self.journal)
        return self._lock_fd is not None

    # --- choosing files ------------------------------------------------------------

    def select(self, f: UndoFilter) -> list[FileRow]:
        """Finished files matching ``f``, newest first."""
        marks = ",".join("?" * len(UNDOABLE))
        sql, args = f"SELECT * FROM files WHERE state IN ({marks})", list(UNDOABLE)
        # A file no rule matched was left where it was: only one a review sent through the rules again has
        # steps to reverse (it waited in review/). The others would only fill the output with "nothing to undo".
        sql += " AND (state != ? OR id IN (SELECT file_id FROM steps WHERE state=?))"
        args += [FileState.UNMATCHED, StepState.DONE]
        if f.since is not None:
            sql, args = sql + " AND created >= ?", [*args, f.since]
        if f.until is not None:
            sql, args = sql + " AND created <= ?", [*args, f.until]
        if f.rule is not None:
            sql += " AND (rule=? OR id IN (SELECT file_id FROM steps WHERE rule=?))"
            args += [f.rule, f.rule]
        if f.paths:
            blobs = [path_blob(p) for p in f.paths]
            holes = ",".join("?" * len(blobs))
            sql += f" AND (path IN ({holes}) OR source IN ({holes}))"
            args += blobs + blobs
        rows = [FileRow.from_row(r) for r in self.journal.fetch_all(sql + " ORDER BY id DESC", tuple(args))]
        if f.cls is not None:
            rows = [r for r in rows if f.cls in self._classes(r)]
        return rows

    def _classes(self, row: FileRow) -> tuple[str, ...]:
        """The classes the file was sorted by: a person's label, else the model's predicted classes."""
        decision = self.decisions.latest(row.id)
        if decision is not None and decision.kind == DecisionKind.LABEL:
            return decision.classes
        if not row.prediction:
            return ()
        return Prediction.from_json(row.prediction, self.config.roboflow.multi_label_threshold).predicted_classes

    # --- undoing ---------------------------------------------------------------------

    def undo(self, row: FileRow) -> FileUndo:
        report = FileUndo(row)
        closed = {
            r["seq"]
            for r in self.journal.fetch_all("SELECT seq FROM undo_steps WHERE file_id=? AND state=?", (row.id, _CLOSED))
        }
        history = self.journal.steps(row.id)
        steps = [s for s in history if s.state == StepState.DONE and s.seq not in closed]
        if not steps:
            # A file a rule acted on always has steps; with none left, rfwatch prune forgot them.
            if not history and (row.state == FileState.DONE or row.path != row.source):
                report.outcome = "failed"
                report.lines.append(
                    f"its history was pruned (rfwatch prune): nothing says how to undo it; it came from {row.source}"
                )
            else:
                report.outcome = "nothing to undo"
                where = "where it was found" if row.path == row.source else f"at {row.path}"
                report.lines.append(f"no step left to undo; the file is {where}")
            return report  # its state stays: nothing was changed
        if not self.dry_run and not self._claim(row):
            report.outcome = "skipped"
            report.lines.append("it changed meanwhile (a review decision, a retry or a worker): run undo again")
            return report
        ctx = self._context(row)
        for step in sorted(steps, key=lambda s: s.seq, reverse=True):  # newest step first
            try:
                self._undo_step(ctx, row, step, report)
            except Exception as exc:
                report.outcome = "failed"
                report.lines.append(f"{step.action}: could not be undone: {redact(str(exc)) or type(exc).__name__}")
                if not isinstance(exc, (OSError, ValueError)):
                    log.exception("%s: undoing %s failed", row.path, step.action)
                # The steps before it stay done; running undo again carries on from here. Until then the file
                # stays "undoing" (no watcher, review or retry takes it), and is named by rfwatch status.
                return report
        if report.no_undo:
            report.outcome = "partly undone"
        if self.dry_run:
            return report
        if ctx.path != row.source and report.no_undo:
            # A step with no undo kept the file away from where it was found: it is not "undone".
            report.lines.append(f"the file stays at {ctx.path}, not back at {row.source}")
        self._finish(row, ctx.path, report)
        # Events an interrupted earlier undo queued for this file go out with this run's (rfwatch undo waits for them).
        waiting = [d["id"] for d in self.deliveries.for_file(row.id) if d["state"] == "pending"]
        self.queued_keys += [k for k in waiting if k not in self.queued_keys]
        return report

    def _claim(self, row: FileRow) -> bool:
        """Take the file for this undo, unless anything changed its row since it was selected.

        A review decision, a retry or a daemon's worker each change a file's state only from the one they
        expect (REVIEW, FAILED/UNDONE, an active state): ``undoing`` keeps all of them off while it lasts.
        Comparing ``updated`` too catches a file retried and failed again in between (same state, another
        path), whose steps were read from the old row.
        """
        with self.journal.transaction() as db:
            taken = db.execute(
                "UPDATE files SET state=?, updated=? WHERE id=? AND state=? AND updated=?",
                (FileState.UNDOING, time.time(), row.id, row.state, row.updated),
            ).rowcount
            if taken and row.state != FileState.UNDOING:
                self.journal.event(db, row.id, f"undoing (was {row.state})", time.time())
        return bool(taken)

    def _context(self, row: FileRow) -> FileContext:
        # A file that failed before it was classified has no prediction: its move into failed: is still undone.
        doc = row.prediction or {"predictions": []}
        prediction = Prediction.from_json(doc, self.config.roboflow.multi_label_threshold)
        decision = self.decisions.latest(row.id)
        model_prediction = None
        if decision is not None and decision.kind == DecisionKind.LABEL:
            model_prediction, prediction = prediction, labelled_prediction(prediction, decision.classes, str(row.path))
        return FileContext(
            path=row.path,
            source=row.source,
            watch_root=row.watch_root,
            prediction=prediction,
            config=self.config,
            model=row.model,
            sha256=row.sha256,
            file_id=row.id,
            rule=row.rule,
            model_prediction=model_prediction,
        )

    def _undo_step(self, ctx: FileContext, row: FileRow, step: StepRow, report: FileUndo) -> None:
        done = self.journal.fetch_one("SELECT * FROM undo_steps WHERE file_id=? AND seq=?", (row.id, step.seq))
        if done is not None and done["state"] == StepState.DONE:  # undone by an earlier, interrupted run
            # (the file's row already says where that left the file: its path is recorded with the step)
            self._note(report, step, json.loads(done["result"]))
            return
        undo, owner = self._undo_of(step)
        if undo is None:
            result = {"outcome": "partial", "detail": f"{step.action} offers no undo"}
            if not self.dry_run:
                self._record(row, step, result, None)
            self._note(report, step, result)
            return
        if self.dry_run:
            report.lines.append(f"{step.action}: {_would(step)}")
            return
        resume = self._begin(row, step)
        ctx.resume, ctx.step, ctx.rule = resume, _UndoStep(self, row.id, step.seq, owner), step.rule
        recorder = ctx.step
        before_path, identity = ctx.path, _identity(ctx.path)
        try:
            result = undo(ctx, step.result if step.result is not None else {})
        finally:
            ctx.resume, ctx.step = None, None
        if not isinstance(result, dict):
            result = {"outcome": "undone", "detail": str(result)}
        if ctx.path != before_path:
            result.setdefault("to", str(ctx.path))
        if ctx.path == before_path and identity is not None and _identity(ctx.path) != identity:
            ctx.sha256 = sha256_file(ctx.path)  # metadata taken out: its content changed
        self._record(row, step, result, recorder, ctx)
        self._note(report, step, result)

    def _undo_of(self, step: StepRow) -> tuple[Callable[[FileContext, Any], Any] | None, str]:
        """The action's ``undo``: from the running config's rules (the same rule first), else the registered
        class's static ``undo``, else that of an instance built with no options (see docs/plugins.md, "Undo")."""
        if step.action == "quarantine":
            return _quarantine_undo, "rfwatch"
        if step.action == "decision":
            return (lambda ctx, result: _decision_undo(result)), "rfwatch"
        bound: list[BoundAction] = [a for r in self.rules if r.name == step.rule for a in r.actions]
        bound += [a for r in self.rules for a in r.actions]
        for action in bound:
            if action.name == step.action and action.undo() is not None:
                return action.undo(), action.owner
        factory, owner = self.actions.get(step.action, (None, ""))
        if factory is not None and isinstance(inspect.getattr_static(factory, "undo", None), staticmethod):
            return factory.undo, owner  # type: ignore[attr-defined]
        if factory is not None:
            try:
                instance = factory(None)
            except (ValueError, TypeError):
                return None, owner
            return getattr(instance, "undo", None), owner
        return None, owner

    def _begin(self, row: FileRow, step: StepRow) -> dict[str, Any] | None:
        with self.journal.transaction() as db:
            existing = db.execute(
                "SELECT intent FROM undo_steps WHERE file_id=? AND seq=?", (row.id, step.seq)
            ).fetchone()
            if existing is not None:
                return json.loads(existing["intent"]) if existing["intent"] else None
            db.execute(
                "INSERT INTO undo_steps VALUES (?,?,?,?,NULL,NULL,?)",
                (row.id, step.seq, step.action, StepState.PENDING, time.time()),
            )
        crash_point("undo.step_begun")
        return None

    def _record(
        self,
        row: FileRow,
        step: StepRow,
        result: dict[str, Any],
        recorder: _UndoStep | None,
        ctx: FileContext | None = None,
    ) -> None:
        now = time.time()
        with self.journal.transaction() as db:
            db.execute(
                "INSERT INTO undo_steps VALUES (?,?,?,?,NULL,?,?) ON CONFLICT(file_id, seq) DO UPDATE SET"
                " state=excluded.state, result=excluded.result, updated=excluded.updated",
                (row.id, step.seq, step.action, StepState.DONE, json.dumps(result, default=str), now),
            )
            if ctx is not None:
                db.execute(
                    "UPDATE files SET path=?, sha256=?, updated=? WHERE id=?",
                    (path_blob(ctx.path), ctx.sha256, now, row.id),
                )
            if recorder is not None and recorder.queued:
                self.deliveries.write(db, row.id, recorder.queued)
                self.queued_keys += [q.key for q in recorder.queued]
            self.journal.event(db, row.id, f"undo {step.action}: {result.get('detail') or result.get('outcome')}", now)
        crash_point("undo.step_finished")
        if recorder is not None and recorder.queued:
            self.deliveries.wake()

    def _note(self, report: FileUndo, step: StepRow, result: dict[str, Any]) -> None:
        outcome = result.get("outcome")
        detail = result.get("detail") or outcome
        if outcome == "partial":
            report.no_undo.append(step.action)
        elif outcome == "kept":
            report.kept.append(detail)
        elif outcome == "nothing":
            report.nothing.append(step.action)
        report.lines.append(f"{step.action}: {detail}")

    def _finish(self, row: FileRow, path: Path, report: FileUndo) -> None:
        """The file is undone: state ``undone``, where it is now, and recorded so that no watcher takes it."""
        now = time.time()
        try:
            st = path.stat()
        except OSError:
            st = None
        with self.journal.transaction() as db:
            # The undo's claims (whatever is at a path) give way to the file as it is now, exactly.
            db.execute("DELETE FROM produced WHERE file_id=? AND size=?", (row.id, _ANY))
            if st is not None:
                db.execute("UPDATE files SET size=?, mtime_ns=? WHERE id=?", (st.st_size, st.st_mtime_ns, row.id))
                self.journal.add_produced(path, row.id, db)
            db.execute(
                "UPDATE files SET state=?, path=?, updated=? WHERE id=? AND state=?",
                (FileState.UNDONE, path_blob(path), now, row.id, FileState.UNDOING),
            )
            db.execute("UPDATE undo_steps SET state=? WHERE file_id=? AND state=?", (_CLOSED, row.id, StepState.DONE))
            self.journal.event(db, row.id, utf8_text(f"undone ({report.outcome})") or "undone", now)
        crash_point("undo.finished")


def undo_lock(journal: Journal) -> int | None:
    """The lock one ``rfwatch undo`` holds while it runs (until its process ends); None while another holds it."""
    fd = os.open(f"{journal.path}.undo-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def give_up_undo(journal: Journal, row: FileRow) -> bool:
    """End an undo that cannot finish (a step whose file is gone fails every time): the steps not undone stay
    as they are, the file is ``undone`` where it is, and ``rfwatch retry`` can queue it again.

    False while an ``rfwatch undo`` runs (it may be working on the file) or when the file is not ``undoing``.
    """
    fd = undo_lock(journal)
    if fd is None:
        return False
    try:
        journal.ensure_schema(_SCHEMA)
        now = time.time()
        kept = json.dumps({"outcome": "kept", "detail": "not undone: the undo was given up by rfwatch retry"})
        with journal.transaction() as db:
            taken = db.execute(
                "UPDATE files SET state=?, updated=? WHERE id=? AND state=?",
                (FileState.UNDONE, now, row.id, FileState.UNDOING),
            ).rowcount
            if not taken:
                return False
            # Every step of the file counts as dealt with: a later undo starts from the next round's steps.
            db.execute(
                "INSERT OR IGNORE INTO undo_steps SELECT file_id, seq, action, ?, NULL, ?, ? FROM steps"
                " WHERE file_id=? AND state=?",
                (_CLOSED, kept, now, row.id, StepState.DONE),
            )
            db.execute("UPDATE undo_steps SET state=? WHERE file_id=?", (_CLOSED, row.id))
            db.execute("DELETE FROM produced WHERE file_id=? AND size=?", (row.id, _ANY))  # the undo's claims
            journal.event(db, row.id, utf8_text(f"undo given up by rfwatch retry; the file stays at {row.path}"), now)
        return True
    finally:
        os.close(fd)


#: The size of a claim in the ``produced`` table: no watcher takes whatever is at that path (see :func:`_claim`).
_ANY = -1


def _claim(db: Any, path: Path, file_id: int) -> None:
    """Keep every watcher (a running daemon too) off ``path`` while the undo works on the file there.

    An undo puts the file back into a watched folder, then may rewrite it there (keywords taken out): a mark of
    its size and time would leave a moment, after each change, when a daemon could take it as a new file. The
    claim is made before the file lands there (with the move's intent) and holds whatever the path holds until
    the file is undone, when :meth:`Undoer._finish` records it as it is then.
    """
    db.execute("INSERT OR REPLACE INTO produced VALUES (?,?,?,?)", (path_blob(path), _ANY, _ANY, file_id))


def _quarantine_undo(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
    if result.get("outcome") != "moved":
        return {"outcome": "nothing", "detail": "nothing was moved into failed:"}
    return move_back(ctx, result)


def _decision_undo(result: Any) -> dict[str, Any]:
    # A person's label stays a fact; an image uploaded with it stays in the Roboflow project (delete it there).
    return {"outcome": "nothing", "detail": "the review decision stays in the history (an uploaded image stays)"}


def _would(step: StepRow) -> str:
    """What undoing a step would do, from its recorded result (``--dry-run``)."""
    result = step.result if isinstance(step.result, dict) else {}
    outcome = result.get("outcome")
    if step.action == "quarantine" or (outcome == "moved" and result.get("from")):
        if outcome != "moved":
            return "nothing to reverse"
        return f"would move the file back to {result['from']}"
    if outcome in ("copied", "annotated") and result.get("to"):
        return f"would remove {result['to']} if unchanged since rfwatch wrote it"
    if step.action == "decision":
        return "nothing to reverse (the review decision stays in the history)"
    return "would be undone"


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns

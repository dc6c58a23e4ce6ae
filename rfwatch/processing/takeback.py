"""Taking a review decision back from the page: the file waits for review again, through the undo machinery.

A decision no daemon has begun to apply is simply withdrawn (one transaction: the file ``review`` again). One
already applied (the file sorted, or sent to ``failed:``) is reversed like ``rfwatch undo`` reverses a file, but
only the steps of the decision's round, newest first: the review step stays done, so the file ends where it
waited, in ``review``. Each undo step is journaled before and after its side effect (rfwatch.processing.steps),
and the end is one transaction (:meth:`UndoRecords.back_to_review`): the file waits again, the decision is marked
``taken_back``, and its uploads not yet sent are cancelled, so an older label can never arrive after the next one.
A label already in the Roboflow project stays until the next decision's upload, which the platform answers
"duplicate": its label then replaces the old one (``overwrite=true``, see rfwatch.default_plugins.review).

kill -9 during a take-back leaves the file ``undoing`` with its steps journaled, in exactly one place: taking it
back again (the page's button on the same item, or the JSON API) carries on from the last journaled step once the
dead process's claim is free; ``rfwatch undo`` on it also finishes the job (then the file goes back to where it
was found).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum

from rfwatch.journal import FileRow, Journal
from rfwatch.processing.outbox_view import UPLOAD_KIND
from rfwatch.processing.undo import FileUndo, Undoer
from rfwatch.record import record
from rfwatch.states import FileState, StepKind, StepState

__all__ = ["TakeBack", "TakenBack", "TakeBackOutcome"]

log = logging.getLogger(__name__)

#: States a decision's round can have left a file in.
_APPLIED = (FileState.DONE, FileState.FAILED, FileState.UNMATCHED, FileState.UNDOING)


class TakeBackOutcome(Enum):
    WAITING = "waiting again"  # done: the file waits for review
    NOTHING = "nothing to take back"  # never decided, or taken back already
    BUSY = "busy"  # a daemon applies the decision right now, or another undo holds the file: ask again
    FAILED = "failed"  # a step could not be undone (the file stays undoing: rfwatch undo or retry)


@record
class TakenBack:
    outcome: TakeBackOutcome
    detail: str = ""


class TakeBack:
    def __init__(self, journal: Journal, undoer: Callable[[], Undoer]):
        self.journal = journal
        self.undoer = undoer  # built for each take-back: the rules in use then (a daemon reloads them)

    def __call__(self, file_id: int, by: str | None = None) -> TakenBack:
        try:
            row = self.journal.files.get(file_id)
        except KeyError:
            return TakenBack(TakeBackOutcome.NOTHING, f"no item {file_id}")
        decision = self.journal.decisions.latest(file_id)
        if decision is None:
            return TakenBack(TakeBackOutcome.NOTHING, f"item {file_id} has no decision to take back")
        if row.state == FileState.REVIEW:
            return TakenBack(TakeBackOutcome.NOTHING, f"item {file_id} waits for review already")
        if row.state == FileState.DECIDED:
            if self.journal.decisions.take_back_unapplied(file_id, by) is not None:
                return TakenBack(TakeBackOutcome.WAITING, "taken back before it was applied")
            return TakenBack(TakeBackOutcome.BUSY, "a daemon is applying it right now: try again in a moment")
        if row.state not in _APPLIED:  # undone by rfwatch undo, or queued again by a retry: not the page's now
            return TakenBack(TakeBackOutcome.NOTHING, f"item {file_id} is {row.state} now: nothing to take back")
        return self._undo_round(row, by)

    def _undo_round(self, row: FileRow, by: str | None) -> TakenBack:
        steps = self.journal.files.steps(row.id)
        rounds = [s.seq for s in steps if s.kind == StepKind.DECISION and s.state == StepState.DONE]
        if not rounds:
            return TakenBack(TakeBackOutcome.BUSY, "its decision is not applied yet: try again in a moment")
        first = max(rounds)  # the decision's own step starts its round
        closed = self.journal.undo.closed(row.id)
        todo = [s for s in steps if s.seq >= first and s.state == StepState.DONE and s.seq not in closed]
        if not self.journal.undo.claim(row):
            return TakenBack(TakeBackOutcome.BUSY, "another process works on it now: try again in a moment")
        undoer = self.undoer()
        ctx = undoer._context(row)
        report = FileUndo(row)
        for step in sorted(todo, key=lambda s: s.seq, reverse=True):  # newest first, as rfwatch undo
            try:
                undoer._undo_step(ctx, row, step, report)
            except Exception as exc:
                log.warning("%s: taking the decision back stopped at %s: %s", row.path, step.action, exc)
                return TakenBack(
                    TakeBackOutcome.FAILED,
                    f"{step.action} could not be undone ({exc}); the file stays at {ctx.path}: "
                    "`rfwatch undo` or `rfwatch retry` on it",
                )
        try:
            st = ctx.path.stat()
        except OSError:
            st = None

        def also(tx, now: float) -> None:
            self.journal.decisions.mark_taken_back(tx, row.id, now, by)
            self.journal.outbox.cancel_pending(tx, row.id, UPLOAD_KIND, "its review decision was taken back")

        self.journal.undo.back_to_review(
            row.id, ctx.path, st.st_size if st else None, st.st_mtime_ns if st else None, also
        )
        return TakenBack(TakeBackOutcome.WAITING, "; ".join(report.lines))

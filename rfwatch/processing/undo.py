"""``rfwatch undo``: reverse exactly what rfwatch did, file by file, newest step first; crash-safe.

Each step of a finished file is undone by the action that did it (``undo(ctx, result)``, see
docs/plugins.md), from its recorded result: a moved file goes back (never replacing anything), a copy or an
annotated copy is removed while unchanged, keywords come out of the metadata, a webhook receiver gets a
``file.undone`` event. A move into ``failed:`` is undone here. Undo steps run through the same step runner as
the steps themselves (rfwatch.processing.steps): each records its intent before its side effect and is finished
with its deliveries in one transaction, so kill -9 during an undo, run it again, and nothing is lost or done
twice. A file being undone is claimed by the undoing process (rfwatch.journal.undo); several undos, on several
hosts, may run at once on different files. A file undone is left in state ``undone``, with its history, and is
not taken again by a watcher (its path is recorded as produced) until ``rfwatch retry`` names it.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfwatch.config import Config
from rfwatch.host.context import FileContext
from rfwatch.host.restore import move_back
from rfwatch.host.rules import BoundAction, Rule
from rfwatch.journal import DecisionKind, FileRow, Journal, StepRow
from rfwatch.processing.decisions import labelled_prediction
from rfwatch.processing.delivery import Deliveries
from rfwatch.processing.steps import StepRunner, UndoLog
from rfwatch.record import record
from rfwatch.redact import redact
from rfwatch.roboflow.result import Prediction
from rfwatch.states import FileState, StepKind, StepState, UndoState

__all__ = ["UndoFilter", "Undoer", "FileUndo", "parse_when"]

log = logging.getLogger(__name__)

#: Files in these states can be undone (a file waiting for review too: it goes back from the review folder;
#: an unmatched one when a step ran before no rule matched, such as its quarantine; one an interrupted undo
#: left ``undoing``).
UNDOABLE = (FileState.DONE, FileState.FAILED, FileState.REVIEW, FileState.UNMATCHED, FileState.UNDOING)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def parse_window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``--since``/``--until`` (as :func:`parse_when` reads them; None: open-ended) as Unix times."""
    try:
        return (parse_when(since) if since else None, parse_when(until) if until else None)
    except ValueError as exc:
        raise ValueError(f"--since/--until: {exc}") from None


@record
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
        self.steps = StepRunner(journal, deliveries.wake)
        self.dry_run = dry_run
        #: The deliveries this undo queued (file.undone events): ``rfwatch undo`` sees them out before it exits.
        self.queued_keys: list[str] = []

    # --- choosing files ------------------------------------------------------------

    def select(self, f: UndoFilter) -> list[FileRow]:
        """Finished files matching ``f``, newest first."""
        rows = self.journal.files.select(
            UNDOABLE,
            since=f.since,
            until=f.until,
            rule=f.rule,
            paths=f.paths,
            # A file no rule matched was left where it was: only one a review sent through the rules again has
            # steps to reverse (it waited in review/). The others would only fill the output with "nothing to undo".
            with_done_steps_if=FileState.UNMATCHED,
        )
        if f.cls is not None:
            rows = [r for r in rows if f.cls in self._classes(r)]
        return rows

    def _classes(self, row: FileRow) -> tuple[str, ...]:
        """The classes the file was sorted by: a person's label, else the model's predicted classes."""
        decision = self.journal.decisions.latest(row.id)
        if decision is not None and decision.kind == DecisionKind.LABEL:
            return decision.classes
        if not row.prediction:
            return ()
        return Prediction.from_json(row.prediction, self.config.roboflow.multi_label_threshold).predicted_classes

    # --- undoing ---------------------------------------------------------------------

    def undo(self, row: FileRow) -> FileUndo:
        report = FileUndo(row)
        closed = self.journal.undo.closed(row.id)
        history = self.journal.files.steps(row.id)
        steps = [s for s in history if s.state == StepState.DONE and s.seq not in closed]
        if not steps and closed and self.journal.files.get(row.id).updated != row.updated:
            # Chosen before another undo (or a retry) took it: what it says now is theirs to report.
            report.outcome = "skipped"
            report.lines.append("it changed meanwhile (another rfwatch undo or a retry took it)")
            return report
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
        if not self.dry_run and not self.journal.undo.claim(row):
            report.outcome = "skipped"
            report.lines.append(
                "it changed meanwhile, or another rfwatch undo works on it (a review decision, a retry, a worker, "
                "an undo): run undo again"
            )
            return report
        ctx = self._context(row)
        ctx.undo_from = _where_it_was(row, history)
        # Newest step first; an undo that only tells someone (``undo.notifies``: a file.undone event) runs after
        # the others, once the file is back, so that it can say where the file is now.
        newest_first = sorted(steps, key=lambda s: s.seq, reverse=True)
        notifies = [s for s in newest_first if getattr(self._undo_of(s)[0], "notifies", False)]
        for step in [s for s in newest_first if s not in notifies] + notifies:
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
        try:
            st = ctx.path.stat()
        except OSError:
            st = None
        self.journal.undo.finish(
            row.id, ctx.path, report.outcome, st.st_size if st else None, st.st_mtime_ns if st else None
        )
        # Events an interrupted earlier undo queued for this file go out with this run's (rfwatch undo waits for them).
        waiting = [d["id"] for d in self.journal.outbox.for_file(row.id) if d["state"] == "pending"]
        self.queued_keys += [k for k in waiting if k not in self.queued_keys]
        return report

    def _context(self, row: FileRow) -> FileContext:
        # A file that failed before it was classified has no prediction: its move into failed: is still undone.
        doc = row.prediction or {"predictions": []}
        prediction = Prediction.from_json(doc, self.config.roboflow.multi_label_threshold)
        decision = self.journal.decisions.latest(row.id)
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
        state, done = self.journal.undo.resume(row.id, step.seq)
        if state == UndoState.DONE:  # undone by an earlier, interrupted run
            # (the file's row already says where that left the file: its path is recorded with the step)
            self._note(report, step, done)
            return
        undo, owner = self._undo_of(step)
        log_ = UndoLog(self.journal, row.id, step.seq, step.action, owner)
        if undo is None:
            result = {"outcome": "partial", "detail": f"{step.action} offers no undo"}
            if not self.dry_run:
                self.steps.run(ctx, log_, lambda c: result)
            self._note(report, step, result)
            return
        if self.dry_run:
            report.lines.append(f"{step.action}: {_would(step)}")
            return
        ctx.rule = step.rule
        before = ctx.path

        def run(c: FileContext) -> dict[str, Any]:
            result = undo(c, step.result if step.result is not None else {})
            if not isinstance(result, dict):
                result = {"outcome": "undone", "detail": str(result)}
            if c.path != before:
                result.setdefault("to", str(c.path))
            return result

        result = self.steps.run(ctx, log_, run)
        queued = [d["id"] for d in self.journal.outbox.for_file(row.id) if d["state"] == "pending"]
        self.queued_keys += [k for k in queued if k not in self.queued_keys]
        self._note(report, step, result)

    def _undo_of(self, step: StepRow) -> tuple[Callable[[FileContext, Any], Any] | None, str]:
        """The action's ``undo``: from the running config's rules (the same rule first), else the registered
        class's static ``undo``, else that of an instance built with no options (see docs/plugins.md, "Undo")."""
        if step.kind == StepKind.QUARANTINE:
            return _quarantine_undo, "rfwatch"
        if step.kind == StepKind.DECISION:
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


def _where_it_was(row: FileRow, history: list[StepRow]) -> Path:
    """Where the file was when its processing finished, from its steps (an interrupted undo moved it since)."""
    path = row.source
    for step in sorted(history, key=lambda s: s.seq):
        if step.kind in (StepKind.ACTION, StepKind.QUARANTINE) and step.state == StepState.DONE:
            result = step.result if isinstance(step.result, dict) else {}
            if result.get("outcome") == "moved" and result.get("to"):
                path = Path(result["to"])
    return path


def give_up_undo(journal: Journal, row: FileRow) -> bool:
    """End an undo that cannot finish; False while a live ``rfwatch undo`` holds the file (see UndoRecords.give_up)."""
    return journal.undo.give_up(row)


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
    if step.kind == StepKind.QUARANTINE or (outcome == "moved" and result.get("from")):
        if outcome != "moved":
            return "nothing to reverse"
        return f"would move the file back to {result['from']}"
    if outcome in ("copied", "annotated") and result.get("to"):
        return f"would remove {result['to']} if unchanged since rfwatch wrote it"
    if step.kind == StepKind.DECISION:
        return "nothing to reverse (the review decision stays in the history)"
    return "would be undone"

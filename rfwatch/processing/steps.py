"""One journaled step, run the same way for the pipeline's actions and for undo.

A step is resumed (its recorded intent handed to the action as ``ctx.resume``) or skipped when it is done already;
while it runs, ``ctx.intent``, ``ctx.produced`` and ``ctx.deliver`` are recorded through a :class:`StepLog`; its
result is committed with the file's new place and content, the files it wrote and the deliveries it queued, in one
transaction. The journal side differs (``steps`` for actions, ``undo_steps`` for undo): :class:`ActionLog` and
:class:`UndoLog` are the two logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rfwatch.crashpoints import crash_point
from rfwatch.files.place import sha256_file
from rfwatch.host.context import FileContext
from rfwatch.journal import ClaimLost, Journal, JournalUnavailable, QueuedDelivery, Tx
from rfwatch.redact import redact
from rfwatch.states import FileState, StepKind, StepState, UndoState

__all__ = ["StepLog", "ActionLog", "UndoLog", "StepRunner", "StepFailed"]

# Why a file costs the journal transactions it does, and why none of them can be merged further (issue 23 item 3).
#
# A new file sorted by one move writes three transactions: take (the row, its hash, the claim), the move's intent
# (with the prediction, kept by content), and the move's result with the file's final state. Each is the only record
# of a fact that exists outside the journal from that instant on, and a kill -9 may come between any two
# (tests/test_crash_points.py stops the process at each):
#
# * take comes before anything is asked or done for the file: it is what lets a restart (or another process,
#   through the claim) carry the file on instead of finding it again as new. It needs the hash, so it comes after
#   the read; nothing before it has an effect outside this process.
# * the API's answer is committed with the file's next transition, not alone (rfwatch.journal.files,
#   ``classified(defer=True)``): the first step's intent, or the final state of a file no rule matched, or its
#   failure. Between the answer and that transition the rules are evaluated and nothing outside the journal is
#   done, so a crash there loses only the answer: a restart finds the file detected and asks the API again. Until
#   2026-12-07 it had a transaction of its own, so that such a crash would not pay for a second call; but every file
#   paid that transaction (a commit, an fsync on SQLite), and the window it guarded is a few milliseconds of rule
#   evaluation. A frame of a sequence commits it with its wait for the sequence (a sequence closes only once
#   every frame waits: no other job reads a frame's label before then), or, taken after its sequence closed,
#   with its first step's intent.
# * an action's intent is written before its side effect starts (place_file records the temporary name and the
#   target before it writes a byte): after a crash, the half-done move is finished or rolled back from it
#   (recover_placement), never redone blind and never lost. It cannot move into the previous transaction, as the
#   target name is chosen by the action (a free name in the folder at that moment), nor into the next, which
#   exists to say that the side effect happened.
# * an action's result is committed after its side effect, with the file's new place and content, the files it
#   wrote and the deliveries it queued (one transaction): the journal never says a file is somewhere it is not,
#   and a delivery is queued exactly once. The round's last step commits the file's final state (done) in that
#   same transaction (``final``), so there is no separate "finish" for a file whose last action succeeded.
#
# Between the intent and the result of one step is the one side effect; between two steps, the next intent must
# follow the previous result, because the next action's intent names the place the previous one left the file in.
# Hence 1 + 2 x (actions) transactions per file, the minimum for "intent before each action, result after".


class StepFailed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class StepLog(Protocol):
    """Where one kind of step is journaled."""

    file_id: int
    seq: int
    owner: str  # the plugin whose action runs (its deliveries are its own)

    def resume(self) -> tuple[bool, Any]:
        """(done, result) for a finished step; (False, intent) for one begun before."""

    def begun(self) -> None:
        """The step is about to run (a crash point: nothing of it is journaled or done yet)."""

    def intent(self, detail: dict[str, Any]) -> None: ...

    def produced(self, path: Path) -> list[Path]:
        """Record that the step wrote ``path``; return what is left to record with its result."""

    def delivery_id(self, parts: tuple[str, ...]) -> str: ...

    def finish(
        self,
        ok: bool,
        result: Any,
        path: Path | None,
        sha256: str | None,
        produced: list[Path],
        also: Callable[[Tx], None] | None,
        final: FileState | None,
    ) -> None: ...


@dataclass
class ActionLog:
    """A step of a file's rules (or rfwatch's own: a move into ``failed:``, applying a review decision)."""

    def begun(self) -> None:
        crash_point("journal.step_begun")

    journal: Journal
    file_id: int
    seq: int
    kind: StepKind
    rule: str
    action: str
    owner: str

    def resume(self) -> tuple[bool, Any]:
        state, doc = self.journal.files.resume_step(self.file_id, self.seq)
        return state == StepState.DONE, doc

    def intent(self, detail: dict[str, Any]) -> None:
        self.journal.files.record_intent(self.file_id, self.seq, self.kind, self.rule, self.action, detail)

    def produced(self, path: Path) -> list[Path]:
        # Marked exactly (size, mtime) with the step's result; until then the path its intent named is claimed
        # (the ``claims`` table, see rfwatch.journal.schema.CLAIM_TABLES).
        return [path]

    def delivery_id(self, parts: tuple[str, ...]) -> str:
        return self.journal.delivery_id(self.file_id, self.seq, *parts)

    def finish(self, ok, result, path, sha256, produced, also, final) -> None:
        self.journal.files.finish_step(
            self.file_id,
            self.seq,
            self.kind,
            self.rule,
            self.action,
            ok,
            result,
            path=path,
            sha256=sha256,
            produced=produced,
            also=also,
            final=final,
        )


@dataclass
class UndoLog:
    """Undoing one step of a file."""

    def begun(self) -> None:
        crash_point("undo.step_begun")

    journal: Journal
    file_id: int
    seq: int
    action: str
    owner: str

    def resume(self) -> tuple[bool, Any]:
        state, doc = self.journal.undo.resume(self.file_id, self.seq)
        return state == UndoState.DONE, doc

    def intent(self, detail: dict[str, Any]) -> None:
        self.journal.undo.record_intent(self.file_id, self.seq, self.action, detail)

    def produced(self, path: Path) -> list[Path]:
        # An undo puts the file back into a watched folder, then may rewrite it there: the path is claimed from
        # watchers at once, for as long as the undo works on the file (see rfwatch.journal.undo).
        self.journal.undo.claim_path(self.file_id, path)
        return []

    def delivery_id(self, parts: tuple[str, ...]) -> str:
        return self.journal.delivery_id(self.file_id, f"undo{self.seq}", *parts)

    def finish(self, ok, result, path, sha256, produced, also, final) -> None:
        if ok:  # a failed undo step is not recorded: running undo again tries it again
            self.journal.undo.finish_step(
                self.file_id, self.seq, self.action, result, path=path, sha256=sha256, also=also
            )


@dataclass
class _Recorder:
    """What ``ctx.intent``/``produced``/``deliver`` reach while a step runs."""

    log: StepLog
    journal: Journal
    queued: list[QueuedDelivery] = field(default_factory=list)
    produced_paths: list[Path] = field(default_factory=list)

    def intent(self, detail: dict[str, Any]) -> None:
        self.log.intent(detail)

    def produced(self, path: Path) -> None:
        self.produced_paths += self.log.produced(path)

    def delivery_id(self, parts: tuple[str, ...]) -> str:
        return self.log.delivery_id(parts)

    def deliver(self, kind: str, target: str, payload: bytes, key: str) -> bool:
        if self.journal.outbox.is_gone(target):
            return False
        self.queued.append(QueuedDelivery(kind, target, payload, key, self.log.owner))
        return True

    def write(self, tx: Tx) -> None:
        """Inside the transaction that finishes the step."""
        if self.queued:
            self.journal.outbox.enqueue(tx, self.log.file_id, self.queued)


class StepRunner:
    def __init__(self, journal: Journal, wake_deliveries: Callable[[], None] = lambda: None):
        self.journal = journal
        self.wake_deliveries = wake_deliveries

    def run(
        self,
        ctx: FileContext,
        log: StepLog,
        action: Callable[[FileContext], Any],
        final: Callable[[FileContext, Any], FileState | None] | None = None,
        describe_failure: Callable[[Exception], str] | None = None,
    ) -> Any:
        """Run ``action(ctx)`` as one journaled step; a step done already is not run again (its result is returned).

        ``final(ctx, result)``: the file's state after this step, committed with its result (the round's last
        step). Raises StepFailed (after journaling the failure) when the action raises; the journal's own errors
        (the database away, a claim lost) pass through unrecorded.
        """
        done, doc = log.resume()
        if done:
            return doc
        if not self.journal.fresh():
            # Our heartbeat has not reached the database for most of a lease: another host may be taking our
            # files over. No side effect is started until it does again.
            raise JournalUnavailable("this process's claims may have lapsed (no heartbeat reached the journal)")
        log.begun()
        recorder = _Recorder(log, self.journal)
        ctx.resume, ctx.step = (doc if isinstance(doc, dict) else None), recorder
        before, identity, hashed = ctx.path, _identity(ctx.path), ctx.sha256
        try:
            result = action(ctx)
        except (JournalUnavailable, ClaimLost):
            raise
        except Exception as exc:
            reason = describe_failure(exc) if describe_failure else redact(str(exc)) or type(exc).__name__
            log.finish(False, {"error": reason}, None, None, [], None, None)
            raise StepFailed(reason) from exc
        finally:
            ctx.step, ctx.resume = None, None
        sha256 = None
        if ctx.path == before and identity is not None and _identity(ctx.path) != identity:
            # Rewritten in place (metadata embedded or taken out): later steps (a move, its recovery) must know it
            # by its content (which the action may have hashed already: then once is enough).
            sha256 = ctx.sha256 = ctx.sha256 if ctx.sha256 != hashed else sha256_file(ctx.path)
        log.finish(
            True,
            result,
            ctx.path if ctx.path != before else None,
            sha256,
            recorder.produced_paths,
            recorder.write if recorder.queued else None,
            final(ctx, result) if final is not None else None,
        )
        if recorder.queued:
            self.wake_deliveries()
        return result


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime): whether a file was rewritten in place since."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns

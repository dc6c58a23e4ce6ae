"""The states a file and its steps go through, and what one attempt at a file came to.

String enums: they are stored in the journal and printed as they are (``FileState.DONE == "done"``).
"""

from __future__ import annotations

import enum
import sys

__all__ = [
    "StrEnum",
    "FileState",
    "StepState",
    "StepKind",
    "UndoState",
    "DeliveryState",
    "Outcome",
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "UNFINISHED_STATES",
]

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10

    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return self.value


class FileState(StrEnum):
    DETECTED = "detected"  # journaled, not yet classified
    CLASSIFIED = "classified"  # has its prediction; rules and actions run next
    REVIEW = "review"  # moved aside by a review action: waits for a person
    DECIDED = "decided"  # a person labelled or rejected it; the decision is applied next
    DONE = "done"
    UNMATCHED = "unmatched"  # no rule matched: left where it was
    FAILED = "failed"
    UNDONE = "undone"  # put back by `rfwatch undo`: not taken again until `rfwatch retry` names it
    UNDOING = "undoing"  # `rfwatch undo` is reversing it (or was, when interrupted: running it again finishes)
    WAITING = "waiting"  # classified; its actions wait until its sequence closes (rfwatch.processing.sequences)


#: A worker carries these on; the others wait (for a person, a retry) or are finished.
ACTIVE_STATES = (FileState.DETECTED, FileState.CLASSIFIED, FileState.DECIDED)
TERMINAL_STATES = (FileState.DONE, FileState.UNMATCHED, FileState.FAILED, FileState.UNDONE)
#: rfwatch still owns the file (working on it, or waiting for a person): no watcher takes it as new.
UNFINISHED_STATES = (*ACTIVE_STATES, FileState.REVIEW, FileState.UNDOING, FileState.WAITING)


class StepState(StrEnum):
    PENDING = "pending"  # begun; its intent (if recorded) says what it was about to do
    DONE = "done"
    FAILED = "failed"


class StepKind(StrEnum):
    """Who a step belongs to: a rule's action, or rfwatch's own bookkeeping around a file."""

    ACTION = "action"  # an action of a rule (move, tag, webhook, a plugin's)
    QUARANTINE = "quarantine"  # rfwatch moving a file that failed into failed:
    DECISION = "decision"  # applying a person's review decision (plugins act on it: an upload)


class UndoState(StrEnum):
    PENDING = "pending"  # begun; its intent (if recorded) says what it was about to do
    DONE = "done"
    CLOSED = "closed"  # done, and the file was undone since: a later undo starts from the next round's steps


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GONE = "gone"  # the target asked for nothing more (410)
    FAILED = "failed"  # this delivery can never succeed
    CANCELLED = "cancelled"  # its review decision was taken back before it went out


class Outcome(StrEnum):
    """What one attempt at a file came to (counted by the daemon, the progress bar and metrics)."""

    DONE = "done"
    UNMATCHED = "unmatched"
    FAILED = "failed"
    REVIEW = "review"  # waiting for a person
    SKIPPED = "skipped"  # not taken: a symlink, written by rfwatch, ignored by a plugin, vanished, ...
    SEQUENCE = "sequence"  # classified; waits for its sequence to close (then its actions run)
    CHANGING = "changing"  # written to again during its last settle moment: the watcher watches it anew

"""Events: the files of one sequence (a burst) seen as one observation, or a file on its own.

Camtrap DP observes at the event level when it can (one observation per sequence, eventStart to eventEnd); a file
with no sequence is an event of its own. :func:`group_events` is the only place that knows how.
"""

from __future__ import annotations

import datetime as dt

from rfwatch.exports.records import PERSON, FileRecord
from rfwatch.record import record

__all__ = ["Event", "group_events"]


@record
class Event:
    #: The sequence's id, or ``file-<id>`` for a file on its own.
    id: str
    #: Its files, frame by frame (in capture order for a file on its own: just the one).
    files: tuple[FileRecord, ...]
    #: The label that stands for the event, its confidence (None: a person decided), who decided.
    label: str
    confidence: float | None
    decided_by: str
    person: str | None

    @property
    def start(self) -> dt.datetime:
        return min(f.captured for f in self.files)

    @property
    def end(self) -> dt.datetime:
        return max(f.captured for f in self.files)

    @property
    def is_sequence(self) -> bool:
        return self.files[0].sequence is not None


def group_events(records: list[FileRecord]) -> list[Event]:
    """One event per sequence (its frames in order) and one per file without a sequence, by start time.

    A sequence's label is the journal's sequence label, unless a person labelled one of its frames in review: then
    the person's label stands for the event (the latest such decision), as it does for that file.
    """
    by_sequence: dict[str, list[FileRecord]] = {}
    events: list[Event] = []
    for r in records:
        if r.sequence is None:
            events.append(Event(f"file-{r.file_id}", (r,), r.label, r.confidence, r.decided_by, r.person))
        else:
            by_sequence.setdefault(r.sequence.id, []).append(r)
    for sid, frames in by_sequence.items():
        frames.sort(key=lambda r: (r.sequence.frame if r.sequence else 0, r.captured))
        people = sorted((r for r in frames if r.decided_by == PERSON), key=lambda r: r.decided_at)
        if people:
            last = people[-1]
            events.append(Event(sid, tuple(frames), last.label, None, PERSON, last.person))
        else:
            seq = frames[0].sequence
            assert seq is not None
            events.append(Event(sid, tuple(frames), seq.label, seq.confidence, frames[0].decided_by, None))
    events.sort(key=lambda e: (e.start, e.id))
    return events

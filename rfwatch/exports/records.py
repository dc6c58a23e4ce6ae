"""What an export says of each file: read from the journal (and the file's EXIF), never written anywhere.

One :class:`FileRecord` per file the model classified: where it was found and where it is now, its capture time,
the class that stands (a person's label in review, else the model's top class) and who decided it, every score
the model gave, and the file's sequence when the journal has one.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from rfwatch.images.exif import camera_facts
from rfwatch.journal import DecisionKind, FileRow, Journal
from rfwatch.record import record
from rfwatch.roboflow.result import Prediction

__all__ = ["FileRecord", "SequenceInfo", "collect", "capture_time"]

log = logging.getLogger(__name__)

MODEL, PERSON = "model", "person"


@record
class SequenceInfo:
    """A file's place in its sequence (a burst), as the journal records it (journal.sequences.of_files)."""

    id: str
    #: 1-based position in the sequence.
    frame: int
    frames: int
    #: The sequence's label and its confidence (the same for every frame of it).
    label: str
    confidence: float


@record
class FileRecord:
    file_id: int
    source: Path
    path: Path
    #: The named root the file is below now, and its path there ("" and the absolute path outside every root).
    root: str
    rel: str
    captured: dt.datetime
    #: exif | mtime: where the capture time came from.
    captured_from: str
    #: The class that stands ("" when a person rejected the model's answer without a label, or nothing passed).
    label: str
    #: The model's confidence in it; None when a person decided.
    confidence: float | None
    #: model | person
    decided_by: str
    #: Who, when a person decided (the review page's user, if it knew one).
    person: str | None
    decided_at: float
    #: Every class the model scored, highest first.
    scores: tuple[tuple[str, float], ...]
    model: str
    state: str
    sequence: SequenceInfo | None = None
    #: EXIF GPS, when the file has it (for deployments the config gives no coordinates for).
    gps: tuple[float, float] | None = None


def capture_time(path: Path, mtime_ns: int, tz: dt.tzinfo | None) -> tuple[dt.datetime, str]:
    """EXIF DateTimeOriginal (with OffsetTimeOriginal, else ``tz``, else this host's zone), else the mtime."""
    facts = camera_facts(path)
    text = facts.text("DateTimeOriginal")
    if text:
        try:
            when = dt.datetime.strptime(text.strip()[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            log.warning("%s: DateTimeOriginal %r is not a date and time: the file's mtime is used", path, text)
        else:
            offset = facts.text("OffsetTimeOriginal")
            zone = None
            if offset:
                try:
                    zone = dt.datetime.strptime(offset.strip().replace(":", ""), "%z").tzinfo
                except ValueError:
                    zone = None
            zone = zone or tz or when.astimezone().tzinfo
            return when.replace(tzinfo=zone), "exif"
    return dt.datetime.fromtimestamp(mtime_ns / 1e9, tz or dt.timezone.utc).astimezone(tz), "mtime"


def _gps(path: Path) -> tuple[float, float] | None:
    facts = camera_facts(path)
    lat, lon = facts.get("GPSLatitude"), facts.get("GPSLongitude")
    if lat is None or lon is None:
        return None
    try:
        return float(lat), float(lon)
    except (TypeError, ValueError):
        return None


def collect(
    journal: Journal,
    since: float | None,
    until: float | None,
    *,
    multi_label_threshold: float,
    tz: dt.tzinfo | None = None,
) -> list[FileRecord]:
    """Every file classified between ``since`` and ``until`` (when rfwatch took it), oldest first."""
    rows = journal.files.classified_between(since, until)
    decisions = journal.decisions.standing()
    sequences = journal.sequences.of_files([row.id for row in rows])
    out = []
    for row in rows:
        seq = sequences.get(row.id)
        info = SequenceInfo(str(seq.sequence_id), seq.frame, seq.frames, seq.label, seq.confidence) if seq else None
        out.append(_record(journal, row, decisions.get(row.id), multi_label_threshold, tz, info))
    return out


def _record(
    journal: Journal,
    row: FileRow,
    decision,
    threshold: float,
    tz: dt.tzinfo | None,
    sequence: SequenceInfo | None = None,
) -> FileRecord:
    prediction = Prediction.from_json(row.prediction or {}, threshold)
    scores = tuple((p.name, p.confidence) for p in prediction.predictions)
    if decision is not None:
        label = decision.classes[0] if decision.kind == DecisionKind.LABEL and decision.classes else ""
        confidence, by, person, at = None, PERSON, decision.by, decision.decided
    else:
        label, confidence, by, person, at = prediction.top, prediction.confidence, MODEL, None, row.updated
    captured, how = capture_time(row.path, row.mtime_ns, tz)
    loc = journal.roots.locate(row.path)
    return FileRecord(
        file_id=row.id,
        source=row.source,
        path=row.path,
        root=loc.root,
        rel=loc.rel.decode("utf-8", "backslashreplace"),
        captured=captured,
        captured_from=how,
        label=label,
        confidence=confidence,
        decided_by=by,
        person=person,
        decided_at=at,
        scores=scores,
        model=row.model,
        state=str(row.state),
        sequence=sequence,  # none: the file is its own event (see events.py)
        gps=_gps(row.path),
    )

"""The plain CSV export: one row per file, for a spreadsheet."""

from __future__ import annotations

import csv
from pathlib import Path

from rfwatch.exports.records import FileRecord
from rfwatch.files.whole import replaced

__all__ = ["write_csv", "COLUMNS"]

COLUMNS = [
    "file",
    "found_at",
    "sequence",
    "frame",
    "frames",
    "captured",
    "captured_from",
    "class",
    "confidence",
    "decided_by",
    "person",
    "model",
    "state",
]


def write_csv(records: list[FileRecord], out: Path) -> dict[str, int]:
    """``file`` is where the file is now; ``class``/``confidence`` what stands (a sequence's label when the file
    has one); ``decided_by`` model or person."""
    with replaced(out) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in records:
            seq = r.sequence
            person = r.decided_by == "person"
            label = r.label if person or seq is None else seq.label
            confidence = None if person else (r.confidence if seq is None else seq.confidence)
            w.writerow(
                [
                    str(r.path),
                    str(r.source),
                    seq.id if seq else "",
                    seq.frame if seq else "",
                    seq.frames if seq else "",
                    r.captured.isoformat(timespec="seconds"),
                    r.captured_from,
                    label,
                    "" if confidence is None else f"{confidence:.6g}",
                    r.decided_by,
                    r.person or "",
                    r.model,
                    r.state,
                ]
            )
    return {"files": len(records)}

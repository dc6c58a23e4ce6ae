"""A person's decisions about files that wait for review, journaled before they take effect.

A ``review`` action moves a file aside and leaves it in state ``review``. A decision (a label, or a
reject) is one transaction: the decision row, the file's state ``decided`` and the start of a new round
of steps. Whoever served the page (the daemon, or ``rfwatch review`` on its own) wrote it; the daemon
notices the change (see Daemon.poll_journal) and applies it: a label runs the rules again with the person's
class at confidence 1.0, a reject sends the file to ``failed:``. A decision is applied once, whatever
crashes in between: the pipeline's steps record what is done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from rfwatch.crashpoints import crash_point
from rfwatch.journal import FileRow, Journal
from rfwatch.roboflow.result import Prediction
from rfwatch.states import FileState, StrEnum

__all__ = ["Decision", "DecisionKind", "Decisions", "AlreadyDecided", "NotWaiting", "labelled_prediction"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    file_id INTEGER NOT NULL,
    round INTEGER NOT NULL,      -- files.round_start when it was decided: one decision per waiting
    kind TEXT NOT NULL,          -- label | reject
    classes TEXT NOT NULL,       -- JSON list: the person's class(es)
    decided REAL NOT NULL,
    by TEXT,
    PRIMARY KEY (file_id, round)
);
"""


class DecisionKind(StrEnum):
    LABEL = "label"
    REJECT = "reject"


class NotWaiting(LookupError):
    """No such file waits for review."""


class AlreadyDecided(RuntimeError):
    """The file was decided already (here or on another page)."""


@dataclass(frozen=True)
class Decision:
    file_id: int
    round: int
    kind: DecisionKind
    classes: tuple[str, ...]
    decided: float
    by: str | None

    def json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "classes": list(self.classes), "decided": self.decided, "by": self.by}


def labelled_prediction(model: Prediction, classes: tuple[str, ...], image_path: str = "") -> Prediction:
    """The person's label as a prediction: their class(es) at confidence 1.0, every other class at 0."""
    names = [s.name for s in model.predictions] + [c for c in classes if c not in {s.name for s in model.predictions}]
    size = {"width": model.image_size[0], "height": model.image_size[1]} if model.image_size else None
    if model.multi_label:
        doc: dict[str, Any] = {
            "predictions": {n: {"confidence": 1.0 if n in classes else 0.0} for n in names},
            "predicted_classes": list(classes),
        }
    else:
        (cls,) = classes
        doc = {
            "predictions": [{"class": cls, "confidence": 1.0}]
            + [{"class": n, "confidence": 0.0} for n in names if n != cls],
            "top": cls,
            "confidence": 1.0,
        }
    doc.update(image=size, image_path=image_path, time=None)
    return Prediction.from_json(doc)


class Decisions:
    def __init__(self, journal: Journal):
        self.journal = journal
        journal.ensure_schema(_SCHEMA)

    def decide(
        self, file_id: int, kind: DecisionKind, classes: tuple[str, ...] = (), by: str | None = None
    ) -> Decision:
        """Record a decision for a waiting file; NotWaiting or AlreadyDecided otherwise. Nothing moves yet."""
        now = time.time()
        with self.journal.transaction() as db:
            row = db.execute("SELECT state, round_start FROM files WHERE id=?", (file_id,)).fetchone()
            if row is None:
                raise NotWaiting(file_id)
            if row["state"] != FileState.REVIEW:
                if db.execute("SELECT 1 FROM decisions WHERE file_id=?", (file_id,)).fetchone():
                    raise AlreadyDecided(file_id)
                raise NotWaiting(file_id)
            decision = Decision(file_id, row["round_start"], kind, tuple(classes), now, by)
            db.execute(
                "INSERT INTO decisions VALUES (?,?,?,?,?,?)",
                (file_id, decision.round, str(kind), json.dumps(list(classes)), now, by),
            )
            # The steps that apply it start after every step so far (the review step among them).
            db.execute(
                "UPDATE files SET state=?, round_start=?, updated=? WHERE id=?",
                (FileState.DECIDED, self.journal.next_seq(db, file_id), now, file_id),
            )
            what = "rejected" if kind == DecisionKind.REJECT else "labelled " + ", ".join(classes)
            self.journal.event(db, file_id, f"{what} in review" + (f" by {by}" if by else ""), now)
        crash_point("review.decided")
        return decision

    def latest(self, file_id: int) -> Decision | None:
        row = self.journal.fetch_one("SELECT * FROM decisions WHERE file_id=? ORDER BY round DESC LIMIT 1", (file_id,))
        if row is None:
            return None
        return Decision(
            row["file_id"],
            row["round"],
            DecisionKind(row["kind"]),
            tuple(json.loads(row["classes"])),
            row["decided"],
            row["by"],
        )

    def waiting(self) -> list[FileRow]:
        """Files that wait for a person, oldest first."""
        rows = self.journal.fetch_all("SELECT * FROM files WHERE state=? ORDER BY updated, id", (FileState.REVIEW,))
        return [FileRow.from_row(r) for r in rows]

    def count_waiting(self) -> int:
        return self.journal.fetch_one("SELECT COUNT(*) FROM files WHERE state=?", (FileState.REVIEW,))[0]

"""A person's label beside the model's guess, as ``rfwatch status`` and ``rfwatch history`` show a decided file.

``{class}`` in the rules is the highest-scoring predicted class (rfwatch.roboflow.result.Prediction.top): for a
model's answer, its most confident class (multi-label: of those at or above the threshold); for a person's label,
their class, and for a multi-label label (every chosen class at confidence 1.0), the chosen class the model
scored highest. The review page marks the same class, and these lines name the same class.
"""

from __future__ import annotations

from rfwatch.journal import DecisionKind, FileRow, Journal
from rfwatch.processing.decisions import labelled_prediction
from rfwatch.record import record
from rfwatch.roboflow.result import Prediction

__all__ = ["PersonLabel", "person_and_model"]


@record
class PersonLabel:
    """A person's label for a file, as status and history show it beside the model's guess."""

    classes: tuple[str, ...]
    #: The class ``{class}`` stood for when the rules ran again with the label.
    cls: str
    by: str | None
    #: ``labelled green in review (model's guess: red 0.40)``
    summary: str


def person_and_model(journal: Journal, row: FileRow, threshold: float) -> PersonLabel | None:
    """The person's standing label for the file (not one taken back), or None."""
    decision = journal.decisions.latest(row.id)
    if decision is None or decision.kind != DecisionKind.LABEL:
        return None
    model = Prediction.from_json(row.prediction or {"predictions": []}, threshold)
    top = labelled_prediction(model, decision.classes).top if decision.classes else ""
    named = ", ".join(decision.classes)
    if len(decision.classes) > 1:
        named += f" ({{class}} {top})"
    return PersonLabel(
        decision.classes, top, decision.by, f"labelled {named} in review (model's guess: {model.summary()})"
    )

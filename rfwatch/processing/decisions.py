"""What a person's review decision means for the rules: their label as a prediction.

The decision itself is journaled by rfwatch.journal.decisions; the pipeline applies it (see Pipeline._apply_decision):
a label runs the rules again with the person's class at confidence 1.0, a reject sends the file to ``failed:``.
"""

from __future__ import annotations

from typing import Any

from rfwatch.roboflow.result import Prediction

__all__ = ["labelled_prediction"]


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

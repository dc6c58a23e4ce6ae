"""One type for both of Roboflow's classification answers.

Single-label: ``predictions`` is a list of ``{"class", "confidence"}``
sorted highest first, plus ``top`` and ``confidence``. Multi-label:
``predictions`` is a mapping ``class -> {"confidence", "class_id"}`` plus
``predicted_classes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClassScore", "Prediction", "ResponseFormatError"]

PREDICTION_TYPE = "ClassificationModel"


class ResponseFormatError(ValueError):
    """The server answered 200 with something that is not a classification result."""


@dataclass(frozen=True)
class ClassScore:
    name: str
    confidence: float
    class_id: int | None = None


@dataclass(frozen=True)
class Prediction:
    #: Highest-confidence class ("" when the server returned none above the threshold).
    top: str
    confidence: float
    #: Every class the server returned, highest confidence first.
    predictions: tuple[ClassScore, ...]
    #: Classes the model asserts: every one above threshold for multi-label, the top one otherwise.
    predicted_classes: tuple[str, ...]
    multi_label: bool
    #: Upright (width, height) of the original file, not of the downscaled upload.
    image_size: tuple[int, int] | None
    image_path: str
    time: float | None
    inference_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_response(cls, raw: Any, image_path: str = "", image_size: tuple[int, int] | None = None) -> Prediction:
        if not isinstance(raw, dict) or "predictions" not in raw:
            raise ResponseFormatError(f"answer has no 'predictions': {str(raw)[:200]}")
        preds = raw["predictions"]
        try:
            if isinstance(preds, dict):
                scores = [
                    ClassScore(str(name), float(v.get("confidence", 0.0)), _int_or_none(v.get("class_id")))
                    for name, v in preds.items()
                ]
                scores.sort(key=lambda s: s.confidence, reverse=True)
                predicted = tuple(str(c) for c in raw.get("predicted_classes", []))
                top = scores[0] if scores else None
                return cls(
                    top=top.name if top else "",
                    confidence=top.confidence if top else 0.0,
                    predictions=tuple(scores),
                    predicted_classes=predicted,
                    multi_label=True,
                    image_size=image_size or _size_of(raw),
                    image_path=image_path,
                    time=_float_or_none(raw.get("time")),
                    inference_id=raw.get("inference_id"),
                    raw=raw,
                )
            if isinstance(preds, list):
                scores = [
                    ClassScore(str(p["class"]), float(p.get("confidence", 0.0)), _int_or_none(p.get("class_id")))
                    for p in preds
                ]
                scores.sort(key=lambda s: s.confidence, reverse=True)
                top_name = raw.get("top", scores[0].name if scores else "")
                top_conf = raw.get("confidence", scores[0].confidence if scores else 0.0)
                return cls(
                    top=str(top_name or ""),
                    confidence=float(top_conf or 0.0),
                    predictions=tuple(scores),
                    predicted_classes=(str(top_name),) if top_name else (),
                    multi_label=False,
                    image_size=image_size or _size_of(raw),
                    image_path=image_path,
                    time=_float_or_none(raw.get("time")),
                    inference_id=raw.get("inference_id"),
                    raw=raw,
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResponseFormatError(f"malformed predictions in answer: {exc!r}") from None
        raise ResponseFormatError(f"'predictions' is neither a list nor a mapping: {type(preds).__name__}")

    def confidence_of(self, name: str) -> float:
        for score in self.predictions:
            if score.name == name:
                return score.confidence
        return 0.0

    def json(self) -> dict[str, Any]:
        """The documented response object (see the Roboflow classification docs)."""
        image = (
            {"width": self.image_size[0], "height": self.image_size[1]} if self.image_size else self.raw.get("image")
        )
        if self.multi_label:
            return {
                "time": self.time,
                "image": image,
                "predictions": self.raw["predictions"],
                "predicted_classes": list(self.predicted_classes),
                "image_path": self.image_path,
                "prediction_type": PREDICTION_TYPE,
            }
        return {
            "time": self.time,
            "image": image,
            "predictions": [{"class": s.name, "confidence": s.confidence} for s in self.predictions],
            "top": self.top,
            "confidence": self.confidence,
            "image_path": self.image_path,
            "prediction_type": PREDICTION_TYPE,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Prediction:
        """Rebuild from :meth:`json` output (the journal stores predictions that way)."""
        image = doc.get("image") or {}
        size = (int(image["width"]), int(image["height"])) if image.get("width") is not None else None
        return cls.from_response(doc, image_path=doc.get("image_path", ""), image_size=size)


def _size_of(raw: dict[str, Any]) -> tuple[int, int] | None:
    image = raw.get("image")
    if isinstance(image, dict) and "width" in image and "height" in image:
        try:
            return (int(image["width"]), int(image["height"]))
        except (TypeError, ValueError):
            return None
    return None


def _float_or_none(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None

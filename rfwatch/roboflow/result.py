"""One type for both of Roboflow's classification answers.

Single-label: ``predictions`` is a list of ``{"class", "confidence"}``
sorted highest first, plus ``top`` and ``confidence``. Multi-label:
``predictions`` is a mapping ``class -> {"confidence", "class_id"}`` plus
``predicted_classes``.

For multi-label models rfwatch decides itself which classes are predicted: those scoring at or above
``multi_label_threshold`` (default 0.5). The server cuts its ``predicted_classes`` at the request's own
``confidence``, ``>=`` on one engine and ``>`` on the other (roboflow/inference:
inference/core/models/classification_base.py, inference_models' vit_classification_onnx.py), and rfwatch
asks for confidence 0.01 so that single-label answers carry the whole distribution; taking the server's
list would make nearly every class "predicted". So the server's list is ignored and recomputed here,
the same whatever the engine.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from rfwatch.record import record

__all__ = ["ClassScore", "Prediction", "ResponseFormatError", "DEFAULT_MULTI_LABEL_THRESHOLD"]

PREDICTION_TYPE = "ClassificationModel"
#: The documented example predicts 0.507 and not 0.495 (docs.roboflow.com, multi-label classification).
DEFAULT_MULTI_LABEL_THRESHOLD = 0.5


class ResponseFormatError(ValueError):
    """The server answered 200 with something that is not a classification result."""


@record
class ClassScore:
    """One class and its confidence, as the model answered."""

    name: str
    confidence: float
    class_id: int | None = None


@record
class Prediction:
    """The model's answer for one image, in the documented JSON shape and as rules read it."""

    #: The class the model asserts most: single-label, the top class ("" when the server returned none
    #: above the request's confidence); multi-label, the highest-scoring predicted class ("" when none is).
    top: str
    #: ``top``'s confidence (0.0 when ``top`` is "").
    confidence: float
    #: Every class the server returned, highest confidence first.
    predictions: tuple[ClassScore, ...]
    #: Classes the model asserts: for multi-label every one at or above the threshold, else the top one.
    predicted_classes: tuple[str, ...]
    multi_label: bool
    #: Upright (width, height) of the original file, not of the downscaled upload.
    image_size: tuple[int, int] | None
    image_path: str
    time: float | None
    inference_id: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    #: For Roboflow support: the inference_id and identifying response headers (request ids), when present.
    support: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_response(
        cls,
        raw: Any,
        image_path: str = "",
        image_size: tuple[int, int] | None = None,
        multi_label_threshold: float = DEFAULT_MULTI_LABEL_THRESHOLD,
    ) -> Prediction:
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
                predicted = tuple(s.name for s in scores if s.confidence >= multi_label_threshold)
                top = scores[0] if predicted else None
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
        """The documented response object (see the Roboflow classification docs), plus the server's ``inference_id``.

        Multi-label ``predicted_classes`` are rfwatch's own (see the module docstring).
        """
        size = self.image_size
        doc: dict[str, Any] = {
            "time": self.time,
            "image": {"width": size[0], "height": size[1]} if size else self.raw.get("image"),
        }
        if self.multi_label:
            doc["predictions"] = self.raw["predictions"]
            doc["predicted_classes"] = list(self.predicted_classes)
        else:
            doc["predictions"] = [{"class": s.name, "confidence": s.confidence} for s in self.predictions]
            doc["top"] = self.top
            doc["confidence"] = self.confidence
        doc["image_path"] = self.image_path
        doc["prediction_type"] = PREDICTION_TYPE
        if self.inference_id:
            doc["inference_id"] = self.inference_id
        return doc

    def summary(self) -> str:
        """``red 0.91``; multi-label ``red 0.93, blue 0.71``; ``(none)`` when no class is asserted."""
        if self.multi_label:
            return ", ".join(f"{c} {self.confidence_of(c):.2f}" for c in self.predicted_classes) or "(none)"
        return f"{self.top or '(none)'} {self.confidence:.2f}"

    @classmethod
    def from_json(cls, doc: dict[str, Any], multi_label_threshold: float = DEFAULT_MULTI_LABEL_THRESHOLD) -> Prediction:
        """Rebuild from :meth:`json` output (the journal stores predictions that way).

        Multi-label predicted classes are derived again from the scores, so a changed threshold applies
        to predictions stored (or reused for identical content) before the change.
        """
        image = doc.get("image") or {}
        size = (int(image["width"]), int(image["height"])) if image.get("width") is not None else None
        return cls.from_response(
            doc, image_path=doc.get("image_path", ""), image_size=size, multi_label_threshold=multi_label_threshold
        )


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

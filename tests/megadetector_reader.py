"""A reader of MegaDetector batch output, written from the format's documentation only.

Source: agentmorris/MegaDetector, megadetector-output-format.md (commit 136e1e38b8231cfb2f479089aaa5bc729806187e,
2026-08-18; permanent link https://lila.science/megadetector-output-format). Every check below is a sentence of
that document; nothing here is shaped after rfwatch's writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FormatViolation(AssertionError):
    pass


@dataclass
class Detection:
    category: str
    conf: float
    bbox: list[float]
    classifications: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Image:
    file: str
    detections: list[Detection] | None
    failure: str | None


@dataclass
class BatchOutput:
    format_version: str
    detection_categories: dict[str, str]
    classification_categories: dict[str, str]
    classification_category_descriptions: dict[str, str]
    images: list[Image]

    def classification_name(self, category_id: str) -> str:
        return self.classification_categories[category_id]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise FormatViolation(what)


def _category_ids(mapping: Any, key: str) -> dict[str, str]:
    _check(isinstance(mapping, dict), f"{key} must be a dictionary")
    for cid, name in mapping.items():
        # "category IDs must be non-negative string-formatted ints"
        _check(isinstance(cid, str) and cid.isdigit(), f"{key}: id {cid!r} is not a non-negative string-formatted int")
        # "names don't have to be unique, but they can't be blank"
        _check(isinstance(name, str) and name.strip() != "", f"{key}: the name of {cid} is blank")
    return dict(mapping)


def read_batch_output(path: Path) -> BatchOutput:
    doc = json.loads(path.read_text(encoding="utf-8"))
    info = doc.get("info")
    _check(isinstance(info, dict), '"info" is required')
    version = info.get("format_version")
    # "Required, must be a string-formatted float"
    _check(isinstance(version, str), "info.format_version must be a string")
    float(version)
    _check("detection_categories" in doc, "detection_categories is required")
    detection_categories = _category_ids(doc["detection_categories"], "detection_categories")
    classification_categories = (
        _category_ids(doc["classification_categories"], "classification_categories")
        if "classification_categories" in doc
        else {}
    )
    descriptions = doc.get("classification_category_descriptions") or {}
    if descriptions:
        # "must be the same set of IDs used in classification_categories"
        _check(set(descriptions) == set(classification_categories), "description ids differ from the categories'")
    _check(isinstance(doc.get("images"), list), 'the "images" array is required')
    images = []
    for n, item in enumerate(doc["images"]):
        where = f"images[{n}]"
        _check(isinstance(item.get("file"), str) and item["file"], f"{where}: file is required")
        failure = item.get("failure")
        raw = item.get("detections")
        if failure is None:
            # "detections should be present for any image that was successfully processed"
            _check(isinstance(raw, list), f"{where}: a processed image needs a detections list")
        else:
            _check(isinstance(failure, str), f"{where}: failure must be a string")
            _check(raw != [], f"{where}: a failed image must not have an empty detections list")
        detections = None
        if isinstance(raw, list):
            detections = []
            for d in raw:
                _check(isinstance(d.get("category"), str), f"{where}: a detection's category must be a string id")
                _check(isinstance(d.get("conf"), (int, float)), f"{where}: a detection needs conf")
                bbox = d.get("bbox")
                # [x_min, y_min, width_of_box, height_of_box], relative to the image
                _check(
                    isinstance(bbox, list) and len(bbox) == 4 and all(0 <= v <= 1 for v in bbox),
                    f"{where}: bbox must be 4 relative numbers",
                )
                _check(
                    bbox[0] + bbox[2] <= 1 + 1e-9 and bbox[1] + bbox[3] <= 1 + 1e-9, f"{where}: bbox leaves the image"
                )
                pairs = [tuple(p) for p in d.get("classifications", [])]
                for cid, conf in pairs:
                    _check(cid in classification_categories, f"{where}: classification {cid!r} is not a category")
                    _check(0 <= conf <= 1, f"{where}: classification confidence out of range")
                # "They must be listed in descending order by confidence."
                confs = [c for _, c in pairs]
                _check(confs == sorted(confs, reverse=True), f"{where}: classifications not in descending order")
                detections.append(Detection(d["category"], float(d["conf"]), bbox, pairs))
        images.append(Image(item["file"], detections, failure))
    return BatchOutput(version, detection_categories, classification_categories, descriptions, images)

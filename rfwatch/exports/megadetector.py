"""MegaDetector batch output (format version 1.6), which Timelapse and AddaxAI import.

The format as documented in agentmorris/MegaDetector, megadetector-output-format.md (commit 136e1e38, 2026-08):
``info.format_version`` (a string-formatted float, required), ``detection_categories`` (required; non-negative
string-formatted int ids; "0" is informally reserved for empty), optional ``classification_categories``, and
``images``: each with ``file`` and ``detections``, a detection being ``category``, ``conf``, ``bbox`` ([x_min,
y_min, width, height], relative) and optional ``classifications`` (``[category id, confidence]`` pairs in
descending order of confidence).

rfwatch classifies whole images, so each file has one whole-image detection (bbox 0,0,1,1) of category "1"
("animal", the name downstream tools expect) whose conf is the confidence of the class that stands, carrying
every class the model scored. A file whose class is one of the empty classes, or that has no class (nothing
passed the confidence threshold: the format has no "unknown"), has no detection (the format's way
of saying "nothing there": an empty list, conf 0). A person's label in review is the only classification, with
confidence 1.0. ``file`` is the path relative to the named root, prefixed by the root's name (as in Camtrap DP).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from rfwatch.exports.camtrap_dp import file_path
from rfwatch.exports.records import PERSON, FileRecord
from rfwatch.exports.settings import ExportSettings
from rfwatch.files.whole import replaced

__all__ = ["write_megadetector", "FORMAT_VERSION"]

FORMAT_VERSION = "1.6"
DETECTION_CATEGORIES = {"1": "animal"}


def megadetector_document(records: list[FileRecord], settings: ExportSettings) -> dict[str, Any]:
    classes: list[str] = []
    for r in records:
        for name in [r.label, *(n for n, _ in r.scores)]:
            if name and name not in classes:
                classes.append(name)
    ids = {name: str(n + 1) for n, name in enumerate(classes)}  # "0" left free: informally "empty"
    images = []
    for r in records:
        if r.label in settings.empty or (not r.label and r.decided_by != PERSON):
            images.append({"file": file_path(r), "detections": []})
            continue
        if r.decided_by == PERSON:
            conf = 1.0
            pairs = [[ids[r.label], 1.0]] if r.label else []
        else:
            conf = r.confidence or 0.0
            pairs = [[ids[n], round(c, 6)] for n, c in sorted(r.scores, key=lambda s: -s[1])]
        detection: dict[str, Any] = {"category": "1", "conf": round(conf, 6), "bbox": [0.0, 0.0, 1.0, 1.0]}
        if pairs:
            detection["classifications"] = pairs
        images.append({"file": file_path(r), "detections": [detection]})
    models = sorted({r.model for r in records})
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    doc: dict[str, Any] = {
        "info": {
            "format_version": FORMAT_VERSION,
            "detector": "rfwatch whole-image classification",
            "detection_completion_time": now,
            "classifier": ", ".join(models),
            "classification_completion_time": now,
        },
        "detection_categories": DETECTION_CATEGORIES,
        "classification_categories": {v: k for k, v in ids.items()},
        "images": images,
    }
    descriptions = {ids[c]: settings.taxa[c].scientific_name for c in classes if c in settings.taxa}
    if descriptions:
        # The format asks for the same ids as classification_categories: a class with no scientific name gets its own.
        doc["classification_category_descriptions"] = {i: descriptions.get(i, c) for c, i in ids.items()}
    return doc


def write_megadetector(records: list[FileRecord], settings: ExportSettings, out: Path) -> dict[str, int]:
    """Write the JSON file ``out``; return counts."""
    doc = megadetector_document(records, settings)
    with replaced(out) as f:
        f.write(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return {"images": len(doc["images"]), "detections": sum(len(i["detections"]) for i in doc["images"])}

"""Camtrap DP 1.0 (TDWG's Camera Trap Data Package): datapackage.json, deployments.csv, media.csv, observations.csv.

Field names, types and required values follow the 1.0 profile and table schemas (tdwg/camtrap-dp at tag 1.0:
camtrap-dp-profile.json, deployments-, media- and observations-table-schema.json). One observation per event
(a sequence) or, for files without one, per file (media level). What the standard requires and rfwatch cannot
know comes from ``export:`` in the config; a required value nobody gave is a ConfigError naming the key, never
made up.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import mimetypes
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rfwatch import __version__
from rfwatch.config import ConfigError
from rfwatch.crashpoints import crash_point
from rfwatch.exports.events import Event, group_events
from rfwatch.exports.records import PERSON, FileRecord
from rfwatch.exports.settings import (
    CAPTURE_METHODS,
    DEPLOYMENT_COLUMNS,
    SAMPLING_DESIGNS,
    Deployment,
    ExportSettings,
)
from rfwatch.files.place import fsync_dir
from rfwatch.files.whole import replaced

__all__ = ["write_camtrap_dp", "PROFILE_URL", "SCHEMA_URLS"]

log = logging.getLogger(__name__)

BASE_URL = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/"
PROFILE_URL = BASE_URL + "camtrap-dp-profile.json"
TABLES = ("deployments", "media", "observations")
SCHEMA_URLS = {t: f"{BASE_URL}{t}-table-schema.json" for t in TABLES}

MEDIA_COLUMNS = [
    "mediaID",
    "deploymentID",
    "captureMethod",
    "timestamp",
    "filePath",
    "filePublic",
    "fileName",
    "fileMediatype",
    "exifData",
    "favorite",
    "mediaComments",
]
OBSERVATION_COLUMNS = [
    "observationID",
    "deploymentID",
    "mediaID",
    "eventID",
    "eventStart",
    "eventEnd",
    "observationLevel",
    "observationType",
    "cameraSetupType",
    "scientificName",
    "count",
    "lifeStage",
    "sex",
    "behavior",
    "individualID",
    "individualPositionRadius",
    "individualPositionAngle",
    "individualSpeed",
    "bboxX",
    "bboxY",
    "bboxWidth",
    "bboxHeight",
    "classificationMethod",
    "classifiedBy",
    "classificationTimestamp",
    "classificationProbability",
    "observationTags",
    "observationComments",
]


def _time(when: dt.datetime) -> str:
    return when.isoformat(timespec="seconds")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return _time(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _write_csv(path: Path, columns: list[str], rows: Iterable[dict[str, Any]]) -> None:
    with replaced(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([_cell(row.get(c)) for c in columns])


def media_id(record: FileRecord) -> str:
    return f"file-{record.file_id}"


def file_path(record: FileRecord) -> str:
    """Relative, as the media schema requires (no leading /, ., ~ and no ..): ``<root name>/<path below it>``."""
    if record.root:
        return f"{record.root}/{record.rel}"
    return record.rel.lstrip("/")


class _Deployments:
    """Each file's deployment, and each deployment's required values (from the config, else from its files)."""

    def __init__(self, settings: ExportSettings, records: list[FileRecord]):
        self.of: dict[int, Deployment] = {r.file_id: settings.deployment_for(r.source) for r in records}
        self.files: dict[str, list[FileRecord]] = {}
        self.by_id: dict[str, Deployment] = {}
        for r in records:
            d = self.of[r.file_id]
            self.by_id[d.id] = d
            self.files.setdefault(d.id, []).append(r)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for did, d in self.by_id.items():
            files = self.files[did]
            key = f"export.deployments.{did}"
            lat, lon = d.latitude, d.longitude
            if lat is None or lon is None:
                gps = next((f.gps for f in files if f.gps is not None), None)
                if gps is None:
                    missing = "latitude" if lat is None else "longitude"
                    raise ConfigError(
                        f"{key}.{missing}: required by Camtrap DP (deployments.{missing}) and none of the "
                        f"deployment's {len(files)} file(s) has EXIF GPS coordinates (first: {files[0].path})"
                    )
                lat, lon = gps if lat is None and lon is None else (lat or gps[0], lon or gps[1])
            out.append(
                {
                    **d.extra,
                    "deploymentID": did,
                    "latitude": round(lat, 6),
                    "longitude": round(lon, 6),
                    "deploymentStart": d.start or min(f.captured for f in files),
                    "deploymentEnd": d.end or max(f.captured for f in files),
                }
            )
        return out


def _observation_type(label: str, decided_by: str, settings: ExportSettings) -> tuple[str, str | None]:
    """(observationType, scientificName) of a label."""
    if label in settings.empty:
        return "blank", None
    if not label:
        # No class: a person rejected the model's answer (unknown), or no class passed the confidence threshold.
        return ("unknown" if decided_by == PERSON else "unclassified"), None
    taxon = settings.taxa.get(label)
    if taxon is not None:
        return settings.observation_types.get(label, "animal"), taxon.scientific_name
    return settings.observation_types.get(label, "unknown"), None


def _observation(event: Event, deployment: str, settings: ExportSettings) -> dict[str, Any]:
    kind, scientific = _observation_type(event.label, event.decided_by, settings)
    media_level = not event.is_sequence
    last = max(event.files, key=lambda f: f.decided_at)
    human = event.decided_by == PERSON
    return {
        "observationID": f"obs-{event.id}",
        "deploymentID": deployment,
        "mediaID": media_id(event.files[0]) if media_level else None,
        "eventID": event.id,
        "eventStart": event.start,
        "eventEnd": event.end,
        "observationLevel": "media" if media_level else "event",
        "observationType": kind,
        "scientificName": scientific,
        "classificationMethod": "human" if human else "machine",
        "classifiedBy": (event.person or "review page") if human else f"Roboflow model {last.model} (rfwatch)",
        "classificationTimestamp": dt.datetime.fromtimestamp(last.decided_at, dt.timezone.utc),
        "classificationProbability": None if human or event.confidence is None else round(event.confidence, 6),
        "observationTags": f"class:{event.label}" if event.label else None,
    }


def _spatial(rows: list[dict[str, Any]]) -> dict[str, Any]:
    lats = [r["latitude"] for r in rows]
    lons = [r["longitude"] for r in rows]
    if len(set(zip(lats, lons))) == 1:
        return {"type": "Point", "coordinates": [lons[0], lats[0]]}
    w, s, e, n = min(lons), min(lats), max(lons), max(lats)
    return {
        "type": "Polygon",
        "bbox": [w, s, e, n],
        "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
    }


def _project(settings: ExportSettings, levels: list[str]) -> dict[str, Any]:
    p = dict(settings.project)
    for key in ("title", "samplingDesign", "captureMethod"):
        if not p.get(key):
            raise ConfigError(f"export.project.{key}: required by Camtrap DP (project.{key}); rfwatch cannot know it")
    if p["samplingDesign"] not in SAMPLING_DESIGNS:
        raise ConfigError(
            f"export.project.samplingDesign: expected one of {', '.join(SAMPLING_DESIGNS)}, got {p['samplingDesign']!r}"
        )
    methods = [p["captureMethod"]] if isinstance(p["captureMethod"], str) else p["captureMethod"]
    if not isinstance(methods, list) or not methods or not all(m in CAPTURE_METHODS for m in methods):
        raise ConfigError(f"export.project.captureMethod: expected a list of {', '.join(CAPTURE_METHODS)}")
    p["captureMethod"] = methods
    # rfwatch identifies no individual animals (its observations carry no individualID): false unless told.
    p.setdefault("individualAnimals", False)
    p["observationLevel"] = levels
    return p


def write_camtrap_dp(records: list[FileRecord], settings: ExportSettings, out: Path) -> dict[str, int]:
    """Write the package into the folder ``out`` (created); return counts of what it holds."""
    if not settings.contributors:
        raise ConfigError("export.contributors: required by Camtrap DP (contributors): at least one, with a title")
    deployments = _Deployments(settings, records)
    deployment_rows = deployments.rows()
    events = group_events(records)
    levels = sorted({"event" if e.is_sequence else "media" for e in events}) or ["media"]
    project = _project(settings, levels)
    unmapped = sorted(
        {e.label for e in events if e.label and e.label not in settings.empty and e.label not in settings.taxa}
        - set(settings.observation_types)
    )
    if unmapped:
        log.warning(
            "classes with no scientific name (export.taxa) are exported as observationType unknown: %s",
            ", ".join(unmapped),
        )
    media_rows = [
        {
            "mediaID": media_id(r),
            "deploymentID": deployments.of[r.file_id].id,
            "captureMethod": project["captureMethod"][0] if len(project["captureMethod"]) == 1 else None,
            "timestamp": r.captured,
            "filePath": file_path(r),
            "filePublic": False,
            "fileName": r.path.name,
            "fileMediatype": mimetypes.guess_type(r.path.name)[0] or "image/jpeg",
        }
        for r in records
    ]
    observation_rows = [_observation(e, deployments.of[e.files[0].file_id].id, settings) for e in events]
    if not deployment_rows:
        raise ConfigError("rfwatch export: no classified file in that time window: nothing to export")
    used = sorted({e.label for e in events if e.label in settings.taxa})
    starts = [r["deploymentStart"] for r in deployment_rows]
    ends = [r["deploymentEnd"] for r in deployment_rows]
    package = {
        "resources": [
            {
                "name": t,
                "path": f"{t}.csv",
                "profile": "tabular-data-resource",
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "schema": SCHEMA_URLS[t],
            }
            for t in TABLES
        ],
        "profile": PROFILE_URL,
        "name": "rfwatch-export",
        "id": str(uuid.uuid4()),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "title": settings.title or project["title"],
        "contributors": list(settings.contributors),
        "sources": [{"title": "rfwatch", "version": __version__}],
        "project": project,
        "spatial": _spatial(deployment_rows),
        "temporal": {"start": min(starts).date().isoformat(), "end": max(ends).date().isoformat()},
        "taxonomic": [{"scientificName": settings.taxa[c].scientific_name, **settings.taxa[c].extra} for c in used],
    }
    out.mkdir(parents=True, exist_ok=True)
    # A package whose datapackage.json exists is whole: an earlier export's goes first (the tables below are each
    # replaced whole, but not all at once), and the new one comes last.
    descriptor = out / "datapackage.json"
    if descriptor.exists():
        descriptor.unlink()
        fsync_dir(out)
    _write_csv(out / "deployments.csv", list(DEPLOYMENT_COLUMNS), deployment_rows)
    _write_csv(out / "media.csv", MEDIA_COLUMNS, media_rows)
    crash_point("export.tables_written")
    _write_csv(out / "observations.csv", OBSERVATION_COLUMNS, observation_rows)
    with replaced(descriptor) as f:
        f.write(json.dumps(package, indent=2, ensure_ascii=False) + "\n")
    return {"deployments": len(deployment_rows), "media": len(media_rows), "observations": len(observation_rows)}

"""``export:`` in the config: what an export needs that the journal cannot say.

Checked when ``rfwatch export`` runs (not when the daemon starts: a daemon has no use for it). Every problem is a
ConfigError naming the key.

```yaml
export:
  empty: [empty, blank]            # classes that mean "nothing there" (default: sequence.empty, else none)
  taxa:                            # class -> scientific name (or a mapping of Camtrap DP taxon fields)
    deer: Capreolus capreolus
    fox: {scientificName: Vulpes vulpes, taxonRank: species, vernacularNames: {eng: red fox}}
  observation_types: {person: human, car: vehicle}   # classes that are not animals
  timezone: "+01:00"               # for EXIF times without OffsetTimeOriginal (default: this host's zone)
  project: {title: ..., samplingDesign: targeted, captureMethod: [activityDetection]}
  contributors: [{title: Jane Doe, role: principalInvestigator}]
  deployments:
    CAM01: {path: inbox/CAM01, latitude: 50.85, longitude: 4.35, start: 2026-11-01T12:00:00+01:00}
```
"""

from __future__ import annotations

import datetime as dt
from dataclasses import field
from pathlib import Path
from typing import Any

from rfwatch.config import Config, ConfigError
from rfwatch.record import record

__all__ = ["ExportSettings", "Deployment", "Taxon", "export_settings"]

OBSERVATION_TYPES = ("animal", "human", "vehicle", "blank", "unknown", "unclassified")
SAMPLING_DESIGNS = ("simpleRandom", "systematicRandom", "clusteredRandom", "experimental", "targeted", "opportunistic")
CAPTURE_METHODS = ("activityDetection", "timeLapse")
_KEYS = {"empty", "taxa", "observation_types", "timezone", "project", "contributors", "deployments", "title"}
#: The deployments table of Camtrap DP 1.0, in its order (deployments-table-schema.json).
DEPLOYMENT_COLUMNS = (
    "deploymentID",
    "locationID",
    "locationName",
    "latitude",
    "longitude",
    "coordinateUncertainty",
    "deploymentStart",
    "deploymentEnd",
    "setupBy",
    "cameraID",
    "cameraModel",
    "cameraDelay",
    "cameraHeight",
    "cameraDepth",
    "cameraTilt",
    "cameraHeading",
    "detectionDistance",
    "timestampIssues",
    "baitUse",
    "featureType",
    "habitat",
    "deploymentGroups",
    "deploymentTags",
    "deploymentComments",
)
#: Those a config may give as they are (the others rfwatch fills in: ids, coordinates, start and end).
DEPLOYMENT_FIELDS = tuple(
    c
    for c in DEPLOYMENT_COLUMNS
    if c not in ("deploymentID", "latitude", "longitude", "deploymentStart", "deploymentEnd")
)


@record
class Taxon:
    scientific_name: str
    #: Other Camtrap DP taxonomic fields (taxonRank, vernacularNames, ...), as given.
    extra: dict[str, Any] = field(default_factory=dict)


@record
class Deployment:
    id: str
    #: Files found below this folder belong to it (None: files found in a folder of this name).
    path: Path | None = None
    latitude: float | None = None
    longitude: float | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@record
class ExportSettings:
    empty: frozenset[str] = frozenset()
    taxa: dict[str, Taxon] = field(default_factory=dict)
    observation_types: dict[str, str] = field(default_factory=dict)
    #: For capture times that carry no offset; None: this host's local time zone.
    timezone: dt.tzinfo | None = None
    title: str | None = None
    project: dict[str, Any] = field(default_factory=dict)
    contributors: tuple[dict[str, Any], ...] = ()
    deployments: tuple[Deployment, ...] = ()

    def deployment_for(self, source: Path) -> Deployment:
        """The deployment of a file found at ``source``: the configured one whose folder holds it, else the one
        named like the folder it was found in, else a deployment of that name that the config says nothing of."""
        for d in self.deployments:
            if d.path is not None and source.is_relative_to(d.path):
                return d
        name = source.parent.name or "deployment"
        for d in self.deployments:
            if d.path is None and d.id == name:
                return d
        return Deployment(name)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{key}: expected a number between {low:g} and {high:g}, got {value!r}")
    return float(value)


def parse_timezone(value: Any, key: str) -> dt.tzinfo:
    """``+01:00``, ``-0500``, ``UTC`` or an IANA name such as ``Europe/Brussels``."""
    text = _text(value, key).strip()
    if text.upper() in ("UTC", "Z"):
        return dt.timezone.utc
    if text[:1] in "+-":
        try:
            return dt.datetime.strptime(text.replace(":", ""), "%z").tzinfo  # type: ignore[return-value]
        except ValueError:
            pass
    else:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ConfigError(f"{key}: expected an offset such as +01:00, UTC or a zone such as Europe/Brussels, got {text!r}")


def _when(value: Any, key: str, tz: dt.tzinfo | None) -> dt.datetime:
    if isinstance(value, dt.datetime):  # YAML reads an unquoted timestamp itself
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime.combine(value, dt.time())
    else:
        try:
            when = dt.datetime.fromisoformat(_text(value, key).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a date/time such as 2026-11-01T12:00:00+01:00, got {value!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz or dt.datetime.now().astimezone().tzinfo)


def _deployment(name: str, raw: Any, key: str, config: Config, tz: dt.tzinfo | None) -> Deployment:
    raw = _mapping(raw, key)
    known = {"path", "latitude", "longitude", "start", "end", *DEPLOYMENT_FIELDS}
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (expected one of: {', '.join(sorted(known))})")
    path = raw.get("path")
    return Deployment(
        id=name,
        path=config.resolve(_text(path, f"{key}.path")).resolve() if path is not None else None,
        latitude=_number(raw["latitude"], f"{key}.latitude", -90, 90) if raw.get("latitude") is not None else None,
        longitude=_number(raw["longitude"], f"{key}.longitude", -180, 180)
        if raw.get("longitude") is not None
        else None,
        start=_when(raw["start"], f"{key}.start", tz) if raw.get("start") is not None else None,
        end=_when(raw["end"], f"{key}.end", tz) if raw.get("end") is not None else None,
        extra={k: v for k, v in raw.items() if k in DEPLOYMENT_FIELDS and v is not None},
    )


def export_settings(config: Config) -> ExportSettings:
    raw = _mapping(config.export, "export")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ConfigError(f"export.{unknown[0]}: unknown key (expected one of: {', '.join(sorted(_KEYS))})")
    empty = raw.get("empty")
    if empty is None:
        # The sequences' own empty classes (sequence.empty), when the config has them.
        empty = list(getattr(getattr(config, "sequence", None), "empty", None) or ())
    if isinstance(empty, str):
        empty = [empty]
    if not isinstance(empty, list) or not all(isinstance(c, str) for c in empty):
        raise ConfigError(f"export.empty: expected a class or a list of classes, got {empty!r}")
    taxa: dict[str, Taxon] = {}
    for cls, value in _mapping(raw.get("taxa"), "export.taxa").items():
        key = f"export.taxa.{cls}"
        if isinstance(value, dict):
            extra = dict(value)
            name = _text(extra.pop("scientificName", None), f"{key}.scientificName")
            taxa[str(cls)] = Taxon(name, extra)
        else:
            taxa[str(cls)] = Taxon(_text(value, key))
    types: dict[str, str] = {}
    for cls, value in _mapping(raw.get("observation_types"), "export.observation_types").items():
        if value not in OBSERVATION_TYPES:
            raise ConfigError(
                f"export.observation_types.{cls}: expected one of {', '.join(OBSERVATION_TYPES)}, got {value!r}"
            )
        types[str(cls)] = value
    tz = parse_timezone(raw["timezone"], "export.timezone") if raw.get("timezone") is not None else None
    project = _mapping(raw.get("project"), "export.project")
    contributors = raw.get("contributors") or []
    if not isinstance(contributors, list) or not all(isinstance(c, dict) and c.get("title") for c in contributors):
        raise ConfigError("export.contributors: expected a list of mappings, each with a title (a person's name)")
    deployments = tuple(
        _deployment(str(name), value, f"export.deployments.{name}", config, tz)
        for name, value in _mapping(raw.get("deployments"), "export.deployments").items()
    )
    title = raw.get("title")
    return ExportSettings(
        empty=frozenset(empty),
        taxa=taxa,
        observation_types=types,
        timezone=tz,
        title=_text(title, "export.title") if title is not None else None,
        project=project,
        contributors=tuple(contributors),
        deployments=deployments,
    )

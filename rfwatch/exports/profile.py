"""Validating a Camtrap DP 1.0 package with frictionless, offline: always against rfwatch's own schemas (shipped),
and also against the official 1.0 profile where a folder holds it (official_profile.py).

rfwatch's schemas (``rfwatch/data/camtrap-dp/camtrap-dp-1.0.rfwatch.json``) are rfwatch's transcription of
Camtrap DP 1.0's requirements, not the official files: a JSON Schema for datapackage.json and a Table Schema for
each of the three tables. frictionless validates the tables against those Table Schemas (types, required values,
enums, patterns, bounds, primary and foreign keys); jsonschema validates the descriptor. tests/test_exports.py
compares the transcription with the official files field by field wherever they are present.

Needs the ``camtrap`` extra (``pip install 'rfwatch[camtrap]'``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from rfwatch.exports.official_profile import ProfileMissing, check_official, official_dir, offline_session

__all__ = [
    "validate_package",
    "check_package",
    "check_official",
    "official_dir",
    "rfwatch_schemas",
    "SCHEMAS_FILE",
    "TABLES",
    "ProfileMissing",
]

SCHEMAS_FILE = Path(__file__).resolve().parents[1] / "data" / "camtrap-dp" / "camtrap-dp-1.0.rfwatch.json"
TABLES = ("deployments", "media", "observations")


@cache
def rfwatch_schemas() -> dict[str, Any]:
    """rfwatch's transcription: ``{"package": <JSON Schema>, "tables": {name: <Table Schema>}, ...}``."""
    return json.loads(SCHEMAS_FILE.read_text(encoding="utf-8"))


def _where(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top)"


def _descriptor_problems(package: Any, name: str) -> list[str]:
    from jsonschema import Draft202012Validator, FormatChecker

    validator = Draft202012Validator(rfwatch_schemas()["package"], format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(package), key=lambda e: list(e.absolute_path))
    problems = [f"{name}: {_where(e.absolute_path)}: {e.message}" for e in errors]
    if isinstance(package, dict) and isinstance(package.get("resources"), list):
        names = {r.get("name") for r in package["resources"] if isinstance(r, dict)}
        problems += [
            f"{name}: resources: no {t!r} resource (Camtrap DP has three tables)" for t in TABLES if t not in names
        ]
    return problems


def check_package(descriptor: Path) -> list[str]:
    """Every problem in the package (descriptor and three tables) against rfwatch's schemas, as ``"<where>:
    <what>"`` lines; [] for a valid package. Never reaches for the network: any URL frictionless would fetch (a
    resource that is not one of the three tables, with a schema by URL) is refused and reported."""
    from frictionless import FrictionlessException, Package, system

    descriptor = Path(descriptor).resolve()
    try:
        package = json.loads(descriptor.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{descriptor}: not a readable JSON descriptor ({exc})"]
    problems = _descriptor_problems(package, descriptor.name)
    if problems:
        return problems  # the tables are checked once the descriptor holds together
    # The three tables' schemas are named by URL (the standard requires it); rfwatch's stand in for them. The
    # profile URL is checked above; frictionless would fetch it, so it sees the plain Data Package profile instead.
    package = {**package, "profile": "data-package"}
    tables = rfwatch_schemas()["tables"]
    package["resources"] = [
        {**r, "schema": tables[r["name"]]} if r.get("name") in tables else r for r in package["resources"]
    ]
    with system.use_context(http_session=offline_session({}), trusted=False):
        try:
            report = Package(package, basepath=str(descriptor.parent)).validate()
        except FrictionlessException as exc:
            return [f"{descriptor.name}: {e.message}" for e in (exc.reasons or [exc.error])]
    for task in report.tasks:
        problems += [f"{task.name or descriptor.name}: {err.message}" for err in task.errors]
    problems += [f"{descriptor.name}: {err.message}" for err in report.errors]
    return problems


def validate_package(descriptor: Path, official: Path | None = None) -> list[str]:
    """check_package, then (where the official files are: ``official``, else official_dir()) check_official,
    whose problems start with ``official 1.0 profile:``. [] for a package both find valid."""
    problems = check_package(descriptor)
    folder = official or official_dir()
    if folder is not None:
        problems += [f"official 1.0 profile: {p}" for p in check_official(descriptor, folder)]
    return problems

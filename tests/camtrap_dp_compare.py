"""Differences between rfwatch's transcription of Camtrap DP 1.0 (rfwatch/data/camtrap-dp/) and the official files
(tdwg/camtrap-dp at tag 1.0, with Frictionless's data-package.json), as readable lines; [] when they agree.

Tables: the same fields in the same order, and for each field every key but documentation (description, example,
unit, skos:*) equal, constraints compared with their defaults (required and unique false); missingValues,
primaryKey and foreignKeys equal. The descriptor: every constraint the profile states (type, enum, required,
pattern, format, bounds, ...) at the same place in rfwatch's JSON Schema, and nothing in rfwatch's that neither the
profile nor data-package.json states, except what is listed below with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCUMENTATION = {"description", "example", "unit", "title", "$comment", "$schema", "$defs", "default"}
TABLE_DEFAULTS = {"required": False, "unique": False}
#: Official constraints rfwatch does not transcribe, and why.
OMITTED = {
    # rfwatch writes no relatedIdentifiers: the DataCite 4.4 vocabularies are left out
    (("relatedIdentifiers", "[]", "relationType"), "enum"),
    (("relatedIdentifiers", "[]", "resourceTypeGeneral"), "enum"),
    (("relatedIdentifiers", "[]", "relatedIdentifierType"), "enum"),
}
#: Constraints of rfwatch's that neither official file states, and why.
ADDED_PATHS = {
    ("spatial",): "a GeoJSON object's shape stands in for the GeoJSON schema the profile refers to",
}
ADDED = {
    ((("profile",), "pattern")): "format uri is not checked by jsonschema without rfc3987: a scheme is required",
}


def _doc(key: str) -> bool:
    return key in DOCUMENTATION or key.startswith("skos:")


def _value(key: str, value: Any) -> str:
    if key in ("required", "enum") and isinstance(value, list):
        value = sorted(value, key=str)  # order carries no meaning here
    return json.dumps(value, sort_keys=True)


def schema_facts(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[tuple[str, ...], str], str]:
    """{(place, keyword): value} for every constraint in a JSON Schema; allOf merged; $ref, oneOf and if/then
    left to the caller (they are structure: resources and spatial are compared on their own)."""
    out: dict[tuple[tuple[str, ...], str], str] = {}
    for key, value in schema.items():
        if key == "properties":
            for name, sub in value.items():
                out.update(schema_facts(sub, (*path, name)))
        elif key == "patternProperties":
            for pattern, sub in value.items():
                out.update(schema_facts(sub, (*path, f"/{pattern}/")))
        elif key == "items":
            out.update(schema_facts(value, (*path, "[]")))
        elif key == "allOf":
            for sub in value:
                for fact, v in schema_facts(sub, path).items():
                    out[fact] = v if fact not in out else out[fact] + " & " + v
        elif _doc(key) or key in ("$ref", "oneOf", "if", "then", "else"):
            continue
        else:
            out[(path, key)] = _value(key, value)
    return out


def table_differences(name: str, mine: dict[str, Any], official: dict[str, Any]) -> list[str]:
    out = []
    names, official_names = [f["name"] for f in mine["fields"]], [f["name"] for f in official["fields"]]
    if names != official_names:
        out.append(f"{name}: fields {names} != official {official_names}")
    fields = {f["name"]: f for f in mine["fields"]}
    for theirs in official["fields"]:
        ours = fields.get(theirs["name"], {})
        where = f"{name}.{theirs['name']}"
        for key in sorted((set(ours) | set(theirs)) - {"name", "constraints"}):
            if not _doc(key) and ours.get(key) != theirs.get(key):
                out.append(f"{where}: {key} {ours.get(key)!r} != official {theirs.get(key)!r}")
        ours_c, theirs_c = ours.get("constraints", {}), theirs.get("constraints", {})
        for key in sorted(set(ours_c) | set(theirs_c)):
            a, b = ours_c.get(key, TABLE_DEFAULTS.get(key)), theirs_c.get(key, TABLE_DEFAULTS.get(key))
            if a != b:
                out.append(f"{where}: constraints.{key} {a!r} != official {b!r}")

    def keys(value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [keys(v) if isinstance(v, (dict, list)) and not isinstance(v, str) else v for v in value]
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        return value

    for key in sorted((set(mine) | set(official)) - {"fields", "name"}):
        if _doc(key):
            continue
        if keys(mine.get(key)) != keys(official.get(key)):
            out.append(f"{name}: {key} {mine.get(key)!r} != official {official.get(key)!r}")
    return out


def _resources(mine: dict[str, Any], profile_part: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """The resources rule: three named tables, each a tabular data resource naming a 1.0 table schema by URI."""
    theirs, ours = profile_part["properties"]["resources"], mine["properties"]["resources"]
    table, _other = theirs["items"]["oneOf"]
    version = profile["$defs"]["version"]["pattern"]
    then = ours["items"]["then"]
    pairs = [
        ("minItems", ours.get("minItems"), theirs.get("minItems")),
        ("table names", ours["items"]["if"]["properties"]["name"]["enum"], table["properties"]["name"]["enum"]),
        ("required", sorted(then["required"]), sorted(table["required"])),
        ("profile", then["properties"]["profile"]["enum"], table["properties"]["profile"]["enum"]),
        ("schema version", then["properties"]["schema"]["allOf"][0]["pattern"], version),
        ("schema format", then["properties"]["schema"]["format"], table["properties"]["schema"]["allOf"][1]["format"]),
    ]
    return [f"resources: {what} {a!r} != official {b!r}" for what, a, b in pairs if a != b]


def package_differences(mine: dict[str, Any], profile: dict[str, Any], data_package: dict[str, Any]) -> list[str]:
    out = []
    part = profile["allOf"][1]
    required = set(part["required"]) | set(data_package["required"])
    if set(mine["required"]) != required:
        out.append(f"required {sorted(mine['required'])} != official {sorted(required)}")
    out += _resources(mine, part, profile)

    def without_resources(facts):
        return {k: v for k, v in facts.items() if k[0][:1] != ("resources",) and k != ((), "required")}

    ours = without_resources(schema_facts(mine))
    theirs = without_resources(schema_facts(profile))
    basics = without_resources(schema_facts(data_package))
    for fact, value in sorted(theirs.items()):
        if fact not in OMITTED and ours.get(fact) != value:
            out.append(f"{'.'.join(fact[0]) or '(top)'}: {fact[1]} {ours.get(fact)} != official {value}")
    for fact, value in sorted(ours.items()):
        if fact in theirs or basics.get(fact) == value or fact in ADDED or fact[0][:1] in ADDED_PATHS:
            continue
        out.append(f"{'.'.join(fact[0]) or '(top)'}: {fact[1]} {value} is in neither official file")
    return out


def differences(mine: dict[str, Any], official: Path) -> list[str]:
    """All differences between rfwatch's transcription (as loaded) and the official files in ``official``."""

    def load(name: str) -> dict[str, Any]:
        return json.loads((official / name).read_text(encoding="utf-8"))

    out = package_differences(mine["package"], load("camtrap-dp-profile.json"), load("data-package.json"))
    for table, schema in mine["tables"].items():
        out += table_differences(table, schema, load(f"{table}-table-schema.json"))
    if sorted(mine["tables"]) != ["deployments", "media", "observations"]:
        out.append(f"tables {sorted(mine['tables'])} != official ['deployments', 'media', 'observations']")
    return out

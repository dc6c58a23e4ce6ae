"""Validating a Camtrap DP package against the 1.0 profile with frictionless, offline.

The profile and the table schemas are named by URL in every package (the standard requires it), and the profile
refers to two more JSON Schemas by URL (Frictionless's data-package.json and schemastore's geojson.json).
frictionless fetches all of them with its HTTP session; here that session answers those URLs, and only those,
from local copies (package data: ``rfwatch/data/camtrap-dp/1.0/``, or a folder given), so a validation never
touches the network and fails clearly when a copy is missing.

Needs the ``camtrap`` extra (``pip install 'rfwatch[camtrap]'``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from rfwatch.exports.camtrap_dp import PROFILE_URL, SCHEMA_URLS

__all__ = ["validate_package", "schemas_dir", "LOCAL_FILES", "ProfileMissing"]

#: URL -> the local file that answers it.
LOCAL_FILES = {
    PROFILE_URL: "camtrap-dp-profile.json",
    **{url: f"{table}-table-schema.json" for table, url in SCHEMA_URLS.items()},
    "https://frictionlessdata.io/schemas/data-package.json": "data-package.json",
    "http://json.schemastore.org/geojson.json": "geojson.json",
}
#: Answered by the GeoJSON schema frictionless ships (frictionless/assets/profiles/geojson.json, self-contained)
#: when the folder has no geojson.json of its own: the profile only needs ``spatial`` to be GeoJSON.
_FRICTIONLESS_GEOJSON = "geojson.json"


class ProfileMissing(RuntimeError):
    """A local copy of the profile or of a schema it needs is not there."""


def schemas_dir() -> Path:
    """Where the copies are: ``$RFWATCH_CAMTRAP_DP_SCHEMAS`` if set, else rfwatch's package data."""
    env = os.environ.get("RFWATCH_CAMTRAP_DP_SCHEMAS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "data" / "camtrap-dp" / "1.0"


def fix_profile(body: bytes) -> bytes:
    """The 1.0 profile's one reference today's jsonschema refuses (``#$defs/version``, not a JSON pointer),
    corrected as Camtrap DP itself corrected it for 1.0.1 (tdwg/camtrap-dp commit ad13ce4, "Fix defs reference
    (required by latest jsonschema-py)"); nothing else of the profile changes."""
    return body.replace(b'"#$defs/version"', b'"#/$defs/version"')


def _local(folder: Path, name: str) -> Path:
    path = folder / name
    if name == _FRICTIONLESS_GEOJSON and not path.is_file():
        import frictionless

        path = Path(frictionless.__file__).parent / "assets" / "profiles" / "geojson.json"
    return path


def _offline_session(folder: Path):
    import requests
    from requests.adapters import BaseAdapter
    from urllib3 import HTTPResponse

    class LocalCopies(BaseAdapter):
        """Answers the known URLs from ``folder``; refuses every other request (no network at all)."""

        def send(self, request, **kwargs):  # type: ignore[override]
            url = request.url.split("#", 1)[0]
            name = LOCAL_FILES.get(url)
            if name is None:
                raise requests.ConnectionError(f"offline validation: {url} is not one of the profile's schemas")
            path = _local(folder, name)
            try:
                body = path.read_bytes()
            except OSError as exc:
                raise ProfileMissing(f"{path}: the local copy of {url} cannot be read ({exc.strerror})") from None
            if name == "camtrap-dp-profile.json":
                body = fix_profile(body)
            response = requests.Response()
            response.status_code = 200
            response.url = request.url
            response.request = request
            response.headers["Content-Type"] = "application/json"
            response.raw = HTTPResponse(body=io.BytesIO(body), preload_content=False, status=200)
            return response

        def close(self) -> None:
            pass

    session = requests.Session()
    adapter = LocalCopies()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def validate_package(descriptor: Path, folder: Path | None = None) -> list[str]:
    """Every problem frictionless finds in the package (its descriptor and its three tables), as
    ``"<where>: <what>"`` lines; [] for a valid package."""
    from frictionless import FrictionlessException, Package, system

    folder = folder or schemas_dir()
    missing = [name for name in LOCAL_FILES.values() if not _local(folder, name).is_file()]
    if missing:
        raise ProfileMissing(f"{folder}: no local copy of {', '.join(missing)} (the Camtrap DP 1.0 profile files)")
    descriptor = Path(descriptor).resolve()
    with system.use_context(http_session=_offline_session(folder), trusted=True):
        cwd = os.getcwd()
        os.chdir(descriptor.parent)  # frictionless reads resources relative to the working directory
        try:
            report = Package(str(descriptor)).validate()
        except FrictionlessException as exc:  # a descriptor frictionless cannot even read as a package
            return [f"{descriptor.name}: {e.message}" for e in (exc.reasons or [exc.error])]
        finally:
            os.chdir(cwd)
    problems = []
    for task in report.tasks:
        for err in task.errors:
            problems.append(f"{task.name or descriptor.name}: {err.message}")
    for err in report.errors:
        problems.append(f"{descriptor.name}: {err.message}")
    return problems

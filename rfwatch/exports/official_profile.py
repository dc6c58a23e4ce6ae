"""Validating a Camtrap DP package against the official 1.0 profile and table schemas, offline.

rfwatch ships no copy of them (they are tdwg/camtrap-dp's files; rfwatch ships its own transcription, see
profile.py). Where a folder holds them (``$RFWATCH_CAMTRAP_DP_SCHEMAS``, or ``shared/camtrap-dp/1.0`` beside the
repository: see ``official_dir``), profile.py validates against them as well.

The profile and the table schemas are named by URL in every package, and the profile refers to two more JSON
Schemas by URL (Frictionless's data-package.json and schemastore's geojson.json). frictionless fetches all of them
with its HTTP session; here that session answers those URLs, and only those, from the folder, so a validation never
touches the network and fails clearly when a file is missing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from rfwatch.exports.camtrap_dp import PROFILE_URL, SCHEMA_URLS

__all__ = ["check_official", "official_dir", "OFFICIAL_FILES", "ProfileMissing"]

#: URL -> the file that answers it.
OFFICIAL_FILES = {
    PROFILE_URL: "camtrap-dp-profile.json",
    **{url: f"{table}-table-schema.json" for table, url in SCHEMA_URLS.items()},
    "https://frictionlessdata.io/schemas/data-package.json": "data-package.json",
    "http://json.schemastore.org/geojson.json": "geojson.json",
}
#: Answered by the GeoJSON schema frictionless ships (frictionless/assets/profiles/geojson.json, self-contained)
#: when the folder has no geojson.json of its own: the profile only needs ``spatial`` to be GeoJSON.
_FRICTIONLESS_GEOJSON = "geojson.json"
_REPO = Path(__file__).resolve().parents[2]


class ProfileMissing(RuntimeError):
    """A file of the official profile is not in the folder given."""


def official_dir() -> Path | None:
    """The folder holding the official files, or None: ``$RFWATCH_CAMTRAP_DP_SCHEMAS`` if set (even when it holds
    nothing: then check_official says what is missing), else ``shared/camtrap-dp/1.0`` in the repository's parent
    or grandparent folder (``../shared`` of a checkout, ``../../shared`` of a worktree below it) if it has the
    profile."""
    env = os.environ.get("RFWATCH_CAMTRAP_DP_SCHEMAS")
    if env:
        return Path(env)
    for base in (_REPO.parent, _REPO.parent.parent):
        folder = base / "shared" / "camtrap-dp" / "1.0"
        if (folder / "camtrap-dp-profile.json").is_file():
            return folder
    return None


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


def offline_session(answers: dict[str, Path]):
    """A requests session for frictionless that answers the URLs in ``answers`` from those files and refuses every
    other request (no network at all)."""
    import requests
    from requests.adapters import BaseAdapter
    from urllib3 import HTTPResponse

    class LocalCopies(BaseAdapter):
        def send(self, request, **kwargs):  # type: ignore[override]
            url = request.url.split("#", 1)[0]
            path = answers.get(url)
            if path is None:
                raise requests.ConnectionError(f"offline validation: {url} is not fetched (no network, no local copy)")
            try:
                body = path.read_bytes()
            except OSError as exc:
                raise ProfileMissing(f"{path}: the local copy of {url} cannot be read ({exc.strerror})") from None
            if path.name == "camtrap-dp-profile.json":
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


def check_official(descriptor: Path, folder: Path) -> list[str]:
    """Every problem frictionless finds in the package (its descriptor and its three tables) against the official
    files in ``folder``, as ``"<where>: <what>"`` lines; [] for a valid package. ProfileMissing when one is not
    there."""
    from frictionless import FrictionlessException, Package, system

    missing = [name for name in OFFICIAL_FILES.values() if not _local(folder, name).is_file()]
    if missing:
        raise ProfileMissing(f"{folder}: no {', '.join(missing)} (the official Camtrap DP 1.0 profile files)")
    descriptor = Path(descriptor).resolve()
    answers = {url: _local(folder, name) for url, name in OFFICIAL_FILES.items()}
    with system.use_context(http_session=offline_session(answers), trusted=True):
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

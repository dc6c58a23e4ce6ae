"""A client for Roboflow's platform API (``https://api.roboflow.com``): the key, the model, uploads.

Routes, as roboflow-python uses them (roboflow/roboflow-python: roboflow/__init__.py,
roboflow/adapters/rfapi.py, tests/__init__.py) and as inference reads them (roboflow/inference:
inference/core/roboflow_api.py):

- ``GET /?api_key=KEY`` -> ``{"workspace": "<slug>", ...}``: the key is good, and whose it is; 401 if not;
- ``GET /{workspace}/{project}/{version}?api_key=`` -> the project (``type``, ``multilabel``, ``classes``) and
  its versions with their ``preprocessing`` (``resize``, ``static-crop``); 404 for an unknown workspace or
  project, and 500 for an unknown version (see rfwatch.roboflow.facts.version_document);
- ``POST /dataset/{project}/upload?api_key&name&split&batch&tag`` with the image base64 in the body
  -> ``{"success": true, "id"}`` or ``{"duplicate": true, "id"}`` (the same bytes are in the project already);
- ``POST /dataset/{project}/annotate/{id}?api_key&name=<x>.txt[&overwrite=true]`` with the class name as
  text/plain -> ``{"success": true}``. An image that has a label already: 409 (what roboflow-python's rfapi and
  inference expect) or 400 ``{"error": {"message": "Image was already annotated.", "type":
  "InvalidImageException", "hint": "...pass overwrite=true..."}}`` (roboflow-python#214, the real server, and
  roboflow-python's own test fixture); ``overwrite=true`` replaces the label. Right after an upload the route
  has answered 404 "Image not found in dataset." for minutes (luxonis/oak-examples#287).

Calls have short timeouts: rfwatch asks the platform only for facts it can do without (an air-gapped
self-hosted site never reaches it), and never holds up classification for it. They go over the standard library's
http.client (rfwatch/roboflow/transport.py says why, and what of the environment it reads), not requests.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from rfwatch.record import record
from rfwatch.redact import redact, register_secret
from rfwatch.roboflow.ids import DEFAULT_PLATFORM_URL
from rfwatch.roboflow.transport import Answer, Transport, TransportError

__all__ = [
    "DEFAULT_PLATFORM_URL",
    "PlatformClient",
    "PlatformError",
    "KeyRefused",
    "NotFound",
    "PlatformUnavailable",
    "Uploaded",
    "is_already_annotated",
    "platform_client",
]

log = logging.getLogger(__name__)


class PlatformError(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(redact(message))
        self.status = status


class KeyRefused(PlatformError):
    """401 (or 403): the platform does not accept the key."""


class NotFound(PlatformError):
    """404: no such workspace, project, version or image."""


class PlatformUnavailable(PlatformError):
    """No answer, a timeout or a 5xx: nothing is known either way."""


@record
class Uploaded:
    image_id: str
    duplicate: bool


@dataclass
class PlatformClient:
    api_key: str
    url: str = DEFAULT_PLATFORM_URL
    #: Facts are worth a short wait only; uploads may take longer (a 5 MB body on a slow link).
    timeout: float = 5.0
    upload_timeout: float = 120.0
    _transport: Transport = field(init=False, repr=False)

    def __post_init__(self) -> None:
        register_secret(self.api_key)
        self.url = self.url.rstrip("/")
        self._transport = Transport(self.url, "rfwatch/0.1")

    def __repr__(self) -> str:  # never the key
        return f"PlatformClient(url={redact(self.url)!r})"  # a password in it masked

    def close(self) -> None:
        self._transport.close()

    # --- facts ---------------------------------------------------------------------

    def workspace(self) -> str:
        """The slug of the key's workspace; KeyRefused if the key is not accepted."""
        doc = self._get("/")
        workspace = doc.get("workspace") if isinstance(doc, dict) else None
        if not workspace:
            raise PlatformError(f"{self.url}/: the answer names no workspace")
        return str(workspace)

    def version(self, workspace: str, project: str, version: str) -> dict[str, Any]:
        return self._get(f"/{workspace}/{project}/{version}")

    def project(self, workspace: str, project: str) -> dict[str, Any]:
        return self._get(f"/{workspace}/{project}")

    # --- uploads ---------------------------------------------------------------------

    def upload(
        self, project: str, image: bytes, name: str, split: str = "train", batch: str | None = None, tags: tuple = ()
    ) -> Uploaded:
        params: list[tuple[str, str]] = [("name", name), ("split", split)]
        if batch:
            params.append(("batch", batch))
        params += [("tag", t) for t in tags]
        doc = self._post(
            f"/dataset/{project}/upload",
            params,
            base64.b64encode(image),
            "application/x-www-form-urlencoded",
            self.upload_timeout,
        )
        image_id = doc.get("id") if isinstance(doc, dict) else None
        if not image_id or not (doc.get("success") or doc.get("duplicate")):
            raise PlatformError(f"upload to {project}: unexpected answer {str(doc)[:200]}")
        return Uploaded(str(image_id), bool(doc.get("duplicate")))

    def annotate(self, project: str, image_id: str, labels: list[str], overwrite: bool = False) -> str:
        """Label an uploaded image of a classification project: ``"annotated"`` or ``"already annotated"``.

        The label is the class name as a ``.txt`` annotation (inference's active learning posts the top class
        that way: inference/core/active_learning/post_processing.py ``encode_prediction``); several classes of a
        multi-label image are joined with commas, as inference's dataset-upload workflow block does. With
        ``overwrite`` the label replaces the one the image has (roboflow-python sends ``overwrite=true`` for
        classification projects). NotFound: the route does not know the image (yet: see the module's docstring).
        """
        params = [("name", f"{image_id}.txt")] + ([("overwrite", "true")] if overwrite else [])
        try:
            self._post(
                f"/dataset/{project}/annotate/{image_id}",
                params,
                ",".join(labels).encode("utf-8"),
                "text/plain",
                self.timeout * 4,
            )
        except PlatformError as exc:
            if is_already_annotated(exc):
                return "already annotated"
            raise
        return "annotated"

    # --- plumbing ----------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        return self._call("GET", path, [], None, None, self.timeout)

    def _post(self, path: str, params: list[tuple[str, str]], body: bytes, content_type: str, timeout: float) -> Any:
        return self._call("POST", path, params, body, content_type, timeout)

    def _call(
        self,
        method: str,
        path: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        content_type: str | None,
        timeout: float,
    ) -> Any:
        where = f"{self.url}{path}"
        try:
            resp = self._transport.request(
                method, path, [("api_key", self.api_key), *params], body, content_type, (min(timeout, 5.0), timeout)
            )
        except TransportError as exc:
            raise PlatformUnavailable(f"{where}: no answer ({exc})") from None
        if resp.status == 200:
            try:
                return json.loads(resp.body)
            except ValueError:
                raise PlatformUnavailable(f"{where}: the answer is not JSON", 200) from None
        message = f"{where}: HTTP {resp.status}: {_message(resp)}"
        if resp.status in (401, 403):
            raise KeyRefused(message, resp.status)
        if resp.status == 404:
            raise NotFound(message, 404)
        if resp.status >= 500 or resp.status == 429:
            raise PlatformUnavailable(message, resp.status)
        raise PlatformError(message, resp.status)


def platform_client(config: Any) -> PlatformClient | None:
    """A client for the platform API with the config's key (``roboflow.api_key``, ``roboflow.platform_url``); None
    without a key. Here, not in the plugin host, so that a first run can ask before the host has loaded
    (rfwatch/service/early.py); rfwatch.host.runtime.platform_client is this one."""
    if not config.roboflow.api_key:
        return None
    return PlatformClient(config.roboflow.api_key, config.roboflow.platform_url)


def is_already_annotated(exc: PlatformError) -> bool:
    """The annotate route's "this image has a label": any 409 there (inference maps every 409 of the route to
    RoboflowAPIIAlreadyAnnotatedError), or a 400 whose message says so, with or without its hint
    (roboflow-python#214). Other 400s (an annotation the platform cannot read) are refusals."""
    return exc.status == 409 or (exc.status == 400 and "already annotated" in str(exc).lower())


def _message(resp: Answer) -> str:
    """The platform's error text: ``{"error": {"message"}}``, ``{"error": "..."}`` or ``{"message"}``."""
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return redact(resp.text.strip()[:300] or resp.reason or "no message")
    if isinstance(doc, dict):
        error = doc.get("error", doc)
        if isinstance(error, dict) and error.get("message"):
            return redact(str(error["message"]))[:500]
        if isinstance(error, str):
            return redact(error)[:500]
    return redact(json.dumps(doc))[:300]

"""A real HTTP server on 127.0.0.1 that answers like Roboflow's platform API (api.roboflow.com).

It serves the account described by a ``Catalog`` (``rfwatch/testing/catalog.py``), the same one ``RoboflowServer`` uses, so a
key, workspace, project or version is known to both or to neither.

Routes and where their shapes come from:
- ``GET|POST /?api_key=KEY``: roboflow/roboflow-python ``tests/__init__.py`` (commit 25e85e25) registers
  ``{"welcome": "Welcome to the Roboflow API.", "instructions": "You are successfully authenticated.",
  "docs": "https://docs.roboflow.com", "workspace": WORKSPACE_NAME}`` for ``POST /?api_key=``; roboflow-python
  ``roboflow/__init__.py`` posts there and treats 401 as final; roboflow/inference ``roboflow_api.py``
  ``get_roboflow_workspace`` GETs the same URL and reads ``"workspace"``.
- ``GET /{workspace}?api_key=``: roboflow-python ``roboflow/core/workspace.py`` reads ``info["workspace"]`` with
  ``name``, ``url``, ``members`` and ``projects``. The project entries are the project dicts below (chosen).
- ``GET /{workspace}/{project}?api_key=``: the roboflow-python fixture (``tests/__init__.py``):
  ``{"workspace": {"name", "url", "members"}, "project": {"id": "ws/project", "type", "name", "created", "updated",
  "images", "unannotated", "annotation", "versions", "public", "splits", "colors", "classes": {name: count}},
  "versions": [{"id": "ws/project/N", "name", "created", "images", "splits", "preprocessing", "augmentation",
  "exports"}]}``. inference's ``get_roboflow_dataset_type`` reads ``project.type`` from this route.
- ``GET /{workspace}/{project}/{version}?api_key=``: the route is roboflow-python ``rfapi.get_version``. No source
  found for its body; chosen: the project document plus ``"version": {...}`` (one entry shaped like ``versions``).
- ``POST /dataset/{project}/upload``: roboflow-python ``rfapi.upload_image`` (multipart ``name``, ``split``,
  ``file``; ``batch`` and repeated ``tag`` in the query) and docs.roboflow.com (a base64 body is the documented
  alternative). The duplicate answer ``{"duplicate": true, "id": ...}`` is the roboflow-python fixture; the success
  answer ``{"success": true, "id": ...}`` is INFERRED from both clients (``registration_response["id"]``,
  ``.get("success")``).
- ``POST /dataset/{project}/annotate/{image_id}?api_key&name[&overwrite=true][&prediction=true]``: roboflow-python
  ``rfapi.save_annotation`` (JSON ``{"annotationFile", "labelmap"}``) and inference ``annotate_image_at_roboflow``
  (``text/plain`` body: the class name; its workflow block joins multi-label classes with commas).
- Annotate right after an upload: luxonis/oak-examples#287 (2022-02-11) reports a 404 ``{"error": {"message": "Image
  not found in dataset.", "type": "InvalidParameterException", "hint": "The image ID is returned by the upload API."}}``
  for an annotate sent about 0.5 s after an upload that answered 200 with that id, and the fault "went away after
  several minutes". Modelled as a fault to inject: ``annotate_lag`` seconds after a new upload, annotate answers that
  404 for it (default 0: no source says how often or how long; chosen). The same 404 answers an image id the project
  never had (the same message: the platform cannot tell "not yet" from "never").
- Already annotated, ``already_annotated`` picks the answer (a profile option, as no source settles which one the
  platform gives today):
  - ``"400"`` (default): the only report of the real server, roboflow-python#214 (2023-12-28), shows HTTP 400 with
    ``{"message": "Image was already annotated.", "type": "InvalidImageException", "hint": "This image was already
    annotated; to overwrite the annotation, pass overwrite=true as a query parameter."}``. roboflow-python of that
    time (commit 3fd2ac4, ``_save_annotation_error``) printed ``responsejson['error']``, so the body had the
    ``{"error": {...}}`` envelope, as roboflow-python's own fixture has it (tests/test_project.py,
    ``test_upload_raises_upload_annotation_error``: status 400, the same message, type and hint).
  - ``"400-no-hint"``: the same without ``hint`` (chosen: a client must not depend on the hint being there).
  - ``"409"``: what roboflow-python ``rfapi.save_annotation`` (1.7.3 and main) expects: 409 whose
    ``error.message`` contains "already annotated"; inference maps any 409 of this route to
    ``RoboflowAPIIAlreadyAnnotatedError``. No report shows the body; chosen: the 400 body with status 409.
- ``overwrite=true`` replaces the label (the hint above; roboflow-python ``_save_annotation_url`` sends it as a query
  parameter) and is accepted on an image with no label yet: roboflow-python 1.7.3 ``Workspace.upload_dataset`` sends
  it for every image of a classification project ("Defaults to False, except classification projects where it
  defaults to True (the API requires it)").
- Errors: unknown workspace -> 404 ``{"error": {"message": "Unsupported get request. Workspace with ID \\"...\\" does
  not exist or cannot be loaded due to missing permissions.", "status": 404, "type": "GraphMethodException",
  "hint": "You can see your available workspaces by issuing a GET request to /workspaces"}}`` (issue
  NorhanM-A/Shape-Detection-with-YOLO#3, roboflow/rf-detr#122). Unknown project: INFERRED 404 with the same shape.
  Bad or missing key: 401 (roboflow-python); its body: no source found; chosen ``UNAUTHORIZED`` below.
- An unknown version of a project that exists: HTTP 500. roboflow/inference ``inference/core/roboflow_api.py``
  ``get_roboflow_model_type`` maps a 500 of ``GET /{workspace}/{project}/{version}`` to "not found", with the comment
  "empirically checked that backend API responds HTTP 500 on incorrect version" (and "TO BE FIXED at backend"). Its
  body: no source found; chosen ``INTERNAL_ERROR`` below. ``unknown_version_status=404`` gives the answer the backend
  may give once fixed (the graph error above, INFERRED).
- Multi-label projects: ``"type": "classification"`` and ``"multilabel": true`` (roboflow-python 1.7.3
  ``core/project.py``: ``self.type = a_project["type"]``, ``self.multilabel = a_project.get("multilabel", False)``;
  its tests/test_project.py ``test_multilabel_classification_dataset_upload`` sets exactly these two). A single-label
  project has no ``multilabel`` key (the fixture in tests/__init__.py has none; the client's ``.get`` default).

Not modelled: upload by ``image=`` URL, ``sequence_number``/``sequence_size``, ``metadata``, jobs and batches.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
import string
import threading
import time
import urllib.parse
from typing import Any

from PIL import Image

from rfwatch.testing.catalog import Catalog, Project
from rfwatch.testing.roboflow_server import (
    Recorded,
    _BaseHandler,
    _Reply,
    _start,
    _stop,
    parse_multipart,
    read_body,
)

WELCOME = {
    "welcome": "Welcome to the Roboflow API.",
    "instructions": "You are successfully authenticated.",
    "docs": "https://docs.roboflow.com",
}
# No source found for the platform's 401 body; chosen: the {"error": {...}} envelope the 404 body uses.
UNAUTHORIZED = {"error": {"message": "Unauthorized: the api_key is missing or not valid.", "status": 401}}
# The 500 that answers an unknown version: no source found for its body; chosen: the same envelope.
INTERNAL_ERROR = {"error": {"message": "Internal server error.", "status": 500}}
# luxonis/oak-examples#287: annotate's 404 for an image id it does not know (yet), verbatim.
NOT_IN_DATASET = {
    "error": {
        "message": "Image not found in dataset.",
        "type": "InvalidParameterException",
        "hint": "The image ID is returned by the upload API.",
    }
}
# roboflow-python#214 (the real server) and roboflow-python's fixture (tests/test_project.py), verbatim.
ALREADY_ANNOTATED = {
    "message": "Image was already annotated.",
    "type": "InvalidImageException",
    "hint": "This image was already annotated; to overwrite the annotation, pass overwrite=true as a query parameter.",
}
#: The answers to an annotate of an image that has a label, by ``PlatformServer.already_annotated``.
ALREADY_ANNOTATED_ANSWERS: dict[str, tuple[int, dict[str, Any]]] = {
    "400": (400, {"error": dict(ALREADY_ANNOTATED)}),
    "400-no-hint": (400, {"error": {k: v for k, v in ALREADY_ANNOTATED.items() if k != "hint"}}),
    "409": (409, {"error": dict(ALREADY_ANNOTATED)}),
}


def _graph_error(status: int, message: str, hint: str | None = None) -> _Reply:
    error: dict[str, Any] = {"message": message, "status": status, "type": "GraphMethodException"}
    if hint:
        error["hint"] = hint
    return _Reply(status, {"error": error})


def _missing(kind: str, ident: str) -> _Reply:
    # The workspace text is verbatim from the issue above; for projects, versions and images: INFERRED same shape.
    hint = (
        "You can see your available workspaces by issuing a GET request to /workspaces" if kind == "Workspace" else None
    )
    return _graph_error(
        404,
        f'Unsupported get request. {kind} with ID "{ident}" does not exist or cannot be loaded due to missing '
        "permissions.",
        hint,
    )


def new_image_id(rng: random.Random) -> str:
    """20 letters and digits, like the fixture's "hbALkCFdNr9rssgOUXug"."""
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(20))


def labels_of(annotation: str) -> list[str]:
    """Class names in a classification annotation: one name, comma-joined names, or a JSON list (roboflow-python's
    multi-label folder upload sends json.dumps(labels))."""
    text = annotation.strip()
    if text.startswith("["):
        try:
            return [str(x) for x in json.loads(text)]
        except ValueError:
            pass
    return [part.strip() for part in text.split(",") if part.strip()]


class PlatformServer:
    def __init__(
        self,
        catalog: Catalog | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        already_annotated: str = "400",
        unknown_version_status: int = 500,
    ) -> None:
        if already_annotated not in ALREADY_ANNOTATED_ANSWERS:
            raise ValueError(f"already_annotated: one of {sorted(ALREADY_ANNOTATED_ANSWERS)}")
        self.catalog = catalog if catalog is not None else Catalog()
        self.host, self.port = host, port
        #: How an annotate of an image that has a label is answered (see the module's docstring).
        self.already_annotated = already_annotated
        #: 500 (the platform as inference's authors found it) or 404 for a version a project does not have.
        self.unknown_version_status = unknown_version_status
        #: Seconds after a new upload during which annotate answers 404 for it (oak-examples#287); inf: for ever.
        self.annotate_lag = 0.0
        #: Identical bytes answer "duplicate" (roboflow-python's fixture); False: each upload is a new image, as
        #: oak-examples#287's author saw ("I get different ids even if I upload the same image twice").
        self.dedupe = True
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        # uploads[project] = [{"id", "name", "split", "batch", "tags", "bytes", "at"}] in upload order
        self.uploads: dict[str, list[dict[str, Any]]] = {}
        self.annotations: dict[str, dict[str, str]] = {}
        self.faults: list[tuple[int, str, str]] = []  # (status, message, path prefix: "" for any)
        self.delay = 0.0
        self.connections = 0
        self.keepalive_timeout: float | None = None  # no source for api.roboflow.com; chosen: keep idle connections
        self.rng = random.Random(4321)
        self.created = 1700000000.0  # fixed epoch seconds for "created"/"updated" (the fixture uses floats)
        self._httpd: Any = None
        self._thread: threading.Thread | None = None
        self._open: set[Any] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> PlatformServer:
        return _start(self, _PlatformHandler)

    def stop(self) -> None:
        _stop(self)

    def down(self) -> None:
        """The platform goes away; up() brings it back on the same port with the same data."""
        self.stop()

    def up(self) -> PlatformServer:
        return self.start()

    def fail_next(self, status: int, count: int = 1, message: str = "", path: str = "") -> None:
        """The next ``count`` requests (whose path starts with ``path``, if given) answer ``status``."""
        # Injected failure body: no source found; chosen: the {"error": {...}} envelope.
        with self.lock:
            self.faults.extend((status, message or f"Injected {status}", path) for _ in range(count))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()

    def _next_fault(self, path: str) -> tuple[int, str] | None:
        with self.lock:
            for i, (status, message, prefix) in enumerate(self.faults):
                if path.startswith(prefix):
                    del self.faults[i]
                    return status, message
            return None

    # documents

    def project_doc(self, project: Project) -> dict[str, Any]:
        uploads = self.uploads.get(project.name, [])
        notes = self.annotations.get(project.name, {})
        counts = dict.fromkeys(project.classes, 0)
        for text in notes.values():
            for label in labels_of(text):
                counts[label] = counts.get(label, 0) + 1
        splits = {"test": 0, "train": 0, "valid": 0}
        for up in uploads:
            splits[up["split"]] = splits.get(up["split"], 0) + 1
        ws = self.catalog.workspace
        doc = {
            "id": f"{ws}/{project.name}",
            "type": project.type,
            "name": project.name,
            "created": self.created,
            "updated": self.created,
            "images": len(uploads),
            "unannotated": sum(1 for up in uploads if up["id"] not in notes),
            "annotation": project.name,
            "versions": len(project.versions),
            "public": False,
            "splits": splits,
            "colors": {},
            "classes": counts,
        }
        if project.multi_label:
            doc["multilabel"] = True
        return doc

    def version_doc(self, project: Project, number: int) -> dict[str, Any]:
        return {
            "id": f"{self.catalog.workspace}/{project.name}/{number}",
            "name": f"v{number}",  # the fixture's names are free text ("augmented-416x416", "raw"); chosen
            "created": self.created + number,
            "images": len(self.uploads.get(project.name, [])),
            "splits": {"test": 0, "train": 0, "valid": 0},
            "preprocessing": json.loads(json.dumps(project.versions[number])),  # a copy
            "augmentation": {},
            "exports": [],
        }

    def workspace_doc(self) -> dict[str, Any]:
        ws = self.catalog.workspace
        return {"name": ws, "url": ws, "members": 1}


class _PlatformHandler(_BaseHandler):
    owner: PlatformServer

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        owner = self.owner
        body = read_body(self)
        rec, split = self.record(body)
        fault = owner._next_fault(split.path)
        if fault is not None:
            return self.send_json(rec, fault[0], {"error": {"message": fault[1], "status": fault[0]}})
        if owner.delay:
            time.sleep(owner.delay)
        parts = [urllib.parse.unquote(p) for p in split.path.split("/") if p]
        try:
            doc = self._dispatch(rec, parts, body)
        except _Reply as reply:
            return self.send_json(rec, reply.status, reply.doc, reply.headers)
        self.send_json(rec, 200, doc)

    def _dispatch(self, rec: Recorded, parts: list[str], body: bytes) -> dict[str, Any]:
        owner, catalog = self.owner, self.owner.catalog
        key = rec.query.get("api_key")
        if not key or key not in catalog.keys:
            raise _Reply(401, json.loads(json.dumps(UNAUTHORIZED)))
        if not parts:
            return {**WELCOME, "workspace": catalog.workspace}
        if parts[0] == "dataset" and len(parts) >= 3 and self.command == "POST":
            project = catalog.project(parts[1])
            if project is None:
                raise _missing("Project", f"{catalog.workspace}/{parts[1]}")
            if parts[2] == "upload" and len(parts) == 3:
                return self._upload(rec, project, body)
            if parts[2] == "annotate" and len(parts) == 4:
                return self._annotate(rec, project, parts[3], body)
        if self.command != "GET" or len(parts) > 3:
            raise _Reply(404, {"error": {"message": "Not Found", "status": 404}})  # no source found; chosen
        if parts[0] != catalog.workspace:
            raise _missing("Workspace", parts[0])
        if len(parts) == 1:
            projects = [owner.project_doc(p) for p in catalog.projects.values()]  # type: ignore[union-attr]
            return {"workspace": {**owner.workspace_doc(), "projects": projects}}
        project = catalog.project(parts[1])
        if project is None:
            raise _missing("Project", f"{catalog.workspace}/{parts[1]}")
        doc = {
            "workspace": owner.workspace_doc(),
            "project": owner.project_doc(project),
            "versions": [owner.version_doc(project, n) for n in sorted(project.versions, reverse=True)],
        }
        if len(parts) == 3:
            try:
                number = int(parts[2])
            except ValueError:
                number = -1
            if number not in project.versions:
                if owner.unknown_version_status == 500:
                    raise _Reply(500, json.loads(json.dumps(INTERNAL_ERROR)))
                raise _missing("Version", f"{catalog.workspace}/{project.name}/{parts[2]}")
            doc["version"] = owner.version_doc(project, number)
        return doc

    def _upload(self, rec: Recorded, project: Project, body: bytes) -> dict[str, Any]:
        owner, query = self.owner, rec.query
        content_type = self.headers.get("Content-Type") or ""
        name, split = query.get("name", ""), query.get("split", "train")
        if "multipart/form-data" in content_type:
            fields = parse_multipart(content_type, body)
            data = fields.get("file", b"")
            name = fields.get("name", name.encode()).decode("utf-8", "replace")
            split = fields.get("split", split.encode()).decode("utf-8", "replace")
        else:
            try:  # the documented base64 body (usually sent as application/x-www-form-urlencoded)
                data = base64.b64decode(body)
            except (binascii.Error, ValueError):
                data = b""
        try:
            Image.open(io.BytesIO(data)).verify()
        except Exception:
            # No source found for the platform's answer to an unreadable image; chosen: 400 in the error envelope.
            error = {"message": "Invalid image: could not read the uploaded file.", "status": 400}
            raise _Reply(400, {"error": error}) from None
        tags = [v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query) if k == "tag"]
        with owner.lock:
            uploads = owner.uploads.setdefault(project.name, [])
            for existing in uploads if owner.dedupe else []:  # identical images within a project: one image
                if existing["bytes"] == data:
                    return {"duplicate": True, "id": existing["id"]}
            upload = {
                "id": new_image_id(owner.rng),
                "name": name,
                "split": split,
                "batch": query.get("batch"),
                "tags": tags,
                "bytes": data,
                "at": time.monotonic(),
            }
            uploads.append(upload)
        return {"success": True, "id": upload["id"]}

    def _annotate(self, rec: Recorded, project: Project, image_id: str, body: bytes) -> dict[str, Any]:
        owner, query = self.owner, rec.query
        uploaded = [up for up in owner.uploads.get(project.name, []) if up["id"] == image_id]
        if not uploaded or time.monotonic() - uploaded[0]["at"] < owner.annotate_lag:
            raise _Reply(404, json.loads(json.dumps(NOT_IN_DATASET)))
        content_type = (self.headers.get("Content-Type") or "").lower()
        text = body.decode("utf-8", "replace")
        if "application/json" in content_type:
            try:
                text = str(json.loads(text).get("annotationFile") or "")
            except (ValueError, AttributeError):
                raise _Reply(400, {"error": {"message": "Invalid JSON body.", "status": 400}}) from None  # chosen
        overwrite = query.get("overwrite", "").lower() == "true"
        with owner.lock:
            notes = owner.annotations.setdefault(project.name, {})
            if image_id in notes and not overwrite:
                status, doc = ALREADY_ANNOTATED_ANSWERS[owner.already_annotated]
                raise _Reply(status, json.loads(json.dumps(doc)))
            notes[image_id] = text
        return {"success": True}

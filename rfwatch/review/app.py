"""The review page and its JSON API (the one the page itself uses), as a Starlette app.

Routes:

- ``GET /``: the page (plain HTML, CSS and JavaScript from this package; no build step, no CDN);
- ``GET /api/items``: ``{"items": [{"id", "name", "path", "prediction", "image", "classes", "multi_label",
  "sequence"}], "classes": [...], "waiting": n}``, oldest first, the frames of one sequence together (by their
  place in it); ``prediction`` is the documented response JSON (a frame's own), ``image`` the URL of a small
  upright JPEG of the file, ``sequence`` null or ``{"id", "frame", "frames", "class", "confidence"}`` (the
  sequence's label; a decision labels the one frame);
- ``GET /api/items/<id>/image``: that JPEG (by the journal's integer id only: never a path; and only of a file
  that waits for review: 404 for any other);
- ``POST /api/items/<id>/label`` with ``{"class": "dog"}`` (multi-label: ``{"classes": ["dog", "cat"]}``):
  200; a class the model does not have (or no class at all): 400; an item already decided: 409; no such item: 404;
- ``POST /api/items/<id>/reject``: 200 (409, 404 likewise);
- ``POST /api/sequences/<id>/label`` with ``{"class": "deer"}``: every frame of that sequence that waits for
  review labelled so, each as if labelled on its own: 200 ``{"labelled": [ids], "errors": {id: why}}``; 404 when
  none of its frames waits; the first frame's 400 when none could be labelled (a class the model does not have).

Safe by default: served on loopback unless configured otherwise, and then only with a token (a cookie set
once from ``/?token=``, or ``Authorization: Bearer``). Requests must name this server in ``Host`` (a DNS
rebinding page cannot borrow it), and a state change needs ``Content-Type: application/json`` and, when the
browser sends one, a same-origin ``Origin``: an HTML form on another site can send neither, so it cannot
label or reject files.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from rfwatch.config import Config
from rfwatch.images.prepare import ImageError, prepare_image
from rfwatch.journal import AlreadyDecided, DecisionKind, FileRow, Journal, NotWaiting, open_journal
from rfwatch.roboflow.result import Prediction
from rfwatch.states import FileState

__all__ = ["create_app", "COOKIE"]

log = logging.getLogger(__name__)

COOKIE = "rfwatch_review"
THUMBNAIL = 480  # longest side, px
_STATIC = {"review.js": "text/javascript", "review.css": "text/css", "favicon.svg": "image/svg+xml"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

ClassesOf = Callable[[str], "tuple[str, ...] | None"]


def _static(name: str) -> bytes:
    return importlib.resources.files("rfwatch.review").joinpath("static", name).read_bytes()


class _Guard(BaseHTTPMiddleware):
    """Host, token, and cross-site checks in front of every route."""

    def __init__(self, app: Any, config: Config, port: Callable[[], int]):
        super().__init__(app)
        self.token = config.review.token
        self.loopback = config.review.loopback
        self.listen_host = (config.review.listen or "127.0.0.1:0").rpartition(":")[0].strip("[]")
        self.port = port

    def _host_ok(self, host: str) -> bool:
        if host.startswith("["):  # an IPv6 literal: [::1]:8765
            name, _, rest = host[1:].partition("]")
            port = rest.lstrip(":")
        else:
            name, _, port = host.partition(":")
        if not self.loopback:
            return True  # off loopback any name may reach it (nas.local, an IP): the token is required there
        # On loopback the Host check is what stops a DNS-rebinding page from borrowing the server.
        allowed = {self.listen_host, "localhost", "127.0.0.1", "::1"}
        return name in allowed and (not port or port == str(self.port()))

    def _authorised(self, request: Request) -> bool:
        if not self.token:
            return True
        given = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if not self._host_ok(request.headers.get("host", "")):
            return _secure(PlainTextResponse("unknown Host", status_code=421))
        if self.token and request.url.path == "/" and "token" in request.query_params:
            if not hmac.compare_digest(request.query_params["token"].encode(), self.token.encode()):
                return _secure(PlainTextResponse("wrong token", status_code=401))
            # Set once, then the token leaves the address bar (and the browser history) at once.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
            return _secure(response)
        if not self._authorised(request):
            return _secure(
                PlainTextResponse(
                    "a token is required: open the link with ?token=... once (review.token in the config)",
                    status_code=401,
                )
            )
        if request.method not in ("GET", "HEAD"):
            problem = _cross_site(request)
            if problem:
                return _secure(JSONResponse({"error": problem}, status_code=403))
        return _secure(await call_next(request))


def _cross_site(request: Request) -> str | None:
    """Why a state-changing request may come from another site, or None."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return "state changes need Content-Type: application/json"
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.netloc != request.headers.get("host", "") or parts.scheme not in ("http", "https"):
            return "cross-origin request refused"
    if request.headers.get("sec-fetch-site") == "cross-site":
        return "cross-site request refused"
    return None


def _secure(response: Response) -> Response:
    for k, v in _SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    if response.headers.get("content-type", "").startswith("application/json"):
        response.headers["Cache-Control"] = "no-store"
    return response


class ReviewApi:
    """The routes' logic, over the journal (a handle of its own: the daemon hears of its decisions as of any
    other process's)."""

    def __init__(self, config: Config, journal: Journal, classes_of: ClassesOf):
        self.config = config
        self.journal = journal
        self.decisions = journal.decisions
        self.classes_of = classes_of
        self._thumbs: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _prediction(self, row: FileRow) -> Prediction:
        return Prediction.from_json(row.prediction or {}, self.config.roboflow.multi_label_threshold)

    def _classes(self, row: FileRow, prediction: Prediction) -> list[str]:
        known = self.classes_of(row.model)
        if known:
            return list(known)
        return sorted(s.name for s in prediction.predictions)  # the model's classes as far as its answers show

    def items(self) -> dict[str, Any]:
        out = []
        classes: list[str] = []
        rows = self.decisions.waiting()
        sequences = self.journal.sequences.of_files([r.id for r in rows])
        first: dict[int, int] = {}  # a sequence's frames together, where its first waiting frame is
        for n, r in enumerate(rows):
            if r.id in sequences:
                first.setdefault(sequences[r.id].sequence_id, n)
        place = {
            r.id: (first[s.sequence_id], s.frame) if (s := sequences.get(r.id)) else (n, 0) for n, r in enumerate(rows)
        }
        for row in sorted(rows, key=lambda r: place[r.id]):
            prediction = self._prediction(row)
            item_classes = self._classes(row, prediction)
            classes += [c for c in item_classes if c not in classes]
            out.append(
                {
                    "id": row.id,
                    "name": row.path.name,
                    "path": str(row.path),
                    "prediction": prediction.json(),
                    "image": f"/api/items/{row.id}/image",
                    "classes": item_classes,
                    "multi_label": prediction.multi_label,
                    "sequence": _sequence(sequences.get(row.id)),
                }
            )
        return {"items": out, "classes": classes, "waiting": len(out)}

    def row(self, file_id: int) -> FileRow | None:
        try:
            return self.journal.files.get(file_id)
        except KeyError:
            return None

    def waiting_row(self, file_id: int) -> FileRow | None:
        """A file that waits for review (or was just decided, and is still where it waited), else None.

        Only these are the page's to show: the id of a file rfwatch sorted elsewhere shows nothing.
        """
        row = self.row(file_id)
        return row if row is not None and row.state in (FileState.REVIEW, FileState.DECIDED) else None

    def thumbnail(self, row: FileRow) -> bytes:
        key = (row.id, row.path.stat().st_mtime_ns)
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        data = prepare_image(row.path, THUMBNAIL, 80).jpeg
        with self._lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 256:
                self._thumbs.popitem(last=False)
        return data

    def decide(self, file_id: int, kind: DecisionKind, body: Any) -> tuple[int, dict[str, Any]]:
        row = self.row(file_id)
        if row is None:
            return 404, {"error": f"no item {file_id}"}
        if row.state != FileState.REVIEW:  # before its label is read: a file that never waited may have no prediction
            if self.decisions.latest(file_id) is not None:
                return 409, {"error": f"item {file_id} was already decided"}
            return 404, {"error": f"item {file_id} is not waiting for review"}
        classes: tuple[str, ...] = ()
        if kind == DecisionKind.LABEL:
            prediction = self._prediction(row)
            allowed = self._classes(row, prediction)
            if not isinstance(body, dict):
                return 400, {"error": 'expected {"class": "..."} (or {"classes": [...]} for a multi-label model)'}
            if prediction.multi_label:
                given = body.get("classes", [body["class"]] if "class" in body else None)
                if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
                    return 400, {"error": 'expected {"classes": ["...", ...]} for this multi-label model'}
                if not given:  # an empty label would go to Roboflow as an empty annotation
                    return 400, {"error": "choose at least one class (or reject the file)"}
            else:
                given = body.get("class")
                if not isinstance(given, str):
                    return 400, {"error": 'expected {"class": "..."}'}
                given = [given]
            unknown = [c for c in given if c not in allowed]
            if unknown:
                return 400, {"error": f"{unknown[0]!r} is not a class of {row.model} (classes: {', '.join(allowed)})"}
            classes = tuple(dict.fromkeys(given))
        try:
            decision = self.decisions.decide(file_id, kind, classes, by="review page")
        except AlreadyDecided:
            return 409, {"error": f"item {file_id} was already decided"}
        except NotWaiting:
            return 404, {"error": f"item {file_id} is not waiting for review"}
        return 200, {"ok": True, "id": file_id, "decision": decision.json()}

    def decide_sequence(self, sequence_id: int, body: Any) -> tuple[int, dict[str, Any]]:
        """A person's label for every frame of a sequence that waits for review (one decision per frame)."""
        waiting = [
            fid
            for fid in self.journal.sequences.file_ids(sequence_id)
            if (row := self.row(fid)) is not None and row.state == FileState.REVIEW
        ]
        if not waiting:
            return 404, {"error": f"no frame of sequence {sequence_id} waits for review"}
        labelled, errors, first = [], {}, None
        for fid in waiting:
            status, doc = self.decide(fid, DecisionKind.LABEL, body)
            if status == 200:
                labelled.append(fid)
            else:
                errors[str(fid)] = doc["error"]
                first = first or (status, doc)
        if not labelled and first is not None:
            return first
        return 200, {"ok": True, "sequence": sequence_id, "labelled": labelled, "errors": errors}


def create_app(config: Config, classes_of: ClassesOf, port: Callable[[], int]) -> Starlette:
    journal = open_journal(config, kind="review")
    api = ReviewApi(config, journal, classes_of)

    async def page(request: Request) -> Response:
        return HTMLResponse(_static("index.html").decode("utf-8"))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:  # a fixed set of the package's own files; nothing else is ever read
            return PlainTextResponse("not found", status_code=404)
        return Response(_static(name), media_type=_STATIC[name])

    def items(request: Request) -> Response:
        return JSONResponse(api.items())

    def image(request: Request) -> Response:
        row = api.waiting_row(request.path_params["id"])
        if row is None:
            return PlainTextResponse("not found", status_code=404)
        try:
            data = api.thumbnail(row)
        except (ImageError, OSError) as exc:
            log.warning("review: no thumbnail for %s: %s", row.path, exc)
            return PlainTextResponse("no image", status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    async def decide(request: Request, kind: DecisionKind) -> Response:
        try:
            body = await request.json() if kind == DecisionKind.LABEL else None
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        status, doc = await run_in_threadpool(api.decide, request.path_params["id"], kind, body)
        return JSONResponse(doc, status_code=status)

    async def label(request: Request) -> Response:
        return await decide(request, DecisionKind.LABEL)

    async def reject(request: Request) -> Response:
        return await decide(request, DecisionKind.REJECT)

    async def label_sequence(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        status, doc = await run_in_threadpool(api.decide_sequence, request.path_params["id"], body)
        return JSONResponse(doc, status_code=status)

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/items", items),
        Route("/api/items/{id:int}/image", image),
        Route("/api/items/{id:int}/label", label, methods=["POST"]),
        Route("/api/items/{id:int}/reject", reject, methods=["POST"]),
        Route("/api/sequences/{id:int}/label", label_sequence, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Guard, config=config, port=port)])
    app.state.journal = journal
    return app


def _sequence(of: Any) -> dict[str, Any] | None:
    if of is None:
        return None
    return {
        "id": of.sequence_id,
        "frame": of.frame,
        "frames": of.frames,
        "class": of.label,
        "confidence": of.confidence,
    }

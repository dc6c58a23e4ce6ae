"""The review page and its JSON API (the one the page itself uses), as a Starlette app.

Routes:

- ``GET /``: the page (plain HTML, CSS and JavaScript from this package; no build step, no CDN);
- ``GET /api/items?class=&min=&max=&folder=&sort=&limit=&cursor=``: one page, ``{"items": [{"id", "name",
  "path", "folder", "prediction", "image", "full", "model", "classes", "multi_label", "guess", "class", "score",
  "found", "waiting_since", "sequence"}], "classes": [...], "folders": [...], "total": n, "waiting": n, "next": cursor|null,
  "threshold": t, "take_back": bool}``; ``prediction`` is the documented response JSON, ``guess`` the model's
  predicted classes and ``class`` the one that decides ``{class}`` (the highest-scoring), ``score`` the model's
  highest score, ``total`` every item the filters match (see rfwatch.review.listing for filters and sorts);
- ``GET /api/items/<id>/image``: a small upright JPEG; ``GET /api/items/<id>/full``: the upright picture at full
  resolution (both by the journal's integer id only: never a path; and only of a file that waits for review or
  was just decided: 404 for any other);
- ``POST /api/items/<id>/label`` with ``{"class": "dog"}`` (multi-label: ``{"classes": ["dog", "cat"]}``):
  200; a class the model does not have (or no class at all): 400; an item already decided: 409; no such item: 404;
- ``POST /api/items/<id>/reject``: 200 (409, 404 likewise);
- ``POST /api/decide`` with ``{"items": [ids], "class": "dog"}`` or ``{"items": [ids], "accept": true}``: many
  labels at once (all checked first: one unknown class and nothing changes, 400);
- ``POST /api/items/<id>/take-back``: the file's decision taken back, the file waiting again (see
  rfwatch.processing.takeback); 409 when there is nothing to take back, or (``"busy": true``) not just now.
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
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from rfwatch.config import Config
from rfwatch.images.prepare import ImageError, prepare_image
from rfwatch.journal import AlreadyDecided, DecisionKind, FileRow, Journal, NotWaiting, open_journal
from rfwatch.processing.takeback import TakeBack, TakeBackOutcome
from rfwatch.processing.undo import Undoer
from rfwatch.review.listing import Listing, Query, QueryError, entry_of
from rfwatch.roboflow.result import Prediction
from rfwatch.states import FileState

__all__ = ["create_app", "COOKIE"]

log = logging.getLogger(__name__)

COOKIE = "rfwatch_review"
THUMBNAIL = 480  # longest side, px
FULL_SIZE = 1 << 16  # longest side of the full-size view: any camera's full resolution
BULK_LIMIT = 1000  # items in one bulk decision
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

    def __init__(self, config: Config, journal: Journal, classes_of: ClassesOf, take_back: TakeBack | None = None):
        self.config = config
        self.journal = journal
        self.decisions = journal.decisions
        self.classes_of = classes_of
        self.take_back = take_back
        self.listing = Listing(self.decisions.waiting_keys, self.decisions.waiting_rows, self._entry, classes_of)
        self._thumbs: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _prediction(self, row: FileRow) -> Prediction:
        return Prediction.from_json(row.prediction or {}, self.config.roboflow.multi_label_threshold)

    def _classes(self, row: FileRow, prediction: Prediction) -> list[str]:
        known = self.classes_of(row.model)
        if known:
            return list(known)
        return sorted(s.name for s in prediction.predictions)  # the model's classes as far as its answers show

    def _entry(self, row: FileRow) -> dict[str, Any]:
        return entry_of(row, self._prediction(row))

    def items(self, query: Query | None = None) -> dict[str, Any]:
        query = query or Query()
        doc = self.listing.page(query)
        # A frame's sequence, read for the page's items only (one query): it is named on its card, and Shift with
        # a digit labels the sequence's waiting frames.
        sequences = self.journal.sequences.of_files([item["id"] for item in doc["items"]])
        for item in doc["items"]:
            item["sequence"] = _sequence(sequences.get(item["id"]))
        if query.sort in ("time", "-time"):
            # In the order files were found, a sequence's frames stand together, by their place in it, where its
            # first one stands (a card copied in name order is found out of capture order). Within the page only:
            # the cursor (computed above, from the page's last item by the sort) is unchanged.
            first: dict[int, int] = {}
            place: dict[int, tuple[int, int]] = {}
            for n, item in enumerate(doc["items"]):
                seq = item["sequence"]
                place[item["id"]] = (first.setdefault(seq["id"], n), seq["frame"]) if seq else (n, 0)
            doc["items"].sort(key=lambda i: place[i["id"]])
        doc["threshold"] = self.config.roboflow.multi_label_threshold
        doc["take_back"] = self.take_back is not None
        return doc

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

    def thumbnail(self, row: FileRow, full: bool = False) -> bytes:
        """A small upright JPEG, or (``full``) the upright picture at its full resolution."""
        key = (row.id, row.path.stat().st_mtime_ns, int(full))
        with self._lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        data = prepare_image(row.path, FULL_SIZE if full else THUMBNAIL, 90 if full else 80).jpeg
        with self._lock:
            self._thumbs[key] = data
            # a few full-size pictures (megabytes each: the one shown and its neighbours), many thumbnails
            fulls = [k for k in self._thumbs if k[2]]
            for k in fulls[: max(0, len(fulls) - 4)]:
                del self._thumbs[k]
            while len(self._thumbs) > 256:
                self._thumbs.popitem(last=False)
        return data

    def _not_waiting(self, file_id: int, row: FileRow | None) -> tuple[int, dict[str, Any]] | None:
        if row is None:
            return 404, {"error": f"no item {file_id}"}
        if row.state != FileState.REVIEW:  # before its label is read: a file that never waited may have no prediction
            if self.decisions.latest(file_id) is not None:
                return 409, {"error": f"item {file_id} was already decided"}
            return 404, {"error": f"item {file_id} is not waiting for review"}
        return None

    def decide(self, file_id: int, kind: DecisionKind, body: Any) -> tuple[int, dict[str, Any]]:
        row = self.row(file_id)
        problem = self._not_waiting(file_id, row)
        if problem is not None:
            return problem
        assert row is not None
        status, classes_or_error = self._label_of(row, kind, body)
        if status != 200:
            return status, classes_or_error  # type: ignore[return-value]
        return self._record(file_id, kind, classes_or_error)  # type: ignore[arg-type]

    def _label_of(self, row: FileRow, kind: DecisionKind, body: Any) -> tuple[int, Any]:
        """(200, the classes) of a label (none for a reject), or (400, the error document)."""
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
        return 200, classes

    def _record(self, file_id: int, kind: DecisionKind, classes: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
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

    def decide_many(self, body: Any) -> tuple[int, dict[str, Any]]:
        """``{"items": [ids], "class": "dog"}`` (or ``"classes"``), or ``{"items": [ids], "accept": true}`` (each
        item labelled with the model's own guess). Every label is checked before any is recorded: one class a
        model does not have and nothing changes (400). Each decision is then journaled as a single one; an item
        decided meanwhile (elsewhere) is listed in ``skipped``, the others stand."""
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            return 400, {"error": 'expected {"items": [id, ...], "class": "..."} or {"items": [...], "accept": true}'}
        ids = body["items"]
        if not ids or len(ids) > BULK_LIMIT or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return 400, {"error": f"items: expected 1 to {BULK_LIMIT} item ids"}
        accept = body.get("accept") is True
        if not accept and "class" not in body and "classes" not in body:
            return 400, {"error": 'expected "class" (or "classes"), or "accept": true'}
        planned: list[tuple[int, tuple[str, ...]]] = []
        skipped: list[dict[str, Any]] = []
        for file_id in dict.fromkeys(ids):
            row = self.row(file_id)
            problem = self._not_waiting(file_id, row)
            if problem is not None:
                skipped.append({"id": file_id, "status": problem[0], "error": problem[1]["error"]})
                continue
            assert row is not None
            if accept:
                guess = list(self._prediction(row).predicted_classes)
                if not guess:
                    skipped.append({"id": file_id, "status": 400, "error": "the model guessed no class"})
                    continue
                label: dict[str, Any] = {"classes": guess, "class": guess[0]}
            else:
                label = {k: body[k] for k in ("class", "classes") if k in body}
                if "class" in label and "classes" not in label and self._prediction(row).multi_label:
                    label["classes"] = [label["class"]]
                if "classes" in label and "class" not in label and not self._prediction(row).multi_label:
                    one = label["classes"]
                    label["class"] = one[0] if isinstance(one, list) and len(one) == 1 else one
            status, classes = self._label_of(row, DecisionKind.LABEL, label)
            if status != 200:
                return status, {"error": f"item {file_id}: {classes['error']}; nothing was labelled"}
            planned.append((file_id, classes))
        decided = []
        for file_id, classes in planned:
            status, doc = self._record(file_id, DecisionKind.LABEL, classes)
            if status == 200:
                decided.append({"id": file_id, "classes": list(classes)})
            else:
                skipped.append({"id": file_id, "status": status, "error": doc["error"]})
        return 200, {"ok": True, "decided": decided, "skipped": skipped}

    def take_back_decision(self, file_id: int) -> tuple[int, dict[str, Any]]:
        if self.take_back is None:
            return 501, {"error": "this page cannot take decisions back (served without the rules)"}
        done = self.take_back(file_id, by="review page")
        if done.outcome == TakeBackOutcome.WAITING:
            return 200, {"ok": True, "id": file_id, "detail": done.detail}
        if done.outcome == TakeBackOutcome.NOTHING:
            return 409, {"error": done.detail}
        if done.outcome == TakeBackOutcome.BUSY:
            return 409, {"error": done.detail, "busy": True}
        return 500, {"error": done.detail}


def create_app(
    config: Config,
    classes_of: ClassesOf,
    port: Callable[[], int],
    undoer: Callable[[Journal], Undoer] | None = None,
) -> Starlette:
    """``undoer``: builds an Undoer over the page's journal with the running rules (needed to take decisions back)."""
    journal = open_journal(config, kind="review")
    api = ReviewApi(config, journal, classes_of, TakeBack(journal, lambda: undoer(journal)) if undoer else None)

    async def page(request: Request) -> Response:
        return HTMLResponse(_static("index.html").decode("utf-8"))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:  # a fixed set of the package's own files; nothing else is ever read
            return PlainTextResponse("not found", status_code=404)
        return Response(_static(name), media_type=_STATIC[name])

    def items(request: Request) -> Response:
        try:
            query = Query.parse(request.query_params)
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(api.items(query))

    def _image(request: Request, full: bool) -> Response:
        row = api.waiting_row(request.path_params["id"])
        if row is None:
            return PlainTextResponse("not found", status_code=404)
        try:
            data = api.thumbnail(row, full)
        except (ImageError, OSError) as exc:
            log.warning("review: no picture for %s: %s", row.path, exc)
            return PlainTextResponse("no image", status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})

    def image(request: Request) -> Response:
        return _image(request, False)

    def full(request: Request) -> Response:
        return _image(request, True)

    async def bulk(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        status, doc = await run_in_threadpool(api.decide_many, body)
        return JSONResponse(doc, status_code=status)

    async def take_back(request: Request) -> Response:
        status, doc = await run_in_threadpool(api.take_back_decision, request.path_params["id"])
        return JSONResponse(doc, status_code=status)

    async def decide(request: Request, kind: DecisionKind) -> Response:
        try:
            body = await request.json() if kind == DecisionKind.LABEL else None
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
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
        Route("/api/items/{id:int}/full", full),
        Route("/api/items/{id:int}/take-back", take_back, methods=["POST"]),
        Route("/api/decide", bulk, methods=["POST"]),
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

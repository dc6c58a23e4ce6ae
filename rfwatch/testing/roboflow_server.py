"""A real HTTP server on 127.0.0.1 that answers like Roboflow's inference servers on the legacy route.

Route: ``POST|GET /{project}/{version}`` (roboflow/inference ``inference/core/interfaces/http/routes/legacy.py``;
formerly ``http_api.py``), for the models of a shared ``Catalog`` (``rfwatch/testing/catalog.py``). Tests and the benchmark can
make it slow, make it fail, take it down and bring it back on the same port.

Profiles (which real deployment it imitates):
- ``"v1"``: classify.roboflow.com, the AWS Lambda hosted API. An authorizer in front of the Lambda checks the key and
  the model (the route only reads ``request.scope["aws.event"]["requestContext"]["authorizer"]["lambda"]``).
- ``"serverless"``: serverless.roboflow.com (``GCP_SERVERLESS``), an inference server behind an auth middleware.
- ``"self-hosted"``: a Roboflow Inference server run by the user (e.g. http://localhost:9001) under uvicorn.

Engines (which model code answers):
- ``"new"``: inference-models adapters (``inference/core/models/inference_models_adapters.py``).
- ``"old"``: ``inference/core/models/classification_base.py``.

Sources for every behaviour (the research notes /work/notes/research-roboflow.md quote them):
- Query parameters, defaults, confidence scaling, the order of checks, active-learning eligibility:
  roboflow/inference ``inference/core/interfaces/http/routes/legacy.py``; the lower bound 0.01:
  ``inference/core/env.py`` ``CONFIDENCE_LOWER_BOUND_OOM_PREVENTION``.
- Body reading (multipart ``file`` part, raw body, no Content-Type): ``inference/core/interfaces/http/dependencies.py``.
- Error statuses and bodies: ``inference/core/interfaces/http/error_handlers.py``.
- Per-profile auth statuses: ``tests/inference/hosted_platform_tests/test_roboflow_models.py``
  (``EXPECTED_AUTH_ERROR_FOR_ENVIRONMENT``, ``EXPECTED_MODEL_NOT_FOUND_ERROR_FOR_ENVIRONMENT``); the serverless body:
  the GCP_SERVERLESS middleware in ``inference/core/interfaces/http/http_api.py``; Bearer keys:
  ``inference/core/interfaces/http/api_key_resolution.py``.
- Base64 decoding, data-URL prefix, URL input checks: ``inference/core/utils/image_utils.py`` and ``env.py``
  (``ALLOW_NON_HTTPS_URL_INPUT``, ``ALLOW_URL_INPUT_WITHOUT_FQDN``); raw bytes: ``inference_models_adapters.py``
  and the new server's ``inference_server/legacy`` image module (``_RAW_BYTES_ERROR``).
- Response shapes: ``inference/core/entities/responses/inference.py``; thresholds and filtering:
  ``classification_base.py`` (old) and ``inference_models_adapters.py`` / ``vit_classification_onnx.py`` (new).
- Active learning: ``inference/core/managers/active_learning.py``.
- Body limits: docs.roboflow.com (Serverless Hosted API v1 "up to 5MB", v2 "file uploads up to 20MB").
- Keep-alive: ``docker/dockerfiles/Dockerfile.onnx.cpu`` starts uvicorn without ``--timeout-keep-alive``;
  encode/uvicorn ``uvicorn/config.py`` ``timeout_keep_alive: int = 5``.
- Response headers: ``X-Processing-Time`` is added only by ``GCPServerlessMiddleware`` (``http_api.py``,
  ``if GCP_SERVERLESS: app.add_middleware(GCPServerlessMiddleware)``; the header name is ``"X-Processing-Time"`` in
  the new server's constants "shared with the legacy inference server"); uvicorn adds ``server: uvicorn``
  (encode/uvicorn ``uvicorn/config.py``, ``[(b"server", b"uvicorn")] + encoded_headers``).

Where no source says, the code says "no source found; chosen: ...". Nothing here is shaped after rfwatch's code.

Scores: single-label projects use ``color_scores`` (normalised channel sums, a softmax-like head); multi-label
projects use ``sigmoid_color_scores`` (each class scored on its own, like the sigmoid head of
``vit_classification_onnx.py``), so absent colours still score a few percent. A test may replace both with
``server.classifier = fn(image) -> {class: confidence}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
import math
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageOps

from rfwatch.testing.catalog import VALID_KEY, Catalog, Project

__all__ = [
    "FORBIDDEN_KEY",
    "MAX_BODY",
    "VALID_KEY",
    "Catalog",
    "Fault",
    "Project",
    "Recorded",
    "RoboflowServer",
    "color_scores",
    "sigmoid_color_scores",
]

PROFILES = ("v1", "serverless", "self-hosted")
ENGINES = ("new", "old")

# A key that is NOT in the catalog. Kept so old imports work; every profile treats it as any other bad key.
FORBIDDEN_KEY = "forbidden-key"

# docs.roboflow.com: the v1 hosted API "accepts files up to 5MB" including request information; serverless v2
# "supports file uploads up to 20MB". The docs do not say whether MB is 10**6 or 2**20: chosen 10**6.
# Self-hosted: no limit found. dependencies.py reads ``await request.body()`` whole and uvicorn has no body-size
# option, so the self-hosted profile has none (max_body=None).
MB = 1000 * 1000
MAX_BODY = 5 * MB
DEFAULT_MAX_BODY: dict[str, int | None] = {"v1": 5 * MB, "serverless": 20 * MB, "self-hosted": None}

# Idle keep-alive: uvicorn's default 5 s for self-hosted (Dockerfile.onnx.cpu, run_uvicorn.sh pass no flag).
# Hosted profiles: no source found for classify.roboflow.com or serverless.roboflow.com; chosen: leave idle
# connections open (None).
DEFAULT_KEEPALIVE: dict[str, float | None] = {"v1": None, "serverless": None, "self-hosted": 5.0}

# error_handlers.py bodies (all {"message": ...}).
MSG_UNAUTHORIZED = (
    "Unauthorized access to roboflow API - check API key and make sure the key is valid for workspace you use. "
    "Visit https://docs.roboflow.com/api-reference/authentication#retrieve-an-api-key to learn how to retrieve one."
)
MSG_FORBIDDEN = (
    "Unauthorized access to roboflow API - check API key and make sure the key is valid and have required scopes. "
    "Visit https://docs.roboflow.com/api-reference/authentication#retrieve-an-api-key to learn how to retrieve one."
)
MSG_NOT_FOUND = (
    "Requested Roboflow resource not found. Make sure that workspace, project or model you referred in request exists."
)
MSG_CONTENT_TYPE_MISSING = "Content-Type header not provided with request."
MSG_INTERNAL = "Internal error."
IMAGE_LOAD_PREFIX = "Could not load input image. Cause: "
# Public messages of InputImageLoadError subclasses (image_utils.py, the new server's legacy image module).
CAUSE_MALFORMED = "Malformed base64 input image."
CAUSE_EMPTY = "Empty image payload."
CAUSE_RAW_BYTES = (
    "Invalid base64 input: the image payload contains raw bytes instead of a base64-encoded string. "
    "Please base64-encode the image before sending."
)
CAUSE_NUMPY = "NumPy image type is not supported in this configuration of `inference`."
CAUSE_UNKNOWN_TYPE = "Image declaration contains not recognised image type."
CAUSE_NO_FILE_PART = "Expected image to be send in part named 'file' of multipart/form-data request"
CAUSE_URL_INVALID = "Provided image URL is invalid"
CAUSE_URL_NON_HTTPS = "Providing images via non https:// URL is not supported in this configuration of `inference`."
CAUSE_URL_NO_FQDN = "Providing images via URL without FQDN is not supported in this configuration of `inference`."
CAUSE_URL_FETCH = "Data pointed by URL could not be decoded into image."
# GCP_SERVERLESS middleware in http_api.py: _unauthorized_response(msg) -> {"status": 401, "message": msg}.
SERVERLESS_UNAUTHORIZED = {"status": 401, "message": "Unauthorized api_key"}

# Default messages for injected statuses (fail_next / fault_mix), from error_handlers.py where it has one.
DEFAULT_MESSAGES: dict[int, str] = {
    400: IMAGE_LOAD_PREFIX + CAUSE_MALFORMED,  # no single 400 body; chosen: the commonest InputImageLoadError
    401: MSG_UNAUTHORIZED,
    402: "Not enough credits to perform this request. Verify your workspace billing page.",
    403: MSG_FORBIDDEN,
    404: MSG_NOT_FOUND,
    413: "Request Entity Too Large",  # no source found; chosen
    423: "Roboflow API usage is paused. Please contact your workspace administrator to re-enable api keys.",
    429: "Too Many Requests",  # no source found for the legacy route; chosen
    500: MSG_INTERNAL,
    501: (
        "Could not find requested ONNX Runtime Provider. Check that you are using the correct docker image on a "
        "supported device."
    ),
    502: "Internal error. Request to Roboflow API failed.",
    503: "Model is temporarily not ready - retry request.",
    504: "Timeout when attempting to connect to Roboflow API.",
    507: (
        "Model loading failed due to restrictions of server configuration - usually due to excessive runtime memory "
        "requirement of the model (for instance caused by large input size)."
    ),
}
# RoboflowAPIConnectionError: 503 WITHOUT Retry-After (error_handlers.py). Injected with retry_after="".
MSG_503_NO_RETRY_AFTER = "Internal error. Could not connect to Roboflow API."

# image_utils.py: BASE64_DATA_TYPE_PATTERN = re.compile(r"^data:image\/[a-z]+;base64,") (lowercase subtype only;
# the separate new server also takes capitals, [a-zA-Z]+).
DATA_URL_PREFIX = re.compile(rb"^data:image/[a-z]+;base64,")

# pydantic boolean strings (docs.pydantic.dev/2.2/usage/types/booleans), compared lowercased.
TRUE_STRINGS = {"1", "on", "t", "true", "y", "yes"}
FALSE_STRINGS = {"0", "off", "f", "false", "n", "no"}

# tldextract(suffix_list_urls=()) gives no fqdn for hosts without a public suffix. The public-suffix list is not
# bundled here, so these common private suffixes stand for "not on the list" (an approximation).
PRIVATE_SUFFIXES = {"local", "localhost", "localdomain", "internal", "lan", "home", "corp", "test", "invalid"}


@dataclass
class Fault:
    status: int | None = None  # None with kind reset/hang: a transport fault
    kind: str = "status"  # status | reset | hang
    retry_after: str | None = None  # None: "1" on 503 (InferenceModelNotFound), nothing otherwise; "": no header
    message: str = ""  # "": the real message for the status (DEFAULT_MESSAGES)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lowercased names
    body_bytes: int
    status: int = 0  # -1: reset injected, -2: hang injected
    image: Image.Image | None = None  # the decoded upload as received (keep_images)
    answer: Any = None  # the JSON document sent back, errors included
    at: float = field(default_factory=time.monotonic)
    connection: int = 0  # serial number of the TCP connection that carried the request


class _Reply(Exception):
    """Raised inside the handler to answer at once with a status, a JSON document and headers."""

    def __init__(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.doc, self.headers = status, doc, headers or {}


def _message(status: int, text: str, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, {"message": text}, headers)


def _image_error(cause: str) -> _Reply:
    # InputImageLoadError -> 400 f"Could not load input image. Cause: {error.get_public_error_details()}"
    return _message(400, IMAGE_LOAD_PREFIX + cause)


# Scores ------------------------------------------------------------------------------------------------------------

COLOR_NAMES = ("red", "green", "blue")


def color_scores(image: Image.Image) -> dict[str, float]:
    """Single-label scores: each channel's share of the total, so they sum to 1 like a softmax."""
    data = image.convert("RGB").resize((16, 16)).tobytes()
    sums = [sum(data[i::3]) for i in range(3)]
    total = sum(sums) or 1
    return {name: round(s / total, 4) for name, s in zip(COLOR_NAMES, sums, strict=True)}


def sigmoid_color_scores(image: Image.Image) -> dict[str, float]:
    """Multi-label scores: an independent sigmoid per class, as a multi-label ViT head gives.

    A colour whose channel mean stands well above the weakest channel is "present" (~0.94-0.96 at full strength);
    an absent colour still gets a few percent (0.039-0.052), never zero. With confidence=0.01 every class passes,
    which is what the real server does too.
    """
    data = image.convert("RGB").resize((16, 16)).tobytes()
    pixels = len(data) // 3 or 1
    means = [sum(data[i::3]) / pixels for i in range(3)]
    floor = min(means)
    biases = (-3.0, -3.2, -2.9)  # slightly different per class, as trained heads are
    return {
        name: round(1 / (1 + math.exp(-(bias + 6.0 * (mean - floor) / 255))), 4)
        for name, mean, bias in zip(COLOR_NAMES, means, biases, strict=True)
    }


# Small parsers ------------------------------------------------------------------------------------------------------


def parse_bool(value: str) -> bool | None:
    low = value.strip().lower()
    if low in TRUE_STRINGS:
        return True
    if low in FALSE_STRINGS:
        return False
    return None


def _validation_error(kind: str, name: str, value: str) -> _Reply:
    # INFERRED: FastAPI rejects a query value it cannot convert with 422 {"detail": [...]} before the route runs
    # (pydantic v2 wording). No roboflow source shows it.
    messages = {
        "float_parsing": "Input should be a valid number, unable to parse string as a number",
        "bool_parsing": "Input should be a valid boolean, unable to interpret input",
    }
    return _Reply(422, {"detail": [{"type": kind, "loc": ["query", name], "msg": messages[kind], "input": value}]})


def bearer_key(headers: Any) -> str | None:
    """api_key_resolution.py: ``Authorization: Bearer KEY`` is the last-resort key source."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class ClientGone(Exception):
    """The sender went away before its request body was complete."""


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, by Content-Length or chunked transfer encoding.

    A body that stops short (the sender was killed mid-request) raises ClientGone: the request is dropped
    unanswered and nothing is recorded. The real servers never act on half a request either: uvicorn's h11
    hands the ASGI app an ``http.disconnect`` instead of the rest of the body, and Starlette's
    ``Request.body()`` raises ``ClientDisconnect`` (INFERRED from how uvicorn and Starlette work; no Roboflow
    source says what its route handlers do then, and nothing they could do would store half a body).
    """
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        chunks = []
        while True:
            line = handler.rfile.readline()
            if not line:
                raise ClientGone
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunk = handler.rfile.read(size)
            if len(chunk) < size:
                raise ClientGone
            chunks.append(chunk)
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    if len(body) < length:
        raise ClientGone
    return body


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """Parts of a multipart/form-data body by field name (the first part of each name wins)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return {}
    parts: dict[str, bytes] = {}
    for chunk in body.split(b"--" + match.group(1).encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            (line for line in head.decode("latin-1").split("\r\n") if line.lower().startswith("content-disposition")),
            "",
        )
        name = re.search(r'(?:^|;)\s*name="?([^";]*)"?', disposition.partition(":")[2])
        if name:
            parts.setdefault(name.group(1), data.removesuffix(b"\r\n"))
    return parts


def has_fqdn(host: str) -> bool:
    """Roughly ``tldextract.TLDExtract(suffix_list_urls=())(netloc).fqdn != ""`` (image_utils.py)."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
        return False  # an IP address has no domain
    except ValueError:
        pass
    labels = host.split(".")
    return len(labels) >= 2 and all(labels) and not labels[-1].isdigit() and labels[-1] not in PRIVATE_SUFFIXES


# The server ---------------------------------------------------------------------------------------------------------


class RoboflowServer:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        profile: str = "v1",
        engine: str = "new",
        catalog: Catalog | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        self.host, self.port, self.profile, self.engine = host, port, profile, engine
        self.catalog = catalog if catalog is not None else Catalog()
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.active_learning_saved: list[Recorded] = []
        self.connections = 0  # TCP connections accepted since start or reset()
        # Scripted failures.
        self.faults: list[Fault] = []
        self.fault_rate = 0.0
        self.fault_mix: list[Fault] = []
        self.delay = 0.0
        self.hang_seconds = 30.0
        # Model and inputs.
        self.classifier: Callable[[Image.Image], dict[str, float]] | None = None
        self.files: dict[str, bytes] = {}  # served at GET /files/<name> for URL-input tests
        self.keep_images = True
        self.max_body: int | None = DEFAULT_MAX_BODY[profile]
        self.keepalive_timeout: float | None = DEFAULT_KEEPALIVE[profile]
        # env.py: ALLOW_NON_HTTPS_URL_INPUT and ALLOW_URL_INPUT_WITHOUT_FQDN default to False on every deployment.
        self.allow_non_https_url = False
        self.allow_url_without_fqdn = False
        # Benchmark knobs: API latency (seconds, +- jitter) and a shared uplink that each request body occupies for
        # len(body) * 8 / uplink_bps seconds, in arrival order. decode_images=False answers without decoding (the
        # benchmark's server must not eat the CPU it is measuring).
        self.latency = 0.0
        self.jitter = 0.0
        self.uplink_bps = 0.0
        self.decode_images = True
        self.rng = random.Random(1234)
        self._link_free_at = 0.0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()

    # lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def valid_keys(self) -> set[str]:
        return self.catalog.keys

    @valid_keys.setter
    def valid_keys(self, keys: set[str]) -> None:
        self.catalog.keys = keys

    def start(self) -> RoboflowServer:
        return _start(self, _InferenceHandler)

    def stop(self) -> None:
        _stop(self)

    # scripting

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None, message: str = "") -> None:
        with self.lock:
            self.faults.extend(Fault(status, "status", retry_after, message) for _ in range(count))

    def transport_fault_next(self, kind: str, count: int = 1) -> None:
        if kind not in ("reset", "hang"):
            raise ValueError("kind is reset or hang")
        with self.lock:
            self.faults.extend(Fault(None, kind) for _ in range(count))

    def inference_requests(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST"]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.active_learning_saved.clear()
            self.connections = 0

    def _next_fault(self) -> Fault | None:
        with self.lock:
            if self.faults:
                return self.faults.pop(0)
            if self.fault_rate and self.fault_mix and self.rng.random() < self.fault_rate:
                return self.rng.choice(self.fault_mix)
        return None


def _serve(owner: Any, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer bound to owner.host/port whose handler class knows its owner."""

    class Handler(handler):  # type: ignore[valid-type, misc]
        pass

    Handler.owner = owner  # type: ignore[attr-defined]

    class Server(ThreadingHTTPServer):
        allow_reuse_address = True
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:  # clients that hang up are part of tests
            pass

    return Server((owner.host, owner.port), Handler)


def _start(owner: Any, handler: type[BaseHTTPRequestHandler]) -> Any:
    """Serve ``owner`` (a stand-in) on its own thread; returns it, bound to its port."""
    owner._httpd = _serve(owner, handler)
    owner.port = owner._httpd.server_address[1]
    owner._thread = threading.Thread(target=owner._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    owner._thread.start()
    return owner


def _stop(owner: Any) -> None:
    if owner._httpd is not None:
        owner._httpd.shutdown()
        owner._httpd.server_close()
        owner._httpd = None
    _drop_connections(owner)


def _drop_connections(owner: Any) -> None:
    """Close kept-alive connections too: a stopped server must not keep answering on old sockets."""
    with owner.lock:
        sockets = list(owner._open)
        owner._open.clear()
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _BaseHandler(BaseHTTPRequestHandler):
    """Shared plumbing: connection bookkeeping, idle keep-alive timeout, quiet logs, JSON replies."""

    owner: Any
    protocol_version = "HTTP/1.1"
    server_header: str | None = None

    def setup(self) -> None:
        super().setup()
        with self.owner.lock:
            self.owner.connections += 1
            self.connection_no = self.owner.connections
            self.owner._open.add(self.connection)
        self.served = 0

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.owner.lock:
                self.owner._open.discard(self.connection)

    def handle_one_request(self) -> None:
        # uvicorn closes a connection that stays idle timeout_keep_alive seconds after a response. A socket timeout
        # while waiting for the next request line does the same: handle_one_request catches TimeoutError, sets
        # close_connection, and the socket is closed. The first request on a connection waits without a timer.
        timeout = getattr(self.owner, "keepalive_timeout", None)
        if self.served and timeout is not None:
            self.connection.settimeout(timeout)
        try:
            super().handle_one_request()
        except ClientGone:  # half a request: dropped, nothing recorded (see read_body)
            self.close_connection = True

    def parse_request(self) -> bool:
        self.connection.settimeout(None)  # the idle timer only runs between requests
        self.served += 1
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # BaseHTTPRequestHandler would add "Server: BaseHTTP/x Python/y"; send only what the imitated server sends.
        self.send_response_only(code, message)
        if self.server_header:
            self.send_header("Server", self.server_header)
        self.send_header("Date", self.date_time_string())

    def send_json(self, rec: Recorded, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(doc).encode()
        rec.status, rec.answer = status, doc
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def record(self, body: bytes) -> tuple[Recorded, urllib.parse.SplitResult]:
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        rec = Recorded(self.command, split.path, query, headers, len(body), connection=self.connection_no)
        with self.owner.lock:
            self.owner.requests.append(rec)
        return rec, split

    def reset_connection(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


class _InferenceHandler(_BaseHandler):
    owner: RoboflowServer

    @property
    def server_header(self) -> str | None:  # type: ignore[override]
        # uvicorn sends "server: uvicorn" by default (uvicorn/config.py). What the hosted front ends send: no source
        # found; chosen: no Server header.
        return "uvicorn" if self.owner.profile == "self-hosted" else None

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/files/"):
            return self._serve_file(path.removeprefix("/files/"))
        self._legacy_route()  # the legacy route is registered for GET as well as POST (routes/legacy.py)

    def do_POST(self) -> None:
        self._legacy_route()

    def _serve_file(self, name: str) -> None:
        body = read_body(self)
        rec, _ = self.record(body)
        data = self.owner.files.get(name)
        rec.status = 200 if data is not None else 404
        self.send_response(rec.status)
        self.send_header("Content-Type", "image/jpeg" if data is not None else "text/plain")
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")

    # the route

    def _legacy_route(self) -> None:
        started = time.perf_counter()
        body = read_body(self)
        rec, split = self.record(body)
        if self._apply_fault(rec):
            return
        self._wait(len(body))
        try:
            answer = self._infer(rec, split, body)
        except _Reply as reply:
            return self.send_json(rec, reply.status, reply.doc, {**self._extra_headers(started), **reply.headers})
        self.send_json(rec, 200, answer, self._extra_headers(started))

    def _extra_headers(self, started: float) -> dict[str, str]:
        # GCPServerlessMiddleware: response.headers[PROCESSING_TIME_HEADER] = str(t2 - t1), serverless only.
        if self.owner.profile == "serverless":
            return {"X-Processing-Time": str(time.perf_counter() - started)}
        return {}

    def _apply_fault(self, rec: Recorded) -> bool:
        owner = self.owner
        fault = owner._next_fault()
        if fault is None:
            return False
        if fault.kind == "reset":
            rec.status = -1
            self.reset_connection()
            return True
        if fault.kind == "hang":
            rec.status = -2
            time.sleep(owner.hang_seconds)
            self.close_connection = True
            return True
        status = fault.status or 500
        headers: dict[str, str] = {}
        message = fault.message
        if fault.retry_after:
            headers["Retry-After"] = fault.retry_after
        elif status == 503 and fault.retry_after is None:
            headers["Retry-After"] = "1"  # InferenceModelNotFound: 503 with headers={"Retry-After": "1"}
        if not message:
            if status == 503 and fault.retry_after == "":
                message = MSG_503_NO_RETRY_AFTER
            else:
                message = DEFAULT_MESSAGES.get(status, f"Injected {status}")  # unlisted: no source; chosen
        self.send_json(rec, status, {"message": message}, headers)
        return True

    def _wait(self, body_size: int) -> None:
        owner = self.owner
        if owner.delay:
            time.sleep(owner.delay)
        if owner.uplink_bps:
            with owner.lock:
                start = max(time.monotonic(), owner._link_free_at)
                owner._link_free_at = start + body_size * 8 / owner.uplink_bps
                free_at = owner._link_free_at
            time.sleep(max(0.0, free_at - time.monotonic()))
        if owner.latency:
            time.sleep(max(0.0, owner.latency + owner.rng.uniform(-owner.jitter, owner.jitter)))

    def _infer(self, rec: Recorded, split: urllib.parse.SplitResult, body: bytes) -> dict[str, Any]:
        owner, profile, query = self.owner, self.owner.profile, rec.query
        parts = [urllib.parse.unquote(p) for p in split.path.split("/") if p]
        if len(parts) != 2:
            raise _Reply(404, {"detail": "Not Found"})  # starlette's default 404; no roboflow source; chosen
        project_slug, version = parts
        model = owner.catalog.model(project_slug, version)

        # 1. Body size (docs limits). Where it is enforced (gateway, before auth) and the 413 body: no source
        #    found; chosen: first, {"message": "Request Entity Too Large"}.
        if owner.max_body is not None and len(body) > owner.max_body:
            raise _message(413, DEFAULT_MESSAGES[413])

        # 2. Key: query first, Authorization: Bearer last (api_key_resolution.py). The hosted tests run every
        #    legacy-route case with the key in the query and as a Bearer header (API_KEY_AUTH_MODES).
        query_key = query.get("api_key") or None
        key = query_key or bearer_key(self.headers)

        # 3. Hosted gatekeepers run before the route.
        if profile == "v1":
            # The Lambda authorizer: 401 without a key, 403 for a bad key or a model the key cannot reach
            # (hosted tests: ROBOFLOW_PLATFORM_LAMBDA 403 for both). Bodies: no source found (the authorizer is not
            # in the repository); chosen: the error_handlers.py bodies for 401 and 403.
            if not key:
                raise _message(401, MSG_UNAUTHORIZED)
            if key not in owner.catalog.keys or model is None:
                raise _message(403, MSG_FORBIDDEN)
        elif profile == "serverless":
            # GCP_SERVERLESS middleware: a missing key and a key the platform refuses both get
            # 401 {"status": 401, "message": "Unauthorized api_key"}.
            if not key or key not in owner.catalog.keys:
                raise _Reply(401, dict(SERVERLESS_UNAUTHORIZED))

        # 4. Body dependency (dependencies.py) and query validation (FastAPI), before the route body.
        content_type = self.headers.get("Content-Type")
        upload: bytes | None = None
        if content_type is not None and "multipart/form-data" in content_type:
            upload = parse_multipart(content_type, body).get("file")
            if upload is None:
                raise _image_error(CAUSE_NO_FILE_PART)
        confidence = self._confidence(query)
        flags = {
            name: self._bool(query, name)
            for name in ("disable_active_learning", "disable_preproc_auto_orient", "disable_preproc_static_crop")
        }

        # 5. Route body: no Content-Type and no image= -> ContentTypeMissing, before the model is loaded.
        image_url = query.get("image")
        if image_url is None and content_type is None:
            raise _message(400, MSG_CONTENT_TYPE_MISSING)

        # 6. model_manager.add_model(...): the self-hosted server asks the platform for the model with this key and
        #    passes the platform's status on (roboflow_api.py: 401 -> 401, 403 -> 403, 404 -> 404). The hosted
        #    tests expect localhost to answer 401 without a key and 403 for a bad key or an unknown model; the
        #    bodies are INFERRED (RoboflowAPINotAuthorizedError / RoboflowAPIForbiddenError in error_handlers.py).
        if profile == "self-hosted":
            if not key:
                raise _message(401, MSG_UNAUTHORIZED)
            if key not in owner.catalog.keys or model is None:
                raise _message(403, MSG_FORBIDDEN)
        if model is None:  # serverless: the key is good but the model does not exist (hosted tests: 404)
            raise _message(404, MSG_NOT_FOUND)
        project, preprocessing = model

        # 7. Load the image, then run the model.
        raw = self._load_image_bytes(query, image_url, upload, body)
        tic = time.perf_counter()
        image: Image.Image | None = None
        if owner.decode_images:
            try:
                image = Image.open(io.BytesIO(raw))
                image.load()
            except Exception as exc:
                # cv2.imdecode(...) is None -> "Malformed base64 input image."; for URL input the fetch message.
                raise _image_error(CAUSE_URL_FETCH if image_url is not None else CAUSE_MALFORMED) from exc
            if owner.keep_images:
                rec.image = image
        elif raw[:2] != b"\xff\xd8" and raw[:8] != b"\x89PNG\r\n\x1a\n":
            raise _image_error(CAUSE_MALFORMED)
        answer = self._answer(project, preprocessing, image, confidence, flags, time.perf_counter() - tic)

        # 8. Active learning (managers/active_learning.py): skipped when disabled for the request or when
        #    request.api_key is None. The route builds the request with the QUERY api_key, so a Bearer-only key
        #    skips it (INFERRED, as the notes say). ACTIVE_LEARNING_ENABLED defaults to True; the project must have
        #    an Active Learning configuration on the platform (catalog Project.active_learning).
        if project.active_learning and not flags["disable_active_learning"] and query_key is not None:
            with owner.lock:
                owner.active_learning_saved.append(rec)
        return answer

    def _confidence(self, query: dict[str, str]) -> float:
        raw = query.get("confidence")
        if raw is None:
            value = 0.4  # confidence: float = Query(0.4, ...)
        else:
            try:
                value = float(raw)
            except ValueError:
                raise _validation_error("float_parsing", "confidence", raw) from None
        if value >= 1:  # routes/legacy.py: confidence 50 means 0.5
            value /= 100
        return max(value, 0.01)  # CONFIDENCE_LOWER_BOUND_OOM_PREVENTION = 0.01 (env.py)

    def _bool(self, query: dict[str, str], name: str) -> bool:
        raw = query.get(name)
        if raw is None:
            return False  # Optional[bool] = Query(False)
        value = parse_bool(raw)
        if value is None:
            raise _validation_error("bool_parsing", name, raw)
        return value

    def _load_image_bytes(
        self, query: dict[str, str], image_url: str | None, upload: bytes | None, body: bytes
    ) -> bytes:
        if image_url is not None:
            return self._fetch_url(image_url)
        if upload is not None:
            # The multipart part's raw bytes are base64-encoded by the route, then decoded again: raw JPEG is fine.
            if not upload:
                raise _image_error(CAUSE_EMPTY)
            return upload
        image_type = (query.get("image_type") or "base64").lower()
        if image_type == "numpy":
            raise _image_error(CAUSE_NUMPY)  # ALLOW_NUMPY_INPUT defaults to False
        if image_type == "url":
            return self._fetch_url(body.decode("utf-8", "replace").strip())
        if image_type != "base64":
            raise _image_error(CAUSE_UNKNOWN_TYPE)  # the new server's _UNKNOWN_IMAGE_TYPE_ERROR
        return self._decode_base64(body)

    def _decode_base64(self, value: bytes) -> bytes:
        # Raw (non-UTF-8) bytes: the new engine answers 400 with the RAW_BYTES message
        # (inference_models_adapters.py _decode_base64_payload; pinned by the new server's router test). The old
        # engine calls value.decode("utf-8") outside any try in image_utils.load_image_base64, so the
        # UnicodeDecodeError reaches with_route_exceptions' last branch: 500 "Internal error." (INFERRED).
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            if self.owner.engine == "new":
                raise _image_error(CAUSE_RAW_BYTES) from None
            raise _message(500, MSG_INTERNAL) from None
        value = DATA_URL_PREFIX.sub(b"", value)
        try:
            raw = base64.b64decode(value)  # pybase64.b64decode: not validating, bad padding raises binascii.Error
        except (binascii.Error, ValueError):
            raise _image_error(CAUSE_MALFORMED) from None
        if not raw:
            raise _image_error(CAUSE_EMPTY)
        return raw

    def _fetch_url(self, url: str) -> bytes:
        owner = self.owner
        # image_utils.load_image_from_url: parse, scheme, FQDN (whitelist/blacklist not modelled), then requests.get.
        try:
            parsed = urllib.parse.urlsplit(url)
            host = parsed.hostname or ""
        except ValueError:
            raise _image_error(CAUSE_URL_INVALID) from None
        if parsed.scheme != "https" and not owner.allow_non_https_url:
            raise _image_error(CAUSE_URL_NON_HTTPS)
        if not has_fqdn(host) and not owner.allow_url_without_fqdn:
            raise _image_error(CAUSE_URL_NO_FQDN)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.read()
        except Exception:
            raise _image_error(CAUSE_URL_FETCH) from None

    # answers

    def _answer(
        self,
        project: Project,
        preprocessing: dict[str, Any],
        image: Image.Image | None,
        confidence: float,
        flags: dict[str, bool],
        took: float,
    ) -> dict[str, Any]:
        owner = self.owner
        if image is None:  # decode_images=False: fixed scores, unknown size
            classes = list(project.classes)
            top = 0.95 if project.multi_label else 0.9
            rest = 0.04 if project.multi_label else round(0.1 / max(1, len(classes) - 1), 4)
            scores = {c: (top if i == 0 else rest) for i, c in enumerate(classes)}
            size = (0, 0)
        else:
            view, size = _model_view(image, preprocessing, owner.engine, flags)
            scorer = owner.classifier or (sigmoid_color_scores if project.multi_label else color_scores)
            scores = scorer(view)
            # A classifier may name classes the catalog does not list: then its keys are the model's classes.
            classes = list(project.classes) if set(scores) <= set(project.classes) else list(scores)
        head = {"inference_id": str(uuid.uuid4()), "time": took, "image": {"width": size[0], "height": size[1]}}
        if project.multi_label:
            return _multi_label(head, classes, scores, confidence, owner.engine)
        return _single_label(head, classes, scores, confidence, owner.engine)


def _model_view(
    image: Image.Image, preprocessing: dict[str, Any], engine: str, flags: dict[str, bool]
) -> tuple[Image.Image, tuple[int, int]]:
    """What the model sees, and the image size the answer reports.

    Orientation: the old engine honours EXIF only when the version has "auto-orient" (roboflow.py:
    ``disable_preproc_auto_orient or "auto-orient" not in self.preproc.keys()``; otherwise it decodes with
    IMREAD_IGNORE_ORIENTATION). New engine: no source found for how the inference-models adapters decode; chosen:
    like the new server's decoder, which applies EXIF orientation ("The decoder applies EXIF orientation; report
    the size of what it yields."), unless disable_preproc_auto_orient is true.
    Size: taken after orientation and BEFORE static crop and resize (preprocess.py computes img_dims first).
    Static crop (preprocess.py take_static_crop): percentages of width/height, unless disable_preproc_static_crop.
    Resize is not applied: it barely changes colour means, and nothing in the answer depends on it.
    """
    orient = not flags["disable_preproc_auto_orient"] and (engine == "new" or "auto-orient" in preprocessing)
    view = ImageOps.exif_transpose(image) if orient else image
    size = view.size
    crop = preprocessing.get("static-crop") or {}
    if crop.get("enabled") and not flags["disable_preproc_static_crop"]:
        w, h = view.size
        box = tuple(int(float(crop[k]) / 100 * d) for k, d in (("x_min", w), ("y_min", h), ("x_max", w), ("y_max", h)))
        view = view.crop(box)
    return view, size


def _single_label(
    head: dict[str, Any], classes: list[str], scores: dict[str, float], confidence: float, engine: str
) -> dict[str, Any]:
    ranked = [(i, c, float(scores.get(c, 0.0))) for i, c in enumerate(classes)]
    if engine == "new":
        # inference_models_adapters.py: `if class_score < confidence_threshold: continue` (keeps >=), rounded to 4,
        # sorted by confidence; top "" and confidence 0.0 when nothing passes.
        ranked = [r for r in ranked if r[2] >= confidence]
    # Old engine (classification_base.py): every class, rounded to 4, sorted, top = argmax. Not filtered.
    predictions = sorted(
        ({"class": c, "class_id": i, "confidence": round(s, 4)} for i, c, s in ranked),
        key=lambda p: p["confidence"],
        reverse=True,
    )
    return {
        **head,
        "predictions": predictions,
        "top": predictions[0]["class"] if predictions else "",
        "confidence": predictions[0]["confidence"] if predictions else 0.0,
    }


def _multi_label(
    head: dict[str, Any], classes: list[str], scores: dict[str, float], confidence: float, engine: str
) -> dict[str, Any]:
    values = {c: float(scores.get(c, 0.0)) for c in classes}
    if engine == "old":
        # classification_base.py: `if score > confidence_threshold` (strict). Its multi-label response reports
        # width=img_dims[0], height=img_dims[1] while prepare() returns img_dims = (h, w): width and height come out
        # swapped. INFERRED from the code, kept on purpose.
        passed = [c for c in classes if values[c] > confidence]
        head = {**head, "image": {"width": head["image"]["height"], "height": head["image"]["width"]}}
    else:
        # vit_classification_onnx.py: torch.argwhere(confidence >= threshold), class order.
        passed = [c for c in classes if values[c] >= confidence]
    return {
        **head,
        "predictions": {c: {"confidence": values[c], "class_id": i} for i, c in enumerate(classes)},
        "predicted_classes": passed,
    }

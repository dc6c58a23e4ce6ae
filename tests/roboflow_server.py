"""A real HTTP server on 127.0.0.1 that speaks Roboflow's legacy classification protocol.

It decodes the base64 body as an image, checks ``api_key`` and ``confidence``,
answers in the single-label or multi-label shape, and returns the real
server's errors. Tests (and the benchmark) can make it slow, make it fail,
take it down and bring it back on the same port.

Models it knows:
- ``colors/N``: single-label; classes red, green, blue by the mean of each channel.
- ``tags/N``: multi-label; every channel whose mean is over 100 is predicted.
A test may replace the classifier with ``server.classifier = fn(image) -> {class: confidence}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import random
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

from PIL import Image

VALID_KEY = "test-key-0123456789"
FORBIDDEN_KEY = "forbidden-key"
MAX_BODY = 5 * 1000 * 1000


@dataclass
class Fault:
    status: int | None = None  # None with kind: a transport fault
    kind: str = "status"  # status | reset | hang
    retry_after: str | None = None
    message: str = "Injected failure"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_bytes: int
    status: int = 0
    image: Image.Image | None = None
    answer: dict[str, Any] | None = None
    at: float = field(default_factory=time.monotonic)


def color_scores(image: Image.Image) -> dict[str, float]:
    data = image.convert("RGB").resize((16, 16)).tobytes()
    sums = [sum(data[i::3]) for i in range(3)]
    total = sum(sums) or 1
    return {name: round(s / total, 4) for name, s in zip(("red", "green", "blue"), sums, strict=False)}


class RoboflowServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.fault_rate = 0.0
        self.fault_mix: list[Fault] = []
        self.delay = 0.0
        self.hang_seconds = 30.0
        self.classifier: Callable[[Image.Image], dict[str, float]] = color_scores
        self.files: dict[str, bytes] = {}
        self.valid_keys = {VALID_KEY}
        self.keep_images = True
        # Benchmark knobs: API latency (seconds, +- jitter) and a shared uplink that each request body
        # occupies for len(body) * 8 / uplink_bps seconds, in arrival order. decode_images=False
        # answers without decoding (the benchmark's server must not eat the CPU it is measuring).
        self.latency = 0.0
        self.jitter = 0.0
        self.uplink_bps = 0.0
        self.decode_images = True
        self.max_body = MAX_BODY  # 5 MB like the legacy hosted API; serverless v2 accepts 20 MB
        self._link_free_at = 0.0
        self.rng = random.Random(1234)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RoboflowServer:
        server = self

        class Handler(_Handler):
            owner = server

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True

            def handle_error(self, request, client_address):  # clients that hang up are part of the tests
                pass

        httpd = Server((self.host, self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # scripting

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None, message: str = "") -> None:
        with self.lock:
            for _ in range(count):
                self.faults.append(Fault(status, "status", retry_after, message or f"Injected {status}"))

    def transport_fault_next(self, kind: str, count: int = 1) -> None:
        with self.lock:
            self.faults.extend(Fault(None, kind) for _ in range(count))

    def inference_requests(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST"]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()

    def _next_fault(self) -> Fault | None:
        with self.lock:
            if self.faults:
                return self.faults.pop(0)
            if self.fault_rate and self.fault_mix and self.rng.random() < self.fault_rate:
                return self.rng.choice(self.fault_mix)
        return None


class _Handler(BaseHTTPRequestHandler):
    owner: RoboflowServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # helpers

    def _send(self, status: int, doc: Any, extra: dict[str, str] | None = None) -> None:
        payload = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, rec: Recorded, status: int, message: str, extra: dict[str, str] | None = None) -> None:
        rec.status = status
        self._send(status, {"message": message}, extra)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        name = path.removeprefix("/files/")
        data = self.owner.files.get(name)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        owner = self.owner
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = Recorded("POST", split.path, query, {k.lower(): v for k, v in self.headers.items()}, len(body))
        with owner.lock:
            owner.requests.append(rec)

        fault = owner._next_fault()
        if fault is not None:
            if fault.kind == "reset":
                rec.status = -1
                # SO_LINGER 0 turns close() into a TCP RST.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if fault.kind == "hang":
                rec.status = -2
                time.sleep(owner.hang_seconds)
                self.close_connection = True
                return
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return self._error(rec, fault.status or 500, fault.message, extra)
        if owner.delay:
            time.sleep(owner.delay)
        if owner.uplink_bps:
            with owner.lock:
                start = max(time.monotonic(), owner._link_free_at)
                owner._link_free_at = start + len(body) * 8 / owner.uplink_bps
                free_at = owner._link_free_at
            time.sleep(max(0.0, free_at - time.monotonic()))
        if owner.latency:
            time.sleep(max(0.0, owner.latency + owner.rng.uniform(-owner.jitter, owner.jitter)))

        parts = [p for p in split.path.split("/") if p]
        if len(parts) != 2 or not parts[1].isdigit():
            return self._error(rec, 404, f"Model {split.path} not found")
        project = parts[0]
        key = query.get("api_key")
        if not key:
            return self._error(rec, 400, "API key is required")
        if key == FORBIDDEN_KEY:
            return self._error(rec, 403, "Unauthorized access to this model.")
        if key not in owner.valid_keys:
            return self._error(rec, 401, "Unauthorized api_key")
        if project not in ("colors", "tags"):
            return self._error(rec, 404, f"Model {project}/{parts[1]} does not exist")
        try:
            threshold = float(query.get("confidence", "0.4"))
        except ValueError:
            return self._error(rec, 400, "confidence must be a number")
        if threshold >= 1:
            threshold /= 100
        threshold = max(threshold, 0.01)

        if "image" in query:
            try:
                with urllib.request.urlopen(query["image"], timeout=10) as resp:
                    raw = resp.read()
            except Exception as exc:
                return self._error(rec, 400, f"Could not load image from URL: {exc}")
        else:
            if len(body) > owner.max_body:
                return self._error(rec, 413, "Request Entity Too Large")
            if not self.headers.get("Content-Type"):
                return self._error(rec, 400, "Content-Type header is required")
            text = body.decode("ascii", "replace").strip()
            if text.startswith("data:image"):
                text = text.split(",", 1)[-1]
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return self._error(rec, 400, "Malformed base64 input image.")
        if not owner.decode_images:
            if raw[:2] != b"\xff\xd8":
                return self._error(rec, 400, "Could not decode the input image.")
            answer = _answer(project, {"red": 0.9, "green": 0.06, "blue": 0.04}, threshold, (0, 0))
            rec.answer, rec.status = answer, 200
            return self._send(200, answer)
        try:
            image = Image.open(io.BytesIO(raw))
            image.load()
        except Exception:
            return self._error(rec, 400, "Could not decode the input image.")
        if owner.keep_images:
            rec.image = image
        scores = owner.classifier(image)
        answer = _answer(project, scores, threshold, image.size)
        rec.answer = answer
        rec.status = 200
        self._send(200, answer)


def _answer(project: str, scores: dict[str, float], threshold: float, size: tuple[int, int]) -> dict[str, Any]:
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    ids = {name: i for i, name in enumerate(sorted(scores))}
    base = {
        "inference_id": str(uuid.uuid4()),
        "time": 0.0123,
        "image": {"width": size[0], "height": size[1]},
    }
    if project == "tags":
        base["predictions"] = {n: {"confidence": c, "class_id": ids[n]} for n, c in scores.items()}
        base["predicted_classes"] = [n for n, c in ranked if c >= max(threshold, 0.3)]
        return base
    kept = [{"class": n, "class_id": ids[n], "confidence": c} for n, c in ranked if c >= threshold]
    base["predictions"] = kept
    base["top"] = kept[0]["class"] if kept else ""
    base["confidence"] = kept[0]["confidence"] if kept else 0.0
    return base


if __name__ == "__main__":  # handy for trying the CLI by hand
    import sys

    srv = RoboflowServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"listening on {srv.url} (api key {VALID_KEY})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()

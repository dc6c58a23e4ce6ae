"""A webhook receiver on 127.0.0.1 that records deliveries and can fail, redirect, go away or come back."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ports import free_port


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    method: str = "POST"


class Receiver:
    def __init__(self, port: int | None = None):
        self.port = port if port is not None else free_port()  # (kept when a test stops it and starts it again)
        self.deliveries: list[Delivery] = []
        self.status = 204
        self.retry_after: str | None = None
        self.delay = 0.0
        self.lock = threading.Lock()
        self._httpd = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                # Recorded too: a sender that followed a redirect (as a GET, as most clients do) shows up here.
                with owner.lock:
                    owner.deliveries.append(
                        Delivery(self.path, dict(self.headers), b"", 404, time.monotonic(), method="GET")
                    )
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                expected = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(expected)
                if owner.delay:
                    time.sleep(owner.delay)
                # A sender killed mid-request leaves a short body: a real receiver rejects it.
                status = owner.status if len(body) == expected else 400
                with owner.lock:
                    owner.deliveries.append(
                        Delivery(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.monotonic()
                        )
                    )
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", f"http://127.0.0.1:{owner.port}/elsewhere")
                if owner.retry_after is not None:
                    self.send_header("Retry-After", owner.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def ok(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if 200 <= d.status < 300]

"""Serving the review page: uvicorn on its own thread in the daemon's process, or alone (``rfwatch review``).

Why Starlette and uvicorn rather than ``http.server``: the page needs routing, JSON bodies, cookies, a
middleware for the token and cross-site checks, and a server that handles many connections (the page polls)
without a thread each; both are small, well kept and typed. The app runs on an asyncio loop in one thread of
its own: a request never takes a worker's thread, and thumbnails are made in Starlette's thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from rfwatch.config import Config
from rfwatch.journal import Journal
from rfwatch.processing.undo import Undoer
from rfwatch.review.app import ClassesOf, create_app

__all__ = ["ReviewServer"]

log = logging.getLogger(__name__)


class ReviewServer:
    def __init__(self, config: Config, classes_of: ClassesOf, undoer: Callable[[Journal], Undoer] | None = None):
        self.token_needed = bool(config.review.token)
        listen = config.review.listen
        assert listen is not None
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.app = create_app(config, classes_of, lambda: self.port, undoer)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=self.host,
                port=self.port,
                log_config=None,  # rfwatch's logging, secrets masked
                access_log=False,
                lifespan="off",
                server_header=False,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> ReviewServer:
        """Serve on a thread of its own; returns once it listens (OSError if the port is taken)."""
        self._thread = threading.Thread(target=self._server.run, name="rfwatch-review", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"review.listen: cannot serve on {self.host}:{self.port} (is the port taken?)")
            time.sleep(0.02)
        if self.port == 0:  # tests ask for any free port
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
        log.info("review page at %s%s", self.url, self.how_to_open())
        return self

    def how_to_open(self) -> str:
        """What the log line adds to the address: how to get past the token (never the token itself)."""
        if not self.token_needed:
            return " (loopback only: open it in a browser on this machine)"
        return (
            " (a token is needed: open it once as ?token=<review.token from the config>, or send"
            " Authorization: Bearer <review.token>; the browser keeps a cookie)"
        )

    def serve_forever(self) -> None:
        """``rfwatch review``: serve in this (main) thread until SIGINT/SIGTERM."""
        self._server.run()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.app.state.journal.close()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

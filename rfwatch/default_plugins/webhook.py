"""The ``webhook`` action: signed, durable notifications through an outbox in the journal.

The action only commits an event to the ``outbox`` table; a delivery thread
posts it, signed per the Standard Webhooks spec, and retries with backoff
across restarts until a 2xx. The event id (``webhook-id``) is the same on
every attempt. Redirects are not followed; 410 Gone stops deliveries to that
URL. Secrets and headers are never stored: they are taken from the running
config at each attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from .. import hookimpl
from ..config import Config
from ..context import FileContext
from ..redact import redact, register_secret
from .common import mapping_options

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,          -- webhook-id, stable across attempts
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,          -- pending | delivered | gone
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created REAL NOT NULL,
    delivered REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_at);
CREATE TABLE IF NOT EXISTS gone_urls (url TEXT PRIMARY KEY, at REAL NOT NULL);
"""
MAX_BACKOFF = 3600.0


@dataclass(frozen=True)
class Target:
    url: str
    secret: bytes | None
    headers: dict[str, str]
    timeout: float


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` (Standard Webhooks)."""
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def parse_secret(secret: str) -> bytes:
    raw = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ValueError("secret: expected whsec_ followed by base64 (24-64 random bytes)") from None
    if len(key) < 16:
        raise ValueError("secret: too short; use whsec_ + base64 of 24-64 random bytes")
    return key


class Outbox:
    """The outbox table in the journal's database, with its own connection (WAL lets both write)."""

    def __init__(self, db_path: str):
        self.db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.lock = threading.Lock()
        with self.lock:
            self.db.executescript(_SCHEMA)

    def add(self, msg_id: str, url: str, body: bytes) -> bool:
        with self.lock:
            if self.db.execute("SELECT 1 FROM gone_urls WHERE url=?", (url,)).fetchone():
                return False
            self.db.execute(
                "INSERT OR IGNORE INTO outbox (id, url, body, state, next_at, created) VALUES (?,?,?,'pending',?,?)",
                (msg_id, url, body, time.time(), time.time()),
            )
        return True

    def due(self, limit: int = 16) -> list[tuple[str, str, bytes, int]]:
        with self.lock:
            return self.db.execute(
                "SELECT id, url, body, attempts FROM outbox WHERE state='pending' AND next_at<=? "
                "ORDER BY next_at LIMIT ?",
                (time.time(), limit),
            ).fetchall()

    def delivered(self, msg_id: str, status: int) -> None:
        with self.lock:
            self.db.execute(
                "UPDATE outbox SET state='delivered', attempts=attempts+1, last_status=?, last_error=NULL,"
                " delivered=? WHERE id=?",
                (status, time.time(), msg_id),
            )

    def failed(self, msg_id: str, attempts: int, status: int | None, error: str) -> float:
        delay = min(MAX_BACKOFF, 2.0 ** min(attempts, 12)) * random.uniform(0.75, 1.25)
        with self.lock:
            self.db.execute(
                "UPDATE outbox SET attempts=attempts+1, last_status=?, last_error=?, next_at=? WHERE id=?",
                (status, error[:500], time.time() + delay, msg_id),
            )
        return delay

    def gone(self, url: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO gone_urls VALUES (?,?)", (url, time.time()))
            self.db.execute("UPDATE outbox SET state='gone', last_status=410 WHERE url=? AND state='pending'", (url,))

    def depth(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()


class Dispatcher:
    """Delivers due events on its own threads, so a slow receiver never holds up classification."""

    def __init__(self, outbox: Outbox, threads: int = 4):
        self.outbox = outbox
        self.targets: dict[str, Target] = {}
        self.session = requests.Session()
        self.host = socket.gethostname()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"rfwatch-webhook-{i}", daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def wake(self) -> None:
        self._wake.set()

    def _claim(self) -> tuple[str, str, bytes, int] | None:
        with self._lock:
            for row in self.outbox.due():
                if row[0] not in self._claimed:
                    self._claimed.add(row[0])
                    return row
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            row = self._claim()
            if row is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                self.deliver(*row)
            except Exception:
                log.exception("webhook delivery of %s failed unexpectedly", row[0])
            finally:
                with self._lock:
                    self._claimed.discard(row[0])

    def deliver(self, msg_id: str, url: str, body: bytes, attempts: int) -> bool:
        target = self.targets.get(url)
        if target is None:
            self.outbox.failed(msg_id, attempts, None, "no webhook with this URL in the running config")
            return False
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "rfwatch-webhook/0.1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            **target.headers,
        }
        if target.secret is not None:
            headers["webhook-signature"] = sign(target.secret, msg_id, timestamp, body)
        try:
            resp = self.session.post(url, data=body, headers=headers, timeout=target.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            delay = self.outbox.failed(msg_id, attempts, None, redact(type(exc).__name__ + ": " + str(exc)))
            log.warning("webhook %s to %s: %s; retry in %.0fs", msg_id, redact(url), type(exc).__name__, delay)
            return False
        if 200 <= resp.status_code < 300:
            self.outbox.delivered(msg_id, resp.status_code)
            log.debug("webhook %s delivered to %s (%d)", msg_id, redact(url), resp.status_code)
            return True
        if resp.status_code == 410:
            self.outbox.gone(url)
            log.warning("webhook receiver %s answered 410 Gone: no more deliveries to it", redact(url))
            return False
        delay = self.outbox.failed(msg_id, attempts, resp.status_code, f"HTTP {resp.status_code}")
        log.warning("webhook %s to %s: HTTP %d; retry in %.0fs", msg_id, redact(url), resp.status_code, delay)
        return False

    def flush(self, deadline: float) -> None:
        """Deliver what is due now, until ``deadline`` (used before a --once run exits)."""
        while time.monotonic() < deadline:
            pending = [r for r in self.outbox.due() if r[3] == 0]
            if not pending:
                return
            self.wake()
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)
        self.session.close()


_state: dict[str, Any] = {"dispatcher": None, "db": None}
_state_lock = threading.Lock()


def dispatcher_for(config: Config) -> Dispatcher:
    db = str(config.state_path)
    with _state_lock:
        current = _state["dispatcher"]
        if current is None or _state["db"] != db:
            if current is not None:
                current.stop()
                current.outbox.close()
            _state["dispatcher"] = Dispatcher(Outbox(db))
            _state["db"] = db
        return _state["dispatcher"]


class WebhookAction:
    def __init__(self, options: Any):
        opts = mapping_options(
            options,
            "url",
            {"url", "secret", "headers", "timeout"},
            "a URL or {url: ..., secret: whsec_..., headers: {...}, timeout: 15}",
        )
        url = opts.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected an http:// or https:// URL, got {url!r}")
        secret = opts.get("secret")
        if secret is not None and not isinstance(secret, str):
            raise ValueError("secret: expected a string such as whsec_...")
        headers = opts.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, (str, int)) for v in headers.values()):
            raise ValueError(f"headers: expected a mapping of header names to strings, got {headers!r}")
        timeout = opts.get("timeout", 15)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        for value in [secret, *map(str, headers.values())]:
            register_secret(value)
        self.target = Target(
            url, parse_secret(secret) if secret else None, {str(k): str(v) for k, v in headers.items()}, float(timeout)
        )

    def describe(self, ctx: FileContext) -> str:
        return f"POST {redact(self.target.url)}"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        dispatcher = dispatcher_for(ctx.config)
        dispatcher.targets[self.target.url] = self.target
        # Derived from the journal row and step, so a step redone after a crash queues the same event.
        msg_id = (
            "msg_"
            + uuid.uuid5(
                uuid.NAMESPACE_URL,
                f"{ctx.config.state_path}#{ctx.file_id}#{ctx.rule}#{len(ctx.results)}#{self.target.url}",
            ).hex
        )
        body = json.dumps(
            {
                "type": "file.processed",
                "id": msg_id,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "host": dispatcher.host,
                "data": {
                    "source": str(ctx.source),
                    "path": str(ctx.path),
                    "rule": ctx.rule,
                    "model": ctx.model,
                    "prediction": ctx.prediction.json(),
                    "actions": ctx.results,
                },
            },
            ensure_ascii=False,
            default=str,
        ).encode("utf-8", "backslashreplace")  # non-UTF-8 names: \udcXX escapes
        if not dispatcher.outbox.add(msg_id, self.target.url, body):
            return {"queued": False, "reason": "receiver answered 410 Gone earlier"}
        dispatcher.wake()
        return {"queued": msg_id}


@hookimpl
def register_actions(register):
    register("webhook", WebhookAction)


@hookimpl
def startup(config: Config) -> None:
    # Deliveries left over from an earlier run go out even if no file arrives.
    try:
        conn = sqlite3.connect(str(config.state_path), timeout=5)
        has_outbox = conn.execute("SELECT 1 FROM sqlite_master WHERE name='outbox'").fetchone()
        conn.close()
    except sqlite3.Error:
        return
    if has_outbox:
        dispatcher = dispatcher_for(config)
        for rule in config.rules:
            for spec in rule.then:
                if spec.name == "webhook":
                    target = WebhookAction(spec.options).target
                    dispatcher.targets[target.url] = target
        dispatcher.wake()


@hookimpl
def shutdown() -> None:
    with _state_lock:
        dispatcher = _state["dispatcher"]
        _state["dispatcher"] = None
        _state["db"] = None
    if dispatcher is not None:
        dispatcher.flush(time.monotonic() + 10)
        dispatcher.stop()
        dispatcher.outbox.close()

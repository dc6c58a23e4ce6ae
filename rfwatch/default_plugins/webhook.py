"""The ``webhook`` action: signed, durable notifications, delivered through rfwatch's outbox.

The action only queues an event with ``ctx.deliver`` (written with its step, so a crash neither loses nor
duplicates one); rfwatch's delivery threads post it, signed per the Standard Webhooks spec
(standard-webhooks/standard-webhooks: spec/standard-webhooks.md), and retry with backoff across restarts
until a 2xx. The event id (``webhook-id``) is the same on every attempt.

A frame of a sequence (``sequence:``) carries ``data.sequence`` (its id, place, the sequence's label and its own
class); the first of its frames whose webhook action runs also queues one ``sequence.closed`` event listing every
frame. Its id derives from the sequence and the URL, so the other frames' actions (on any host, after any crash)
queue the same event, which the outbox keeps once. Redirects are not followed; 410
Gone stops deliveries to that URL. Secrets and headers are never stored: the deliverer takes them from the
running config at each attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from dataclasses import dataclass
from typing import Any

from rfwatch.plugin import (
    Delivered,
    Delivery,
    FileContext,
    Gone,
    Options,
    Retry,
    hookimpl,
    plugin_config,
    redact,
    register_secret,
)

KIND = "webhook"
EXAMPLE = "a URL or {url: ..., secret: whsec_..., headers: {...}, timeout: 15}"


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


def parse_target(options: Any) -> Target:
    opts = Options(options, short="url", known={"url", "secret", "headers", "timeout"}, example=EXAMPLE)
    url = opts.url("url")
    secret = opts.string("secret", None, secret=True)
    headers = opts.mapping("headers", {}, secret=True)
    for value in [secret, *headers.values()]:
        register_secret(value)
    return Target(
        url,
        parse_secret(secret) if secret else None,
        headers,
        # well below the outbox's lease, so no other process takes the row while this post still waits
        opts.number("timeout", 15.0, positive=True, maximum=120, unit="seconds"),
    )


class WebhookAction:
    def __init__(self, options: Any):
        self.target = parse_target(options)

    def describe(self, ctx: FileContext) -> str:
        return f"POST {redact(self.target.url)}"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": str(ctx.source),
            "path": str(ctx.path),
            "rule": ctx.rule,
            "model": ctx.model,
            "prediction": ctx.prediction.json(),
            "actions": ctx.results,
        }
        if ctx.sequence is None:
            return _queue(ctx, self.target.url, "file.processed", data)
        data["sequence"] = ctx.sequence.json()
        result = _queue(ctx, self.target.url, "file.processed", data)
        closed = _queue_sequence_closed(ctx, self.target.url)
        if closed:
            result["sequence_event"] = closed
        return result

    @staticmethod
    def undo(ctx: FileContext, result: Any) -> dict[str, Any]:
        """A sent event cannot be unsent: a ``file.undone`` event tells the same receiver.

        The step recorded a digest of the URL, never the URL (a Slack-style URL is a secret in itself, and
        step results reach logs, ``history`` and later events): the receiver is the configured webhook with
        that digest, whose secret and headers sign the event. With no such webhook in the config now, the
        file is partly undone and the line says why.
        """
        receiver = result.get("receiver") if isinstance(result, dict) else None
        url = next((u for u in _targets(ctx.config) if _receiver_id(u) == receiver), None) if receiver else None
        if url is None:
            why = "no webhook in the config posts to the receiver of that event" if receiver else "no receiver recorded"
            return {"outcome": "partial", "detail": f"no file.undone event sent: {why}"}
        queued = _queue(
            ctx,
            url,
            "file.undone",
            {
                "source": str(ctx.source),
                "path": str(ctx.path),  # where the file is now: this undo runs once the file is back
                "undone_from": str(ctx.undo_from or ctx.path),  # where it was before the undo
                "model": ctx.model,
                "undone": result,
            },
        )
        if not queued.get("queued"):
            return {"outcome": "nothing", "detail": queued["reason"]}
        return {"outcome": "undone", "detail": f"file.undone event {queued['queued']} queued"}


def _queue(ctx: FileContext, url: str, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    # The same id when the step is redone after a crash: the receiver sees one event, maybe twice.
    msg_id = "msg_" + ctx.delivery_id(event_type, url).replace("-", "")
    body = {
        "type": event_type,
        "id": msg_id,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "data": data,
    }
    if not ctx.deliver(KIND, body, target=url, key=msg_id):
        return {"queued": False, "receiver": _receiver_id(url), "reason": "the receiver answered 410 Gone earlier"}
    return {"queued": msg_id, "receiver": _receiver_id(url)}


def _queue_sequence_closed(ctx: FileContext, url: str) -> str | None:
    """The sequence's one ``sequence.closed`` event to ``url`` (queued by whichever frame comes first)."""
    seq = ctx.sequence
    assert seq is not None
    msg_id = "msg_" + hashlib.sha256(f"{seq.uid}#sequence.closed#{url}".encode()).hexdigest()[:32]
    body = {
        "type": "sequence.closed",
        "id": msg_id,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "data": {
            "sequence": seq.id,
            "key": seq.key,
            "class": seq.label,
            "confidence": seq.confidence,
            "label": seq.method,
            "empty": seq.empty,
            "closed_because": seq.why,
            "model": ctx.model,
            "frames": seq.members(),
        },
    }
    return msg_id if ctx.deliver(KIND, body, target=url, key=msg_id) else None


def _receiver_id(url: str) -> str:
    """What a step records of its receiver: enough to find the configured webhook again, nothing to leak."""
    return "sha256:" + hashlib.sha256(url.encode()).hexdigest()[:16]


class Deliverer:
    """Posts queued events; targets (secrets, headers) come from the config loaded now, never from storage."""

    def __init__(self, targets: dict[str, Target]):
        self.targets = targets
        self._session: Any = None

    @property
    def session(self) -> Any:
        """A requests session, made on the first post: loading the plugin (``rfwatch status``) needs no requests."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.headers["User-Agent"] = "rfwatch-webhook/0.1"
        return self._session

    def __call__(self, delivery: Delivery) -> Any:
        target = self.targets.get(delivery.target)
        if target is None:
            return Retry("no webhook with this URL in the running config")
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            **target.headers,
        }
        if target.secret is not None:
            headers["webhook-signature"] = sign(target.secret, delivery.id, timestamp, delivery.payload)
        session = self.session
        import requests

        try:
            resp = session.post(
                target.url, data=delivery.payload, headers=headers, timeout=target.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            return Retry(redact(f"{type(exc).__name__}: {exc}"))
        status = resp.status_code
        if 200 <= status < 300:
            return Delivered(status)
        if status == 410:
            return Gone("the receiver answered 410 Gone: no more deliveries to it", status)
        if 300 <= status < 400:
            # The Standard Webhooks spec: redirects are not followed (the body and signature are for this URL).
            where = redact(resp.headers.get("Location", "?"))
            return Retry(f"HTTP {status}: redirect to {where} not followed", status)
        return Retry(f"HTTP {status}", status, after=_retry_after(resp.headers.get("Retry-After")))


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _targets(config: Any) -> dict[str, Target]:
    """Every webhook of the rules, by URL: this plugin's own options, read through ``plugin_config``."""
    targets = {}
    for use in plugin_config(config, "webhook").uses("webhook"):
        target = parse_target(use.options)
        targets[target.url] = target
    return targets


@hookimpl
def register_actions(register):
    register("webhook", WebhookAction)


@hookimpl
def register_deliverers(register, config):
    register(KIND, Deliverer(_targets(config)))


# The file.undone event says where the file is now: it is queued after the other undo steps (rfwatch undo).
WebhookAction.undo.notifies = True  # type: ignore[attr-defined]

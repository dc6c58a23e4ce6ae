"""A client for Roboflow's classification API (hosted, serverless or self-hosted Inference).

Wire format, as the official clients send it::

    POST {api_url}/{project}/{version}?api_key=KEY&confidence=C
    Content-Type: application/x-www-form-urlencoded
    <base64 of a JPEG>

or, for an image hosted elsewhere, ``&image=<url>`` and no body. Unlike the
official clients this one uploads a small upright JPEG, always has timeouts,
retries what is worth retrying (honouring ``Retry-After``) and never lets the
API key into an exception or a log line.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from .prepare import ImageError, PreparedImage, prepare_image
from .redact import install_log_redaction, redact, register_secret
from .result import Prediction, ResponseFormatError

__all__ = [
    "DEFAULT_API_URL",
    "ModelId",
    "RetryPolicy",
    "RoboflowClient",
    "ApiError",
    "AuthError",
    "QuotaError",
    "ModelNotFoundError",
    "RejectedError",
    "UnavailableError",
    "is_url",
]

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://classify.roboflow.com"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


# --- errors -----------------------------------------------------------------


class ApiError(Exception):
    """The API did not classify the image. ``status`` is the HTTP status (None: no answer)."""

    retryable = False

    def __init__(self, message: str, status: int | None = None, server_message: str | None = None):
        self.status = status
        self.server_message = server_message
        super().__init__(redact(message))


class RejectedError(ApiError):
    """400, 413 and other answers about this one request: retrying will not help."""


class AuthError(ApiError):
    """401 or 403: the key is wrong or lacks scope or quota. Every request will fail alike."""


class QuotaError(ApiError):
    """402 (out of credits) or 423 (usage paused). Every request will fail alike."""


class ModelNotFoundError(ApiError):
    """404: no such model or version."""


class UnavailableError(ApiError):
    """No answer, a timeout, 429 or 5xx, still failing after the retries allowed."""

    retryable = True


def _error_for(status: int, message: str, server_message: str | None) -> ApiError:
    if status in (401, 403):
        return AuthError(message, status, server_message)
    if status in (402, 423):
        return QuotaError(message, status, server_message)
    if status == 404:
        return ModelNotFoundError(message, status, server_message)
    if status in _RETRY_STATUSES:
        return UnavailableError(message, status, server_message)
    return RejectedError(message, status, server_message)


# --- settings -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelId:
    project: str
    version: str

    @classmethod
    def parse(cls, text: str) -> ModelId:
        """Accept ``project/version`` or ``workspace/project/version`` (as the official client does)."""
        parts = [p for p in str(text).strip().strip("/").split("/")]
        if len(parts) == 3:
            parts = parts[1:]
        if len(parts) != 2 or not all(parts) or not parts[1].isdigit():
            raise ValueError(f"expected 'project/version' such as 'my-project/3', got {text!r}")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.project}/{self.version}"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff: float = 0.5  # seconds before the second try; doubles each time
    max_backoff: float = 30.0
    total: float = 120.0  # give up once this much time has passed since the first try


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# --- the client -----------------------------------------------------------------


@dataclass
class RoboflowClient:
    api_key: str
    model: ModelId | str
    api_url: str = DEFAULT_API_URL
    confidence: float = 0.01
    max_size: int = 1024
    jpeg_quality: int = 90
    connect_timeout: float = 10.0
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pool_size: int = 10
    #: Called as on_retry(attempt, delay, error) before each retry (metrics, logs).
    on_retry: Callable[[int, float, ApiError], None] | None = None
    _session: requests.Session = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("no Roboflow API key: set ROBOFLOW_API_KEY, roboflow.api_key or roboflow.api_key_file")
        register_secret(self.api_key)
        install_log_redaction()
        if isinstance(self.model, str):
            self.model = ModelId.parse(self.model)
        self.api_url = self.api_url.rstrip("/")
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(1, self.pool_size), max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "rfwatch/0.1"

    def __repr__(self) -> str:  # the dataclass repr would print the key
        return f"RoboflowClient(model={self.model}, api_url={self.api_url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RoboflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # public API

    def classify(self, source: str, model: ModelId | str | None = None) -> Prediction:
        """Classify a local file or, for ``http(s)://`` sources, an image hosted elsewhere."""
        if is_url(source):
            return self.classify_url(source, model)
        return self.classify_file(source, model)

    def classify_file(self, path: str, model: ModelId | str | None = None) -> Prediction:
        prepared = prepare_image(path, self.max_size, self.jpeg_quality)
        return self.classify_prepared(prepared, str(path), model)

    def classify_prepared(
        self, prepared: PreparedImage, image_path: str, model: ModelId | str | None = None
    ) -> Prediction:
        body = base64.b64encode(prepared.jpeg)
        raw = self._post(self._model(model), body=body)
        return Prediction.from_response(raw, image_path=image_path, image_size=prepared.original_size)

    def classify_url(self, url: str, model: ModelId | str | None = None) -> Prediction:
        raw = self._post(self._model(model), image_url=url)
        return Prediction.from_response(raw, image_path=url)

    # plumbing

    def _model(self, model: ModelId | str | None) -> ModelId:
        if model is None:
            return self.model  # type: ignore[return-value]
        return model if isinstance(model, ModelId) else ModelId.parse(model)

    def _post(self, model: ModelId, body: bytes | None = None, image_url: str | None = None) -> dict[str, Any]:
        url = f"{self.api_url}/{model.project}/{model.version}"
        params: dict[str, str] = {"api_key": self.api_key, "confidence": repr(float(self.confidence))}
        headers = {}
        if image_url is not None:
            params["image"] = image_url
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(url, params, headers, body, model)
            except ApiError as error:
                if not error.retryable:
                    raise
                delay = self._delay(attempt, error)
                elapsed = time.monotonic() - started
                if attempt >= self.retry.attempts or elapsed + delay > self.retry.total:
                    raise
                log.info("%s/%s: %s; retry %d in %.1fs", model.project, model.version, error, attempt, delay)
                if self.on_retry is not None:
                    self.on_retry(attempt, delay, error)
                time.sleep(delay)

    def _delay(self, attempt: int, error: ApiError) -> float:
        hinted = getattr(error, "retry_after", None)
        if hinted is not None:
            # The server knows best; the total budget in _post still bounds it.
            return hinted
        ceiling = min(self.retry.max_backoff, self.retry.backoff * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter keeps workers from retrying in lockstep

    def _once(
        self, url: str, params: dict[str, str], headers: dict[str, str], body: bytes | None, model: ModelId
    ) -> dict[str, Any]:
        where = f"{self.api_url}/{model.project}/{model.version}"
        try:
            resp = self._session.post(
                url, params=params, data=body, headers=headers, timeout=(self.connect_timeout, self.timeout)
            )
        except requests.Timeout:
            raise UnavailableError(f"{where}: no answer within {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            raise UnavailableError(f"{where}: cannot connect ({_reason(exc)})") from None
        except requests.RequestException as exc:
            raise UnavailableError(f"{where}: request failed ({_reason(exc)})") from None
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                raise RejectedError(f"{where}: answer is not JSON: {resp.text[:200]!r}", 200) from None
        server_message = _server_message(resp)
        error = _error_for(resp.status_code, f"{where}: HTTP {resp.status_code}: {server_message}", server_message)
        error.retry_after = _retry_after(resp.headers.get("Retry-After"))  # type: ignore[attr-defined]
        raise error


def _server_message(resp: requests.Response) -> str:
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("message"):
        return redact(str(doc["message"]))[:500]
    return redact(resp.text.strip()[:300] or resp.reason or "no message")


def _reason(exc: Exception) -> str:
    # requests' messages embed the full URL with its query: keep only the cause.
    cause: Any = exc
    while getattr(cause, "reason", None) is not None and cause.reason is not cause:
        cause = cause.reason
    text = str(cause)
    if "Max retries exceeded" in text or "url:" in text:
        text = text.split(":", 1)[-1] if "Caused by" not in text else text.split("Caused by", 1)[-1]
    return redact(text.strip(" ()"))[:200]


# Re-exported so callers can catch every "this input is not usable" error in one place.
__all__ += ["ImageError", "ResponseFormatError"]

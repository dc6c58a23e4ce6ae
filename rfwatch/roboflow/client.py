"""A client for Roboflow's classification API (hosted, serverless or self-hosted Inference).

Wire format, as the official clients send it (roboflow/inference:
inference/core/interfaces/http/http_api.py, ``legacy_infer_from_request``)::

    POST {api_url}/{project}/{version}?api_key=KEY&confidence=C&disable_active_learning=true
    Content-Type: application/x-www-form-urlencoded
    <base64 of a JPEG>

Unlike the official clients this one uploads a small upright JPEG (URLs are fetched
and prepared the same way), always has timeouts, retries what is worth retrying
(honouring ``Retry-After``) and never lets the API key into an exception or a log line.
Its requests go over the standard library's http.client (rfwatch/roboflow/transport.py: what of the
environment it reads, as requests would, and why not requests).
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rfwatch.images.prepare import DecodedImage, ImageError, PreparedImage, decode_image, prepare_image, size_decoded
from rfwatch.images.sizing import UploadSize
from rfwatch.record import record
from rfwatch.redact import install_log_redaction, redact, register_secret
from rfwatch.roboflow.ids import DEFAULT_API_URL, ModelId, is_url
from rfwatch.roboflow.result import DEFAULT_MULTI_LABEL_THRESHOLD, Prediction, ResponseFormatError
from rfwatch.roboflow.transport import Answer, Failure, Transport, TransportError

__all__ = [
    "DEFAULT_API_URL",
    "ModelId",
    "RetryPolicy",
    "RoboflowClient",
    "ApiError",
    "AuthError",
    "QuotaError",
    "ModelNotFoundError",
    "ModelAccessError",
    "BlockingError",
    "ServerSetupError",
    "RejectedError",
    "UnavailableError",
    "is_url",
    "fetch_image",
]

log = logging.getLogger(__name__)

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


class BlockingError(ApiError):
    """An answer that every request would get alike (key, model, quota, server setup): files wait, not fail."""


class AuthError(BlockingError):
    """401: the key is missing or refused (on serverless.roboflow.com also a key that is simply wrong)."""


class ModelAccessError(BlockingError):
    """403: the key is refused, or the model does not exist.

    classify.roboflow.com and self-hosted servers answer 403 for both (roboflow/inference:
    tests/inference/hosted_platform_tests/test_roboflow_models.py, EXPECTED_AUTH_ERROR_FOR_ENVIRONMENT and
    EXPECTED_MODEL_NOT_FOUND_ERROR_FOR_ENVIRONMENT); only the platform API can tell which.
    """


class QuotaError(BlockingError):
    """402 (out of credits) or 423 (usage paused)."""


class ModelNotFoundError(BlockingError):
    """404: no such model or version (serverless.roboflow.com; the v1 host and self-hosted servers say 403)."""


class ServerSetupError(BlockingError):
    """501 or 507: the server cannot run this model as set up (no ONNX provider, model too large for it).

    roboflow/inference: inference/core/interfaces/http/error_handlers.py (OnnxProviderNotAvailable,
    ModelDeploymentNotSupportedError -> 501; CannotInitialiseModelDueToInputSizeError,
    ModelPackageRestrictedError -> 507). Neither clears by retrying the request.
    """


class UnavailableError(ApiError):
    """No answer, a timeout, 429 or another 5xx, still failing after the retries allowed."""

    retryable = True


_EXPLAIN = {
    401: "the API refused the key",
    402: "the workspace is out of credits",
    403: "the API refused the key, or does not know model {model} (this server answers 403 for both)",
    404: "the API does not know model {model}",
    423: "API usage is paused for this workspace",
    501: "the server cannot run this model as it is set up",
    507: "the server cannot load this model (not enough memory or a restricted package)",
}


def _error_for(status: int, where: str, model: ModelId, server_message: str) -> ApiError:
    explained = _EXPLAIN.get(status, "").format(model=model)
    message = f"{where}: HTTP {status}: " + (f"{explained} ({server_message})" if explained else server_message)
    kind: type[ApiError]
    if status == 401:
        kind = AuthError
    elif status == 403:
        kind = ModelAccessError
    elif status == 404:
        kind = ModelNotFoundError
    elif status in (402, 423):
        kind = QuotaError
    elif status in (501, 507):
        kind = ServerSetupError
    elif status in _RETRY_STATUSES:
        kind = UnavailableError
    else:
        kind = RejectedError
    return kind(message, status, server_message)


# --- settings -----------------------------------------------------------------


@record
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff: float = 0.5  # seconds before the second try; doubles each time
    max_backoff: float = 30.0
    total: float = 120.0  # give up once this much time has passed since the first try


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
    multi_label_threshold: float = DEFAULT_MULTI_LABEL_THRESHOLD
    #: False: every request carries disable_active_learning=true (see _params).
    active_learning: bool = False
    max_size: int = 1024
    jpeg_quality: int = 90
    connect_timeout: float = 10.0
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pool_size: int = 10
    #: Called as on_retry(attempt, delay, error) before each retry (metrics, logs).
    on_retry: Callable[[int, float, ApiError], None] | None = None
    #: The upload size for a model (its input, from the platform's facts); None: ``max_size`` for all.
    upload_sizes: Callable[[ModelId], UploadSize] | None = None
    _transport: Transport = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("no Roboflow API key: set ROBOFLOW_API_KEY, roboflow.api_key or roboflow.api_key_file")
        register_secret(self.api_key)
        install_log_redaction()
        if isinstance(self.model, str):
            self.model = ModelId.parse(self.model)
        self.api_url = self.api_url.rstrip("/")
        # Retries are this client's own (_post), with its backoff and Retry-After; the transport sends once.
        self._transport = Transport(self.api_url, "rfwatch/0.1", max_idle=self.pool_size)

    def __repr__(self) -> str:  # the dataclass repr would print the key
        return f"RoboflowClient(model={self.model}, api_url={redact(self.api_url)!r})"  # a password in it masked

    @property
    def model_key(self) -> str:
        """The default model as configured (workspace included when named)."""
        return self._model(None).key

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RoboflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # public API

    def classify(self, source: str, model: ModelId | str | None = None) -> Prediction:
        """Classify a local file, or an ``http(s)://`` URL that rfwatch fetches itself (see :func:`fetch_image`)."""
        if is_url(source):
            return self.classify_url(source, model)
        return self.classify_file(source, model)

    def upload_size(self, model: ModelId | str | None = None) -> UploadSize:
        """How big to upload a picture for ``model``: sized to its input when known, else ``max_size``."""
        if self.upload_sizes is not None:
            return self.upload_sizes(self._model(model))
        return UploadSize(max_size=self.max_size)

    def prepare(
        self, source: str | bytes, model: ModelId | str | None = None, name: str | None = None
    ) -> PreparedImage:
        return prepare_image(source, self.upload_size(model), self.jpeg_quality, name=name)

    def decode_early(
        self, source: str | bytes, name: str | None = None, admit: Callable[[int], bool] | None = None
    ) -> DecodedImage | None:
        """Decode a picture before the model's input size is known (a cold start): see UploadSize.early. (Not
        ``upload_size``: on a cold start it waits for the platform's answer, which is what this decode overlaps.)"""
        return decode_image(source, UploadSize(max_size=self.max_size).early(), name=name, admit=admit)

    def prepare_decoded(self, decoded: DecodedImage, model: ModelId | str | None = None) -> PreparedImage | None:
        """The upload from an early decode, if it covers the size now known; None: decode the file again."""
        size = self.upload_size(model)
        return size_decoded(decoded, size, self.jpeg_quality) if decoded.covers(size) else None

    def classify_file(self, path: str, model: ModelId | str | None = None) -> Prediction:
        return self.classify_prepared(self.prepare(path, model), str(path), model)

    def classify_prepared(
        self, prepared: PreparedImage, image_path: str, model: ModelId | str | None = None
    ) -> Prediction:
        body = base64.b64encode(prepared.jpeg)
        raw, support = self._post(self._model(model), body)
        prediction = Prediction.from_response(
            raw,
            image_path=image_path,
            image_size=prepared.original_size,
            multi_label_threshold=self.multi_label_threshold,
        )
        return dataclasses.replace(prediction, support=support)

    def classify_url(self, url: str, model: ModelId | str | None = None) -> Prediction:
        """Fetch the image and upload it like a local file.

        The hosted servers (and self-hosted ones, by default) refuse ``image=`` URLs that are not https or
        have no public host name (roboflow/inference: inference/core/env.py ALLOW_NON_HTTPS_URL_INPUT,
        ALLOW_URL_INPUT_WITHOUT_FQDN; inference/core/utils/image_utils.py load_image_from_url), so a photo on
        ``http://nas.local/`` could not be classified that way; fetched here it also arrives upright and small.
        """
        return self.classify_prepared(self.prepare(fetch_image(url), model, name=url), url, model)

    # plumbing

    def _model(self, model: ModelId | str | None) -> ModelId:
        if model is None:
            return self.model  # type: ignore[return-value]
        return model if isinstance(model, ModelId) else ModelId.parse(model)

    def _params(self) -> dict[str, str]:
        params = {"api_key": self.api_key, "confidence": repr(float(self.confidence))}
        if not self.active_learning:
            # The legacy route is eligible for active learning: a project that has it configured would save
            # the uploaded photos into its dataset (roboflow/inference: inference/core/managers/active_learning.py).
            params["disable_active_learning"] = "true"
        return params

    def _post(self, model: ModelId, body: bytes) -> tuple[dict[str, Any], dict[str, str]]:
        path = f"/{model.project}/{model.version}"
        params = list(self._params().items())
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(path, params, body, model)
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
        self, path: str, params: list[tuple[str, str]], body: bytes, model: ModelId
    ) -> tuple[dict[str, Any], dict[str, str]]:
        where = f"{self.api_url}/{model.project}/{model.version}"
        try:
            resp = self._transport.request(
                "POST", path, params, body, "application/x-www-form-urlencoded", (self.connect_timeout, self.timeout)
            )
        except TransportError as exc:
            reason = redact(str(exc))[:200]
            if exc.failure is Failure.TIMEOUT:
                raise UnavailableError(f"{where}: no answer within {self.timeout:g}s") from None
            if exc.failure is Failure.CONNECT:
                raise UnavailableError(f"{where}: cannot connect ({reason})") from None
            raise UnavailableError(f"{where}: request failed ({reason})") from None
        if resp.status == 200:
            try:
                doc = json.loads(resp.body)
            except ValueError:
                raise RejectedError(f"{where}: answer is not JSON: {resp.text[:200]!r}", 200) from None
            return doc, _support(resp, doc)
        error = _error_for(resp.status, where, model, _server_message(resp))
        error.retry_after = _retry_after(resp.headers.get("Retry-After"))  # type: ignore[attr-defined]
        raise error


#: Response headers worth keeping for Roboflow support (request ids, processing time, engine), when present.
_SUPPORT_HEADER = re.compile(
    r"(?i)^x-(.*request-?id.*|amzn-.*id|amz-apigw-id|cloud-trace-context|processing-time|"
    r"inference-engine|correlation-id|trace-?id)$"
)


def _support(resp: Answer, doc: Any) -> dict[str, str]:
    """What to quote to Roboflow support about this answer: the inference_id and identifying headers."""
    support = {k.lower(): redact(v)[:200] for k, v in resp.headers.items() if _SUPPORT_HEADER.match(k)}
    if isinstance(doc, dict) and doc.get("inference_id"):
        support["inference_id"] = str(doc["inference_id"])[:200]
    return support


# --- URL inputs ------------------------------------------------------------------

#: Largest image rfwatch fetches for ``classify URL`` (a 24 MP JPEG is ~12 MB; RAW-sized TIFFs fit too).
MAX_FETCH_BYTES = 100 * 1024 * 1024
FETCH_TIMEOUT = 30.0


def fetch_image(url: str, max_bytes: int = MAX_FETCH_BYTES, timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET ``url`` with a size and time limit; :class:`ImageError` naming the URL and the reason otherwise.

    Its own session: the Roboflow key is never sent to another host.
    """
    import requests  # only ``classify URL`` fetches a picture: the daemon never loads requests for it

    deadline = time.monotonic() + timeout
    try:
        with requests.get(url, stream=True, timeout=(min(10.0, timeout), timeout)) as resp:
            if resp.status_code != 200:
                raise ImageError(url, f"cannot fetch: HTTP {resp.status_code} {resp.reason or ''}".strip())
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(url, f"cannot fetch: {int(declared)} bytes is more than the {max_bytes} allowed")
            chunks, size = [], 0
            for chunk in resp.iter_content(1024 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageError(url, f"cannot fetch: more than the {max_bytes} bytes allowed")
                if time.monotonic() > deadline:
                    raise ImageError(url, f"cannot fetch: not complete after {timeout:g}s")
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise ImageError(url, f"cannot fetch: {_reason(exc)}") from None
    return b"".join(chunks)


def _server_message(resp: Answer) -> str:
    try:
        doc = json.loads(resp.body)
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

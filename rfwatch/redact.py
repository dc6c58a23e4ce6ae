"""Keep secrets out of log lines and exception text.

The Roboflow wire format puts the API key in the query string, and urllib3
logs every request URL at DEBUG while requests puts it into exception
messages. Everything that can carry a URL goes through :func:`redact`.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["redact", "register_secret", "RedactingFilter", "install_log_redaction"]

_QUERY_SECRET = re.compile(r"(?i)\b(api_key|apikey|api-key|token|secret)=([^&\s\"'#]+)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")
_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that it is masked wherever it appears, not only after ``api_key=``."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    text = _QUERY_SECRET.sub(r"\1=***", text)
    text = _BEARER.sub(r"\1 ***", text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with secrets masked; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is still worth logging
            message = str(record.msg)
        # A file name with a newline must not be able to forge a second log line.
        cleaned = redact(message).replace("\n", "\\n").replace("\r", "\\r")
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()
# Loggers that see request URLs. A filter on a logger applies to records created
# there, which catches them before any handler (including pytest's) sees them.
_URL_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.util.retry", "requests")


def install_log_redaction(handler: logging.Handler | None = None) -> None:
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if handler is not None and _FILTER not in handler.filters:
        handler.addFilter(_FILTER)

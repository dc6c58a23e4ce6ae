"""Logging for the CLI and the daemon: text or JSON lines, secrets always masked.

When stderr is journald's stream (``JOURNAL_STREAM`` names stderr's device and inode, as systemd.exec(5) says to
check), each line starts with its syslog priority, ``<3>`` for an error, ``<4>`` a warning, ``<6>`` info, ``<7>``
debug (sd-daemon(3)), so ``journalctl -p warning`` finds failures; and lines carry no timestamp of their own: the
journal adds one. Elsewhere times are RFC 3339 with the local offset (``2026-12-07T01:02:03.456+01:00``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys

from rfwatch.redact import RedactingFilter, install_log_redaction

__all__ = ["setup_logging", "JsonFormatter", "rfc3339", "stderr_is_journal"]


def rfc3339(t: float, timespec: str = "milliseconds") -> str:
    """A Unix time as RFC 3339 with the local offset."""
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec=timespec)


def stderr_is_journal() -> bool:
    """JOURNAL_STREAM is "device:inode" of the stream journald gave us; it is inherited, so compare with stderr."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


#: syslog priorities (sd-daemon(3): SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG ...).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class _Priority(logging.Formatter):
    """Prefix each line (each line of a multi-line record) with its ``<N>``, for journald."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class _TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created)


class JsonFormatter(logging.Formatter):
    def __init__(self, with_time: bool = True):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {}
        if self.with_time:
            doc["time"] = rfc3339(record.created)
        doc["level"] = record.levelname.lower()
        doc["logger"] = record.name
        doc["message"] = record.getMessage()
        for key in ("file", "event", "rule", "class_", "confidence", "outcome"):
            if hasattr(record, key):
                doc[key.rstrip("_")] = getattr(record, key)
        if record.exc_info:
            doc["error"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(verbosity: int = 0, fmt: str = "text", stream=None) -> logging.Handler:
    under_systemd = stream is None and stderr_is_journal()
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(with_time=not under_systemd)
    elif under_systemd:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(_Priority(formatter) if under_systemd else formatter)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_rfwatch", False):
            root.removeHandler(old)
    handler._rfwatch = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity >= 0 else logging.WARNING)
    if verbosity < 2:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    install_log_redaction(handler)
    return handler

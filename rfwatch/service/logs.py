"""Logging for the CLI and the daemon: text or JSON lines, secrets always masked.

Under systemd (``JOURNAL_STREAM`` set) lines carry no timestamp of their own:
the journal adds one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from rfwatch.redact import RedactingFilter, install_log_redaction

__all__ = ["setup_logging", "JsonFormatter"]


class JsonFormatter(logging.Formatter):
    def __init__(self, with_time: bool = True):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {}
        if self.with_time:
            doc["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z"
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
    under_systemd = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(with_time=not under_systemd))
    elif under_systemd:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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

"""The ``log`` action: one JSON line (or CSV row) per file, appended atomically.

Each record is written with a single ``write()`` on an ``O_APPEND`` descriptor,
so concurrent workers never interleave lines. A line cut short before (a power cut, a full disk) is not glued to
the next record: that record starts on a line of its own. A write the disk cut short fails the step.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from rfwatch.plugin import FileContext, Options, hookimpl

CSV_FIELDS = ["time", "event", "source", "path", "model", "top", "confidence", "predicted_classes", "rule", "actions"]
_header_lock = threading.Lock()


class LogAction:
    def __init__(self, options: Any):
        opts = Options(
            options, short="path", known={"path", "format"}, example="a file path or {path: ..., format: jsonl|csv}"
        )
        self.template = opts.template("path")
        default_format = "csv" if self.template.text.lower().endswith(".csv") else "jsonl"
        self.format = opts.choice("format", ("jsonl", "json", "csv"), default_format, what="jsonl or csv")

    def _target(self, ctx: FileContext) -> Path:
        rendered = Path(os.path.expanduser(self.template.render(ctx.values())))
        return rendered if rendered.is_absolute() else ctx.config.base_dir / rendered

    def describe(self, ctx: FileContext) -> str:
        return f"-> {self._target(ctx)}"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        target = self._target(ctx)
        event = ctx.delivery_id("log")  # unique to this step, in every round: found again on a resume
        if ctx.resume and _already_written(target, event):
            return {"appended": str(target), "event": event, "recovered": True}
        ctx.intent(event=event)
        pred = ctx.prediction
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),  # RFC 3339, as jq's fromdateiso8601 wants
            "event": event,
            "source": str(ctx.source),
            "path": str(ctx.path),
            "model": ctx.model,
            "top": pred.top,
            "confidence": pred.confidence,
            "predicted_classes": list(pred.predicted_classes),
            "rule": ctx.rule,
            "actions": ctx.results,
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.format == "csv":
            row = dict(
                record,
                predicted_classes="|".join(record["predicted_classes"]),
                actions=json.dumps(record["actions"], default=str, ensure_ascii=False),
            )
            buf = io.StringIO()
            csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n").writerow(row)
            with _header_lock:  # the header must be the file's first line, written once
                _append(target, buf.getvalue().encode("utf-8", "backslashreplace"), header=",".join(CSV_FIELDS) + "\n")
        else:
            line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
            _append(target, line.encode("utf-8", "backslashreplace"))  # non-UTF-8 names: \udcXX escapes
        return {"appended": str(target), "event": event}

    @staticmethod
    def undo(ctx: FileContext, result: Any) -> dict[str, Any]:
        return {"outcome": "nothing", "detail": "a log record stays in the log (the undo is in the journal)"}


def _append(target: Path, data: bytes, header: str | None = None) -> None:
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if header is not None and size == 0:
            data = header.encode() + data
        elif size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # the last line was cut short: this record is not glued to it
        written = os.write(fd, data)
        if written != len(data):  # a full disk (or quota): the record is cut; say so rather than report it written
            raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes of the record were written", str(target))
        os.fsync(fd)
    finally:
        os.close(fd)


def _already_written(target: Path, event: str) -> bool:
    try:
        with open(target, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 1024 * 1024))
            tail = fh.read()
    except OSError:
        return False
    return f'"event": "{event}"'.encode() in tail or f",{event},".encode() in tail


@hookimpl
def register_actions(register):
    register("log", LogAction)

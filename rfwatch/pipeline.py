"""One file's way through rfwatch: stable file -> journal -> classify -> rules -> actions -> journal.

:class:`Pipeline` is called from worker threads. Every decision is journaled
before its side effect, so :meth:`Pipeline.resume` can pick up any file after
a crash.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import ApiError, AuthError, ModelNotFoundError, QuotaError, UnavailableError
from .config import WatchConfig
from .context import FileContext
from .fileops import place_file, recover_placement, sha256_file
from .journal import FileRow, Journal
from .prepare import ImageError, PreparedImage, prepare_image
from .redact import redact
from .result import Prediction, ResponseFormatError
from .rules import matching_rules
from .runtime import Runtime

__all__ = ["Pipeline", "ApiBlocked", "Outcome"]

log = logging.getLogger("rfwatch.pipeline")
file_log = logging.getLogger("rfwatch.file")

_QUARANTINE_SEQ = 0  # the step that moves a failed file into failed:


class ApiBlocked(Exception):
    """The API cannot classify anything right now (down, bad key, quota, unknown model): retry the file later."""

    def __init__(self, error: ApiError, file_id: int | None):
        self.error = error
        self.file_id = file_id
        self.permanent = isinstance(error, (AuthError, QuotaError, ModelNotFoundError))
        super().__init__(str(error))


@dataclass(frozen=True)
class Outcome:
    state: str  # done | unmatched | failed | skipped
    file_id: int | None = None
    detail: str = ""


class RateLimiter:
    """At most ``rate`` calls per second across all workers (0 = unlimited)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)


class Pipeline:
    def __init__(self, runtime: Runtime, journal: Journal, dry_run: bool = False):
        self.runtime = runtime
        self.journal = journal
        self.dry_run = dry_run
        self.limiter = RateLimiter(runtime.config.rate_limit)
        self._lock = threading.Lock()
        self._active_paths: set[Path] = set()
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        #: Called with the seconds a successful API call took (the daemon reopens its gate, records metrics).
        self.on_api_answer: Callable[[float], None] | None = None

    # --- taking a new file -------------------------------------------------------

    def take(self, path: Path, watch: WatchConfig | None, settled_at: float = 0.0) -> Outcome:
        """Process a file that has settled, or will have at ``settled_at`` (time.monotonic()).

        A file handed on shortly before it settles is hashed and its upload prepared while the
        settle time runs out; nothing is journaled or sent unless it is still unchanged then.
        Safe to call twice for the same path.
        """
        with self._lock:
            if path in self._active_paths:
                return Outcome("skipped", detail="already being processed")
            self._active_paths.add(path)
        try:
            return self._take(path, watch, settled_at)
        finally:
            with self._lock:
                self._active_paths.discard(path)

    def _take(self, path: Path, watch: WatchConfig | None, settled_at: float = 0.0) -> Outcome:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # Queued twice (an event and a scan) and already moved on by the first: not news.
            level = logging.DEBUG if self.journal.was_found_at(path) else logging.INFO
            file_log.log(level, "%s: vanished before it was taken; nothing to do", path)
            return Outcome("skipped", detail="vanished")
        except OSError as exc:
            file_log.warning("%s: cannot read: %s", path, exc.strerror or exc)
            return Outcome("skipped", detail=str(exc))
        if stat.S_ISLNK(st.st_mode):
            file_log.warning(
                "%s: skipped: symbolic links are not followed (the target may be outside the watched folder)", path
            )
            return Outcome("skipped", detail="symlink")
        if not stat.S_ISREG(st.st_mode):
            file_log.info("%s: skipped: not a regular file", path)
            return Outcome("skipped", detail="not a regular file")
        if self.journal.is_produced(path, st.st_size, st.st_mtime_ns):
            return Outcome("skipped", detail="written by rfwatch")
        known = self.journal.known(path, st.st_size, st.st_mtime_ns)
        if known is not None:
            return Outcome("skipped", known.id, f"already {known.state}")
        if self.runtime.plugins.first("ignore_file", path=path):
            file_log.info("%s: ignored by a plugin", path)
            return Outcome("skipped", detail="ignored by plugin")
        try:
            sha = sha256_file(path)
            after = os.stat(path)
        except FileNotFoundError:
            file_log.info("%s: vanished while being read; nothing to do", path)
            return Outcome("skipped", detail="vanished")
        except OSError as exc:
            file_log.warning("%s: cannot read: %s", path, exc.strerror or exc)
            return Outcome("skipped", detail=str(exc))
        root = watch.path if watch else path.parent
        model = (watch.model if watch and watch.model else None) or str(self.runtime.config.roboflow.model)
        prepared = None
        if settled_at > time.monotonic():
            if self.journal.cached_prediction(sha, model) is None:
                prepared = self._prepare_early(path)
            time.sleep(max(0.0, settled_at - time.monotonic()))
            try:
                after = os.stat(path)
            except OSError:
                file_log.info("%s: vanished before it settled; nothing to do", path)
                return Outcome("skipped", detail="vanished")
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            file_log.info("%s: still changing; will be taken once it settles", path)
            return Outcome("skipped", detail="changing")
        file_id = self.journal.create(path, root, st.st_size, st.st_mtime_ns, sha, model)
        return self.process(file_id, prepared)

    def _prepare_early(self, path: Path) -> PreparedImage | None:
        client = self.runtime.client
        try:
            return prepare_image(path, client.max_size, client.jpeg_quality)
        except ImageError:
            return None  # reported properly once the file has settled

    # --- the steps ------------------------------------------------------------------

    def process(self, file_id: int, prepared: PreparedImage | None = None) -> Outcome:
        """Carry a journaled file from wherever it stopped to a terminal state."""
        row = self.journal.get(file_id)
        if row.state in ("done", "unmatched", "failed"):
            return Outcome(row.state, file_id)
        pending_quarantine = self.journal.pending_intent(file_id, _QUARANTINE_SEQ)
        if pending_quarantine is not None:
            return self._fail(row, row.last_error or "failed", resume=pending_quarantine)
        if not os.path.lexists(row.path) and not self.journal.steps(file_id):
            return self._finish_missing(row)
        if row.state == "detected":
            prediction = self._classify(row, prepared)
            if prediction is None:
                row = self.journal.get(file_id)
                return self._fail(row, row.last_error or "classification failed")
        else:
            prediction = Prediction.from_json(row.prediction or {})
        return self._act(self.journal.get(file_id), prediction)

    def _classify(self, row: FileRow, prepared: PreparedImage | None = None) -> Prediction | None:
        doc = self.journal.cached_prediction(row.sha256, row.model)
        was_cached = doc is not None
        if doc is None:
            doc = self._classify_once_per_content(row, prepared)
            if doc is None:
                return None
        doc = dict(doc, image_path=str(row.path))
        self.journal.classified(row.id, doc, row.sha256, row.model, was_cached)
        return Prediction.from_json(doc)

    def _classify_once_per_content(self, row: FileRow, prepared: PreparedImage | None = None) -> dict[str, Any] | None:
        """Call the API, unless another worker is already classifying identical content: then wait for it."""
        key = (row.sha256, row.model)
        while True:
            with self._lock:
                waiter = self._inflight.get(key)
                if waiter is None:
                    self._inflight[key] = threading.Event()
                    break
            waiter.wait()
            cached = self.journal.cached_prediction(*key)
            if cached is not None:
                return cached
        try:
            self.limiter.acquire()
            started = time.monotonic()
            try:
                client = self.runtime.client
                if prepared is not None:
                    prediction = client.classify_prepared(prepared, str(row.path), model=row.model)
                else:
                    prediction = client.classify_file(str(row.path), model=row.model)
            except (ImageError, ResponseFormatError) as exc:
                self.journal.attempt_failed(row.id, _reason(exc, row.path))
                return None
            except (UnavailableError, AuthError, QuotaError, ModelNotFoundError) as exc:
                self.journal.attempt_failed(row.id, redact(str(exc)))
                raise ApiBlocked(exc, row.id) from None
            except ApiError as exc:  # 400, 413 and the like: this image is the problem
                self.journal.attempt_failed(row.id, f"rejected by the API: {redact(str(exc))}")
                return None
            if self.on_api_answer is not None:
                self.on_api_answer(time.monotonic() - started)
            doc = prediction.json()
            # Stored before waiters wake, so they find it instead of calling the API again.
            self.journal.store_prediction(row.sha256, row.model, doc)
            return doc
        finally:
            with self._lock:
                self._inflight.pop(key).set()

    def _context(self, row: FileRow, prediction: Prediction) -> FileContext:
        return FileContext(
            path=row.path,
            source=row.source,
            watch_root=row.watch_root,
            prediction=prediction,
            config=self.runtime.config,
            model=row.model,
            sha256=row.sha256,
            file_id=row.id,
            dry_run=self.dry_run,
            _record_produced=lambda p: self.journal.add_produced(p, row.id),
        )

    def _act(self, row: FileRow, prediction: Prediction) -> Outcome:
        ctx = self._context(row, prediction)
        plugins = self.runtime.plugins
        plugins.call("file_classified", ctx=ctx)
        matches = matching_rules(self.runtime.rules, prediction, row.source)
        summary = f"{prediction.top or '(none)'} {prediction.confidence:.2f}"
        if not matches:
            self.journal.finish(row.id, "unmatched")
            file_log.info(
                "%s: %s: no rule matched; left in place",
                row.path,
                summary,
                extra={"file": str(row.path), "outcome": "unmatched"},
            )
            plugins.call("file_processed", ctx=ctx)
            return Outcome("unmatched", row.id)
        done: list[str] = []
        seq = 0
        for rule, matched in matches:
            ctx.rule, ctx.matched_class = rule.name, matched
            for action in rule.actions:
                seq += 1
                if self.dry_run:
                    done.append(f"would {action.describe(ctx)}")
                    continue
                if self.journal.step_state(row.id, seq) == "done":
                    ctx.results.append(
                        {"action": action.name, "ok": True, "result": self.journal.step_result(row.id, seq)}
                    )
                    continue
                ctx.resume = self.journal.begin_step(row.id, seq, rule.name, action.name)
                ctx._record_intent = lambda detail, _seq=seq: self.journal.record_intent(row.id, _seq, detail)
                before = ctx.path
                try:
                    result = action.run(ctx)
                except Exception as exc:
                    reason = (
                        f"action {action.name} (rule {rule.name!r}) failed: {redact(str(exc)) or type(exc).__name__}"
                    )
                    self.journal.finish_step(row.id, seq, False, {"error": reason})
                    ctx.results.append({"action": action.name, "ok": False, "error": reason})
                    if not isinstance(exc, (OSError, ValueError)):
                        log.exception("%s: %s", row.path, reason)
                    return self._fail(self.journal.get(row.id), reason, ctx=ctx)
                finally:
                    ctx.resume = None
                self.journal.finish_step(row.id, seq, True, result, path=ctx.path if ctx.path != before else None)
                ctx.results.append({"action": action.name, "ok": True, "result": result})
                done.append(_describe_result(action.name, result))
        rules = ", ".join(repr(r.name) for r, _ in matches)
        if self.dry_run:
            file_log.info(
                "%s: %s: rule %s: %s (dry run)",
                row.path,
                summary,
                rules,
                "; ".join(done),
                extra={"file": str(row.path), "rule": rules, "outcome": "dry-run"},
            )
            return Outcome("done", row.id, "dry run")
        self.journal.finish(row.id, "done", path=ctx.path)
        file_log.info(
            "%s: %s: rule %s: %s",
            row.source,
            summary,
            rules,
            "; ".join(done),
            extra={"file": str(row.source), "rule": rules, "outcome": "done"},
        )
        plugins.call("file_processed", ctx=ctx)
        return Outcome("done", row.id)

    # --- failure -----------------------------------------------------------------------

    def _fail(
        self, row: FileRow, reason: str, ctx: FileContext | None = None, resume: dict[str, Any] | None = None
    ) -> Outcome:
        """A file that cannot be processed: into ``failed:`` if configured, else left in place."""
        path = row.path
        failed_dir = self.runtime.config.failed
        # Only a file still where it was found goes to failed/: one that an earlier
        # action already sorted stays there, and `rfwatch retry` redoes the failed step.
        untouched = row.path == row.source
        if failed_dir is not None and untouched and not self.dry_run and os.path.lexists(path):
            try:
                path = self._quarantine(row, failed_dir, resume)
            except OSError as exc:
                log.error("%s: could not move into %s: %s", row.path, failed_dir, exc)
        if not self.dry_run:
            self.journal.finish(row.id, "failed", error=reason, path=path)
        file_log.warning(
            "%s: failed: %s%s",
            row.source,
            reason,
            f"; moved to {path}" if path != row.path else "",
            extra={"file": str(row.source), "outcome": "failed"},
        )
        self.runtime.plugins.call("file_failed", path=path, error=reason)
        return Outcome("failed", row.id, reason)

    def _quarantine(self, row: FileRow, failed_dir: Path, resume: dict[str, Any] | None) -> Path:
        if resume and resume.get("target"):
            target = Path(resume["target"])
            tmp = Path(resume["tmp"]) if resume.get("tmp") else None
            if recover_placement(row.path, target, tmp, row.sha256, keep_source=False):
                self.journal.finish_step(row.id, _QUARANTINE_SEQ, True, {"to": str(target)}, path=target)
                return target
        self.journal.begin_step(row.id, _QUARANTINE_SEQ, "", "quarantine")
        placed = place_file(
            row.path,
            failed_dir / row.path.name,
            keep_source=False,
            src_hash=row.sha256,
            record=lambda **d: self.journal.record_intent(row.id, _QUARANTINE_SEQ, dict(src=str(row.path), **d)),
        )
        self.journal.add_produced(placed.path, row.id)
        self.journal.finish_step(row.id, _QUARANTINE_SEQ, True, {"to": str(placed.path)}, path=placed.path)
        return placed.path

    def _finish_missing(self, row: FileRow) -> Outcome:
        reason = "file disappeared before it was processed"
        self.journal.finish(row.id, "failed", error=reason)
        file_log.warning("%s: %s", row.path, reason, extra={"file": str(row.path), "outcome": "failed"})
        return Outcome("failed", row.id, reason)


def _reason(exc: Exception, path: Path) -> str:
    text = redact(str(exc))
    return text.split(": ", 1)[1] if text.startswith(str(path) + ": ") else text


def _describe_result(name: str, result: Any) -> str:
    if isinstance(result, dict):
        if "to" in result and "outcome" in result:
            return f"{result['outcome']} -> {result['to']}"
        return f"{name} " + ", ".join(f"{k}={v}" for k, v in result.items())
    return f"{name} {result}" if result is not None else name

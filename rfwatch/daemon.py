"""The daemon: watchers feed a bounded queue, workers run the pipeline, the main loop keeps time.

Threads: watchdog's observers (events -> settler), one scanner (start-up,
overflow and reconcile scans, streamed in constant memory), ``concurrency``
workers, and the main thread (settle ticks, signals, reload, systemd pings).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, WatchConfig, load_config
from .journal import Journal
from .metrics import start_metrics
from .pipeline import ApiBlocked, Pipeline, RateLimiter
from .runtime import Runtime, build_runtime
from .sdnotify import Notifier
from .watcher import FolderWatcher, WatchLimitError, mtime_quiet, scan

__all__ = ["Daemon", "EXIT_API_REJECTED"]

log = logging.getLogger("rfwatch.daemon")

EXIT_API_REJECTED = 3


@dataclass(frozen=True)
class _Job:
    path: Path | None = None
    watch: WatchConfig | None = None
    file_id: int | None = None
    settled_at: float = 0.0


class ApiGate:
    """Closes when the API cannot classify (down, bad key, quota); lets one probe through when it is time."""

    def __init__(self, min_backoff: float = 2.0, max_backoff: float = 60.0, permanent_backoff: float = 60.0) -> None:
        self.min_backoff, self.max_backoff, self.permanent_backoff = min_backoff, max_backoff, permanent_backoff
        self._cond = threading.Condition()
        self.reason: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._prober: int | None = None

    def wait(self, stop: threading.Event) -> bool:
        """Block until this worker may call the API; False if stopping."""
        with self._cond:
            while not stop.is_set():
                if self.reason is None:
                    return True
                if self._prober is None and time.monotonic() >= self._retry_at:
                    self._prober = threading.get_ident()
                    return True
                self._cond.wait(timeout=min(0.5, max(0.01, self._retry_at - time.monotonic())))
            return False

    def blocked(self, error: ApiBlocked) -> None:
        with self._cond:
            first = self.reason is None
            # A bad key or quota is re-checked at a steady pace; an outage with growing pauses.
            self._backoff = (
                self.permanent_backoff
                if error.permanent
                else min(self.max_backoff, max(self.min_backoff, self._backoff * 2))
            )
            self.reason = str(error)
            self._retry_at = time.monotonic() + self._backoff
            self._prober = None
        if first:
            log.error("API unavailable, files wait in the queue: %s (next try in %.0fs)", error, self._backoff)

    def success(self) -> None:
        with self._cond:
            if self.reason is not None:
                log.warning("API answers again; resuming")
            self.reason = None
            self._backoff = 0.0
            self._prober = None
            self._cond.notify_all()

    def done_probing(self) -> None:
        with self._cond:
            if self._prober == threading.get_ident():
                self._prober = None


class Daemon:
    def __init__(
        self,
        config_path: str | Path | None,
        *,
        config: Config | None = None,
        dry_run: bool = False,
        once: bool = False,
        notifier: Notifier | None = None,
        progress: bool = False,
    ):
        self.config_path = config_path
        config = config if config is not None else load_config(config_path)  # type: ignore[arg-type]
        if dry_run:  # nothing may be written, not even by plugins that keep state next to the journal
            config = dataclasses.replace(config, state=Path(":memory:"))
        self.config = config
        self.dry_run = dry_run
        self.once = once
        self.notifier = notifier or Notifier()
        self.progress = progress
        self.runtime: Runtime = build_runtime(self.config)
        if not self.config.watch:
            raise ConfigError("watch: expected at least one folder to watch")
        self.journal = Journal(self.config.state_path)
        self.pipeline = Pipeline(self.runtime, self.journal, dry_run=dry_run)
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.gate = ApiGate()
        self.queue: queue.Queue[_Job] = queue.Queue(maxsize=self.config.concurrency * 4)
        self.retry_jobs: collections.deque[_Job] = collections.deque()
        self.scan_requests: queue.Queue[tuple[WatchConfig, Path | None]] = queue.Queue()
        self._busy = 0
        self._busy_since: dict[int, float] = {}
        self._lock = threading.Lock()
        self._scanning = 0
        self.found = 0  # files the scans handed on (the progress bar's total)
        self.exit_code = 0
        self.counts = collections.Counter()
        self.watcher = FolderWatcher(self.config.watch, self._enqueue_path, self._request_scan)
        self.metrics = start_metrics(self.config.metrics_listen, self.queued, self.journal.outbox_depth)
        self._wire_metrics(self.runtime)

    def _wire_metrics(self, runtime: Runtime) -> None:
        runtime.client.on_retry = self.metrics.retried
        self.pipeline.on_api_answer = self._api_answered

    def _api_answered(self, seconds: float) -> None:
        self.gate.success()
        self.metrics.classified(seconds)

    # --- feeding the queue --------------------------------------------------------

    def _put(self, job: _Job) -> bool:
        while not self.stop_event.is_set():
            try:
                self.queue.put(job, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _enqueue_path(self, path: Path, watch: WatchConfig, settled_at: float = 0.0) -> None:
        self._put(_Job(path=path, watch=watch, settled_at=settled_at))

    def _request_scan(self, watch: WatchConfig, folder: Path | None) -> None:
        with self._lock:
            self._scanning += 1
        self.scan_requests.put((watch, folder))

    def _scanner(self) -> None:
        while not self.stop_event.is_set():
            try:
                watch, folder = self.scan_requests.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                now = time.time()
                for path, st in scan(watch, folder):
                    if self.stop_event.is_set():
                        break
                    # Untouched for `settle` seconds already: no need to hold it in memory to watch it settle.
                    if mtime_quiet(watch, st.st_mtime, now) >= watch.settle:
                        self._put(_Job(path=path, watch=watch))
                    else:
                        self.watcher.settler.offer(path, watch)
                    self.found += 1
            except Exception:
                log.exception("scan of %s failed", folder or watch.path)
            finally:
                with self._lock:
                    self._scanning -= 1

    # --- workers --------------------------------------------------------------------

    def _next_job(self) -> _Job | None:
        try:
            return self.retry_jobs.popleft()
        except IndexError:
            pass
        try:
            return self.queue.get(timeout=0.2)
        except queue.Empty:
            return None

    def _worker(self) -> None:
        me = threading.get_ident()
        while not self.stop_event.is_set():
            job = self._next_job()
            if job is None:
                continue
            if not self.gate.wait(self.stop_event):
                break
            with self._lock:
                self._busy += 1
                self._busy_since[me] = time.monotonic()
            try:
                pipeline = self.pipeline
                if job.file_id is None:
                    outcome = pipeline.take(job.path, job.watch, job.settled_at)
                    if outcome.detail == "changing":  # written to again: watch it settle anew
                        self.watcher.settler.offer(job.path, job.watch)
                else:
                    outcome = pipeline.process(job.file_id)
                self.counts[outcome.state] += 1
                if outcome.state != "skipped":
                    self.metrics.file_done(outcome.state)
            except ApiBlocked as blocked:
                self.counts["waiting"] += 1
                if self.once:
                    log.error("stopping: %s; unprocessed files stay for the next run", blocked)
                    self.exit_code = EXIT_API_REJECTED
                    self.stop_event.set()
                else:
                    self.gate.blocked(blocked)
                    self.retry_jobs.append(_Job(file_id=blocked.file_id))
            except Exception:
                log.exception("unexpected error processing %s", job.path or f"journal row {job.file_id}")
                self.counts["error"] += 1
            finally:
                self.gate.done_probing()  # a probe that never reached the API proves nothing either way
                with self._lock:
                    self._busy -= 1
                    self._busy_since.pop(me, None)

    # --- reload ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the config again; keep the old one if the new one is broken."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)  # type: ignore[arg-type]
            if self.dry_run:
                config = dataclasses.replace(config, state=Path(":memory:"))
            runtime = build_runtime(config)
        except Exception as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self.status_line())
            return False
        if config.watch != self.config.watch:
            log.warning("watch: changes to watched folders take effect on restart")
        old = self.runtime
        self.config, self.runtime = config, runtime
        self.pipeline.runtime = runtime
        self._wire_metrics(runtime)
        self.pipeline.limiter = RateLimiter(config.rate_limit)
        runtime.plugins.call("startup", config=config)
        old.client.close()
        log.info("config reloaded: %d rules, plugins: %s", len(runtime.rules), ", ".join(runtime.plugins.names()))
        self.notifier.ready(self.status_line())
        return True

    # --- status --------------------------------------------------------------------------

    def queued(self) -> int:
        return self.queue.qsize() + len(self.retry_jobs) + len(self.watcher.settler)

    def status_line(self) -> str:
        c = self.counts
        text = f"{c['done']} done, {c['unmatched']} unmatched, {c['failed']} failed, {self.queued()} queued"
        if self.gate.reason:
            text += f"; waiting for the API: {self.gate.reason}"
        return text

    def progress_line(self, width: int = 30) -> str:
        """``[#######-------] 120/300 files, 2 failed``: the total grows while the scan is still running."""
        c = self.counts
        handled = c["done"] + c["unmatched"] + c["failed"] + c["skipped"] + c["error"]
        total = max(self.found, handled)
        filled = int(width * handled / total) if total else 0
        scanning = "+" if self._scanning else ""
        return (
            f"[{'#' * filled}{'-' * (width - filled)}] {handled}/{total}{scanning} files, "
            f"{c['done']} done, {c['unmatched']} unmatched, {c['failed']} failed   "
        )

    def _idle(self) -> bool:
        with self._lock:
            busy, scanning = self._busy, self._scanning
        return busy == 0 and scanning == 0 and self.queued() == 0 and self.scan_requests.empty()

    def healthy(self) -> bool:
        """Worth a WATCHDOG=1: threads alive and no file stuck far longer than the API could take."""
        limit = self.config.roboflow.timeout * self.config.roboflow.retries + 120
        now = time.monotonic()
        with self._lock:
            stuck = any(now - t > limit for t in self._busy_since.values())
        return not stuck and all(t.is_alive() for t in self._threads) and (self.once or self.watcher.alive())

    # --- main loop ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reload_event.set())

    def _log_above_the_progress_bar(self) -> None:
        # Each log line first clears the bar's line; the bar is redrawn below it on the next tick.
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_rfwatch", False):
                plain = handler.format
                handler.format = lambda record, _plain=plain: "\r\x1b[K" + _plain(record)  # type: ignore[method-assign]

    def run(self) -> int:
        self._install_signals()
        try:  # first, so that nothing is processed when the folders cannot be watched
            if not self.once:
                self.watcher.start()
        except (WatchLimitError, FileNotFoundError) as exc:
            log.error("%s", exc.strerror if isinstance(exc, WatchLimitError) else exc)
            self._close()
            return 1
        if self.progress:
            self._log_above_the_progress_bar()
        self.runtime.plugins.call("startup", config=self.config)
        self._threads = [threading.Thread(target=self._scanner, name="rfwatch-scan", daemon=True)]
        self._threads += [
            threading.Thread(target=self._worker, name=f"rfwatch-worker-{i}", daemon=True)
            for i in range(self.config.concurrency)
        ]
        for t in self._threads:
            t.start()
        for file_id in self.journal.active_ids():  # interrupted by a crash or a stop: finish them first
            self.retry_jobs.append(_Job(file_id=file_id))
        for watch in self.config.watch:
            self._request_scan(watch, None)
        models = sorted({str(w.model or self.config.roboflow.model) for w in self.config.watch})
        log.info(
            "%s %d folder(s) with model %s%s; journal %s",
            "scanning" if self.once else "watching",
            len(self.config.watch),
            ", ".join(models),
            " (dry run)" if self.dry_run else "",
            self.journal.path,
        )
        self.notifier.ready(self.status_line())
        try:
            self._loop()
        finally:
            self._shutdown()
        return self.exit_code or (1 if self.once and self.counts["failed"] else 0)

    def _loop(self) -> None:
        next_ping = next_status = next_rescan = 0.0
        ping_every = self.notifier.watchdog_interval
        rescan = self.config.rescan_interval
        if rescan:
            next_rescan = time.monotonic() + rescan
        idle_since = None
        while not self.stop_event.is_set():
            self.watcher.settler.tick()
            now = time.monotonic()
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            if ping_every and now >= next_ping and self.healthy():
                self.notifier.watchdog()
                next_ping = now + ping_every
            if now >= next_status:
                self.notifier.status(self.status_line())
                if self.progress:
                    sys.stderr.write("\r" + self.progress_line())
                    sys.stderr.flush()
                next_status = now + (0.2 if self.progress else 1.0)
            if rescan and now >= next_rescan:
                for watch in self.config.watch:
                    self._request_scan(watch, None)
                next_rescan = now + rescan
            if self.once:
                if self._idle():
                    # twice in a row, a tick apart, so nothing is in flight between two queues
                    if idle_since is not None:
                        break
                    idle_since = now
                else:
                    idle_since = None
            self.stop_event.wait(0.02)  # the settle check's resolution: it adds to every file's latency

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.stop_event.set()
        self.watcher.stop()  # take no new files while in-flight ones finish
        deadline = time.monotonic() + 30
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.progress:
            sys.stderr.write("\r" + self.progress_line() + "\n")
        self.runtime.plugins.call("shutdown")
        log.info("stopped: %s", self.status_line())
        self._close()

    def _close(self) -> None:
        self.stop_event.set()
        self.watcher.stop()
        self.runtime.close()
        self.metrics.stop()
        self.journal.close()
        self.notifier.close()

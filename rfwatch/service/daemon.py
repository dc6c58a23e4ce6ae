"""The daemon: the watcher feeds a bounded queue, workers run the pipeline, the main loop keeps time.

Threads: the watcher's (watchdog's observers, one scanner streaming start-up, overflow and reconcile
scans in constant memory), ``concurrency`` workers, the delivery threads (webhooks, uploads), and the
main thread (settle ticks, signals, reload, systemd pings, and a look at the journal for work that
another process queued: ``rfwatch retry``, ``rfwatch undo``, a decision on the review page).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfwatch.config import Config, ConfigError, WatchConfig, load_config
from rfwatch.host.runtime import Runtime, build_runtime, platform_client
from rfwatch.images.prepare import warm_up
from rfwatch.journal import JournalUnavailable, open_journal
from rfwatch.journal.holders import DAEMON, RUN_ONCE
from rfwatch.processing.delivery import Deliveries
from rfwatch.processing.pipeline import ApiBlocked, NotYet, Pipeline, RateLimiter, Upload, usable_cores
from rfwatch.roboflow.client import ModelId
from rfwatch.roboflow.facts import FactsCache, ModelFactsService, check_rules, diagnose, facts_wanted, models_in_use
from rfwatch.service.metrics import start_metrics
from rfwatch.service.notify import Notifier
from rfwatch.service.signals import relay_signals
from rfwatch.service.startcheck import RulesRefused, StartCheck
from rfwatch.service.watcher import FolderWatcher, WatchLimitError
from rfwatch.states import FileState, Outcome

__all__ = ["Daemon", "EXIT_API_REJECTED"]

log = logging.getLogger("rfwatch.service.daemon")

EXIT_API_REJECTED = 3
#: As the CLI's exit for a ConfigError: a rule refused once the model's facts came, after start-up.
EXIT_CONFIG = 2
#: Workers beyond the request slots, per core: files prepared while every slot waits on the API (see run()).
PREPARED_AHEAD = 4


def workers_beyond_slots(concurrency: int, cores: int) -> int:
    """How many workers run beside the ``concurrency`` request slots.

    One a core at least: a file busy with its actions (a move's fsyncs, exiftool, a slow share) or its journal holds
    no slot while the next file could be on its way. Up to PREPARED_AHEAD a core, so that while every slot waits on
    the API the cores go on preparing the next files (one per core at a time: Pipeline._cores), each then waiting
    for a slot with its small upload: a 12 MP photo takes a core about 50 ms, an answer 150 to 200 ms on a real
    link. With one a core, a burst's first wave filled every slot and the cores idled until its answers came (0.1 s
    at half a core in a cold run of 24 photos; docs/benchmarks.md). But never more prepared ahead than the next wave
    can take (``concurrency``): on many cores, or with one slot, more would only wait with their uploads."""
    return max(cores, min(PREPARED_AHEAD * cores, concurrency))


@dataclass(eq=False)  # one job is one object: removed from a queue by identity
class _Job:
    path: Path | None = None
    watch: WatchConfig | None = None
    file_id: int | None = None
    settled_at: float = 0.0
    #: Known to need the API (a file still to classify stays so until a worker classifies it): looked up once.
    needs_api: bool = False
    #: The file's picture, decoded while it waited for the model's input size (Pipeline: a cold start).
    upload: Upload | None = None


#: Put on the queue to wake an idle worker for a job in ``retry_jobs`` (see Daemon._requeue); never run.
_WAKE = _Job()


class _JobQueue(queue.Queue):
    """The queue of new files, counting the jobs workers have taken from it or from ``retry_jobs`` and not yet
    finished (``in_hand``), under the queue's own lock: a job is counted the instant it leaves a queue, so a
    look at the queues and the count together (Daemon._idle) never misses one in between."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.in_hand = 0

    def _get(self) -> _Job:  # called by get() under self.mutex
        job = super()._get()
        if job is not _WAKE:
            self.in_hand += 1
        return job

    def take_first(self, jobs: collections.deque[_Job], job: _Job | None = None) -> _Job | None:
        """Take ``job`` (else the first) out of ``jobs`` and count it in hand; None if it is not there."""
        with self.mutex:
            if job is None:
                if not jobs:
                    return None
                job = jobs.popleft()
            else:
                try:
                    jobs.remove(job)
                except ValueError:
                    return None  # another worker took it
            self.in_hand += 1
            return job

    def done(self) -> None:
        """A job taken (get, take_first) is finished, or put back."""
        with self.mutex:
            self.in_hand -= 1


class ApiGate:
    """Closes when a service files need is away (the API: down, bad key, quota; the journal's database); lets one
    probe through when it is time."""

    def __init__(
        self,
        min_backoff: float = 2.0,
        max_backoff: float = 60.0,
        permanent_backoff: float = 60.0,
        what: str = "API",
    ) -> None:
        self.min_backoff, self.max_backoff, self.permanent_backoff = min_backoff, max_backoff, permanent_backoff
        self.what = what
        self._cond = threading.Condition()
        self.reason: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.0
        self._prober: int | None = None

    def wait(self, stop: threading.Event, meanwhile: Callable[[], bool] | None = None) -> bool:
        """Block until this worker may call the API; False if stopping.

        ``meanwhile()`` is called (outside the gate's lock) while the API refuses us, to do work that needs no
        API; it returns whether it found any (else the worker sleeps a little).
        """
        while not stop.is_set():
            with self._cond:
                if self.reason is None:
                    return True
                if self._prober is None and time.monotonic() >= self._retry_at:
                    self._prober = threading.get_ident()
                    return True
                pause = min(0.5, max(0.01, self._retry_at - time.monotonic()))
                if meanwhile is None:
                    self._cond.wait(timeout=pause)
                    continue
            if not meanwhile():
                with self._cond:
                    self._cond.wait(timeout=pause)
        return False

    def lets_through(self) -> bool:
        """Whether the calling worker may call the API now: the gate is open, or this worker is its probe."""
        with self._cond:
            return self.reason is None or self._prober == threading.get_ident()

    def may_try(self) -> bool:
        """Whether the service is taken to answer, or it is time to try it again (unlike wait, claims nothing)."""
        with self._cond:
            return self.reason is None or time.monotonic() >= self._retry_at

    def blocked(self, error: ApiBlocked) -> None:
        self.blocked_by(str(error), error.permanent)

    def blocked_by(self, reason: str, permanent: bool = False) -> None:
        with self._cond:
            first = self.reason is None
            # A bad key or quota is re-checked at a steady pace; an outage with growing pauses.
            self._backoff = (
                self.permanent_backoff if permanent else min(self.max_backoff, max(self.min_backoff, self._backoff * 2))
            )
            self.reason = reason
            self._retry_at = time.monotonic() + self._backoff
            self._prober = None
        if first:
            log.error(
                "%s unavailable, files wait in the queue: %s (next try in %.0fs)", self.what, reason, self._backoff
            )

    def success(self) -> None:
        with self._cond:
            if self.reason is None:
                return
            log.warning("%s answers again; resuming", self.what)
            self.reason = None
            self._backoff = 0.0
            self._prober = None
            self._cond.notify_all()

    def done_probing(self) -> None:
        with self._cond:
            if self._prober == threading.get_ident():
                self._prober = None


class Daemon:
    #: How often the main loop looks whether another process changed the journal (a cheap PRAGMA).
    POLL_INTERVAL = 0.5
    #: How often the journal's file counts are folded (rfwatch.journal.files.fold_counts); status sums what is left.
    FOLD_INTERVAL = 60.0
    #: Seconds a worker may spend on one file beyond what the API could take (roboflow.timeout x retries)
    #: before the daemon counts as stuck and stops its systemd watchdog pings (tests lower it).
    STUCK_GRACE = 120.0

    def __init__(
        self,
        config_path: str | Path | None,
        *,
        config: Config | None = None,
        dry_run: bool = False,
        once: bool = False,
        notifier: Notifier | None = None,
        progress: bool = False,
        facts: ModelFactsService | None = None,
    ):
        """``facts``: a service already asking the platform (rfwatch.service.early), taken over here."""
        self.config_path = config_path
        config = config if config is not None else load_config(config_path)  # type: ignore[arg-type]
        if dry_run:  # nothing may be written, not even by plugins that keep state next to the journal
            config = dataclasses.replace(config, state=Path(":memory:"), state_url=None)
        self.config = config
        self.dry_run = dry_run
        self.once = once
        self.notifier = notifier or Notifier()
        self.progress = progress
        if not self.config.watch:
            raise ConfigError("watch: expected at least one folder to watch")
        #: The rules' classes checked while the first files are hashed and journaled (None: checked already).
        self.start_check: StartCheck | None = None
        # Built first: a config that cannot run (no key, a bad rule) must not leave a journal behind.
        self.runtime: Runtime = build_runtime(self.config, facts=self._facts_for_upload)
        self.journal = open_journal(self.config, kind=RUN_ONCE if once else DAEMON)
        self.changes = self.journal.changes()
        self.facts = facts if facts is not None else ModelFactsService(None, platform_client(self.config))
        self.facts.attach(FactsCache(self.journal.facts))
        try:
            self._check_rule_classes(self.config, wait=True, defer=True)
        except BaseException:
            self.changes.close()
            self.journal.close()
            raise
        # Only now: facts that come before the start-up check exists are judged by that check (an early fetch may
        # land while it is being made), never by both.
        self.facts.on_fetched = self._facts_arrived
        self.deliveries = Deliveries(self.journal, deliverers=dict(self.runtime.extensions.deliverers))
        if not self.dry_run:
            self.deliveries.remember()
        self.pipeline = Pipeline(self.runtime, self.journal, self.deliveries, dry_run=dry_run)
        self.pipeline.before_acting = self._rules_checked
        self.pipeline.can_size_now = self._can_size_now
        self.pipeline.may_send = self._may_send
        if not self.once:  # a run --once stops instead (see _run)
            self.pipeline.on_api_blocked = self._close_the_gate
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.gate = ApiGate()
        #: Closed while the journal's database cannot be reached (PostgreSQL restarted, the network cut).
        self.journal_gate = ApiGate(min_backoff=0.5, max_backoff=5.0, what="the journal")
        self.queue = _JobQueue(maxsize=self.config.concurrency * 4)
        self.retry_jobs: collections.deque[_Job] = collections.deque()
        #: Files the settle check handed on while the queue was full (see _enqueue_path).
        self._deferred: collections.deque[_Job] = collections.deque()
        #: Files journaled on a cold start while the model's facts were on their way: queued again once they came.
        self._awaiting: collections.deque[_Job] = collections.deque()
        self._busy = 0
        #: Files queued by run --once's last look at the journal (see _left_over): each is looked for once.
        self._looked_at_the_end: set[int] = set()
        self._busy_since: dict[int, float] = {}
        #: Journal rows queued or in a worker's hands, so that a look at the journal does not queue them twice.
        self._queued_ids: set[int] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._next_claim_scan = 0.0
        self._explained: dict[tuple[int, str, str], str | None] = {}
        self.review: Any = None  # a ReviewServer while the page is served
        self.exit_code = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.watcher = FolderWatcher(
            self.config.watch,
            self._enqueue_path,
            was_taken=self._was_taken,
            known=self.journal.files.known_in,
            turn=self.journal.scan_turn,
        )
        self.pipeline.heard_since_handed_on = self.watcher.settler.heard_since_handed_on
        self.metrics = start_metrics(
            self.config.metrics_listen,
            self.queued,
            self.deliveries.pending_per_plugin,
            self.deliveries.failed_by_plugin,
            review_backlog=self.journal.decisions.count_waiting,
            sequences=self._open_sequences,
        )
        self._wire_metrics(self.runtime)

    def _open_sequences(self) -> tuple[int, int]:
        """(sequences open, frames waiting in them), for the metrics."""
        groups = self.journal.sequences.open_sequences()
        return len(groups), sum(g.waiting for g in groups)

    def _wire_metrics(self, runtime: Runtime) -> None:
        runtime.client.on_retry = self.metrics.retried
        self.pipeline.on_api_answer = self._api_answered

    def _api_answered(self, seconds: float) -> None:
        self.gate.success()
        self.metrics.classified(seconds)

    # --- knowing the model -----------------------------------------------------------

    #: At start-up, how long to wait for facts rfwatch never fetched before (see _check_rule_classes).
    FACTS_WAIT = 3.0

    def _check_rule_classes(self, config: Config, wait: bool, force: bool = False, defer: bool = False) -> None:
        """Refuse rules that name a class the model does not have (ConfigError); warn when it cannot tell.

        ``defer`` (a cold start): facts never fetched are not waited for here; files are found, hashed and
        journaled meanwhile, and ``self.start_check`` holds uploads (for the size) and actions (for this check).
        """
        models = models_in_use(config)
        # Worth a short wait at start for facts never fetched: rules name classes to check, or uploads are to
        # be sized to the model. A refused connection answers at once; only a platform that answers slowly
        # costs up to FACTS_WAIT, once (afterwards they are cached, or it has been found unreachable).
        wanted = facts_wanted(config)
        needed = wanted and any(self.facts.get(m) is None for m in models)
        deferred = defer and needed
        self.facts.refresh(models, force=force, wait=self.FACTS_WAIT if wait and needed and not deferred else 0.0)
        if deferred:
            self.start_check = StartCheck(
                self.facts.wait,
                time.monotonic() + self.FACTS_WAIT,
                lambda: self._judge_rules(config),
                ConfigError,
            )
            return
        self._judge_rules(config)

    def _judge_rules(self, config: Config) -> None:
        problems, unchecked = check_rules(config, self.facts.get)
        if problems:
            raise ConfigError("; ".join(problems))
        if unchecked:
            log.warning(
                "the classes named in rules were not checked: nothing is known yet about %s (platform %s)",
                ", ".join(unchecked),
                config.roboflow.platform_url,
            )

    def _facts_for_upload(self, model: str) -> Any:
        """The model's facts for sizing an upload: on a cold start, waited for (until FACTS_WAIT has passed)."""
        facts = self.facts.get(model)
        if facts is None and self.start_check is not None:
            self.start_check.wait_for_facts()
            facts = self.facts.get(model)
        return facts

    def _may_send(self) -> bool:
        """Called with a request slot held: whether the API gate still lets this worker through, and its stuck clock
        restarted (the wait for the slot was other files' requests, each with a clock of its own)."""
        me = threading.get_ident()
        with self._lock:
            if me in self._busy_since:
                self._busy_since[me] = time.monotonic()
        return self.gate.lets_through()

    def _can_size_now(self) -> bool:
        check = self.start_check
        if check is None or self.config.roboflow.max_size_set:  # an explicit max_size sizes uploads alone
            return True
        return check.done or not self.facts.fetching() or time.monotonic() >= check.deadline

    def _rules_checked(self, file_id: int | None) -> None:
        """Before any action (a move into failed: too): the start-up check of the rules' classes is done.

        While the facts are still on their way, a file (``file_id``) waits in ``_awaiting`` and its worker takes
        the next one; RulesRefused once they show a rule naming a class the model lacks.
        """
        check = self.start_check
        if check is None:
            return
        if not check.done and file_id is not None and self.facts.fetching() and time.monotonic() < check.deadline:
            raise NotYet(file_id, "the check of the rules' classes")
        check.wait()  # at once when done; raises RulesRefused if it refused

    def _classes_of(self, model: str) -> tuple[str, ...] | None:
        """The model's class names, for the review page (None when the platform has not said)."""
        facts = self.facts.get(ModelId.parse(model).key)
        return facts.classes if facts is not None else None

    def _review_undoer(self, journal: Any) -> Any:
        """For a decision taken back on the review page: an Undoer over the page's journal, with the rules in use."""
        from rfwatch.processing.undo import Undoer

        runtime = self.runtime  # as reloaded last
        return Undoer(self.config, journal, runtime.rules, runtime.plugins.actions, self.deliveries)

    def _close_the_gate(self, blocked: ApiBlocked) -> None:
        """The API refused to work: files wait at the gate, which says why (the platform asked, for a 401/403/404)."""
        self._explain(blocked)
        self.gate.blocked(blocked)

    def _explain(self, blocked: ApiBlocked) -> None:
        """401/403/404 from inference: ask the platform whether the key or the model is wrong (once per answer)."""
        status = blocked.error.status
        if status not in (401, 403, 404) or not blocked.model:
            return
        key = (status, blocked.model, str(blocked.error))
        if key not in self._explained:
            self._explained[key] = diagnose(self.facts.platform, blocked.model, status)
        blocked.explanation = self._explained[key]

    def _facts_arrived(self, facts: Any) -> None:
        if self.start_check is not None and not self.start_check.done:
            return  # the start-up check refuses it (see _loop), before any action
        # Fetched after start-up: too late to refuse the config, not too late to say so.
        for problem in check_rules(self.config, self.facts.get)[0]:
            log.error("%s; fix the rule and reload (systemctl reload rfwatch)", problem)

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
        job = _Job(path=path, watch=watch, settled_at=settled_at)
        if threading.current_thread() is not threading.main_thread():
            self._put(job)  # a scan: waiting here is what keeps a backlog of any size in constant memory
            return
        # The main loop (settle ticks) must never block: it sends systemd's status and watchdog pings, and acts on
        # signals. While every worker waits (the API or the journal away) a full queue leaves files here meanwhile.
        if self._deferred or not self._offer(job):
            self._deferred.append(job)

    def _offer(self, job: _Job) -> bool:
        try:
            self.queue.put_nowait(job)
            return True
        except queue.Full:
            return False

    def _flush_deferred(self) -> None:
        while self._deferred and self._offer(self._deferred[0]):
            self._deferred.popleft()

    def _requeue(self, job: _Job) -> None:
        """Queue a job before the new files (a journaled file carried on, or one to try again), and wake a worker.

        An idle worker waits on the queue of new files; without the wake it would see the job only when that wait
        timed out, up to 0.2 s later (on a cold start every file waiting for the model's facts sat out that long)."""
        self.retry_jobs.append(job)
        self._offer(_WAKE)  # a full queue needs no wake: its workers are busy and look at retry_jobs first

    def _enqueue_id(self, file_id: int) -> bool:
        """Queue a journaled file to carry on; False if it is queued or in a worker's hands already."""
        with self._lock:
            if file_id in self._queued_ids:
                return False
            self._queued_ids.add(file_id)
        self._requeue(_Job(file_id=file_id))
        return True

    def _was_taken(self, path: Path) -> bool:
        try:
            return self.journal.files.was_found_at(path)
        except JournalUnavailable:
            return False

    def poll_journal(self, force: bool = False) -> int:
        """Queue files that another process made ready or let go: ``rfwatch retry``, ``rfwatch undo`` (a retried
        file), a decision on a review page (served by any host), the files of a process that died (once its lease
        ran out). Cheap unless something changed: the journal's change feed (SQLite's ``data_version``,
        PostgreSQL's ``LISTEN``) says when another process committed, and every quarter lease a look finds claims
        that lapsed. Returns how many files were queued.
        """
        now = time.monotonic()
        changed = self.changes.changed()
        if not (force or changed or now >= self._next_claim_scan):
            return 0
        self._next_claim_scan = now + min(5.0, self.config.lease / 4)
        queued = 0
        try:
            self.journal.holders.reap_local(self.journal.host)  # processes of this host killed since: free now
            claimable = self.journal.files.claimable()
        except JournalUnavailable as exc:
            self.journal_gate.blocked_by(str(exc))
            return 0
        if changed and not self.dry_run:
            self.deliveries.notice()  # deliveries another process queued (rfwatch retry --uploads): threads for them
        for file_id in claimable:
            with self._lock:
                known = file_id in self._queued_ids
            if not known and not self.pipeline.is_busy(file_id):
                self._enqueue_id(file_id)
                queued += 1
        if queued and not force:
            log.info("%d file(s) queued by another rfwatch process (retry, undo, review, or one that stopped)", queued)
        return queued

    # --- workers --------------------------------------------------------------------

    def _next_job(self) -> _Job | None:
        """The next job, counted in hand (``self.queue.done()`` when finished); None when there is none yet."""
        job = self.queue.take_first(self.retry_jobs)
        if job is not None:
            return job
        try:
            job = self.queue.get(timeout=0.2)
        except queue.Empty:
            return None
        return None if job is _WAKE else job  # woken: the job is in retry_jobs (see _requeue)

    def _worker(self) -> None:
        while not self.stop_event.is_set():
            job = self._next_job()
            if job is None:
                continue
            # In hand (counted by the queue) until done: while it waits for the journal or the API below it is
            # still work, or a run --once that saw no job anywhere would end.
            try:
                # Only a file still to be classified waits while the API refuses us. Meanwhile this worker takes
                # what needs no API (a person's decision, a retried action): with every worker waiting here, those
                # would wait for the API too, for as long as a quota is spent.
                if not self.journal_gate.wait(self.stop_event):
                    break
                if self._needs_api(job) and not self.gate.wait(self.stop_event, meanwhile=self._run_one_without_api):
                    break
                self._run(job)
            finally:
                self.queue.done()

    def _run_one_without_api(self) -> bool:
        """Run one queued job that needs no API (found among the jobs taken first); False if there is none."""
        for job in list(self.retry_jobs):
            if self._needs_api(job):
                continue
            if self.queue.take_first(self.retry_jobs, job) is None:
                continue  # another worker took it
            try:
                self._run(job)
            finally:
                self.queue.done()
            return True
        return False

    def _run(self, job: _Job) -> None:
        me = threading.get_ident()
        with self._lock:
            self._busy += 1
            self._busy_since[me] = time.monotonic()
        requeued = False
        try:
            if job.file_id is None:
                attempt = self.pipeline.take(job.path, job.watch, job.settled_at)  # type: ignore[arg-type]
                if attempt.outcome == Outcome.CHANGING:
                    self.watcher.not_settled(job.path, job.watch)  # type: ignore[arg-type]
            else:
                upload, job.upload = job.upload, None  # used once: a job put back later reads the file again
                attempt = self.pipeline.process(job.file_id, upload)
            self.counts[attempt.outcome] += 1
            if attempt.outcome in (Outcome.DONE, Outcome.UNMATCHED, Outcome.FAILED):
                self.metrics.file_done(attempt.outcome)
            self.journal_gate.success()
        except JournalUnavailable as exc:
            # Like an API outage: the file waits, nothing fails; its last journaled step is where it resumes.
            self.journal_gate.blocked_by(str(exc))
            self.counts["waiting"] += 1
            self._requeue(job)
            requeued = job.file_id is not None
        except RulesRefused as refused:
            self._refuse(refused)
            self.counts["waiting"] += 1
        except NotYet as later:
            with self._lock:
                self._queued_ids.add(later.file_id)
            self._awaiting.append(_Job(file_id=later.file_id, upload=later.upload))
        except ApiBlocked as blocked:
            self.counts["waiting"] += 1
            if self.once:
                self._explain(blocked)  # a daemon's gate asked already (_close_the_gate, with the slot held)
                log.error("stopping: %s; unprocessed files stay for the next run", blocked)
                self.exit_code = EXIT_API_REJECTED
                self.stop_event.set()
            else:  # the gate closed already, as the pipeline raised this (on_api_blocked)
                if blocked.file_id is not None and blocked.file_id == job.file_id:
                    self._requeue(job)  # still counted as queued: a look at the journal skips it
                    requeued = True
                elif blocked.file_id is not None:
                    self._enqueue_id(blocked.file_id)  # a new file, journaled before the API refused it
        except Exception:
            log.exception("unexpected error processing %s", job.path or f"journal row {job.file_id}")
            self.counts["error"] += 1
        finally:
            self.gate.done_probing()  # a probe that never reached the API proves nothing either way
            self.journal_gate.done_probing()
            with self._lock:
                self._busy -= 1
                self._busy_since.pop(me, None)
                if job.file_id is not None and not requeued:
                    self._queued_ids.discard(job.file_id)

    def _needs_api(self, job: _Job) -> bool:
        if job.file_id is None or job.needs_api:
            return True  # a new file: classified first
        try:
            job.needs_api = self.journal.files.get(job.file_id).state == FileState.DETECTED
        except LookupError:
            return False
        except JournalUnavailable:
            return True
        return job.needs_api

    def _finish_start_check(self, exiting: bool = False) -> None:
        """Make the start-up check of the rules (waiting for the facts, until FACTS_WAIT has passed).

        A ``run --once`` that found nothing to do still says that a rule names an unknown class, as it did when
        the check came first; with no class in the rules it need not wait for facts that only size uploads.
        """
        check = self.start_check
        if check is None or check.done:
            return
        if exiting and not any(r.when.classes for r in self.config.rules):
            return
        try:
            check.wait()
        except RulesRefused as refused:
            self._refuse(refused)

    def _refuse(self, refused: RulesRefused) -> None:
        """A rule names a class the model lacks, found once the facts came: stop as a ConfigError at start did."""
        with self._lock:
            first = self.exit_code != EXIT_CONFIG
            self.exit_code = EXIT_CONFIG
        if first:
            log.error("%s; nothing was done under this config: fix the rule and start again", refused)
        self.stop_event.set()

    # --- reload ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the config again; keep the old one if the new one is broken."""
        self.notifier.reloading()
        old_platform = self.facts.platform
        try:
            config = load_config(self.config_path)  # type: ignore[arg-type]
            if self.dry_run:
                config = dataclasses.replace(config, state=Path(":memory:"), state_url=None)
            self.facts.platform = platform_client(config)
            runtime = build_runtime(config, facts=self.facts.get)
            self._check_rule_classes(config, wait=True, force=True)  # facts are fetched again on SIGHUP
        except Exception as exc:
            self.facts.platform = old_platform  # the running config's platform, as before
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self.status_line())
            return False
        if config.watch != self.config.watch:
            log.warning("watch: changes to watched folders take effect on restart")
        old = self.runtime
        self.config, self.runtime = config, runtime
        self.pipeline.runtime = runtime
        self.deliveries.deliverers = dict(runtime.extensions.deliverers)
        if not self.dry_run:
            self.deliveries.remember()
        self._wire_metrics(runtime)
        self.pipeline.limiter = RateLimiter(config.rate_limit)
        runtime.plugins.hook.startup(config=config)
        old.client.close()
        log.info("config reloaded: %d rules, plugins: %s", len(runtime.rules), ", ".join(runtime.plugins.names()))
        self.notifier.ready(self.status_line())
        return True

    # --- status --------------------------------------------------------------------------

    def queued(self) -> int:
        with self.queue.mutex:  # jobs, not the wake-ups among them (see _requeue)
            new = sum(1 for job in self.queue.queue if job is not _WAKE) + len(self.retry_jobs)
        return new + len(self._deferred) + len(self._awaiting) + self.watcher.pending()

    def status_line(self) -> str:
        c = self.counts
        text = f"{c[Outcome.DONE]} done, {c[Outcome.UNMATCHED]} unmatched, {c[Outcome.FAILED]} failed, {self.queued()} queued"
        if c[Outcome.REVIEW]:
            text += f", {c[Outcome.REVIEW]} sent to review"
        if self.gate.reason:
            text += f"; waiting for the API: {self.gate.reason}"
        if self.journal_gate.reason:
            text += f"; waiting for the journal: {self.journal_gate.reason}"
        return text

    def progress_line(self, width: int = 30) -> str:
        """``[#######-------] 120/300 files, 2 failed``: the total grows while the scan is still running."""
        c = self.counts
        handled = sum(c[o] for o in (Outcome.DONE, Outcome.UNMATCHED, Outcome.FAILED, Outcome.REVIEW, Outcome.SKIPPED))
        handled += c["error"]
        total = max(self.watcher.found, handled)
        filled = int(width * handled / total) if total else 0
        scanning = "+" if self.watcher.scanning() else ""
        return (
            f"[{'#' * filled}{'-' * (width - filled)}] {handled}/{total}{scanning} files, "
            f"{c[Outcome.DONE]} done, {c[Outcome.UNMATCHED]} unmatched, {c[Outcome.FAILED]} failed   "
        )

    def _idle(self) -> bool:
        with self.queue.mutex:  # the jobs in the queues and in workers' hands, in one look (see _JobQueue)
            in_queues = sum(1 for job in self.queue.queue if job is not _WAKE) + len(self.retry_jobs)
            busy = self.queue.in_hand
        if busy or in_queues or self.watcher.scanning():
            return False
        return len(self._deferred) + len(self._awaiting) + self.watcher.pending() == 0

    def healthy(self) -> bool:
        """Worth a WATCHDOG=1: threads alive and no file stuck far longer than the API could take."""
        limit = self.config.roboflow.timeout * self.config.roboflow.retries + self.STUCK_GRACE
        now = time.monotonic()
        with self._lock:
            stuck = any(now - t > limit for t in self._busy_since.values())
        return not stuck and all(t.is_alive() for t in self._threads) and self.watcher.alive()

    # --- main loop ------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        events = {signal.SIGTERM: self.stop_event, signal.SIGINT: self.stop_event}
        if hasattr(signal, "SIGHUP"):
            events[signal.SIGHUP] = self.reload_event
        relay_signals(events)  # (not Event.set in the handler: see rfwatch.service.signals)

    def _log_above_the_progress_bar(self) -> None:
        # Each log line first clears the bar's line; the bar is redrawn below it on the next tick.
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_rfwatch", False):
                plain = handler.format
                handler.format = lambda record, _plain=plain: "\r\x1b[K" + _plain(record)  # type: ignore[method-assign]

    def run(self) -> int:
        self._install_signals()
        try:  # first, so that nothing is processed when the folders cannot be watched
            self.watcher.start(observe=not self.once)
        except (WatchLimitError, FileNotFoundError) as exc:
            log.error("%s", exc.strerror or exc)  # the message alone: not "[Errno 2] ...: '/p'"
            self._close()
            return 1
        if self.progress:
            self._log_above_the_progress_bar()
        if self.config.review.listen and not self.once and not self.dry_run:
            from rfwatch.review.server import ReviewServer  # Starlette and uvicorn only when a page is served

            try:
                self.review = ReviewServer(self.config, self._classes_of, self._review_undoer).start()
            except OSError as exc:
                log.error("%s", exc)
                self._close()
                return 1
        self.runtime.plugins.hook.startup(config=self.config)
        threading.Thread(target=warm_up, name="rfwatch-warm-up", daemon=True).start()
        # `concurrency` requests in flight (the pipeline's slots), and workers beyond them (workers_beyond_slots).
        beyond = workers_beyond_slots(self.config.concurrency, usable_cores())
        self._threads = [
            threading.Thread(target=self._worker, name=f"rfwatch-worker-{i}", daemon=True)
            for i in range(self.config.concurrency + beyond)
        ]
        for t in self._threads:
            t.start()
        if not self.dry_run:
            self.deliveries.start()  # deliveries left over from an earlier run go out even if no file arrives
        self.poll_journal(force=True)  # files interrupted by a crash or a stop, retried meanwhile: first
        models = sorted({str(w.model or self.config.roboflow.model) for w in self.config.watch})
        log.info(
            "%s %d folder(s) with model %s%s; journal %s",
            "scanning" if self.once else "watching",
            len(self.config.watch),
            ", ".join(models),
            " (dry run)" if self.dry_run else "",
            self.journal.display,
        )
        self.notifier.ready(self.status_line())
        try:
            self._loop()
        finally:
            self._shutdown()
        # A file that failed, or one a bug stopped (the traceback is logged), is a run that did not finish its job.
        return self.exit_code or (1 if self.once and (self.counts[Outcome.FAILED] or self.counts["error"]) else 0)

    def _loop(self) -> None:
        next_ping = next_status = next_rescan = next_poll = 0.0
        next_fold = time.monotonic() + self.FOLD_INTERVAL
        ping_every = self.notifier.watchdog_interval
        rescan = self.config.rescan_interval
        if rescan:
            next_rescan = time.monotonic() + rescan
        idle_since = None
        while not self.stop_event.is_set():
            self._flush_deferred()
            self.watcher.tick()
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
                self.watcher.rescan()
                next_rescan = now + rescan
            check = self.start_check
            if check is not None and not check.done and (not self.facts.fetching() or now >= check.deadline):
                self._finish_start_check()  # the facts are in (or cannot come): refuse a bad rule now
            while self._awaiting and (check is None or (check.done and check.refused is None)):
                self._requeue(self._awaiting.popleft())
            if now >= next_poll:
                if not self.once:
                    self.poll_journal()
                self._close_sequences()
                next_poll = now + self.POLL_INTERVAL
            if now >= next_fold:
                self._fold_counts()
                next_fold = now + self.FOLD_INTERVAL
            if self.once:
                if self._idle():
                    # twice in a row, a tick apart, so nothing is in flight between two queues
                    if idle_since is not None:
                        self._finish_start_check(exiting=True)
                        if self.stop_event.is_set():
                            break  # a rule refused: nothing is done under this config
                        if not self.journal_gate.may_try():  # the journal is away: wait for it, at its pace
                            idle_since = None
                            self.stop_event.wait(0.1)
                            continue
                        if self._close_sequences(final=True):  # nothing left to read: every burst closes
                            idle_since = None
                            continue
                        if self._left_over():
                            idle_since = None
                            continue
                        break
                    idle_since = now
                else:
                    idle_since = None
            self.stop_event.wait(0.02)  # the settle check's resolution: it adds to every file's latency

    def _left_over(self) -> bool:
        """``run --once``, about to end: queue the files of the journal this run may still carry on; whether there
        were any, or whether the journal could not be asked (the run then waits for it, as its workers would).

        A job lost to a journal outage leaves its file journaled and held by this process (a new file taken just
        before the database went away is found at its path as being processed when tried again): without this
        look the run would end with it in the inbox. Each file gets one such look, so a file that cannot be
        carried on (another process's, in the end) does not keep the run from ending."""
        if self.dry_run:
            return False
        try:
            found = self.journal.files.claimable()
        except JournalUnavailable as exc:
            self.journal_gate.blocked_by(str(exc))
            return True
        self.journal_gate.success()
        new = [file_id for file_id in found if file_id not in self._looked_at_the_end]
        self._looked_at_the_end.update(new)
        return sum(self._enqueue_id(file_id) for file_id in new) > 0

    def _fold_counts(self) -> None:
        """Keep ``rfwatch status``'s count of the files a read of a few rows (rfwatch.journal.files.fold_counts)."""
        if self.dry_run:
            return
        try:
            self.journal.files.fold_counts()
        except JournalUnavailable as exc:
            self.journal_gate.blocked_by(str(exc))

    def _close_sequences(self, final: bool = False) -> int:
        """Close the sequences that are due (``final``: all of them) and queue their frames; how many closed."""
        if self.dry_run:
            return 0
        try:
            closed = self.pipeline.sequencer.close_due(final)
        except JournalUnavailable as exc:
            self.journal_gate.blocked_by(str(exc))
            return 0
        if closed:
            self.poll_journal(force=True)
        return len(closed)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.stop_event.set()
        self.watcher.stop()  # take no new files while in-flight ones finish
        for _ in self._threads:  # an idle worker waits on the queue: woken now, it sees the stop at once
            if not self._offer(_WAKE):
                break
        deadline = time.monotonic() + 30
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.progress:
            sys.stderr.write("\r" + self.progress_line() + "\n")
        if self.once and not self.dry_run:
            self.deliveries.flush(time.monotonic() + 10)  # a one-shot run sends what it queued before it exits
        self.deliveries.stop()
        self._fold_counts()
        self.runtime.plugins.hook.shutdown()
        log.info("stopped: %s", self.status_line())
        self._close()

    def _close(self) -> None:
        self.stop_event.set()
        if self.review is not None:
            self.review.stop()
            self.review = None
        self.watcher.stop()
        self.deliveries.stop()
        self.runtime.close()
        self.metrics.stop()
        self.changes.close()
        self.journal.close()
        self.notifier.close()

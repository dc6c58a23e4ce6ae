"""One file's way through rfwatch: stable file -> journal -> classify -> rules -> actions -> journal.

:class:`Pipeline` is called from worker threads. Every decision is journaled before its side effect,
so :meth:`Pipeline.process` can pick up any file after a crash: a step that is done is skipped, a step
that was interrupted is run again with what its action recorded (``ctx.resume``).

Several processes (and hosts) may share the journal: a file is worked on by the process that claimed it (see
rfwatch.journal.files); a file taken by another one is skipped here.

A file's rules may run more than once: after a person's decision on a file that waited for review,
and after ``rfwatch retry`` of a file that ``rfwatch undo`` put back. Each run is a round; its steps are
numbered from the file's ``round_start`` on, after every earlier step, so the history stays whole.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rfwatch.config import WatchConfig
from rfwatch.crashpoints import crash_point
from rfwatch.files.content import read_and_hash
from rfwatch.files.place import place_file, recover_placement
from rfwatch.host.context import FileContext
from rfwatch.host.rules import matching_rules
from rfwatch.host.runtime import Runtime
from rfwatch.host.sequence import SequenceFacts
from rfwatch.images.prepare import DecodedImage, ImageError, PreparedImage
from rfwatch.journal import ClaimLost, Decision, DecisionKind, FileRow, Journal, JournalUnavailable, Skip
from rfwatch.processing.decisions import labelled_prediction
from rfwatch.processing.delivery import Deliveries
from rfwatch.processing.sequences import Sequencer, sequence_prediction
from rfwatch.processing.steps import ActionLog, StepFailed, StepRunner
from rfwatch.record import record
from rfwatch.redact import redact
from rfwatch.roboflow.client import ApiError, BlockingError, UnavailableError
from rfwatch.roboflow.result import Prediction, ResponseFormatError
from rfwatch.states import FileState, Outcome, StepKind, StepState

__all__ = ["Pipeline", "ApiBlocked", "Attempt", "NotYet", "Upload"]

log = logging.getLogger("rfwatch.processing.pipeline")
file_log = logging.getLogger("rfwatch.file")

_QUARANTINE_SEQ = 0  # the step that moves a file that failed before any action into failed:

#: A file's upload: prepared already, decoded before its size was known, or the bytes read when it was taken (hashed,
#: to be decoded).
Upload = PreparedImage | DecodedImage | bytes

#: What Pipeline._decode_early returns for a file whose turn at a core came after the model's input size did.
_GAVE_WAY = object()

#: What the early decodes of a cold start may hold in memory at once (see Pipeline._decode_early), counted from each
#: picture's header before it is decoded: at 12 MP (1000x750 at 4 bytes a pixel) 22 pictures, more than two cores
#: decode while the platform's answers are on their way.
EARLY_DECODE_BYTES = 64 * 1024 * 1024


class ApiBlocked(Exception):
    """The API cannot classify anything right now (down, bad key, quota, unknown model): retry the file later."""

    def __init__(self, error: ApiError, file_id: int | None, model: str = ""):
        self.error = error
        self.file_id = file_id
        self.model = model
        self.permanent = isinstance(error, BlockingError)
        #: What the platform API said about the key and the model, when it could tell (see Daemon).
        self.explanation: str | None = None
        super().__init__(str(error))

    def __str__(self) -> str:
        # The verdict first ("the API key is not valid"), then the server's own, often hedged, words.
        return f"{self.explanation} (the server said: {self.error})" if self.explanation else str(self.error)


class NotYet(Exception):
    """A journaled file waits for what a cold start is still asking the platform (the model's input size for its
    upload, the check of the rules' classes for its actions), or for the API, refused while it waited for a request
    slot: carried on by its journal row from its last step once that is known (or the API answers again). Its
    worker takes the next file meanwhile (see Daemon: a cold start)."""

    def __init__(self, file_id: int, what: str = "the model's facts", upload: Upload | None = None):
        self.file_id = file_id
        #: The file's picture, decoded while it waits (handed back to Pipeline.process when it is carried on).
        self.upload = upload
        super().__init__(f"journal row {file_id}: waiting for {what}")


@record
class Attempt:
    """What one attempt at a file came to."""

    outcome: Outcome
    file_id: int | None = None
    detail: str = ""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or taskset may allow fewer than exist)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
    def __init__(self, runtime: Runtime, journal: Journal, deliveries: Deliveries, dry_run: bool = False):
        self.runtime = runtime
        self.journal = journal
        self.deliveries = deliveries
        self.steps = StepRunner(journal, deliveries.wake)
        #: Frames of a burst decided together (``sequence:``); its runtime follows ours on reload.
        self.sequencer = Sequencer(runtime, journal)
        self.dry_run = dry_run
        self.limiter = RateLimiter(runtime.config.rate_limit)
        self._lock = threading.Lock()
        self._active_paths: set[Path] = set()
        self._active_ids: set[int] = set()
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        #: Reading, hashing and preparing a picture keep a core busy: at most one file per core does so at a time.
        #: With more workers than cores (they exist to keep requests in flight), all of them decoding at once
        #: would only share the cores out: every file would reach the API late and together, its cores idle while
        #: all wait for their answers. In turns, the first files are sent while the next are decoded.
        self._cores = threading.BoundedSemaphore(usable_cores())
        #: ``concurrency``: requests in flight (README). The daemon runs more workers than that, so a slot is
        #: taken only around the request itself.
        self._in_flight = threading.BoundedSemaphore(runtime.config.concurrency)
        self._early_bytes = 0  # held by early decodes not yet sized (EARLY_DECODE_BYTES)
        self._early_lock = threading.RLock()
        #: Called with the seconds a successful API call took (the daemon reopens its gate, records metrics).
        self.on_api_answer: Callable[[float], None] | None = None
        #: Called before a file's actions (or its move into failed:, with None: it waits then) and may raise to keep
        #: them from running: the daemon holds them (NotYet) until the rules' classes have been checked against the
        #: model, and refuses them if a rule names a class it lacks (see rfwatch.service.startcheck).
        self.before_acting: Callable[[int | None], None] | None = None
        #: Whether an upload can be sized now without waiting (False while the model's facts are on their way: a
        #: file still settling is then journaled first and prepared once the size is known).
        self.can_size_now: Callable[[], bool] = lambda: True
        #: Called with a request slot held, right before the request: False keeps it from going (the daemon's API gate
        #: closed while this worker waited for the slot); the file is put back (NotYet), nothing sent or journaled.
        self.may_send: Callable[[], bool] = lambda: True
        #: Called with the slot held when the API refuses to work (down, bad key, quota), before ApiBlocked is
        #: raised: the daemon closes its gate there.
        self.on_api_blocked: Callable[[ApiBlocked], None] = lambda blocked: None
        #: Whether an event was heard for a file handed on before it settled, until it did (see watcher.Settler): it
        #: is then given back to settle again, not taken.
        self.heard_since_handed_on: Callable[[Path], bool] = lambda path: False

    # --- taking a new file -------------------------------------------------------

    def take(self, path: Path, watch: WatchConfig | None, settled_at: float = 0.0) -> Attempt:
        """Process a file that has settled, or will have at ``settled_at`` (time.monotonic()).

        A file handed on shortly before it settles is hashed and its upload prepared while the
        settle time runs out; nothing is journaled or sent unless it is still unchanged then.
        Safe to call twice for the same path, and from several processes at once: one takes it.
        """
        with self._lock:
            if path in self._active_paths:
                return Attempt(Outcome.SKIPPED, detail="already being processed")
            self._active_paths.add(path)
        try:
            return self._take(path, watch, settled_at)
        finally:
            with self._lock:
                self._active_paths.discard(path)

    def _take(self, path: Path, watch: WatchConfig | None, settled_at: float = 0.0) -> Attempt:
        files = self.journal.files
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # Queued twice (an event and a scan) and already moved on by the first: not news.
            level = logging.DEBUG if files.was_found_at(path) else logging.INFO
            file_log.log(level, "%s: vanished before it was taken; nothing to do", path)
            return Attempt(Outcome.SKIPPED, detail="vanished")
        except OSError as exc:
            file_log.warning("%s: cannot read: %s", path, exc.strerror or exc)
            return Attempt(Outcome.SKIPPED, detail=str(exc))
        if stat.S_ISLNK(st.st_mode):
            file_log.warning(
                "%s: skipped: symbolic links are not followed (the target may be outside the watched folder)", path
            )
            return Attempt(Outcome.SKIPPED, detail="symlink")
        if not stat.S_ISREG(st.st_mode):
            file_log.info("%s: skipped: not a regular file", path)
            return Attempt(Outcome.SKIPPED, detail="not a regular file")
        seen = files.screen(path, st.st_size, st.st_mtime_ns)
        if seen is not None:
            return Attempt(Outcome.SKIPPED, seen.file_id, seen.reason)
        if self.runtime.plugins.hook.ignore_file(path=path):
            file_log.info("%s: ignored by a plugin", path)
            return Attempt(Outcome.SKIPPED, detail="ignored by plugin")
        try:
            # No core held while reading: a read waits on the disk, or on a share that may stall for long, and
            # must not keep other folders' files from their decode. (The hash is a few ms of the decode's 40.)
            content, sha = read_and_hash(path, st.st_size)  # the bytes hashed are the bytes decoded (one read)
            after = os.stat(path)
        except FileNotFoundError:
            file_log.info("%s: vanished while being read; nothing to do", path)
            return Attempt(Outcome.SKIPPED, detail="vanished")
        except OSError as exc:
            file_log.warning("%s: cannot read: %s", path, exc.strerror or exc)
            return Attempt(Outcome.SKIPPED, detail=str(exc))
        model = (watch.model if watch and watch.model else None) or str(self.runtime.config.roboflow.model)
        prepared = None
        if settled_at > time.monotonic():
            if self.can_size_now() and files.cached_prediction(sha, model) is None:
                prepared = self._prepare_early(content if content is not None else path, path, model)
            time.sleep(max(0.0, settled_at - time.monotonic()))
            try:
                after = os.stat(path)
            except OSError:
                file_log.info("%s: vanished before it settled; nothing to do", path)
                return Attempt(Outcome.SKIPPED, detail="vanished")
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or self.heard_since_handed_on(path):
            file_log.info("%s: still changing; will be taken once it settles", path)
            return Attempt(Outcome.CHANGING)
        with self._lock:  # taken and marked busy at once: a look at the journal must not queue it too
            taken = files.take(path, st.st_size, st.st_mtime_ns, sha, model)
            if isinstance(taken, Skip):
                return Attempt(Outcome.SKIPPED, taken.file_id, taken.reason)
            self._active_ids.add(taken)
        with self._busy(taken, taken=True):
            try:
                now = os.stat(path)
            except OSError:
                now = None
            if now is None or (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                # Another process finished and moved it on between our look and our claim (or it changed): ours
                # was never a file to work on.
                files.drop(taken)
                file_log.debug("%s: moved on or changed before it was taken; nothing to do", path)
                return Attempt(Outcome.SKIPPED if now is None else Outcome.CHANGING, detail="vanished")
            upload: Upload | None = prepared if prepared is not None else content
            if prepared is None and not self.can_size_now():
                upload = self._before_the_size(taken, path, content, sha, model) or upload
            return self._process(files.get(taken), upload)

    def _before_the_size(
        self, taken: int, path: Path, content: bytes | None, sha: str, model: str
    ) -> DecodedImage | None:
        """A cold start: the cores would idle until the platform says the model's input size. The decode (most of
        a preparation) is done now, for a guessed size, and the file waits (NotYet) for the real one; its decode if
        the size came meanwhile."""
        early = None
        if self.journal.files.cached_prediction(sha, model) is None:
            early = self._decode_early(content if content is not None else path, path)
            if early is _GAVE_WAY:
                # The size came while this file waited for a core: the files decoded meanwhile are sized and sent
                # first (a worker here would hold up one of them for a whole decode and request).
                raise NotYet(taken, "its turn after the files decoded early", content)
        decoded = early if isinstance(early, DecodedImage) else None
        if not self.can_size_now():
            raise NotYet(taken, "the model's input size", decoded)
        return decoded

    def _decode_early(self, source: bytes | Path, path: Path) -> DecodedImage | object | None:
        """Decode a taken file before its upload's size is known, within EARLY_DECODE_BYTES; None: later, whole;
        _GAVE_WAY: the size became known while it waited for a core."""
        reserved = 0

        def admit(nbytes: int) -> bool:  # from the picture's header, before a pixel is decoded
            nonlocal reserved
            with self._early_lock:
                if self._early_bytes + nbytes > EARLY_DECODE_BYTES:
                    return False
                self._early_bytes += nbytes
                reserved = nbytes
                return True

        decoded = None
        try:
            while not self._cores.acquire(timeout=0.02):
                if self.can_size_now():
                    return _GAVE_WAY
            try:
                if self.can_size_now():
                    return _GAVE_WAY
                decoded = self.runtime.client.decode_early(
                    source if isinstance(source, bytes) else str(path), str(path), admit
                )
            finally:
                self._cores.release()
        except ImageError:
            return None  # reported properly when the file is carried on
        finally:
            if decoded is None:  # refused, failed, or given way: nothing is held
                self._early_released(reserved)
        if decoded is not None:
            weakref.finalize(decoded, self._early_released, reserved)  # sized, or dropped with its job
        return decoded

    def _early_released(self, nbytes: int) -> None:
        # Its own lock, reentrant: a finalizer runs wherever the garbage collector frees a decode, in any thread,
        # also one that holds this lock already (Pipeline._lock there would deadlock that thread).
        with self._early_lock:
            self._early_bytes -= nbytes

    def _prepare_early(self, source: bytes | Path, path: Path, model: str) -> PreparedImage | None:
        try:
            with self._cores:
                return self.runtime.client.prepare(source if isinstance(source, bytes) else str(path), model, str(path))
        except ImageError:
            return None  # reported properly once the file has settled

    # --- the steps ------------------------------------------------------------------

    def is_busy(self, file_id: int) -> bool:
        with self._lock:
            return file_id in self._active_ids

    def process(self, file_id: int, prepared: Upload | None = None) -> Attempt:
        """Carry a journaled file from wherever it stopped to a terminal state (or to waiting for review).

        Safe to call twice for the same file, at once too, from any process: the file is claimed first, and the
        second call finds it busy, held by another process, or finished.
        """
        with self._busy(file_id) as mine:
            if not mine:
                return Attempt(Outcome.SKIPPED, file_id, "already being processed")
            row = self.journal.files.claim(file_id)
            if row is None:
                # Finished (or waiting) already, or another live process has it: counted once, by whoever did it.
                return Attempt(Outcome.SKIPPED, file_id, "taken by another process or finished")
            return self._process(row, prepared)

    @contextmanager
    def _busy(self, file_id: int, taken: bool = False) -> Iterator[bool]:
        """Mark a file busy for the block (``taken``: marked already); yields False if another worker has it."""
        with self._lock:
            if not taken and file_id in self._active_ids:
                mine = False
            else:
                self._active_ids.add(file_id)
                mine = True
        try:
            yield mine
        finally:
            if mine:
                with self._lock:
                    self._active_ids.discard(file_id)

    def _process(self, row: FileRow, prepared: Upload | None) -> Attempt:
        try:
            return self._carry_on(row, prepared)
        except ClaimLost:
            # Our lease ran out (the journal was away) and another process carries the file on now.
            log.warning("%s: another rfwatch process took this file over; leaving it to that one", row.path)
            return Attempt(Outcome.SKIPPED, row.id, "taken over by another process")
        finally:
            self._settle(row)

    def _settle(self, row: FileRow) -> None:
        """A classification still waiting for a transition when the file's job ends (it waits for a plugin, or the
        journal went away) is committed alone; if the journal cannot take it now, it stays in memory, and the file's
        next job (it is journaled as detected, held by this process) finds it there instead of asking the API."""
        try:
            self.journal.files.settle(row.id)
        except ClaimLost:
            pass  # (another process has the file: _process said so)
        except JournalUnavailable as exc:
            log.debug("%s: its classification waits for the journal: %s", row.path, exc)

    def _carry_on(self, row: FileRow, prepared: Upload | None) -> Attempt:
        files = self.journal.files
        state, pending_quarantine = files.resume_step(row.id, _QUARANTINE_SEQ)
        if state == StepState.PENDING and pending_quarantine is not None:
            return self._fail(row, row.last_error or "failed")
        if not os.path.lexists(row.path) and not files.steps(row.id):
            return self._finish_missing(row)
        if row.state == FileState.DETECTED:
            if not self.dry_run:
                self.sequencer.arrive(row)  # recorded before classification: its burst waits for it
            prediction = self._classify(row, prepared)
            if prediction is None:
                row = files.get(row.id)
                return self._fail(row, row.last_error or "classification failed")
            return self._classified(files.get(row.id), prediction)
        prediction = self._prediction(row.prediction or {})
        if row.state == FileState.DECIDED:
            return self._apply_decision(row, prediction)
        return self._classified(row, prediction)

    def _classified(self, row: FileRow, prediction: Prediction) -> Attempt:
        """A frame of a sequence waits for it to close, then runs its rules with the sequence's label."""
        self.sequencer.runtime = self.runtime
        if self.dry_run:  # nothing is journaled: each file is decided alone
            return self._act(row, prediction)
        placed = self.sequencer.place(row, prediction)
        if placed.waits:
            file_log.info(
                "%s: %s: waiting for its sequence",
                row.source,
                prediction.summary(),
                extra={"file": str(row.source), "outcome": "sequence"},
            )
            return Attempt(Outcome.SEQUENCE, row.id)
        if placed.facts is None:
            return self._act(row, prediction)
        return self._act(row, sequence_prediction(placed.facts, prediction), sequence=placed.facts)

    def _prediction(self, doc: dict[str, Any]) -> Prediction:
        return Prediction.from_json(doc, self.runtime.config.roboflow.multi_label_threshold)

    def _classify(self, row: FileRow, prepared: Upload | None = None) -> Prediction | None:
        """Classify the file (once per content: a worker classifying identical content is waited for)."""
        key = (row.sha256, row.model)
        while True:
            doc = self.journal.files.cached_prediction(*key)
            if doc is not None:
                prediction = self._prediction(dict(doc, image_path=str(row.path)))
                self.journal.files.classified(
                    row.id, prediction.json(), row.sha256, row.model, prediction.summary(), defer=self._defers()
                )
                return prediction
            with self._lock:
                waiter = self._inflight.get(key)
                if waiter is None:
                    self._inflight[key] = threading.Event()
                    break
            waiter.wait()
        try:
            answer = self._call_api(row, prepared)
            if answer is None:
                return None
            prediction = self._prediction(dict(answer.json(), image_path=str(row.path)))
            # The prediction is kept by content (in memory while it waits for the file's next transition, then in the
            # journal): waiters find it when they wake.
            self.journal.files.classified(
                row.id,
                prediction.json(),
                row.sha256,
                row.model,
                prediction.summary(),
                answer.support or {},
                defer=self._defers(),
            )
            return prediction
        finally:
            with self._lock:
                self._inflight.pop(key).set()

    def _defers(self) -> bool:
        """Whether the file's classification may wait to be committed with its next transition (rfwatch.journal.files
        says why that is safe): not in a dry run, where no transition follows. A frame of a sequence defers too: its
        next transition is its wait for the sequence (Files.hold_for_sequence), and a sequence closes only once all
        its frames wait, so no job reads a frame's label from the journal before it is there."""
        return not self.dry_run

    def _call_api(self, row: FileRow, prepared: Upload | None) -> Prediction | None:
        """The API's answer for the file; None (attempt journaled) when this image is the problem."""
        try:
            client = self.runtime.client
            if isinstance(prepared, DecodedImage):  # decoded while the size was unknown: sized now, if it covers it
                with self._cores:
                    prepared = client.prepare_decoded(prepared, row.model)
            if not isinstance(prepared, PreparedImage):
                # The content read when the file was taken is decoded, not read again (None: read it now).
                with self._cores:
                    source = prepared if prepared is not None else str(row.path)
                    prepared = client.prepare(source, row.model, str(row.path))
            with self._in_flight:
                if not self.may_send():
                    raise NotYet(row.id, "the API to answer again", prepared)
                self.limiter.acquire()  # right before the request: a turn waited for a core must not bunch requests
                started = time.monotonic()  # the API's time alone (a turn waited for a core is not the API's)
                try:
                    prediction = client.classify_prepared(prepared, str(row.path), model=row.model)
                except (UnavailableError, BlockingError) as exc:
                    self.journal.files.attempt_failed(row.id, redact(str(exc)))
                    blocked = ApiBlocked(exc, row.id, row.model)
                    # With the slot still held: the file next in line for it finds the gate closed (may_send).
                    self.on_api_blocked(blocked)
                    raise blocked from None
        except (ImageError, ResponseFormatError) as exc:
            self.journal.files.attempt_failed(row.id, _reason(exc, row.path))
            return None
        except ApiError as exc:  # 400, 413 and the like: this image is the problem
            self.journal.files.attempt_failed(row.id, f"rejected by the API: {redact(str(exc))}")
            return None
        if self.on_api_answer is not None:
            self.on_api_answer(time.monotonic() - started)
        return prediction

    def _context(
        self,
        row: FileRow,
        prediction: Prediction,
        model_prediction: Prediction | None = None,
        sequence: SequenceFacts | None = None,
    ) -> FileContext:
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
            model_prediction=model_prediction,
            sequence=sequence,
        )

    def _act(
        self,
        row: FileRow,
        prediction: Prediction,
        model_prediction: Prediction | None = None,
        first_seq: int = 0,
        sequence: SequenceFacts | None = None,
    ) -> Attempt:
        """Run the matching rules' actions, from the round's first step (or ``first_seq``) on."""
        if self.before_acting is not None:
            self.before_acting(row.id)
        ctx = self._context(row, prediction, model_prediction, sequence)
        plugins = self.runtime.plugins
        plugins.hook.file_classified(ctx=ctx)
        # EXIF conditions read the file where it is now (after a review decision it waits in review/, not at
        # its source); the read is shared with the actions' {exif:...} placeholders.
        facts = ctx.exif if any(r.when.exif for r in self.runtime.rules) else None
        matches = matching_rules(self.runtime.rules, prediction, row.source, facts)
        summary = prediction.summary()
        if not matches:
            if not self.dry_run:
                self.journal.files.finish(row.id, FileState.UNMATCHED)
            file_log.info(
                "%s: %s: no rule matched; left in place",
                row.path,
                summary,
                extra={"file": str(row.path), "outcome": "unmatched"},
            )
            plugins.hook.file_processed(ctx=ctx)
            return Attempt(Outcome.UNMATCHED, row.id)
        done: list[str] = []
        finished: list[bool] = []  # set when the last step committed the file's final state with its result
        seq = (first_seq or row.round_start) - 1
        steps = [(rule, matched, action) for rule, matched in matches for action in rule.actions]
        for n, (rule, matched, action) in enumerate(steps):
            ctx.rule, ctx.matched_class = rule.name, matched
            seq += 1
            if self.dry_run:
                done.append(f"would {action.describe(ctx)}")
                continue
            last = n == len(steps) - 1

            def final(c: FileContext, _result: Any, _last: bool = last) -> FileState | None:
                # The round's last step commits the file's final state with its own result.
                if _last and c.held is None:
                    finished.append(True)
                    return FileState.DONE
                return None

            log_ = ActionLog(self.journal, row.id, seq, StepKind.ACTION, rule.name, action.name, action.owner)
            try:
                result = self.steps.run(
                    ctx, log_, action.run, final, lambda exc, a=action.name, r=rule.name: _failure(a, r, exc)
                )
            except StepFailed as failed:
                ctx.results.append({"action": action.name, "ok": False, "error": failed.reason})
                if not isinstance(failed.__cause__, (OSError, ValueError)):
                    log.error("%s: %s", row.path, failed.reason, exc_info=failed.__cause__)
                return self._fail(self.journal.files.get(row.id), failed.reason, ctx=ctx)
            result = public_result(action.run, result)  # webhook bodies and log lines: the documented fields
            ctx.results.append({"action": action.name, "ok": True, "result": result})
            done.append(_describe_result(action.name, result))
            if ctx.held is not None:  # a review action: the file waits for a person
                return self._hold(row, ctx, summary, done)
        rule_names = [r.name for r, _ in matches]  # a list in JSON log lines
        rules = ", ".join(repr(name) for name in rule_names)
        if self.dry_run:
            file_log.info(
                "%s: %s: rule %s: %s (dry run)",
                row.path,
                summary,
                rules,
                "; ".join(done),
                extra={"file": str(row.path), "rule": rule_names, "outcome": "dry-run"},
            )
            return Attempt(Outcome.DONE, row.id, "dry run")
        if not finished:  # its last step was done before a crash or an outage, its final state not yet
            self.journal.files.finish(row.id, FileState.DONE, path=ctx.path)
        file_log.info(
            "%s: %s: rule %s: %s",
            row.source,
            summary,
            rules,
            "; ".join(done),
            extra={"file": str(row.source), "rule": rule_names, "outcome": "done"},
        )
        plugins.hook.file_processed(ctx=ctx)
        return Attempt(Outcome.DONE, row.id)

    # --- review -----------------------------------------------------------------------

    def _hold(self, row: FileRow, ctx: FileContext, summary: str, done: list[str]) -> Attempt:
        self.journal.files.wait_for_review(row.id, f"waiting for review: {ctx.held}")
        file_log.info(
            "%s: %s: rule %r: %s; waiting for review",
            row.source,
            summary,
            ctx.rule,
            "; ".join(done),
            extra={"file": str(row.source), "rule": [ctx.rule], "outcome": "review"},
        )
        return Attempt(Outcome.REVIEW, row.id)

    def _apply_decision(self, row: FileRow, model_prediction: Prediction) -> Attempt:
        """A person labelled or rejected a file that waited: apply it once, as journaled steps."""
        if self.before_acting is not None:
            self.before_acting(row.id)
        decision = self.journal.decisions.latest(row.id)
        if decision is None:  # cannot happen: the decision and the state are one transaction
            return self._fail(row, "a review decision was recorded without its label")
        if decision.kind == DecisionKind.LABEL:
            prediction = labelled_prediction(model_prediction, decision.classes, str(row.path))
        else:
            prediction = model_prediction
        sequence = self.sequencer.facts(row.id)  # a person's label is the frame's own; placeholders still say where
        ctx = self._context(row, prediction, model_prediction, sequence)
        seq = row.round_start
        log_ = ActionLog(self.journal, row.id, seq, StepKind.DECISION, "review", "decision", "rfwatch")
        try:
            self.steps.run(ctx, log_, lambda c: self._decided(c, decision))
        except StepFailed as failed:
            return self._fail(self.journal.files.get(row.id), failed.reason, ctx=ctx)
        row = self.journal.files.get(row.id)
        if decision.kind == DecisionKind.REJECT:
            return self._fail(row, "rejected in review", quarantine_seq=seq + 1)
        return self._act(row, prediction, model_prediction, first_seq=seq + 1, sequence=sequence)

    def _decided(self, ctx: FileContext, decision: Decision) -> dict[str, Any]:
        # Plugins act on the decision inside this step: a delivery they queue (an upload of the labelled
        # image to Roboflow) is written with it, so it is queued exactly once.
        self.runtime.plugins.hook.file_reviewed(ctx=ctx, decision=decision.json())
        return decision.json()

    # --- failure -----------------------------------------------------------------------

    def _fail(
        self,
        row: FileRow,
        reason: str,
        ctx: FileContext | None = None,
        quarantine_seq: int | None = None,
    ) -> Attempt:
        """A file that cannot be processed: into ``failed:`` if configured, else left where it is.

        Only a file still where it was found goes to failed: (``quarantine_seq`` forces it, for a file that
        a person rejected in review): one that an earlier action already sorted stays there, and
        ``rfwatch retry`` redoes the failed step.
        """
        if self.before_acting is not None:
            self.before_acting(None)  # waits: the classification that failed would otherwise be asked again
        path = row.path
        failed_dir = self.runtime.config.failed
        seq = _QUARANTINE_SEQ if quarantine_seq is None else quarantine_seq
        state, resume = self.journal.files.resume_step(row.id, seq)
        untouched = row.path == row.source or quarantine_seq is not None
        if state == StepState.DONE:
            untouched = False  # moved into failed: already; the crash came before the file's final state
        # An interrupted move into failed: is finished even though the file is no longer where it was found.
        if state == StepState.PENDING and resume:
            untouched = True
        if failed_dir is not None and untouched and not self.dry_run and (os.path.lexists(path) or resume):
            qctx = ctx or self._context(row, self._prediction(row.prediction or {"predictions": []}))
            qctx.path, qctx.sha256 = row.path, row.sha256
            log_ = ActionLog(self.journal, row.id, seq, StepKind.QUARANTINE, "", "quarantine", "rfwatch")
            try:
                self.steps.run(qctx, log_, lambda c: _quarantine(c, failed_dir))
                path = qctx.path
            except StepFailed as exc:
                log.error("%s: could not move into %s: %s", row.path, failed_dir, exc.reason)
        if not self.dry_run:
            self.journal.files.finish(row.id, FileState.FAILED, error=reason, path=path)
        file_log.warning(
            "%s: failed: %s%s",
            row.source,
            reason,
            f"; the file is at {path}" if path != row.source else "",
            extra={"file": str(row.source), "outcome": "failed"},
        )
        self.runtime.plugins.hook.file_failed(path=path, error=reason)
        return Attempt(Outcome.FAILED, row.id, reason)

    def _finish_missing(self, row: FileRow) -> Attempt:
        reason = "file disappeared before it was processed"
        self.journal.files.finish(row.id, FileState.FAILED, error=reason)
        file_log.warning("%s: %s", row.path, reason, extra={"file": str(row.path), "outcome": "failed"})
        return Attempt(Outcome.FAILED, row.id, reason)


def _quarantine(ctx: FileContext, failed_dir: Path) -> dict[str, str]:
    """Move a failed file into ``failed:`` (finishing a move a crash interrupted); the result undo reads."""
    src = ctx.path
    resumed = ctx.resume or {}
    if resumed.get("target") and resumed.get("src") == str(src):
        target = Path(resumed["target"])
        tmp = Path(resumed["tmp"]) if resumed.get("tmp") else None
        if recover_placement(src, target, tmp, ctx.sha256, keep_source=False):
            ctx.path = target
            ctx.produced(target)
            return _moved(src, target)
    crash_point("quarantine.before_move")
    placed = place_file(
        src,
        failed_dir / src.name,
        keep_source=False,
        src_hash=ctx.sha256,
        record=lambda **d: ctx.intent(src=str(src), **d),
    )
    crash_point("quarantine.after_move")
    ctx.path = placed.path
    ctx.produced(placed.path)
    return _moved(src, placed.path)


def _moved(src: Path, dst: Path) -> dict[str, str]:
    """A quarantine step's result, in the form undo reads for every move."""
    return {"outcome": "moved", "from": str(src), "to": str(dst)}


def _failure(action: str, rule: str, exc: Exception) -> str:
    return f"action {action} (rule {rule!r}) failed: {redact(str(exc)) or type(exc).__name__}"


def _reason(exc: Exception, path: Path) -> str:
    text = redact(str(exc))
    return text.split(": ", 1)[1] if text.startswith(str(path) + ": ") else text


def public_result(action: Any, result: Any) -> Any:
    """What others see of an action's result: an action that lists ``public_fields`` shows those only (the
    journal keeps the whole result for undo; settings and undo records are no one else's business)."""
    fields = getattr(action, "public_fields", None)
    if fields is None or not isinstance(result, dict):
        return result
    return {k: v for k, v in result.items() if k in fields}


def _describe_result(name: str, result: Any) -> str:
    if isinstance(result, dict):
        if "to" in result and "outcome" in result:
            return f"{result['outcome']} -> {result['to']}"
        return f"{name} " + ", ".join(f"{k}={v}" for k, v in result.items() if _worth_a_log_line(k, v))
    return f"{name} {result}" if result is not None else name


def _worth_a_log_line(key: str, value: Any) -> bool:
    """What a person reads in the log line: not hashes, nor the records an action keeps for undo (nested data)."""
    if "sha256" in key or isinstance(value, dict):
        return False
    return not (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value))

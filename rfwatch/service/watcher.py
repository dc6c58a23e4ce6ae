"""Finding files: watchdog observers, start-up and reconcile scans, and the settle check.

A file is handed on only once it is complete: for inotify, closed after its
last write; for every source, size and mtime unchanged for ``settle`` seconds.
Temporary names (``*.part``, dot files, ...) never are. Files moved in by
rsync-style writers (temp name, then rename) arrive as ``moved`` events and
are taken by their destination name.

Whether a folder is polled or watched with inotify (``polling: auto``: from its filesystem, mount by
mount) is decided by rfwatch.service.mounts; the choice also decides whether a file's mtime is trusted
(:func:`mtime_quiet`).
"""

from __future__ import annotations

import errno
import fnmatch
import heapq
import itertools
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver, PollingObserverVFS

from rfwatch.config import WatchConfig
from rfwatch.service.mounts import POLL_INTERVAL, Choice, MountTable, WatchPlan, plan_watch

__all__ = ["FileFilter", "Settler", "FolderWatcher", "Plans", "WatchLimitError", "scan"]

log = logging.getLogger("rfwatch.service.watcher")

#: A file seen being written but never seen closed (missed event) is taken after this long unchanged.
OPEN_WRITE_GRACE = 60.0
#: However old its mtime, a file is watched this long before it is taken, so every event already
#: queued for it (a write, a close) is seen first.
MIN_OBSERVATION = 0.25
#: A file is handed on this long before it settles, so that hashing and preparing its upload
#: overlap the end of the settle time; the worker checks it is still unchanged before going on.
EARLY_LEAD = 0.15

#: ready(path, watch, settled_at): settled_at is the time.monotonic() at which the file will have settled.
Ready = Callable[[Path, WatchConfig, float], None]
#: polls(path, watch): whether the file is on a polled folder (``polling`` true, or auto on a share).
Polls = Callable[[Path, WatchConfig], bool]


class WatchLimitError(OSError):
    pass


class FileFilter:
    """include/exclude patterns, case-insensitive, on the name; exclude also on every folder below the root."""

    def __init__(self, watch: WatchConfig):
        self.root = watch.path
        self.include = tuple(p.lower() for p in watch.include)
        self.exclude = tuple(p.lower() for p in watch.exclude)

    def excluded_name(self, name: str) -> bool:
        lowered = name.lower()
        return any(fnmatch.fnmatchcase(lowered, p) for p in self.exclude)

    def accepts(self, path: Path) -> bool:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return False
        parts = rel.parts
        if not parts or any(self.excluded_name(p) for p in parts):
            return False
        name = parts[-1].lower()
        return any(fnmatch.fnmatchcase(name, p) for p in self.include)


def scan(
    watch: WatchConfig, folder: Path | None = None, turn: tuple[int, int] = (0, 1)
) -> Iterator[tuple[Path, os.stat_result]]:
    """Every candidate file below ``folder`` (default: the watch root), lazily, in constant memory.

    Each folder's entries come in name order, starting ``rank/of`` of the way in (``turn``: this process's place
    among the live scanning processes, :meth:`Journal.scan_turn`) and wrapping round. Hosts scanning one share at
    once then split a backlog between them and meet at the end, instead of hashing every file and racing for its
    claim side by side; alone, a process scans in plain name order.
    """
    filt = FileFilter(watch)
    stack = [folder or watch.path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("cannot list %s: %s", current, exc.strerror or exc)
            continue
        entries.sort(key=lambda e: e.name)
        rank, of = turn
        start = rank * len(entries) // of
        for entry in entries[start:] + entries[:start]:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if filt.accepts(Path(entry.path)):
                        log.info(
                            "%s: a folder named like an image: its contents are %s, it is not taken",
                            entry.path,
                            "scanned" if watch.recursive else "ignored (recursive: false)",
                        )
                    if watch.recursive and not filt.excluded_name(entry.name):
                        stack.append(Path(entry.path))
                    continue
                path = Path(entry.path)
                if filt.accepts(path):
                    yield path, entry.stat(follow_symlinks=False)
            except OSError:
                continue


def mtime_quiet(polling: bool, mtime: float, wall: float) -> float:
    """How long the mtime says a file has been unchanged; 0 where the mtime is not trusted.

    On a local filesystem the mtime tells how long the file has really been unchanged, so a file
    renamed in complete, or one whose events watchdog delivered late (it holds inotify events
    ~0.5 s to pair moves), need not wait a whole settle period again. Network shares (``polling``: the
    folder's resolved choice) may have clocks that differ from ours: there only the time rfwatch
    watched the file counts.
    """
    return 0.0 if polling else wall - mtime


@dataclass
class _Pending:
    watch: WatchConfig
    #: The file's folder is polled: its mtime is not trusted, and no close event will come.
    polling: bool
    size: int
    mtime_ns: int
    since: float
    mtime: float
    writing: bool = False
    due: float = 0.0  # when tick() next looks at it

    def changed(self, st: os.stat_result, now: float) -> bool:
        """Record ``st``; True (and the quiet time restarts) if the file changed since last seen."""
        if (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns):
            return False
        self.size, self.mtime_ns, self.since, self.mtime = st.st_size, st.st_mtime_ns, now, st.st_mtime
        return True

    def quiet(self, now: float, wall: float) -> float:
        return max(now - self.since, mtime_quiet(self.polling, self.mtime, wall))

    def settles_in(self, now: float, wall: float) -> float:
        """Seconds until it has settled if nothing changes meanwhile: quiet for ``settle`` seconds and, where
        events are heard (not polled), watched for MIN_OBSERVATION; 0 means settled."""
        settle = self.watch.settle
        left = settle - self.quiet(now, wall)
        if not self.polling:
            left = max(left, min(MIN_OBSERVATION, settle) - (now - self.since))
        return max(0.0, left)

    def wait(self, now: float, wall: float) -> float:
        """Seconds until it may be handed on if nothing changes meanwhile (EARLY_LEAD before it settles); 0: now."""
        settle = self.watch.settle
        wait = self.settles_in(now, wall) - min(EARLY_LEAD, settle / 2)
        if self.writing:
            wait = max(wait, max(OPEN_WRITE_GRACE, settle) - (now - self.since))
        return max(0.0, wait)


class Settler:
    """Holds files until they have stopped changing, then hands them to ``ready``.

    Each pending file is looked at (one stat) only when it could be due, not on every tick:
    changes in between arrive as events and reschedule it. A burst of thousands of files
    therefore costs thousands of stats, not thousands per tick.

    A file is handed on EARLY_LEAD before it settles (its worker reads and prepares it meanwhile); an event
    heard for it in that time is remembered, and its worker, asking :meth:`heard_since_handed_on` once the
    time is up, gives it back instead of taking it: a file handed on early is taken only if it has settled
    exactly as one handed on late would have.
    """

    def __init__(
        self,
        ready: Ready,
        clock: Callable[[], float] = time.monotonic,
        was_taken: Callable[[Path], bool] = lambda path: False,
        polls: Polls | None = None,
    ):
        self.ready = ready
        self.clock = clock
        #: Whether rfwatch already took a file from this path: a late event for a file it moved on is not news.
        self.was_taken = was_taken
        #: Whether a file's folder is polled (a FolderWatcher passes its plans; alone, the mounts are read once).
        self.polls = polls or Plans().polls
        self._pending: dict[Path, _Pending] = {}
        self._due: list[tuple[float, int, Path]] = []  # a heap; entries whose time is not p.due are stale
        self._seq = itertools.count()
        self._lock = threading.Lock()
        #: Files handed on before they settled: (when they settle, whether an event was heard for one since).
        self._early: dict[Path, tuple[float, bool]] = {}
        self._next_forget = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def _schedule(self, path: Path, p: _Pending, when: float) -> None:
        p.due = when
        heapq.heappush(self._due, (when, next(self._seq), path))

    def _stat_or_forget(self, path: Path) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            with self._lock:
                self._pending.pop(path, None)
            if self.was_taken(path):
                log.debug("%s: an event for a file rfwatch already moved on; nothing to do", path)
            else:
                log.info("%s: removed before it settled; nothing to do", path)
            return None

    def offer(self, path: Path, watch: WatchConfig, writing: bool | None = None, polling: bool | None = None) -> None:
        """A sign of life from ``path``. ``writing`` True: a write was seen; False: closed after writing.

        ``polling``: whether the observer that saw it polls (None: look it up with :attr:`polls`).
        """
        st = self._stat_or_forget(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            return
        now = self.clock()
        if polling is None:
            polling = self.polls(path, watch)
        with self._lock:
            early = self._early.get(path)
            if early is not None:
                self._early[path] = (early[0], True)
            p = self._pending.get(path)
            if p is None:
                p = self._pending[path] = _Pending(watch, polling, st.st_size, st.st_mtime_ns, now, st.st_mtime)
            else:
                p.changed(st, now)
            if writing is not None:
                p.writing = writing
            self._schedule(path, p, now + p.wait(now, time.time()))

    def tick(self) -> int:
        """Hand on every file that has settled; returns how many are still pending."""
        now, wall = self.clock(), time.time()
        ready: list[tuple[Path, WatchConfig, float]] = []
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    break
                due, _, path = heapq.heappop(self._due)
                p = self._pending.get(path)
                if p is None or p.due != due:
                    continue
            st = self._stat_or_forget(path)
            if st is None:
                continue
            with self._lock:
                if self._pending.get(path) is not p:
                    continue
                p.changed(st, now)
                wait = p.wait(now, wall)
                if wait > 0:
                    self._schedule(path, p, now + wait)
                    continue
                del self._pending[path]
                settled_at = now + p.settles_in(now, wall)
                if settled_at > now:
                    # Handed on again before its first worker asked: what was heard since the first hand-off stays.
                    heard = self._early.get(path, (0.0, False))[1]
                    self._early[path] = (settled_at, heard)
            ready.append((path, p.watch, settled_at))
        with self._lock:
            if now >= self._next_forget:  # a file its worker never asked about (it vanished, it was known) is forgotten
                self._next_forget = now + OPEN_WRITE_GRACE
                for path in [p for p, (at, _) in self._early.items() if at < now - OPEN_WRITE_GRACE]:
                    del self._early[path]
        for path, watch, settled_at in ready:
            self.ready(path, watch, settled_at)
        with self._lock:
            return len(self._pending)

    def heard_since_handed_on(self, path: Path) -> bool:
        """Whether an event came for a file handed on before it settled, in the time it took to settle (asked once,
        by its worker, when that time is up). False for a file handed on once settled: nothing was left to hear."""
        with self._lock:
            early = self._early.pop(path, None)
        return early is not None and early[1]


class Plans:
    """Each watched root's :class:`WatchPlan`, from one reading of the mount table (re-read by :meth:`reload`)."""

    def __init__(self) -> None:
        self._table: MountTable | None = None
        self._plans: dict[WatchConfig, WatchPlan] = {}

    def reload(self, watches: tuple[WatchConfig, ...]) -> None:
        table = MountTable.current()
        self._plans = {w: plan_watch(w.path, w.polling, w.recursive, table) for w in watches}
        self._table = table

    def get(self, watch: WatchConfig) -> WatchPlan:
        plan = self._plans.get(watch)
        if plan is None:
            if self._table is None:
                self._table = MountTable.current()
            plan = self._plans[watch] = plan_watch(watch.path, watch.polling, watch.recursive, self._table)
        return plan

    def polls(self, path: Path, watch: WatchConfig) -> bool:
        return self.get(watch).polls(path)


class _Handler(FileSystemEventHandler):
    """Events of one observer: a watched root, or a mount below it watched the other way (``choice``)."""

    def __init__(self, watcher: FolderWatcher, watch: WatchConfig, choice: Choice):
        self.watcher = watcher
        self.watch = watch
        self.choice = choice
        self.filter = FileFilter(watch)

    def _file(self, raw: str | bytes, writing: bool | None) -> None:
        path = Path(os.fsdecode(raw))
        # A file inside a mount that another observer watches is that one's to report (see mounts.py).
        if self.filter.accepts(path) and self.choice.covers(path):
            self.watcher.settler.offer(path, self.watch, writing, self.choice.polling)

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if isinstance(event, FileModifiedEvent):
                # Polling sees changes, never closes: a change is no sign that a close will follow.
                self._file(event.src_path, True if not self.choice.polling else None)
            elif isinstance(event, FileClosedEvent):
                self._file(event.src_path, False)
            elif isinstance(event, FileCreatedEvent):
                self._file(event.src_path, None)
            elif isinstance(event, FileMovedEvent):
                self._file(event.dest_path, None)
            elif isinstance(event, (DirCreatedEvent, DirMovedEvent)):
                # Files can land in a new folder before its watch exists: look inside.
                folder = Path(os.fsdecode(event.dest_path if isinstance(event, DirMovedEvent) else event.src_path))
                if self.choice.covers(folder):
                    self.watcher._request_scan(self.watch, folder)
        except Exception:  # never let one odd event kill watchdog's thread
            log.exception("error handling %r", event)


class _OverflowSpy(logging.Filter):
    """watchdog reports IN_Q_OVERFLOW only as a log line; a filter on its logger lets us rescan."""

    def __init__(self, on_overflow: Callable[[], None]):
        super().__init__()
        self.on_overflow = on_overflow

    def filter(self, record: logging.LogRecord) -> bool:
        if "overflow" in str(record.msg).lower():
            self.on_overflow()
        return True


class FolderWatcher:
    """The source of ready files: observers, the settle check, and scans (start-up, overflow, reconcile).

    It hands each file on once, through ``ready(path, watch, ready_at)``, when the file has settled (or
    shortly before: ``ready_at`` says when; see :data:`EARLY_LEAD`). A consumer that finds a file still
    changing at ``ready_at`` gives it back with :meth:`not_settled`. ``ready`` may block (a bounded queue):
    scans then wait, so a backlog of any size streams in constant memory.
    """

    def __init__(
        self,
        watches: tuple[WatchConfig, ...],
        ready: Ready,
        was_taken: Callable[[Path], bool] = lambda path: False,
        known: Callable[[Path], Mapping[str, set[tuple[int, int]]]] | None = None,
        turn: Callable[[], tuple[int, int]] | None = None,
    ):
        self.watches = watches
        self.ready = ready
        #: The journal's files in a folder, by name (size, mtime_ns): a scan hands on only the others.
        self.known = known
        #: This process's place among the live scanning processes, asked at each scan (see :func:`scan`).
        self.turn = turn
        #: Files the scans passed over as known (a restart over a large tree finds most files done).
        self.known_found = 0
        self.plans = Plans()
        self.settler = Settler(ready, was_taken=was_taken, polls=self.plans.polls)
        #: Files the scans handed on or began watching (the progress bar's total).
        self.found = 0
        self._scans: queue.Queue[tuple[WatchConfig, Path | None] | None] = queue.Queue()
        self._scanning = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._scanner: threading.Thread | None = None
        self._observers: list = []
        self._spy = _OverflowSpy(self._overflowed)

    # --- what the daemon sees ------------------------------------------------------

    def start(self, observe: bool = True) -> None:
        """Watch (unless ``observe`` is False: a one-shot run) and queue a start-up scan of every folder.

        The observers start first, so that no file written during the scan goes unseen.
        """
        from rfwatch.service.preflight import watch_folder_problem

        for i, watch in enumerate(self.watches):
            problem = watch_folder_problem(watch.path, f"watch[{i}].path")
            if problem is not None:
                raise FileNotFoundError(errno.ENOENT, str(problem), str(watch.path))
        # After the look above, which mounts an automounted share: its own filesystem is then listed.
        self.plans.reload(self.watches)
        if observe:
            self._observe()
        self._stop.clear()
        self._scanner = threading.Thread(target=self._scan_loop, name="rfwatch-scan", daemon=True)
        self._scanner.start()
        self.rescan()

    def tick(self) -> int:
        """Hand on every file that has settled; returns how many are still settling."""
        return self.settler.tick()

    def rescan(self) -> None:
        """Scan every watched folder again (a reconcile scan finds files inotify did not report)."""
        for watch in self.watches:
            self._request_scan(watch, None)

    def not_settled(self, path: Path, watch: WatchConfig) -> None:
        """A file handed on was written to again before ``ready_at``: watch it settle anew."""
        self.settler.offer(path, watch)

    def pending(self) -> int:
        """Files being watched until they settle."""
        return len(self.settler)

    def scanning(self) -> bool:
        with self._lock:
            return self._scanning > 0

    def alive(self) -> bool:
        return all(o.is_alive() for o in self._observers) and (self._scanner is None or self._scanner.is_alive())

    def stop(self) -> None:
        self._stop.set()
        self._scans.put(None)
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
        self._observers.clear()
        for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
            logging.getLogger(name).removeFilter(self._spy)
        if self._scanner is not None:
            self._scanner.join(timeout=5)

    # --- scans ---------------------------------------------------------------------

    def _request_scan(self, watch: WatchConfig, folder: Path | None) -> None:
        with self._lock:
            self._scanning += 1
        self._scans.put((watch, folder))

    def _scan_loop(self) -> None:
        while not self._stop.is_set():
            request = self._scans.get()
            if request is None:
                return
            watch, folder = request
            began, handed, passed = time.monotonic(), self.found, self.known_found
            try:
                now = time.time()
                here: Path | None = None
                known: Mapping[str, set[tuple[int, int]]] = {}
                for path, st in scan(watch, folder, self._turn()):
                    if self._stop.is_set():
                        break
                    if self.known is not None:
                        if path.parent != here:  # a scan yields a folder's files together
                            here, known = path.parent, self._known_in(path.parent)
                        if (st.st_size, st.st_mtime_ns) in known.get(path.name, ()):
                            self.known_found += 1
                            continue
                    self.found += 1
                    # Untouched for `settle` seconds already: no need to hold it in memory to watch it settle.
                    if mtime_quiet(self.plans.polls(path, watch), st.st_mtime, now) >= watch.settle:
                        self.ready(path, watch, 0.0)
                    else:
                        self.settler.offer(path, watch)
            except Exception:
                log.exception("scan of %s failed", folder or watch.path)
            else:
                log.info(
                    "scan of %s: %d file(s) handed on, %d known passed over, in %.1f s",
                    folder or watch.path,
                    self.found - handed,
                    self.known_found - passed,
                    time.monotonic() - began,
                )
            finally:
                with self._lock:
                    self._scanning -= 1

    def _turn(self) -> tuple[int, int]:
        try:
            return self.turn() if self.turn is not None else (0, 1)
        except Exception as exc:  # noqa: BLE001 - the journal away: name order, as alone
            log.debug("cannot ask the journal who else scans: %s", exc)
            return (0, 1)

    def _known_in(self, folder: Path) -> Mapping[str, set[tuple[int, int]]]:
        try:
            return self.known(folder) if self.known is not None else {}
        except Exception as exc:  # noqa: BLE001 - the journal away: every file goes the long way, as before
            log.debug("cannot ask the journal about %s: %s", folder, exc)
            return {}

    def _overflowed(self) -> None:
        log.warning("filesystem events were lost (inotify queue overflow); rescanning the watched folders")
        self.rescan()

    # --- observers -----------------------------------------------------------------

    def _observe(self) -> None:
        logging.getLogger("watchdog.observers.inotify_c").addFilter(self._spy)
        logging.getLogger("watchdog.observers.inotify").addFilter(self._spy)
        for watch in self.watches:
            plan = self.plans.get(watch)
            for choice in plan.choices:
                self._observers.append(self._start_observer(watch, choice))
                below = f", a mount below {plan.root}" if choice.submount else ""
                log.info("watching %s%s (%s)", choice.path, below, choice.describe())

    def _start_observer(self, watch: WatchConfig, choice: Choice) -> Any:
        if not choice.polling:
            observer: Any = Observer()
        elif choice.excluded:
            # Mounts below it that inotify watches are left out of the listing, so they are not polled too.
            excluded = {str(p) for p in choice.excluded}

            def listdir(folder: str | None) -> Iterator[os.DirEntry]:
                with os.scandir(folder) as it:
                    entries = [e for e in it if os.path.join(folder or ".", e.name) not in excluded]
                return iter(entries)

            observer = PollingObserverVFS(os.stat, listdir, polling_interval=POLL_INTERVAL)
        else:
            observer = PollingObserver(timeout=POLL_INTERVAL)
        observer.schedule(_Handler(self, watch, choice), str(choice.path), recursive=watch.recursive)
        try:
            observer.start()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise WatchLimitError(
                    exc.errno,
                    (
                        f"cannot watch {choice.path}: the inotify watch limit is reached; raise it with "
                        "sysctl fs.inotify.max_user_watches=524288 (persist in /etc/sysctl.d/), "
                        "or set polling: true for this folder"
                    ),
                ) from None
            if exc.errno == errno.EMFILE:
                raise WatchLimitError(
                    exc.errno,
                    (
                        f"cannot watch {choice.path}: too many inotify instances; raise "
                        "sysctl fs.inotify.max_user_instances (e.g. to 1024)"
                    ),
                ) from None
            raise
        return observer

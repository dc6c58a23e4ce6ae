"""A real rfwatch daemon for tests: a config on disk, the daemon on a thread, files dropped in, results read back.

The daemon is rfwatch's own (``rfwatch.service.daemon.Daemon``, as ``rfwatch run`` starts it) with its journal,
watcher, workers and plugins (installed ones through their entry points, plus the config's ``plugins:``). It talks
to the stand-ins given to it, never to Roboflow. What a file came to is read from the journal, as ``rfwatch
history`` reads it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rfwatch.service.notify import Notifier
from rfwatch.states import TERMINAL_STATES, FileState

__all__ = ["Processed", "RunningDaemon", "write_config"]

#: States after which a file waits for nothing but a person or a command: ``wait_for`` returns on these.
SETTLED_STATES = frozenset({*TERMINAL_STATES, FileState.REVIEW})


def write_config(
    root: Path,
    server: Any,
    rules: list[dict[str, Any]] | None = None,
    *,
    model: str = "colors/1",
    api_key: str | None = None,
    platform_url: str | None = None,
    settle: float = 0.2,
    **extra: Any,
) -> Path:
    """Write ``root/config.yaml`` for a daemon that watches ``root/inbox`` and asks ``server`` (a RoboflowServer).

    ``rules`` default to sorting into ``sorted/{class}/``; other top-level keys (``plugins``, ``failed``,
    ``review``, ...) pass through ``extra``. The journal is ``root/state/journal.db``.
    """
    from rfwatch.testing.catalog import VALID_KEY

    roboflow = {
        "model": model,
        "api_url": server.url,
        # The platform stand-in when one serves this server's account; otherwise a port that refuses at once
        # (the discard port), so that nothing ever heads for api.roboflow.com.
        "platform_url": platform_url or getattr(server, "platform_url", "http://127.0.0.1:9"),
        "api_key": api_key or VALID_KEY,
        "retries": 3,
        "timeout": 10,
    }
    roboflow.update(extra.pop("roboflow", {}))
    doc: dict[str, Any] = {
        "roboflow": roboflow,
        "state": "state/journal.db",
        "concurrency": 2,
        "watch": [{"path": "inbox", "settle": settle}],
        "rules": rules if rules is not None else [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}],
    }
    doc.update(extra)
    root.mkdir(parents=True, exist_ok=True)
    (root / "inbox").mkdir(exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Processed:
    """What became of one file, from the journal."""

    name: str
    #: ``done``, ``unmatched``, ``failed``, ``review`` (waiting for a person) or ``undone``.
    state: str
    #: Where the file is now.
    path: Path
    #: The class the model gave (the top class; multi-label models: the predicted classes joined by commas).
    top: str | None
    #: The rule that ran on it.
    rule: str | None
    #: What each action returned (as the journal recorded it), by action name, for the actions that finished.
    results: dict[str, Any] = field(default_factory=dict)
    #: Why it failed, when it did.
    error: str | None = None


class _ReadyNotifier(Notifier):
    """systemd's notifier, silent: tells the test when the daemon is ready (where it would send READY=1)."""

    def __init__(self) -> None:
        super().__init__(environ={})  # no NOTIFY_SOCKET: nothing is sent anywhere
        self.ready_event = threading.Event()

    def ready(self, status: str = "") -> None:
        self.ready_event.set()


class RunningDaemon:
    """rfwatch's daemon on a thread of this process, ready when constructed by :meth:`start`.

    ``drop()`` puts a file into the inbox (whole, by a rename), ``wait_for()`` returns what became of it,
    ``stop()`` stops the daemon as SIGTERM does and returns its exit status.
    """

    def __init__(self, config_path: Path) -> None:
        from rfwatch.config import load_config

        self.config_path = Path(config_path)
        self.config = load_config(self.config_path)
        self.root = self.config_path.parent
        self.inbox = self.config.watch[0].path
        self.daemon: Any = None
        self.result: int | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._journal: Any = None

    @classmethod
    def start(cls, config_path: Path, timeout: float = 60.0) -> RunningDaemon:
        running = cls(config_path)
        running._start(timeout)
        return running

    def _start(self, timeout: float) -> None:
        from rfwatch.service.daemon import Daemon

        notifier = _ReadyNotifier()
        self.daemon = Daemon(self.config_path, config=self.config, notifier=notifier)
        self._thread = threading.Thread(target=self._run, name="rfwatch-test-daemon", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not notifier.ready_event.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"the daemon stopped before it was ready (exit {self.result}): {self.error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the daemon was not ready after {timeout:g}s")

    def _run(self) -> None:
        try:
            self.result = self.daemon.run()
        except BaseException as exc:  # kept for the test to see; the thread must not die silently
            self.error = exc

    @property
    def review_url(self) -> str | None:
        """The review page's address, when the config has ``review.listen``."""
        review = self.daemon.review if self.daemon is not None else None
        return review.url if review is not None else None

    def drop(self, name: str, data: bytes | Path) -> Path:
        """Put a file into the inbox whole: written beside it first, then renamed in (the watcher sees it once)."""
        content = Path(data).read_bytes() if isinstance(data, Path) else data
        dest = self.inbox / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".drop-{os.getpid()}-{time.monotonic_ns()}"
        tmp.write_bytes(content)
        os.replace(tmp, dest)
        return dest

    def _journal_open(self) -> Any:
        if self._journal is None:
            from rfwatch.journal import open_journal

            self._journal = open_journal(self.config, kind="test")
        return self._journal

    def processed(self, name: str) -> Processed | None:
        """What became of ``inbox/name`` so far (None while the journal does not know it)."""
        journal = self._journal_open()
        rows = journal.files.rows_in_state(tuple(FileState), [self.inbox / name])
        if not rows:
            return None
        row = rows[-1]
        results = {s.action: s.result for s in journal.files.steps(row.id) if str(s.state) == "done" and s.action}
        prediction = row.prediction or {}
        top = prediction.get("top")
        if top is None and isinstance(prediction.get("predicted_classes"), list):
            top = ",".join(prediction["predicted_classes"])
        return Processed(
            name=name,
            state=str(row.state),
            path=Path(row.path),
            top=top,
            rule=row.rule,
            results=results,
            error=row.last_error,
        )

    def wait_for(self, name: str, timeout: float = 30.0) -> Processed:
        """Wait until ``inbox/name`` is finished (or waits for review); returns what became of it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.processed(name)
            if found is not None and found.state in SETTLED_STATES:
                return found
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError(f"the daemon stopped (exit {self.result}) before {name} was processed")
            if time.monotonic() > deadline:
                state = found.state if found else "not seen yet"
                raise TimeoutError(f"{name}: not processed after {timeout:g}s ({state})")
            time.sleep(0.05)

    def stop(self) -> int | None:
        """Stop as SIGTERM would (in-flight files finish); returns the daemon's exit status."""
        if self.daemon is not None:
            self.daemon.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            if self._thread.is_alive():
                raise RuntimeError("the daemon did not stop within 60 s")
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        return self.result

    def __enter__(self) -> RunningDaemon:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

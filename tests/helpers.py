"""Shared helpers for daemon tests: configs on disk, a daemon in a thread or a subprocess, waiting."""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from rfwatch.testing import VALID_KEY

REPO = Path(__file__).resolve().parents[1]


#: For every test that runs exiftool (the `tag` action, tests that read metadata with it): where it is not
#: installed, the test is skipped and says why, instead of failing.
needs_exiftool = pytest.mark.skipif(
    shutil.which("exiftool") is None, reason="exiftool is not installed (apt-get install libimage-exiftool-perl)"
)

#: A platform API that refuses connections at once (the discard port): tests never reach api.roboflow.com.
UNREACHABLE_PLATFORM = "http://127.0.0.1:9"


def write_config(tmp: Path, server, rules: list | None = None, **extra: Any) -> Path:
    watch = extra.pop("watch", None) or [{"path": "inbox", "settle": extra.pop("settle", 0.2)}]
    doc = {
        "roboflow": {
            "model": extra.pop("model", "colors/1"),
            "api_url": server.url,
            # The platform stand-in when the test started one (the `platform` fixture), else unreachable.
            "platform_url": extra.pop("platform_url", getattr(server, "platform_url", UNREACHABLE_PLATFORM)),
            "retries": 3,
            "timeout": extra.pop("timeout", 10),
        },
        "state": "state/journal.db",
        "concurrency": extra.pop("concurrency", 4),
        "watch": watch,
        "rules": rules if rules is not None else [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]}],
    }
    doc.update(extra)
    (tmp / "inbox").mkdir(exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def unique_jpeg(color: tuple[int, int, int], seed: int, size=(48, 32)) -> bytes:
    """A small JPEG of one dominant colour whose bytes differ per seed."""
    img = Image.new("RGB", size, color)
    rnd = random.Random(seed)
    px = img.load()
    for _ in range(12):
        px[rnd.randrange(size[0]), rnd.randrange(size[1])] = tuple(rnd.randrange(256) for _ in range(3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_burst(inbox: Path, written: dict[str, bytes], first: int, count: int, seed_base: int) -> int:
    """Write ``count`` distinct images named ``<class>-<n>.jpg`` (the class they will be sorted into)."""
    colors = {"red": (230, 10, 10), "green": (10, 230, 10), "blue": (10, 10, 230)}
    for n in range(first, first + count):
        cls = list(colors)[n % 3]
        data = unique_jpeg(colors[cls], seed_base + n)
        name = f"{cls}-{n:04}.jpg"
        (inbox / name).write_bytes(data)
        written[name] = data
    return first + count


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


class DaemonThread:
    """Runs rfwatch's daemon in this process, in a thread, so tests can stop it cleanly."""

    def __init__(self, config_path: Path, **kw: Any):
        from rfwatch.service.daemon import Daemon

        self.daemon = Daemon(config_path, **kw)
        self.result: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = self.daemon.run()

    def __enter__(self) -> DaemonThread:
        self.thread.start()
        wait_for(lambda: self.daemon.watcher._observers or self.daemon.once, what="watches")
        return self

    def stop(self) -> int | None:
        self.daemon.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.result

    def __exit__(self, *exc: Any) -> None:
        if self.thread.is_alive():
            self.stop()


class DaemonProcess:
    """``rfwatch run`` as a real process whose start-up is observable: it is ready once it sends READY=1.

    Each process gets its own notify socket (sd_notify's protocol, as under systemd), so a test waits for
    the daemon it started, not for a count of log lines that an earlier, killed daemon may or may not have
    written. Used as a context manager it is killed on the way out, whatever the test did.
    """

    def __init__(self, config: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.config, self.log = config, log
        # Socket paths are limited to 108 bytes: a short name in /tmp, not one below pytest's tmp_path.
        self._sock_path = f"/tmp/rfw-{os.getpid()}-{time.monotonic_ns()}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._sock_path)
        full_env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, NOTIFY_SOCKET=self._sock_path)
        full_env.pop("JOURNAL_STREAM", None)
        full_env.update(env or {})
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                rfwatch_cmd("run", "-c", str(config), *args), env=full_env, stdout=out, stderr=out
            )
        self.messages: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Drained all the time, as systemd does, so the daemon's datagrams never pile up unread.
        self._sock.settimeout(0.1)
        while True:
            try:
                message = self._sock.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.messages.append(message)
            if "READY=1" in message.split("\n"):
                self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> DaemonProcess:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"rfwatch exited with {self.proc.returncode} before it was ready: "
                    + self.log.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"rfwatch not ready after {timeout}s")
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, the way systemd stops it; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._close()

    def _close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self._sock_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def rfwatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rfwatch", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess:
    # Never api.roboflow.com from a test: a command without a config asks this (refused at once) instead.
    full_env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, ROBOFLOW_PLATFORM_URL=UNREACHABLE_PLATFORM)
    full_env.update(env or {})
    return subprocess.run(rfwatch_cmd(*args), capture_output=True, text=True, env=full_env, timeout=timeout, **kw)


def record_takes(daemon: Any) -> list[tuple[Path, Any]]:
    """Record every file the daemon's workers take, as (path, Attempt), in the order they finish.

    A positive barrier for "nothing must happen" checks: wait until the daemon has looked at a file (and let
    it be), instead of sleeping and hoping it had the time to. Install it before the daemon starts.
    """
    takes: list[tuple[Path, Any]] = []
    real_take = daemon.pipeline.take

    def take(path: Path, watch: Any, settled_at: float = 0.0) -> Any:
        attempt = real_take(path, watch, settled_at)
        takes.append((path, attempt))
        return attempt

    daemon.pipeline.take = take
    return takes


def record_probes(gate: Any) -> list[float]:
    """When each probe of a closed API gate was let through (time.monotonic()), from now on.

    Only one probe is out at a time: once n+1 probes have gone out, n have come back (and, while the API is
    still down, failed). A positive barrier for "files wait while the API is down".
    """
    probes: list[float] = []
    real_wait = gate.wait

    def wait(stop: threading.Event, meanwhile: Any = None) -> bool:
        allowed = real_wait(stop, meanwhile)
        if allowed and gate.reason is not None:
            probes.append(time.monotonic())
        return allowed

    gate.wait = wait
    return probes


class JournalView:
    """Read-only looks into the journal a daemon or command writes, through rfwatch's own journal package, so a
    test reads the same on SQLite and PostgreSQL. ``where``: a config file, or the folder holding config.yaml."""

    def __init__(self, where: Path | str):
        where = Path(where)
        self.config_path = where / "config.yaml" if where.is_dir() else where

    def open(self) -> Any:
        from rfwatch.config import load_config
        from rfwatch.journal import open_journal

        return open_journal(load_config(self.config_path), kind="test")

    def _read(self, fn: Callable[[Any], Any]) -> Any:
        journal = self.open()
        try:
            return fn(journal)
        finally:
            journal.close()

    def rows(self) -> list[Any]:
        """Every file row (FileRow: .source, .path, .state, ...), oldest first."""
        from rfwatch.states import FileState

        return self._read(lambda j: j.files.rows_in_state(tuple(FileState)))

    def file(self, name: str) -> Any:
        rows = [r for r in self.rows() if r.source.name == name]
        assert len(rows) == 1, (name, len(rows))
        return rows[0]

    def state(self, name: str) -> str | None:
        """The state of the file found under ``name`` (None while it is not journaled yet)."""
        rows = [r for r in self.rows() if r.source.name == name]
        assert len(rows) <= 1, (name, len(rows))
        return str(rows[0].state) if rows else None

    def states(self) -> dict[str, int]:
        """Files per state."""
        return self._read(lambda j: j.files.counts())

    def steps(self, file_id: int) -> list[Any]:
        return self._read(lambda j: j.files.steps(file_id))

    def decisions(self, file_id: int) -> list[Any]:
        return self._read(lambda j: j.decisions.history(file_id))

    def outbox(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self._read(lambda j: j.outbox.list(kind))

    def uploads(self) -> list[dict[str, Any]]:
        return self.outbox("roboflow-upload")


def back_to_schema_4(tx, dialect: str) -> None:
    """In the caller's transaction: the journal as an rfwatch before schema 5 (file counts, deliverers; and 6,
    claims; and 7, the take as a function on PostgreSQL) left it."""
    if dialect == "postgresql":
        tx.run("DROP TRIGGER files_counted_insert ON files")
        tx.run("DROP TRIGGER files_counted_update ON files")
        tx.run("DROP FUNCTION rfwatch_count_files()")
        tx.run("DROP FUNCTION rfwatch_take")  # schema 7
    else:
        for trigger in ("insert", "update", "delete"):
            tx.run(f"DROP TRIGGER files_counted_{trigger}")
    tx.run("DROP TABLE file_counts")
    tx.run("DROP TABLE deliverers")
    tx.run("DROP TABLE claims")  # schema 6
    tx.run("UPDATE meta SET value='4' WHERE key='schema_version'")

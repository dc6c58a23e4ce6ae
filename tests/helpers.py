"""Shared helpers for daemon tests: configs on disk, a daemon in a thread or a subprocess, waiting."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from PIL import Image

from roboflow_server import VALID_KEY

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, server, rules: list | None = None, **extra: Any) -> Path:
    watch = extra.pop("watch", None) or [{"path": "inbox", "settle": extra.pop("settle", 0.2)}]
    doc = {
        "roboflow": {"model": extra.pop("model", "colors/1"), "api_url": server.url, "retries": 3,
                     "timeout": extra.pop("timeout", 10)},
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
        from rfwatch.daemon import Daemon

        self.daemon = Daemon(config_path, **kw)
        self.result: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = self.daemon.run()

    def __enter__(self) -> "DaemonThread":
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


def rfwatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rfwatch", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    full_env.update(env or {})
    return subprocess.run(rfwatch_cmd(*args), capture_output=True, text=True, env=full_env, timeout=timeout, **kw)

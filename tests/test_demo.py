"""`rfwatch demo` as a new user runs it: the installed command, an empty folder, a fresh HOME, no key, no network.

Whether it reaches beyond the machine is watched from inside the process: a ``sitecustomize`` on PYTHONPATH adds
a Python audit hook (PEP 578) that records every ``socket.connect``, ``socket.sendto``, ``socket.getaddrinfo``
and ``subprocess.Popen`` the demo's interpreter makes, from any thread, before the call happens.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import unique_jpeg, wait_for

from rfwatch.testing import is_loopback_url

AUDIT_HOOK = r"""
import json, os, socket, sys, threading

_log = open(os.environ["RFWATCH_AUDIT_LOG"], "a", buffering=1)
_lock = threading.Lock()

def _address(value):
    if isinstance(value, tuple):
        return [str(value[0]), value[1]]
    return ["unix", str(value)]

def _hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.bind"):
        sock, address = args[0], args[1]
        if sock.family == socket.AF_UNIX:
            address = ["unix", str(address)]
        else:
            address = _address(address)
        record = {"event": event, "address": address}
    elif event == "socket.getaddrinfo":
        record = {"event": event, "address": [str(args[0]), args[1]]}
    elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn"):
        record = {"event": event, "args": repr(args)[:200]}
    else:
        return
    with _lock:
        _log.write(json.dumps(record) + "\n")

sys.addaudithook(_hook)
"""


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _read_until(lines: queue.Queue, seen: list[str], marker: str, timeout: float = 60.0) -> str:
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {marker!r} within {timeout}s; output so far:\n" + "".join(seen)) from None
        if line is None:
            raise AssertionError(f"the demo ended before {marker!r}; output:\n" + "".join(seen))
        seen.append(line)
        if marker in line:
            return line


def _loopback(host: str) -> bool:
    return is_loopback_url(f"http://{host if ':' not in host else '[' + host + ']'}/")


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_from_an_empty_folder_sorts_dropped_images_and_talks_only_to_loopback(tmp_path, stop_with):
    rfwatch = Path(sys.executable).with_name("rfwatch")
    assert rfwatch.exists(), f"the installed entry point {rfwatch} (pip install -e .)"
    home, work, audit = tmp_path / "home", tmp_path / "work", tmp_path / "audit"
    for d in (home, work, audit):
        d.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit_log = tmp_path / "audit.jsonl"
    # A new user's environment: no ROBOFLOW_* variables, no key, nothing of the test run's.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        # The audit hook; then whatever PYTHONPATH the test run has (unset in CI; breakage/run.py points it at
        # the broken copy of rfwatch, which the installed entry point must then import).
        "PYTHONPATH": os.pathsep.join(p for p in (str(audit), os.environ.get("PYTHONPATH")) if p),
        "RFWATCH_AUDIT_LOG": str(audit_log),
    }
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [str(rfwatch), "demo", "--review-port", "0"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _read_until(lines, seen, "Ctrl-C stops the demo")
        out = "".join(seen)
        # It says plainly that the model is a toy stand-in and what to do.
        assert "the model is a toy stand-in, not Roboflow" in out
        assert "Drop images into rfwatch-demo/inbox" in out
        review_url = next(w for w in out.split() if w.startswith("http://"))
        assert urlsplit(review_url).hostname == "127.0.0.1"
        demo = work / "rfwatch-demo"
        config = yaml.safe_load((demo / "config.yaml").read_text())
        r = config["roboflow"]
        assert urlsplit(r["api_url"]).hostname == "127.0.0.1" and urlsplit(r["platform_url"]).hostname == "127.0.0.1"
        assert config["review"]["listen"].startswith("127.0.0.1:")
        with urllib.request.urlopen(review_url, timeout=10) as page:  # the review page is up
            assert page.status == 200

        # Drop images as a user would: the demo's own samples, and a picture of our own.
        mine = unique_jpeg((20, 30, 220), 7, size=(300, 200))
        (demo / "inbox" / "mine.jpg").write_bytes(mine)
        samples = {p.name: p.read_bytes() for p in (demo / "samples").iterdir()}
        for name, data in samples.items():
            (demo / "inbox" / name).write_bytes(data)
        expected = {
            demo / "sorted" / "blue" / "mine.jpg": mine,
            demo / "sorted" / "red" / "red.jpg": samples["red.jpg"],
            demo / "sorted" / "green" / "green.jpg": samples["green.jpg"],
            demo / "sorted" / "blue" / "blue.jpg": samples["blue.jpg"],
            demo / "review" / "stripes.jpg": samples["stripes.jpg"],  # the toy is unsure: a person decides
        }
        wait_for(lambda: all(p.exists() for p in expected), timeout=60, what="the dropped images sorted")
        for path, data in expected.items():
            assert path.read_bytes() == data, path
        assert list((demo / "inbox").iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.send_signal(stop_with)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the demo did not stop within 60 s of " + stop_with.name) from None
    _read_until(lines, seen, "demo stopped")
    errors = stderr_path.read_text()
    assert code == 0, errors[-3000:]
    assert "Traceback" not in errors, errors[-3000:]

    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    binds = [r for r in records if r["event"] == "socket.bind"]
    assert binds, "the audit hook saw nothing: the check would prove nothing"
    outside = [
        r
        for r in records
        if r["event"] in ("socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.bind")
        and r["address"][0] != "unix"
        and not _loopback(r["address"][0])
    ]
    assert outside == [], f"the demo reached beyond loopback: {outside}"
    # A program it started could reach out unseen by the hook: none may run but ldconfig, which ctypes runs to
    # find libc (watchdog's inotify binding) and which only reads the local library cache.
    spawned = [r for r in records if not r["event"].startswith("socket.")]
    assert [r for r in spawned if "'/sbin/ldconfig', '-p'" not in r["args"]] == [], spawned
    assert any(r["event"] == "socket.connect" for r in records), "the daemon's requests were seen"


def test_the_demo_leaves_a_folder_that_is_not_its_own_alone(tmp_path):
    from rfwatch.config import ConfigError
    from rfwatch.demo import prepare_folder

    theirs = tmp_path / "rfwatch-demo"
    theirs.mkdir()
    (theirs / "config.yaml").write_text("rules: []\n")  # somebody's own config, by chance in a folder of that name
    with pytest.raises(ConfigError, match=r"--dir: .*rfwatch-demo is not empty and not a demo folder"):
        prepare_folder(theirs)
    assert [p.name for p in theirs.iterdir()] == ["config.yaml"]
    prepare_folder(tmp_path / "new")  # an empty or new folder is made into one
    assert sorted(p.name for p in (tmp_path / "new" / "samples").iterdir()) == [
        "blue.jpg",
        "green.jpg",
        "red.jpg",
        "stripes.jpg",
    ]

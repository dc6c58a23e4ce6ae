"""Drills: a faulty API, kill -9 storms with move+tag+webhook, a bad-input corpus, and secrets at DEBUG."""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import pytest
from helpers import DaemonProcess, DaemonThread, files_under, run_cli, unique_jpeg, wait_for, write_burst, write_config
from roboflow_server import Fault
from test_crash import assert_each_exactly_once
from webhook_receiver import Receiver

COLORS = {"red": (230, 10, 10), "green": (10, 230, 10), "blue": (10, 10, 230)}


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def test_faulty_api_every_file_classified_and_moved_exactly_once(tmp_path, server):
    """30% of requests fail: 500, 503, 429 with Retry-After, hangs past the timeout, connection resets."""
    server.fault_rate = 0.3
    server.hang_seconds = 1.5
    server.fault_mix = [
        Fault(500),
        Fault(503, retry_after="0"),
        Fault(429, retry_after="1"),
        Fault(None, "hang"),
        Fault(None, "reset"),
    ]
    cfg = write_config(tmp_path, server, concurrency=8, timeout=0.5, failed="failed")
    written = {}
    for i in range(120):
        cls = list(COLORS)[i % 3]
        data = unique_jpeg(COLORS[cls], 1000 + i)
        name = f"{cls}-{i:03}.jpg"
        (tmp_path / "inbox" / name).write_bytes(data)
        written[name] = data
    with DaemonThread(cfg) as d:
        d.daemon.gate.min_backoff = 0.2
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 120, timeout=240, what="all 120 sorted")
    statuses = [r.status for r in server.inference_requests()]
    assert sum(1 for s in statuses if s != 200) >= 20, "the faults really happened"
    for p in files_under(tmp_path / "sorted"):
        assert p.parent.name == p.name.split("-")[0], f"{p} moved without (or with a wrong) classification"
        assert p.read_bytes() == written[p.name]
    assert not (tmp_path / "failed").exists()
    assert_each_exactly_once(tmp_path, written, ("inbox", "sorted"))
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall() == [("done", 120)]


@pytest.mark.long
def test_kill_9_storm_with_move_tag_and_webhook(tmp_path, server):
    """At least 20 kill -9s at random moments during a burst of 300 files."""
    receiver = Receiver().start()
    try:
        _kill_storm(tmp_path, server, receiver)
    finally:
        receiver.stop()


def _kill_storm(tmp_path: Path, server, receiver: Receiver) -> None:
    import shutil

    rules = [
        {
            "name": "all",
            "then": [
                {"tag": {"mode": "sidecar", "keywords": ["{class}"]}}
                if shutil.which("exiftool")
                else {"log": "log.jsonl"},
                {"move": "sorted/{class}/{name}"},
                {"webhook": {"url": receiver.url}},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules, concurrency=6, settle=0.1, failed="failed")
    log = tmp_path / "daemon.log"
    rnd = random.Random(7)
    written: dict[str, bytes] = {}
    n, kills = 0, 0
    while kills < 22:
        with DaemonProcess(cfg, log):  # killed on the way out, at a random instant (start-up included)
            if n < 300:
                n = write_burst(tmp_path / "inbox", written, n, 14, 9000)
            time.sleep(rnd.uniform(0.5, 1.6))
        kills += 1
    with DaemonProcess(cfg, log) as last:
        # Let the last one finish the burst, then deliver whatever the outbox still holds.
        wait_for(
            lambda: len([p for p in files_under(tmp_path / "sorted") if p.suffix == ".jpg"]) == len(written),
            timeout=300,
            what="every file sorted after the storm",
        )
        db = sqlite3.connect(tmp_path / "state" / "journal.db", timeout=30)
        db.execute("UPDATE outbox SET next_at=0 WHERE state='pending'")
        db.commit()
        wait_for(
            lambda: db.execute("SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0] == 0,
            timeout=120,
            what="the outbox to drain",
        )
        last.wait_ready()
        assert last.terminate() == 0
    assert kills >= 20 and len(written) >= 300

    assert files_under(tmp_path / "inbox") == []
    assert_each_exactly_once(tmp_path, written, ("inbox", "sorted", "failed"))
    for p in files_under(tmp_path / "sorted"):
        if p.suffix == ".jpg":
            assert p.read_bytes() == written[p.name], f"{p} is not byte-identical to what was written"
            assert p.parent.name == p.name.split("-")[0]
    leftovers = [p for p in files_under(tmp_path) if "tmp" in p.name.lower() and p.suffix != ".log"]
    assert leftovers == []
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM files WHERE state != 'done'").fetchone()[0] == 0
    # every file's event reached the receiver at least once, under one stable id
    events = {row[0] for row in db.execute("SELECT id FROM outbox")}
    assert len(events) == len(written), "one event per file, even when a step was redone"
    received = {d.headers["webhook-id"] for d in receiver.ok()}
    assert events <= received
    import json

    per_file = {}
    for d in receiver.ok():
        source = json.loads(d.body)["data"]["source"]
        per_file.setdefault(source, set()).add(d.headers["webhook-id"])
    assert len(per_file) == len(written) and all(len(ids) == 1 for ids in per_file.values())


def _bomb_png(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # 3.6 G pixels declared
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_bad_input_corpus(tmp_path, server, samples, heic_file):
    cfg = write_config(tmp_path, server, failed="failed", concurrency=4)
    inbox = tmp_path / "inbox"
    whole = (samples / "jpg" / "Canon_40D.jpg").read_bytes()
    (inbox / "zero.jpg").write_bytes(b"")
    (inbox / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (inbox / "text.jpg").write_text("this is not a picture\n")
    _bomb_png(inbox / "bomb.png")
    with open(inbox / "huge.jpg", "wb") as fh:  # a real picture with 200 MB of trailing data
        fh.write(unique_jpeg(COLORS["blue"], 1))
        fh.truncate(200 * 1024 * 1024)
    import shutil

    shutil.copyfile(heic_file, inbox / "phone.heic")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(unique_jpeg(COLORS["red"], 2))
    (inbox / "link.jpg").symlink_to(outside)
    good = {
        "with spaces.jpg": unique_jpeg(COLORS["red"], 3),
        "new\nline.jpg": unique_jpeg(COLORS["green"], 4),
        os.fsdecode(b"caf\xe9-latin1.jpg"): unique_jpeg(COLORS["blue"], 5),
        "plain.jpg": unique_jpeg(COLORS["green"], 6),
    }
    for name, data in good.items():
        (inbox / name).write_bytes(data)
    (inbox / "x.jpg").mkdir()
    (inbox / "x.jpg" / "inside.jpg").write_bytes(unique_jpeg(COLORS["red"], 7))
    # HEIC without the plugin: a module that fails to import stands in for "not installed"
    blocker = tmp_path / "no_heif"
    blocker.mkdir()
    (blocker / "pillow_heif.py").write_text("raise ImportError('pillow-heif is not installed')\n")

    log = tmp_path / "daemon.log"
    with DaemonProcess(cfg, log, env={"PYTHONPATH": str(blocker)}) as proc:
        proc.wait_ready()
        late = inbox / "deleted-before-taken.jpg"
        late.write_bytes(unique_jpeg(COLORS["red"], 8))
        late.unlink()
        wait_for(lambda: len(files_under(tmp_path / "failed")) == 5, timeout=120, what="five failures")
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 6, timeout=60, what="six good files sorted")
        wait_for(lambda: b"deleted-before-taken.jpg" in log.read_bytes(), what="the deleted file's log line")
        assert proc.terminate() == 0
    stderr = log.read_text("utf-8", "replace")
    expect = {
        "zero.jpg": "file is empty",
        "truncated.jpg": "cannot decode image",
        "text.jpg": "not a recognised image format",
        "bomb.png": "refused as a possible decompression bomb",
        "phone.heic": "pip install 'rfwatch[heif]'",
    }
    for name, reason in expect.items():
        line = next((x for x in stderr.splitlines() if name in x and "failed:" in x), "")
        assert reason in line, f"{name}: {line or 'no log line'}"
        assert (tmp_path / "failed" / name).exists()
    assert "link.jpg: skipped: symbolic links are not followed" in stderr
    assert (inbox / "link.jpg").is_symlink() and outside.exists()
    assert "x.jpg: a folder named like an image" in stderr
    assert "deleted-before-taken.jpg: removed before it settled" in stderr
    sorted_names = {p.name for p in files_under(tmp_path / "sorted")}
    # control characters in names are replaced in destinations (documented), content is untouched
    good["new_line.jpg"] = good.pop("new\nline.jpg")
    assert sorted_names == set(good) | {"huge.jpg", "inside.jpg"}
    for name, data in good.items():
        (found,) = [p for p in files_under(tmp_path / "sorted") if p.name == name]
        assert found.read_bytes() == data
    assert "new\\nline.jpg" in stderr, "the newline is escaped in log lines, so it cannot forge one"
    assert (tmp_path / "sorted" / "blue" / "huge.jpg").stat().st_size == 200 * 1024 * 1024


def test_the_api_key_appears_nowhere(tmp_path, server):
    secret = "rf_DISTINCTIVEsecretKEY0123456789abcdef"
    server.valid_keys.add(secret)
    receiver = Receiver().start()
    try:
        rules = [
            {
                "name": "all",
                "then": [
                    {"move": "sorted/{class}/{name}"},
                    {"log": "results.jsonl"},
                    {"command": ["sh", "-c", "env > env.txt"]},
                    {"webhook": {"url": receiver.url}},
                ],
            }
        ]
        cfg = write_config(tmp_path, server, rules=rules, failed="failed")
        for i in range(6):
            (tmp_path / "inbox" / f"s{i}.jpg").write_bytes(unique_jpeg(COLORS["red"], 100 + i))
        (tmp_path / "inbox" / "bad.jpg").write_text("nope")
        server.fail_next(503, count=3, retry_after="0")
        server.fail_next(429, count=1, retry_after="0")
        server.transport_fault_next("reset")
        good = run_cli("run", "-c", str(cfg), "--once", "-vv", env={"ROBOFLOW_API_KEY": secret})
        wait_for(receiver.ok, what="webhooks")
        (tmp_path / "inbox" / "t.jpg").write_bytes(unique_jpeg(COLORS["red"], 200))
        rejected = run_cli(
            "run", "-c", str(cfg), "--once", "-vv", "--log-format", "json", env={"ROBOFLOW_API_KEY": secret + "x"}
        )  # 401
        classify = run_cli(
            "classify",
            "-vv",
            "--api-url",
            server.url,
            "--model",
            "colors/1",
            str(tmp_path / "inbox" / "t.jpg"),
            env={"ROBOFLOW_API_KEY": secret + "x"},
        )
    finally:
        receiver.stop()
    assert rejected.returncode == 3 and "HTTP 403" in rejected.stderr  # the v1 host: 403 for a bad key
    assert "api_key=***" in good.stderr, "DEBUG request lines were logged (masked)"
    outputs = [good.stdout, good.stderr, rejected.stdout, rejected.stderr, classify.stdout, classify.stderr]
    for text in outputs:
        assert secret not in text
    for d in receiver.deliveries:
        assert secret.encode() not in d.body and secret not in str(d.headers)
    for p in files_under(tmp_path):  # journal (+ WAL), results log, env of commands, everything
        assert secret.encode() not in p.read_bytes(), f"key found in {p}"

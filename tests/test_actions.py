"""webhook, annotate, log and command actions; the full rule on real camera files."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import sqlite3
import sys
import time

import pytest
from helpers import (
    DaemonThread,
    JournalView,
    files_under,
    needs_exiftool,
    run_cli,
    unique_jpeg,
    wait_for,
    write_config,
)
from metadata_reader import jpeg_parts, read_xmp
from PIL import Image
from roboflow_server import VALID_KEY
from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
RED, GREEN = (230, 10, 10), (10, 230, 10)


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def webhook_rule(receiver, **extra):
    return [
        {"name": "notify", "then": [{"move": "sorted/{class}/{name}"}, {"webhook": {"url": receiver.url, **extra}}]}
    ]


def test_webhooks_are_signed_and_verify_with_standardwebhooks(tmp_path, server, receiver):
    cfg = write_config(tmp_path, server, rules=webhook_rule(receiver, secret=SECRET, headers={"X-Team": "lab"}))
    for i in range(3):
        (tmp_path / "inbox" / f"a{i}.jpg").write_bytes(unique_jpeg(RED, i))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    wait_for(lambda: len(receiver.ok()) == 3, what="3 deliveries")
    verifier = Webhook(SECRET)
    for d in receiver.ok():
        payload = verifier.verify(d.body, d.headers)
        assert d.headers["x-team"] == "lab" and d.headers["webhook-id"] == payload["id"]
        data = payload["data"]
        assert data["prediction"]["top"] == "red" and data["rule"] == "notify"
        assert data["path"].startswith(str(tmp_path / "sorted" / "red"))
        assert data["source"].startswith(str(tmp_path / "inbox"))
        assert data["actions"][0]["result"]["outcome"] == "moved"
        assert payload["host"] and payload["timestamp"]
        assert VALID_KEY not in d.body.decode()


def test_without_a_secret_the_request_goes_unsigned(tmp_path, server, receiver):
    cfg = write_config(tmp_path, server, rules=webhook_rule(receiver))
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 1))
    run_cli("run", "-c", str(cfg), "--once")
    (d,) = wait_for(receiver.ok, what="delivery")
    assert "webhook-signature" not in d.headers and d.headers["webhook-id"].startswith("msg_")


def _attempts(receiver) -> dict[str, list[float]]:
    """Each event's delivery attempts (POSTs) by webhook-id: when they came."""
    out: dict[str, list[float]] = {}
    for d in receiver.deliveries:
        if d.method == "POST":
            out.setdefault(d.headers["webhook-id"], []).append(d.at)
    return out


def test_failed_deliveries_back_off_on_schedule_and_honour_retry_after(tmp_path, server, receiver):
    """2 s, 4 s, 8 s ... +-25 % in production; here the same schedule from a base of 0.4 s."""
    from rfwatch.processing.delivery import DeliveryPolicy

    receiver.status = 503
    cfg = write_config(tmp_path, server, rules=webhook_rule(receiver, secret=SECRET))
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 10))
    daemon = DaemonThread(cfg)
    daemon.daemon.deliveries.policy = DeliveryPolicy(base=0.4, jitter=0.25)
    with daemon:
        wait_for(lambda: any(len(t) >= 4 for t in _attempts(receiver).values()), timeout=30, what="4 attempts")
        receiver.retry_after = "2"  # the receiver says when: honoured, whatever the schedule says
        wait_for(lambda: any(len(t) >= 6 for t in _attempts(receiver).values()), timeout=30, what="6 attempts")
    (times,) = _attempts(receiver).values()
    gaps = [b - a for a, b in zip(times, times[1:])]
    for n, gap in enumerate(gaps[:3], start=1):  # after the n-th failure: 0.4 * 2**(n-1), +-25 %
        nominal = 0.4 * 2 ** (n - 1)
        assert 0.75 * nominal - 0.05 <= gap <= 1.25 * nominal + 0.25, (n, gaps)
    assert 1.9 <= gaps[-1] <= 2.4, gaps  # Retry-After: 2


def test_receiver_down_then_back_across_restarts_same_ids(tmp_path, server, receiver):
    from rfwatch.processing.delivery import DeliveryPolicy

    receiver.status = 503
    cfg = write_config(tmp_path, server, rules=webhook_rule(receiver, secret=SECRET))
    for i in range(4):
        (tmp_path / "inbox" / f"a{i}.jpg").write_bytes(unique_jpeg(RED, 10 + i))
    first = DaemonThread(cfg)
    first.daemon.deliveries.policy = DeliveryPolicy(base=0.5)
    with first:
        wait_for(lambda: len(_attempts(receiver)) == 4, what="first attempts")
        receiver.stop()  # and now it is gone entirely
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE state='pending'").fetchone()[0] == 4
    failed_ids = set(_attempts(receiver))
    status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    assert status["deliveries_pending"] == {"rfwatch.default_plugins.webhook": 4}
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a0.jpg")).stdout
    assert "webhook msg_" in history and "not yet delivered" in history and "HTTP 503" in history
    receiver.status = 200
    receiver.start()  # same port; the schedule in the journal carries over the restart
    with DaemonThread(cfg):
        wait_for(lambda: len(receiver.ok()) == 4, timeout=30, what="deliveries after the receiver came back")
    verifier = Webhook(SECRET)
    ok_ids = {verifier.verify(d.body, d.headers)["id"] for d in receiver.ok()}
    assert ok_ids == failed_ids
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE state='delivered'").fetchone()[0] == 4
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a0.jpg")).stdout
    assert "delivered" in history and "(HTTP 200)" in history, history


def test_410_stops_deliveries_and_redirects_are_not_followed(tmp_path, server, receiver):
    receiver.status = 302
    cfg = write_config(tmp_path, server, rules=webhook_rule(receiver))
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 20))
    with DaemonThread(cfg) as d:
        d.daemon.deliveries.policy.base = 0.2
        wait_for(lambda: len(receiver.deliveries) >= 3, what="a few attempts")
        # never followed: not as a POST, and not as the GET most clients turn a 302 into
        assert {(x.method, x.path) for x in receiver.deliveries} == {("POST", "/hook")}
        receiver.status = 410
        wait_for(lambda: receiver.deliveries[-1].status == 410, what="the 410")
        wait_for(
            lambda: (
                run_cli("status", "-c", str(cfg)).stdout.count(f"{receiver.url} is gone (410), nothing more is sent")
                == 1
            ),
            what="status to say so",
        )
        n = len(receiver.deliveries)
        (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg(RED, 21))
        journal = JournalView(cfg)
        # b's steps are done (a webhook it queued would be in the outbox, in the same transaction as its step)
        wait_for(lambda: journal.state("b.jpg") == "done", what="b processed")
        assert [d["state"] for d in journal.outbox()] == ["gone"]  # b's event was never queued
    assert len(receiver.deliveries) == n, "no deliveries after 410 Gone"


def test_a_slow_receiver_does_not_hold_up_classification(tmp_path, server, receiver):
    receiver.delay = 3.0
    cfg = write_config(tmp_path, server, rules=webhook_rule(receiver))
    with DaemonThread(cfg):
        started = time.monotonic()
        for i in range(12):
            (tmp_path / "inbox" / f"s{i}.jpg").write_bytes(unique_jpeg(GREEN, 30 + i))
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 12, what="12 sorted")
        elapsed = time.monotonic() - started
    assert elapsed < 3.0 * 3, f"sorting waited for the webhook receiver ({elapsed:.1f}s)"


#: What the command action must give a program, and what it must keep from it (the key).
COMMAND_ENV = ("RFWATCH_PATH", "RFWATCH_CLASS", "RFWATCH_CONFIDENCE", "RFWATCH_RULE", "ROBOFLOW_API_KEY")


def _env_recorder(tmp_path):
    """A program that appends its arguments and the command action's environment variables as a JSON line."""
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        f"keys = {COMMAND_ENV!r}\n"
        "line = json.dumps({'argv': sys.argv[2:], **{k: os.environ.get(k) for k in keys}})\n"
        "with open(sys.argv[1], 'a') as out:\n"
        "    out.write(line + '\\n')\n"
    )
    return script


def _red_or_green(image):
    """Known scores, so the confidence each file gets is known to four decimals."""
    r, g, _ = image.convert("RGB").resize((1, 1)).getpixel((0, 0))
    return {"red": 0.8765, "green": 0.1235} if r > g else {"green": 0.6543, "red": 0.3457}


def test_a_log_line_cut_short_before_is_not_glued_to_the_next_record(tmp_path, server):
    """A power cut (or a full disk) can leave the log's last line cut short: the next record starts a line of its
    own, so it stays whole and parseable, and the cut line stays what it was."""
    cfg = write_config(tmp_path, server, rules=[{"then": [{"log": {"path": "results.jsonl"}}]}])
    earlier = json.dumps({"event": "before", "top": "red"})
    cut = '{"event": "cut", "top": "gre'
    (tmp_path / "results.jsonl").write_text(earlier + "\n" + cut)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 90))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert lines[:2] == [earlier, cut], lines
    assert [json.loads(line)["source"] for line in lines[2:]] == [str(tmp_path / "inbox" / "a.jpg")], lines


def test_annotate_log_and_command(tmp_path, server):
    server.classifier = _red_or_green
    script = _env_recorder(tmp_path)
    rules = [
        {
            "name": "all",
            "then": [
                {"annotate": "annotated/{class}/{stem}.png"},
                {"log": {"path": "results.jsonl"}},
                {"log": {"path": "results.csv", "format": "csv"}},
                {"command": [sys.executable, str(script), str(tmp_path / "cmd.jsonl"), "{name}", "{confidence:.2f}"]},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules, concurrency=8)
    originals = {}
    for i in range(20):
        data = unique_jpeg(RED if i % 2 else GREEN, 40 + i, size=(200, 150))
        (tmp_path / "inbox" / f"p{i:02}.jpg").write_bytes(data)
        originals[f"p{i:02}.jpg"] = data
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    for name, data in originals.items():
        assert (tmp_path / "inbox" / name).read_bytes() == data, "originals are never touched"
    annotated = files_under(tmp_path / "annotated")
    assert len(annotated) == 20
    with Image.open(annotated[0]) as img:
        assert img.size == (200, 150)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 20
    records = [json.loads(line) for line in lines]  # whole lines, never interleaved
    assert {r["source"] for r in records} == {str(tmp_path / "inbox" / n) for n in originals}
    assert all(r["top"] in ("red", "green") and r["actions"][0]["action"] == "annotate" for r in records)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 20 and rows[0].keys() >= {"source", "top", "confidence", "rule"}
    assert (tmp_path / "results.csv").read_text().count("time,event,source") == 1
    # The command ran once per file, with its arguments and environment for that file, and without the key.
    runs = sorted((json.loads(line) for line in (tmp_path / "cmd.jsonl").read_text().splitlines()), key=str)
    expected = []
    for i, name in enumerate(originals):
        cls, confidence = ("red", 0.8765) if i % 2 else ("green", 0.6543)
        expected.append(
            {
                "argv": [name, f"{confidence:.2f}"],
                "RFWATCH_PATH": str(tmp_path / "inbox" / name),  # annotate, log and command leave it in place
                "RFWATCH_CLASS": cls,
                "RFWATCH_CONFIDENCE": f"{confidence:.4f}",
                "RFWATCH_RULE": "all",
                "ROBOFLOW_API_KEY": None,
            }
        )
    assert runs == sorted(expected, key=str)


def test_a_command_sees_the_file_where_it_is_now_and_the_class_its_rule_matched(tmp_path, server):
    """Multi-label: the top class is red, the rule matched green; the file was moved by the step before."""
    server.classifier = lambda image: {"red": 0.93, "green": 0.81237, "blue": 0.05}
    script = _env_recorder(tmp_path)
    rules = [
        {
            "name": "greens",
            "when": {"class": "green"},
            "then": [
                {"move": "sorted/{class}/{name}"},
                {"command": [sys.executable, str(script), str(tmp_path / "cmd.jsonl"), "{class}"]},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules, model="tags/1")
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 70))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr
    (run,) = [json.loads(line) for line in (tmp_path / "cmd.jsonl").read_text().splitlines()]
    assert run == {
        "argv": ["green"],
        "RFWATCH_PATH": str(tmp_path / "sorted" / "green" / "a.jpg"),
        "RFWATCH_CLASS": "green",
        "RFWATCH_CONFIDENCE": "0.8124",
        "RFWATCH_RULE": "greens",
        "ROBOFLOW_API_KEY": None,
    }


def test_a_failing_command_is_a_failed_action_with_stderr(tmp_path, server):
    rules = [
        {
            "name": "r",
            "then": [
                {"move": "sorted/{name}"},
                {"command": {"args": ["sh", "-c", "echo oh no >&2; exit 4"], "timeout": 5}},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules, failed="failed")
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 60))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 1
    assert "action command (rule 'r') failed: sh exited with 4: oh no" in result.stderr
    # the file had already been sorted: it stays there rather than going to failed/
    assert (tmp_path / "sorted" / "a.jpg").exists() and not (tmp_path / "failed").exists()
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a.jpg")).stdout
    assert "move done" in history and "command failed" in history


@needs_exiftool
def test_full_rule_on_real_camera_files(tmp_path, server, receiver, samples):
    """tag + webhook + annotate + log + command on every camera JPEG, with the receiver down for a while."""
    receiver.stop()
    rules = [
        {
            "name": "everything",
            "then": [
                {"tag": {"mode": "embed", "keywords": ["{class}", "rfwatch"], "hierarchy": "rfwatch"}},
                {"move": "sorted/{class}/{name}"},
                {"annotate": "annotated/{class}/{name}"},
                {"log": "results.jsonl"},
                {"command": ["sh", "-c", 'echo "$1" >> done.txt', "sh", "{name}"]},
                {"webhook": {"url": receiver.url, "secret": SECRET}},
            ],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    originals = {}
    for src in sorted((samples / "jpg").glob("*.jpg")):
        shutil.copyfile(src, tmp_path / "inbox" / src.name)
        originals[src.name] = src
    with DaemonThread(cfg) as d:
        d.daemon.deliveries.policy.base = 0.2  # the production schedule, from 0.2 s instead of 2 s
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == len(originals), timeout=60, what="all sorted")
        db = sqlite3.connect(tmp_path / "state" / "journal.db")
        failed = "SELECT COUNT(*) FROM outbox WHERE state='pending' AND attempts >= 2"
        wait_for(
            lambda: db.execute(failed).fetchone()[0] == len(originals),
            timeout=30,
            what="every webhook to fail twice while the receiver is away",
        )
        receiver.start()
        wait_for(lambda: len(receiver.ok()) >= len(originals), timeout=30, what="webhooks after the receiver returned")
    verifier = Webhook(SECRET)
    ids = [verifier.verify(d.body, d.headers)["id"] for d in receiver.ok()]
    assert len(set(ids)) == len(originals)
    for moved in files_under(tmp_path / "sorted"):
        original = originals[moved.name]
        assert "rfwatch" in read_xmp(moved)["subject"]
        assert jpeg_parts(moved)[1] == jpeg_parts(original)[1], "image data unchanged"
    assert len(files_under(tmp_path / "annotated")) == len(originals)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(originals)
    assert len((tmp_path / "done.txt").read_text().splitlines()) == len(originals)

"""The review page's JSON API, end to end: real daemons, real `rfwatch review` processes, real HTTP servers.

A ``review`` action sets an unsure file aside; a person's label runs the rules again with that class (at
confidence 1.0) and sends the image with its label to the Roboflow project; a reject sends it to ``failed:``.
The browser side of the page is in test_review_browser.py.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from helpers import (
    DaemonProcess,
    DaemonThread,
    JournalView,
    files_under,
    rfwatch_cmd,
    run_cli,
    unique_jpeg,
    wait_for,
    write_config,
)
from PIL import Image, ImageChops, ImageStat
from ports import free_port
from roboflow_server import VALID_KEY, color_scores

GRAY = (128, 128, 128)
RED = (230, 10, 10)
#: What the stand-in model says about a gray picture: nothing above 0.6, so the `unsure` rule sends it to review.
UNSURE = {"red": 0.4, "green": 0.35, "blue": 0.25}
TOKEN = "t0ken-" + "5f3a9c1e7b2d4680aa11"
REVIEW_RULES = [
    {"name": "unsure", "when": {"max_confidence": 0.6}, "then": [{"review": "review/{name}"}]},
    {"name": "sorted", "then": [{"move": "sorted/{class}/{name}"}]},
]


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def unsure_when_gray(image: Image.Image) -> dict[str, float]:
    """The stand-in's colour scores, except that a picture without a dominant colour gets UNSURE."""
    scores = color_scores(image)
    return dict(UNSURE) if max(scores.values()) < 0.6 else scores


def gray_jpeg(seed: int) -> bytes:
    return unique_jpeg(GRAY, seed)


def review_config(
    tmp_path: Path,
    server: Any,
    port: int | None = None,
    token: str | None = None,
    upload: dict | None = None,
    listen: str | None = None,
    **extra: Any,
) -> Path:
    review: dict[str, Any] = {}
    if listen or port:
        review["listen"] = listen or f"127.0.0.1:{port}"
    if token:
        review["token"] = token
    if upload is not None:
        review["upload"] = upload
    failed = extra.pop("failed", "failed")  # None: no failed: folder
    if failed:
        extra["failed"] = failed
    return write_config(tmp_path, server, rules=extra.pop("rules", REVIEW_RULES), review=review, **extra)


UPLOAD = {"project": "colors", "split": "train", "tags": ["rfwatch"]}


class Api:
    """Raw HTTP to a review server, every header under the test's control (http.client adds only what it must)."""

    def __init__(self, port: int, token: str | None = None):
        self.port, self.token = port, token
        self.host = f"127.0.0.1:{port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        all_headers = {"Host": self.host}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.request("GET", path, **kw)

    def post(self, path: str, doc: Any = None, headers: dict[str, str] | None = None):
        """As the page posts: JSON (other headers may be added or replaced)."""
        body = json.dumps(doc if doc is not None else {}).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json", **(headers or {})})

    def items(self) -> dict[str, Any]:
        status, _, body = self.get("/api/items")
        assert status == 200, body
        return json.loads(body)

    def names(self) -> list[str]:
        return [i["name"] for i in self.items()["items"]]

    def id_of(self, name: str) -> int:
        (item,) = [i for i in self.items()["items"] if i["name"] == name]
        return item["id"]

    def label(self, file_id: int, cls: str | list[str]) -> tuple[int, dict[str, Any]]:
        doc = {"classes": cls} if isinstance(cls, list) else {"class": cls}
        status, _, body = self.post(f"/api/items/{file_id}/label", doc)
        return status, json.loads(body)

    def reject(self, file_id: int) -> tuple[int, dict[str, Any]]:
        status, _, body = self.post(f"/api/items/{file_id}/reject")
        return status, json.loads(body)


def wait_listening(port: int, proc: subprocess.Popen | None = None, log: Path | None = None, timeout=20.0) -> None:
    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: " + (log.read_text()[-2000:] if log else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(up, timeout=timeout, what=f"a server on port {port}")


class ReviewProcess:
    """``rfwatch review -c CONFIG`` as a real process (the page served without the daemon)."""

    def __init__(self, config: Path, port: int, log: Path, *args: str, env: dict[str, str] | None = None):
        self.port, self.log = port, log
        full_env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, **(env or {}))
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                rfwatch_cmd("review", "-c", str(config), *args), env=full_env, stdout=out, stderr=out
            )

    def __enter__(self) -> ReviewProcess:
        wait_listening(self.port, self.proc, self.log)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_one_by_one(tmp_path: Path, files: dict[str, bytes]) -> None:
    """Write each file and wait until it waits for review before the next: their order is the test's."""
    journal = JournalView(tmp_path)
    for name, data in files.items():
        (tmp_path / "inbox" / name).write_bytes(data)
        wait_for(lambda n=name: (tmp_path / "review" / n).exists(), what=f"{name} in review/")
        wait_for(lambda n=name: journal.state(n) == "review", what=f"{name} waiting")


# --- labels and rejects ----------------------------------------------------------------------------------------


def test_a_label_runs_the_rules_again_and_a_reject_fails_the_file(tmp_path, server, platform):
    server.classifier = unsure_when_gray
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD)
    files = {"a.jpg": gray_jpeg(1), "b.jpg": gray_jpeg(2), "c.jpg": gray_jpeg(3)}
    api, journal = Api(port), JournalView(tmp_path)
    with DaemonThread(cfg):
        wait_listening(port)  # the page is served once the daemon watches its folders
        (tmp_path / "inbox" / "sure.jpg").write_bytes(unique_jpeg(RED, 4))
        (tmp_path / "inbox" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a picture")
        write_one_by_one(tmp_path, files)
        wait_for(lambda: (tmp_path / "sorted" / "red" / "sure.jpg").exists(), what="a sure file sorted at once")
        wait_for(lambda: (tmp_path / "failed" / "broken.jpg").exists(), what="an unreadable file failed")
        assert files_under(tmp_path / "inbox") == []
        assert [journal.state(n) for n in files] == ["review"] * 3

        doc = api.items()
        assert doc["classes"] == ["red", "green", "blue"]  # the model's classes, in its order
        assert doc["waiting"] == 3
        assert [i["name"] for i in doc["items"]] == ["a.jpg", "b.jpg", "c.jpg"]  # oldest first
        a = doc["items"][0]
        assert a["path"] == str(tmp_path / "review" / "a.jpg")
        assert a["image"] == f"/api/items/{a['id']}/image"
        assert a["prediction"]["top"] == "red" and a["prediction"]["confidence"] == 0.4
        assert {p["class"]: p["confidence"] for p in a["prediction"]["predictions"]} == UNSURE
        ids = {i["name"]: i["id"] for i in doc["items"]}

        assert api.label(ids["a.jpg"], "green")[0] == 200
        wait_for(lambda: (tmp_path / "sorted" / "green" / "a.jpg").exists(), what="a.jpg in sorted/green")
        assert (tmp_path / "sorted" / "green" / "a.jpg").read_bytes() == files["a.jpg"]
        assert not (tmp_path / "review" / "a.jpg").exists()
        wait_for(lambda: journal.state("a.jpg") == "done", what="a.jpg done")

        # Decided once: a second click, here or on another page, is refused, and nothing moves again.
        status, doc = api.label(ids["a.jpg"], "blue")
        assert status == 409 and "already decided" in doc["error"]
        assert api.reject(ids["a.jpg"])[0] == 409
        # Not a class of the model, or not the shape a single-label model takes: 400, and it still waits.
        status, doc = api.label(ids["b.jpg"], "dog")
        assert status == 400 and "'dog' is not a class of colors/1" in doc["error"]
        assert api.label(ids["b.jpg"], ["green"])[0] == 400
        status, _, body = api.request(
            "POST", f"/api/items/{ids['b.jpg']}/label", b"{not json", {"Content-Type": "application/json"}
        )
        assert status == 400
        assert api.label(999999, "green")[0] == 404 and api.reject(999999)[0] == 404
        for name in ("sure.jpg", "broken.jpg"):  # in the journal, never waiting for review (broken: no prediction)
            assert api.label(journal.file(name).id, "green")[0] == 404, name
            assert api.reject(journal.file(name).id)[0] == 404, name
        assert api.names() == ["b.jpg", "c.jpg"]

        assert api.reject(ids["b.jpg"])[0] == 200
        wait_for(lambda: (tmp_path / "failed" / "b.jpg").exists(), what="b.jpg in failed/")
        wait_for(lambda: journal.state("b.jpg") == "failed", what="b.jpg failed")
        assert journal.file("b.jpg").last_error == "rejected in review"
        assert (tmp_path / "failed" / "b.jpg").read_bytes() == files["b.jpg"]
        assert api.names() == ["c.jpg"] and api.items()["waiting"] == 1

        wait_for(lambda: platform.annotations.get("colors"), what="the label uploaded")
    assert files_under(tmp_path / "review") == [tmp_path / "review" / "c.jpg"]

    # The model's own prediction stays in the journal, beside the person's label.
    row = journal.file("a.jpg")
    assert row.prediction["top"] == "red" and row.prediction["confidence"] == 0.4
    (decision,) = journal.decisions(row.id)
    assert decision.kind == "label" and decision.classes == ("green",)
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a.jpg")).stdout
    assert "classified red 0.40" in history and "labelled green in review" in history, history
    assert "/sorted/green/a.jpg [done]" in history

    # Only the labelled file went to Roboflow, whole, with its label; its image id is in the history.
    (up,) = platform.uploads["colors"]
    assert up["bytes"] == files["a.jpg"] and up["name"] == "a.jpg"
    assert up["split"] == "train" and up["tags"] == ["rfwatch"] and up["batch"].startswith("rfwatch review ")
    assert platform.annotations["colors"] == {up["id"]: "green"}
    assert f"image_id {up['id']}" in history, history
    assert [u["file_id"] for u in journal.uploads()] == [row.id]


def test_decisions_made_in_rfwatch_review_reach_the_daemon_whenever_it_runs(tmp_path, server):
    """`rfwatch review` serves the page alone: the daemon applies its decisions when it starts, and while it runs.
    Without `failed:` a reject leaves the file where it waits."""
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    rules = [REVIEW_RULES[0], {"name": "sorted", "then": [{"move": "sorted/{class}/{confidence:.0%}/{name}"}]}]
    cfg = review_config(tmp_path, server, failed=None, rules=rules)
    names = ["a.jpg", "b.jpg", "c.jpg"]
    for n, name in enumerate(names):
        (tmp_path / "inbox" / name).write_bytes(gray_jpeg(10 + n))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert [p.name for p in files_under(tmp_path / "review")] == names
    api, journal = Api(port), JournalView(tmp_path)
    with ReviewProcess(cfg, port, tmp_path / "review.log", "--listen", f"127.0.0.1:{port}"):
        assert sorted(api.names()) == names
        assert api.label(api.id_of("a.jpg"), "blue")[0] == 200  # no daemon runs: it waits to be applied
        assert journal.state("a.jpg") == "decided" and (tmp_path / "review" / "a.jpg").exists()
        assert sorted(api.names()) == ["b.jpg", "c.jpg"]
        with DaemonProcess(cfg, tmp_path / "daemon.log") as daemon:
            daemon.wait_ready()
            # The rules ran again with the person's class at confidence 1.0.
            a = tmp_path / "sorted" / "blue" / "100%" / "a.jpg"
            wait_for(a.exists, what="a.jpg applied at start-up")
            assert api.label(api.id_of("b.jpg"), "red")[0] == 200
            b = tmp_path / "sorted" / "red" / "100%" / "b.jpg"
            wait_for(b.exists, timeout=10, what="b.jpg applied while the daemon runs")
            assert api.reject(api.id_of("c.jpg"))[0] == 200
            wait_for(lambda: journal.state("c.jpg") == "failed", timeout=10, what="c.jpg rejected")
            assert daemon.terminate() == 0
        doc = api.items()
        assert (doc["items"], doc["classes"], doc["waiting"], doc["total"]) == ([], [], 0, 0)
    assert files_under(tmp_path / "review") == [tmp_path / "review" / "c.jpg"]  # no failed: it stays
    assert journal.file("c.jpg").last_error == "rejected in review"
    assert [journal.state(n) for n in names] == ["done", "done", "failed"]
    assert files_under(tmp_path / "inbox") == []


def test_a_retry_after_a_decision_keeps_the_label_and_a_rejected_file_is_asked_about_again(tmp_path, server):
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    gate = tmp_path / "gate"
    marks = tmp_path / "marks"
    # fails until the gate exists, then writes the class the rules ran with
    after = ["sh", "-c", f'test -e {gate} && echo "$0 $1" >> {marks}', "{name}", "{class}"]
    rules = [REVIEW_RULES[0], {"name": "sorted", "then": [{"move": "sorted/{class}/{name}"}, {"command": after}]}]
    cfg = review_config(tmp_path, server, rules=rules)
    for n, name in enumerate(("a.jpg", "c.jpg")):
        (tmp_path / "inbox" / name).write_bytes(gray_jpeg(20 + n))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    api, journal = Api(port), JournalView(tmp_path)
    with ReviewProcess(cfg, port, tmp_path / "review.log", "--listen", f"127.0.0.1:{port}"):
        assert api.label(api.id_of("a.jpg"), "blue")[0] == 200
        assert api.reject(api.id_of("c.jpg"))[0] == 200
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 1  # a's command failed; c rejected
    assert journal.state("a.jpg") == "failed" and (tmp_path / "sorted" / "blue" / "a.jpg").exists()
    assert journal.state("c.jpg") == "failed" and (tmp_path / "failed" / "c.jpg").exists()

    gate.touch()
    assert run_cli("retry", "-c", str(cfg), "--failed").returncode == 0
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    # a carries on with the person's label: its command ran with it, it stays in sorted/blue, never back to review
    assert journal.state("a.jpg") == "done"
    assert marks.read_text() == "a.jpg blue\n"
    assert files_under(tmp_path / "sorted") == [tmp_path / "sorted" / "blue" / "a.jpg"]
    # c, rejected, goes through the rules again from the model's answer: a person is asked again
    assert journal.state("c.jpg") == "review"
    assert files_under(tmp_path / "review") == [tmp_path / "review" / "c.jpg"]
    # decided again, with a label this time: the latest decision is the one applied
    with ReviewProcess(cfg, port, tmp_path / "review2.log", "--listen", f"127.0.0.1:{port}"):
        assert api.label(api.id_of("c.jpg"), "green")[0] == 200
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert journal.state("c.jpg") == "done" and marks.read_text() == "a.jpg blue\nc.jpg green\n"
    assert (tmp_path / "sorted" / "green" / "c.jpg").exists() and files_under(tmp_path / "failed") == []


def test_a_label_takes_effect_while_every_worker_waits_for_the_api(tmp_path, server):
    """A spent quota (402) can last days: every worker then waits with a new file in hand. A person's label
    needs no API, and still sorts its file within seconds."""
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, concurrency=2)
    api = Api(port)
    with DaemonThread(cfg) as d:
        wait_listening(port)
        write_one_by_one(tmp_path, {"a.jpg": gray_jpeg(40)})
        server.fail_next(402, count=10_000)  # the quota is spent from now on
        daemon = d.daemon
        workers = len(daemon._threads)  # concurrency, and one per core beyond it
        for n in range(workers + 2):
            (tmp_path / "inbox" / f"new{n}.jpg").write_bytes(unique_jpeg(RED, 50 + n))
        wait_for(lambda: daemon.gate.reason, what="the daemon to notice the spent quota")
        # every worker holds a new file (all but two are out of the queues), waiting for the API
        wait_for(lambda: daemon.queued() == 2, what="every worker waiting")
        assert api.label(api.id_of("a.jpg"), "blue")[0] == 200
        wait_for(lambda: (tmp_path / "sorted" / "blue" / "a.jpg").exists(), timeout=10, what="a.jpg sorted")
        assert daemon.gate.reason is not None, "the API still refuses: the label went ahead without it"
        assert len(files_under(tmp_path / "inbox")) == workers + 2  # the new files wait, unharmed
    server.reset()


def test_multi_label_models_take_a_list_of_classes(tmp_path, server, platform):
    server.classifier = lambda image: dict(UNSURE)  # every class below the threshold: none predicted
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload={"project": "tags"}, model="tags/1")
    api = Api(port)
    with DaemonThread(cfg):
        wait_listening(port)  # the page is served once the daemon watches its folders
        write_one_by_one(tmp_path, {"a.jpg": gray_jpeg(20), "b.jpg": gray_jpeg(21)})
        doc = wait_for(
            lambda: (d := api.items())["classes"] == ["red", "green", "blue"] and d, what="the model's classes"
        )
        a, b = doc["items"]
        assert a["multi_label"] is True and a["classes"] == ["red", "green", "blue"]
        assert a["prediction"]["predicted_classes"] == []
        assert {k: v["confidence"] for k, v in a["prediction"]["predictions"].items()} == UNSURE
        assert api.label(a["id"], ["red", "dog"])[0] == 400
        status, _, _ = api.post(f"/api/items/{a['id']}/label", {"classes": "red"})
        assert status == 400
        status, doc = api.label(a["id"], [])  # nothing to send to Roboflow: a reject says "none of these"
        assert status == 400 and "at least one class" in doc["error"]
        assert api.label(a["id"], ["blue", "red"])[0] == 200
        wait_for(lambda: files_under(tmp_path / "sorted"), what="a.jpg sorted")
        assert api.label(b["id"], ["green"])[0] == 200
        wait_for(lambda: len(platform.annotations.get("tags", {})) == 2, what="both labels uploaded")
    assert sorted(platform.annotations["tags"].values()) == ["blue,red", "green"]
    by_name = {u["name"]: u["id"] for u in platform.uploads["tags"]}
    assert platform.annotations["tags"][by_name["a.jpg"]] == "blue,red"
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a.jpg")).stdout
    assert "labelled blue, red in review" in history, history
    # {class} is the highest-scoring of the person's classes (all at 1.0: the model's scores order them), and
    # history and status name the same one, with the model's own guess beside the label.
    assert "labelled blue, red ({class} red) in review (model's guess: (none))" in history, history
    status = run_cli("status", "-c", str(cfg)).stdout
    assert "labelled blue, red ({class} red) in review (model's guess: (none))" in status, status
    assert "labelled green in review (model's guess: (none))" in status, status
    report = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    brief = {Path(r["source"]).name: r for r in report["last_done"]}
    assert (brief["a.jpg"]["class"], brief["a.jpg"]["classes"]) == ("red", ["blue", "red"])
    assert brief["a.jpg"]["labelled_by"] == "review page" and brief["a.jpg"]["model"]["classes"] == []
    assert set(files_under(tmp_path / "sorted")) == {
        tmp_path / "sorted" / "red" / "a.jpg",  # {class}: the first of the person's classes in the model's order
        tmp_path / "sorted" / "green" / "b.jpg",
    }


def test_uploads_are_retried_across_restarts_and_a_duplicate_counts_as_delivered(tmp_path, server, platform):
    from rfwatch.processing.delivery import DeliveryPolicy
    from rfwatch.roboflow.platform import PlatformClient

    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD)
    files = {"a.jpg": gray_jpeg(50), "b.jpg": gray_jpeg(51), "c.jpg": gray_jpeg(52)}
    # b.jpg is in the project already (uploaded by hand): for it the platform answers "duplicate".
    by_hand = PlatformClient(VALID_KEY, platform.url).upload("colors", files["b.jpg"], "by-hand.jpg")
    api, journal = Api(port), JournalView(tmp_path)

    def upload_of(name: str) -> dict[str, Any]:
        rows = [dict(u) for u in journal.uploads() if u["file_id"] == journal.file(name).id]
        assert len(rows) <= 1, rows
        return rows[0] if rows else {"state": None, "attempts": 0}

    first = DaemonThread(cfg)
    first.daemon.deliveries.policy = DeliveryPolicy(base=0.2)  # 2 s, 4 s, 8 s ... in production
    with first:
        wait_listening(port)  # the page is served once the daemon watches its folders
        write_one_by_one(tmp_path, files)
        wait_for(lambda: api.items()["classes"] == ["red", "green", "blue"], what="the model's classes")
        platform.reset()  # the faults and the count are the uploads'
        platform.fail_next(503, 3)
        assert api.label(api.id_of("a.jpg"), "green")[0] == 200
        wait_for(lambda: upload_of("a.jpg")["state"] == "delivered", timeout=15, what="a.jpg's upload delivered")
        posts = [r.status for r in platform.requests if r.path == "/dataset/colors/upload"]
        assert posts == [503, 503, 503, 200], posts
        assert upload_of("a.jpg")["attempts"] == 4

        # a 400 is a refusal for good: not sent again and again (the file is sorted all the same)
        platform.fail_next(400, 1, "Invalid image")
        assert api.label(api.id_of("c.jpg"), "red")[0] == 200
        wait_for(lambda: upload_of("c.jpg")["state"] == "failed", timeout=15, what="c.jpg's upload refused")
        assert upload_of("c.jpg")["attempts"] == 1 and "400" in upload_of("c.jpg")["last_error"]
        assert (tmp_path / "sorted" / "red" / "c.jpg").exists()

        platform.down()
        assert api.label(api.id_of("b.jpg"), "blue")[0] == 200
        wait_for(lambda: (tmp_path / "sorted" / "blue" / "b.jpg").exists(), what="sorted without waiting for it")
        wait_for(lambda: upload_of("b.jpg")["attempts"] >= 2, timeout=15, what="b.jpg's upload retried")
    pending = upload_of("b.jpg")
    assert pending["state"] == "pending" and pending["last_error"], pending  # the platform was unreachable
    platform.up()
    second = DaemonThread(cfg)
    second.daemon.deliveries.policy = DeliveryPolicy(base=0.2)
    with second:
        wait_for(lambda: upload_of("b.jpg")["state"] == "delivered", timeout=15, what="delivered after the restart")
    # Nothing uploaded twice: the duplicate took the image id the platform already had, and got the label.
    assert [u["name"] for u in platform.uploads["colors"]] == ["by-hand.jpg", "a.jpg"]
    a_id = platform.uploads["colors"][1]["id"]
    assert platform.annotations["colors"] == {a_id: "green", by_hand.image_id: "blue"}
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "b.jpg")).stdout
    assert f"image_id {by_hand.image_id}; duplicate True" in history, history
    assert sorted(u["state"] for u in journal.uploads()) == ["delivered", "delivered", "failed"]


# --- the image of an item ----------------------------------------------------------------------------------------


def big_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A 4000x3000 JPEG stored sideways (EXIF orientation 6), and how it looks upright."""
    img = Image.new("RGB", (4000, 3000), (40, 40, 40))
    img.paste((230, 10, 10), (0, 0, 2000, 1500))  # a red top-left quarter as stored
    img.paste((10, 10, 230), (2000, 1500, 4000, 3000))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue(), img.transpose(Image.Transpose.ROTATE_270)


def test_the_image_is_a_small_upright_jpeg_served_by_id(tmp_path, server, samples):
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port)
    orientation = samples / "jpg" / "orientation"
    names = ["landscape_3.jpg", "landscape_6.jpg", "landscape_8.jpg", "portrait_5.jpg"]
    for name in names:
        (tmp_path / "inbox" / name).write_bytes((orientation / name).read_bytes())
    big, big_upright = big_rotated_jpeg()
    (tmp_path / "inbox" / "big.jpg").write_bytes(big)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    api = Api(port)
    with ReviewProcess(cfg, port, tmp_path / "review.log"):
        items = {i["name"]: i for i in api.items()["items"]}
        assert set(items) == {*names, "big.jpg"}
        # The full-size view's picture: upright, at the camera's full resolution.
        status, headers, body = api.get(items["big.jpg"]["full"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        full = Image.open(io.BytesIO(body))
        assert full.size == (3000, 4000) and full.getexif().get(0x0112, 1) == 1
        diff = ImageStat.Stat(ImageChops.difference(full.convert("RGB"), big_upright.convert("RGB"))).mean
        assert max(diff) < 8, diff
        thumbs = {}
        for name, item in items.items():
            status, headers, body = api.get(item["image"])
            assert status == 200 and headers["Content-Type"] == "image/jpeg", (name, status)
            assert body.startswith(b"\xff\xd8\xff") and len(body) < 60_000, (name, len(body))
            thumb = Image.open(io.BytesIO(body))
            thumb.load()  # decodes whole
            assert thumb.format == "JPEG" and max(thumb.size) <= 480, (name, thumb.size)
            assert thumb.getexif().get(0x0112, 1) == 1, "a browser would turn it once more"
            thumbs[name] = thumb.convert("RGB")
    # Upright: each looks like the sample stored without a rotation (orientation 1) of its shape. The samples
    # were re-encoded one by one, so even upright they differ by ~15-17 on average; turned or mirrored, by 40+.
    for name in names:
        reference = Image.open(orientation / (name.split("_")[0] + "_1.jpg")).convert("RGB")
        assert thumbs[name].size == reference.size, name
        diff = ImageStat.Stat(ImageChops.difference(thumbs[name], reference)).mean
        assert max(diff) < 25, (name, diff)
    assert thumbs["big.jpg"].size == (360, 480)
    expected = big_upright.resize((360, 480))
    assert max(ImageStat.Stat(ImageChops.difference(thumbs["big.jpg"], expected)).mean) < 8


# --- security ------------------------------------------------------------------------------------------------------


def test_loopback_by_default_and_a_token_is_required_off_loopback(tmp_path, server):
    cfg = review_config(tmp_path, server, listen="0.0.0.0:8765")
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 2 and "review.token: required" in result.stderr, result.stderr
    cfg = review_config(tmp_path, server)  # no review.listen
    result = run_cli("review", "-c", str(cfg), "--listen", "0.0.0.0:8765")
    assert result.returncode == 2 and "review.token: required" in result.stderr, result.stderr
    # `rfwatch review` without a listen address anywhere serves on 127.0.0.1:8765. It says so before it binds:
    # the default is checked without taking that port (another run may hold it).
    JournalView(cfg).open().close()  # a journal to serve (as `rfwatch run` leaves one)
    log = tmp_path / "default.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            rfwatch_cmd("review", "-c", str(cfg)),
            env=dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY),
            stdout=out,
            stderr=out,
        )
    try:

        def announced() -> bool:
            if b"review page at " in log.read_bytes():
                return True
            assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-2000:]}"
            return False

        wait_for(announced, timeout=20, what="the review page's address")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "review page at http://127.0.0.1:8765/" in log.read_text()
    # A page on loopback (here on a free port) answers there, and nowhere else.
    port = free_port()
    with ReviewProcess(cfg, port, tmp_path / "review.log", "--listen", f"127.0.0.1:{port}") as page:
        assert Api(port).items()["waiting"] == 0
        assert f"review page at http://127.0.0.1:{port}/" in page.log.read_text()
        outside = _an_address_not_on_loopback()
        if outside is not None:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=2).close()


def _an_address_not_on_loopback() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent; the kernel picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _files_waiting(tmp_path: Path, server: Any, port: int, **kw: Any) -> tuple[Path, dict[str, bytes]]:
    """A config, and files that wait for review (put there by `rfwatch run --once`, which serves no page)."""
    server.classifier = unsure_when_gray
    cfg = review_config(tmp_path, server, port, **kw)
    files = {"a.jpg": gray_jpeg(30), "b.jpg": gray_jpeg(31), "sure.jpg": unique_jpeg(RED, 32)}
    for name, data in files.items():
        (tmp_path / "inbox" / name).write_bytes(data)
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "sorted" / "red" / "sure.jpg").exists()
    assert {p.name for p in files_under(tmp_path / "review")} == {"a.jpg", "b.jpg"}
    return cfg, files


def test_with_a_token_every_request_needs_it_and_it_never_shows(tmp_path, server):
    port = free_port()
    cfg, _ = _files_waiting(tmp_path, server, port, token=TOKEN)
    log = tmp_path / "review.log"
    api, anonymous = Api(port, TOKEN), Api(port)
    # Off loopback: any Host may reach it, so the token is all that stands in the way.
    with ReviewProcess(cfg, port, log, "--listen", f"0.0.0.0:{port}"):
        a = api.id_of("a.jpg")
        for method, path in [
            ("GET", "/"),
            ("GET", "/static/review.js"),
            ("GET", "/api/items"),
            ("GET", f"/api/items/{a}/image"),
            ("GET", f"/api/items?token={TOKEN}"),  # the address bar carries it to / only, once
            ("POST", f"/api/items/{a}/label"),
            ("POST", f"/api/items/{a}/reject"),
        ]:
            for headers in [{}, {"Authorization": "Bearer wrong-" + TOKEN}, {"Cookie": "rfwatch_review=" + TOKEN[:-1]}]:
                headers = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}", **headers}
                body = b'{"class": "green"}' if method == "POST" else None
                status, _, text = anonymous.request(method, path, body, headers)
                assert status == 401, (method, path, headers, status)
                assert TOKEN.encode() not in text
        assert anonymous.get("/?token=wrong-token-0123456789")[0] == 401

        # Opened once with ?token=: a cookie (HttpOnly, SameSite=Strict), and the address bar loses the token.
        status, headers, _ = anonymous.get(f"/?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"rfwatch_review={TOKEN};")
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        with_cookie = {"Cookie": f"rfwatch_review={TOKEN}"}
        for path in ["/", "/static/review.js", "/static/review.css", "/api/items", f"/api/items/{a}/image"]:
            status, headers, text = anonymous.get(path, headers=with_cookie)
            assert status == 200, (path, status)
            assert TOKEN.encode() not in text, path
        status, headers, page = anonymous.get("/", headers=with_cookie)
        assert b"<title>rfwatch review</title>" in page
        assert "script-src 'self'" in headers["Content-Security-Policy"]

        # The cookie or the bearer token: either decides.
        status, _, _ = anonymous.post(f"/api/items/{a}/label", {"class": "green"}, headers=with_cookie)
        assert status == 200
        assert api.reject(api.id_of("b.jpg"))[0] == 200
        assert api.items()["waiting"] == 0
    assert [JournalView(tmp_path).state(n) for n in ("a.jpg", "b.jpg")] == ["decided", "decided"]
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode == 0 and "(token required)" in check.stdout, check.stdout + check.stderr
    assert "review page at http://0.0.0.0:" in log.read_text()
    for output in [log.read_text(), check.stdout, check.stderr]:
        assert TOKEN not in output


class _Opened:
    """Files this process opens (a Python audit hook: it sees every open(), whichever thread calls it)."""

    paths: list[str] | None = None
    _installed = False

    @classmethod
    def watch(cls) -> _Opened:
        if not cls._installed:
            sys.addaudithook(cls._hook)  # for good: audit hooks cannot be removed, so it records only when asked
            cls._installed = True
        cls.paths = []
        return cls()

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls.paths is not None and isinstance(args[0], (str, bytes, os.PathLike)):
            cls.paths.append(os.fsdecode(args[0]))

    def __enter__(self) -> list[str]:
        return _Opened.paths  # type: ignore[return-value]

    def __exit__(self, *exc: Any) -> None:
        _Opened.paths = None


def test_other_sites_cannot_label_and_images_are_served_by_id_only(tmp_path, server):
    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    port = free_port()
    cfg, _ = _files_waiting(tmp_path, server, port)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(unique_jpeg(RED, 33))
    api, journal = Api(port), JournalView(tmp_path)
    config = load_config(cfg)
    with ReviewServer(config, lambda model: None):
        a, b = api.id_of("a.jpg"), api.id_of("b.jpg")
        origin = f"http://127.0.0.1:{port}"
        label = f"/api/items/{a}/label"
        refused = [
            # what an HTML form on another site can send: no JSON content type
            ({"Content-Type": "application/x-www-form-urlencoded"}, b"class=green"),
            ({"Content-Type": "text/plain"}, b'{"class": "green"}'),
            (
                {"Content-Type": "multipart/form-data; boundary=x"},
                b'--x\r\nContent-Disposition: form-data; name="class"\r\n\r\ngreen\r\n--x--\r\n',
            ),
            ({}, b'{"class": "green"}'),
            # JSON, but from another origin (a fetch() would be preflighted and refused; a sloppy client is refused here)
            ({"Content-Type": "application/json", "Origin": "http://evil.example"}, b'{"class": "green"}'),
            ({"Content-Type": "application/json", "Origin": "null"}, b'{"class": "green"}'),
            ({"Content-Type": "application/json", "Origin": origin + ".evil.example"}, b'{"class": "green"}'),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, b'{"class": "green"}'),
        ]
        for headers, body in refused:
            for path in (label, f"/api/items/{a}/reject", f"/api/items/{a}/take-back", "/api/decide"):
                if path == "/api/decide":
                    body = body.replace(b'{"class"', b'{"items": [%d], "class"' % a)
                status, _, text = api.request("POST", path, body, headers)
                assert status == 403, (headers, path, status, text)
        # A name that is not this server's (DNS rebinding: evil.example resolving to 127.0.0.1) is refused.
        for host in ["evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}"]:
            assert api.get("/api/items", headers={"Host": host})[0] == 421, host
            assert api.get("/", headers={"Host": host})[0] == 421, host
            status, _, _ = api.post(label, {"class": "green"}, headers={"Host": host, "Origin": f"http://{host}"})
            assert status == 421, host
        assert sorted(api.names()) == ["a.jpg", "b.jpg"] and journal.state("a.jpg") == "review"

        # Images by the journal's id of a waiting file, never by path: nothing outside is even opened.
        done_id = journal.file("sure.jpg").id
        probes = [
            "/api/items/..%2F..%2Fetc%2Fpasswd/image",
            "/api/items/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd/image",
            "/api/items/%2Fetc%2Fpasswd/image",
            f"/api/items/{quote(str(secret), safe='')}/image",
            f"/api/items/{a}%2F..%2F..%2Fsecret.jpg/image",
            f"/api/items/{a}/image/..%2F..%2F..%2Fsecret.jpg",
            f"/api/items/{a}/..%2F..%2Fsecret.jpg",
            "/api/items/../../../../etc/passwd",
            "/api/items/-1/image",
            "/api/items/0x1/image",
            "/api/items/999999/image",
            f"/api/items/{done_id}/image",  # in the journal, but not waiting for review
            f"/api/items/{done_id}/full",
            f"/api/items/{quote(str(secret), safe='')}/full",
            "/api/items/999999/full",
            "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/static/..%2Fapp.py",
            "/static/../app.py",
            "/static/%2E%2E%2Fapp.py",
            "/static/index.html/..%2F..%2Fapp.py",
            "/etc/passwd",
            "/" + str(secret),
        ]
        with _Opened.watch() as opened:
            for path in probes:
                status, headers, body = api.get(path)
                assert status == 404, (path, status)
                assert b"root:" not in body and not body.startswith(b"\xff\xd8"), path
            assert api.get(f"/api/items/{a}/image")[0] == 200  # the hook does see what is read
            assert api.get(f"/api/items/{a}/full")[0] == 200
        assert not [p for p in opened if "passwd" in p or "secret" in p or p.endswith("app.py")], opened
        assert any(p.endswith("/review/a.jpg") for p in opened), opened

        # The same request, same-origin (as the page sends it): accepted.
        status, _, _ = api.post(label, {"class": "green"}, headers={"Origin": origin})
        assert status == 200
        status, _, _ = api.post(f"/api/items/{b}/reject", headers={"Host": f"localhost:{port}"})
        assert status == 200
    assert journal.state("a.jpg") == "decided" and journal.state("b.jpg") == "decided"


def test_an_origin_with_this_host_and_another_port_is_refused(tmp_path, server):
    """Same-origin means scheme, host and port: a page served by another program on this machine (another port
    of 127.0.0.1) cannot label or reject files, and the page's own origin can."""
    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    port = free_port()
    cfg, _ = _files_waiting(tmp_path, server, port)
    api, journal = Api(port), JournalView(tmp_path)
    config = load_config(cfg)
    with ReviewServer(config, lambda model: None):
        a = api.id_of("a.jpg")
        for origin in [f"http://127.0.0.1:{port + 1}", "http://127.0.0.1", f"http://localhost:{port}"]:
            for path, doc in [(f"/api/items/{a}/label", {"class": "green"}), (f"/api/items/{a}/reject", None)]:
                status, _, body = api.post(path, doc, headers={"Origin": origin})
                assert status == 403 and b"cross-origin" in body, (origin, path, status, body)
        assert journal.state("a.jpg") == "review"
        status, _, _ = api.post(
            f"/api/items/{a}/label", {"class": "green"}, headers={"Origin": f"http://127.0.0.1:{port}"}
        )
        assert status == 200
    assert journal.state("a.jpg") == "decided"


def test_a_file_decided_already_answers_409_and_its_first_decision_stands(tmp_path, server):
    """Decided on one page (nothing applied yet: no daemon runs), a second label or a reject from another page
    answers 409, and the first decision is the one kept."""
    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    port = free_port()
    cfg, _ = _files_waiting(tmp_path, server, port)
    api, journal = Api(port), JournalView(tmp_path)
    config = load_config(cfg)
    with ReviewServer(config, lambda model: None):
        a = api.id_of("a.jpg")
        assert api.label(a, "green")[0] == 200
        assert api.label(a, "blue")[0] == 409
        assert api.reject(a)[0] == 409
    (decision,) = journal.decisions(journal.file("a.jpg").id)
    assert (decision.kind, list(decision.classes)) == ("label", ["green"])
    assert journal.state("a.jpg") == "decided"


# --- crashes after a click -----------------------------------------------------------------------------------------

CRASH_EXIT = 86  # rfwatch.crashpoints.CRASH_EXIT
CRASHED_FILES = {"a.jpg": gray_jpeg(40), "b.jpg": gray_jpeg(41), "c.jpg": gray_jpeg(42)}


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """A folder as `rfwatch run --once` left it, a.jpg, b.jpg and c.jpg waiting for review ("waiting"), and as it
    is once a.jpg was labelled green and b.jpg rejected on the page, before any daemon applied that ("decided").
    Each is put back where it was made: the journal holds absolute paths."""
    from roboflow_server import RoboflowServer

    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    base = tmp_path_factory.mktemp("review-crash") / "work"
    base.mkdir()
    server = RoboflowServer().start()
    server.classifier = lambda image: dict(UNSURE)
    try:
        port = free_port()
        cfg = review_config(base, server, port, upload=UPLOAD, concurrency=1)
        for name, data in CRASHED_FILES.items():
            (base / "inbox" / name).write_bytes(data)
        assert run_cli("run", "-c", str(cfg), "--once", env={"ROBOFLOW_API_KEY": VALID_KEY}).returncode == 0
        shutil.copytree(base, base.parent / "waiting")
        config = load_config(cfg)
        api = Api(port)
        with ReviewServer(config, lambda model: None):
            assert api.label(api.id_of("a.jpg"), "green")[0] == 200
            assert api.reject(api.id_of("b.jpg"))[0] == 200
    finally:
        server.stop()
    shutil.copytree(base, base.parent / "decided")
    return base


def _restore(base: Path, which: str, server: Any) -> tuple[Path, int]:
    """The snapshot ``which`` back in place, for this test's stand-ins and a free port; (config, port)."""
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(base.parent / which, base)
    cfg, port = base / "config.yaml", free_port()
    doc = yaml.safe_load(cfg.read_text())
    doc["roboflow"].update(api_url=server.url, platform_url=server.platform_url)
    doc["review"]["listen"] = f"127.0.0.1:{port}"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg, port


def assert_applied_once(base: Path, platform: Any, waiting: tuple[str, ...] = ("c.jpg",)) -> None:
    """Each file in exactly one place, whole; the label applied once and uploaded once; the reject applied once."""
    expected = {"a.jpg": base / "sorted" / "green" / "a.jpg", "b.jpg": base / "failed" / "b.jpg"}
    expected.update({name: base / "review" / name for name in waiting})
    found: dict[str, list[Path]] = {}
    for p in files_under(base):
        if p.parent.name != "state" and p.suffix not in (".yaml", ".log"):
            found.setdefault(digest(p.read_bytes()), []).append(p)
    assert found == {digest(CRASHED_FILES[n]): [p] for n, p in expected.items()}, found
    journal = JournalView(base)
    states = {"a.jpg": "done", "b.jpg": "failed", **dict.fromkeys(waiting, "review")}
    assert {n: journal.state(n) for n in states} == states
    assert journal.file("b.jpg").last_error == "rejected in review"
    a = journal.file("a.jpg")
    assert a.prediction["top"] == "red"  # the model's own, beside the person's label
    for name, kind in (("a.jpg", "label"), ("b.jpg", "reject")):
        file_id = journal.file(name).id
        assert [d.kind for d in journal.decisions(file_id)] == [kind]
        actions = [(s.action, s.state) for s in journal.steps(file_id)]
        then = ("move", "done") if kind == "label" else ("quarantine", "done")
        assert actions == [("review", "done"), ("decision", "done"), then], (name, actions)
    (upload,) = journal.uploads()
    assert upload["state"] == "delivered" and upload["file_id"] == a.id
    (up,) = platform.uploads["colors"]
    assert up["bytes"] == CRASHED_FILES["a.jpg"]
    assert upload["result"]["image_id"] == up["id"]
    assert platform.annotations["colors"] == {up["id"]: "green"}
    leftovers = [p for p in files_under(base) if ".rfwatch-tmp" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize(
    "point",
    [
        "delivery.before_enqueue",  # the label's step, its upload about to be queued with it
        "journal.step_finished:1",  # the label's step committed, its upload queued
        "place.before_rename",  # the move into sorted/green: intent recorded, nothing renamed
        "journal.step_finished:2",  # moved into sorted/green, the file not yet finished
        "delivery.after_send",  # uploaded and annotated, the answer not yet recorded: sent again, a duplicate
        "quarantine.before_move",  # the rejected file about to go to failed/
    ],
)
def test_a_crash_after_a_click_neither_loses_the_decision_nor_applies_it_twice(snapshots, server, platform, point):
    cfg, _ = _restore(snapshots, "decided", server)
    crashed = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_CRASH_AT": point})
    assert crashed.returncode == CRASH_EXIT, crashed.stderr[-2000:]
    assert f"crash point {point.split(':')[0]} reached" in crashed.stderr
    after = run_cli("run", "-c", str(cfg), "--once")
    assert after.returncode in (0, 1) and "Traceback" not in after.stderr, after.stderr[-2000:]  # 1: b.jpg failed
    assert_applied_once(snapshots, platform)


@pytest.mark.parametrize("served_by", ["daemon", "rfwatch review"])
def test_a_crash_as_the_decision_is_committed_keeps_it(snapshots, server, platform, served_by):
    """review.decided: the page's process dies right after the decision's transaction, before it answers."""
    from rfwatch.config import load_config
    from rfwatch.review.server import ReviewServer

    cfg, port = _restore(snapshots, "waiting", server)
    env = {"RFWATCH_CRASH_AT": "review.decided:2"}  # the second decision
    log = snapshots / "page.log"
    if served_by == "daemon":
        page: Any = DaemonProcess(cfg, log, env=env)
        page.wait_ready()
    else:
        page = ReviewProcess(cfg, port, log, env=env).__enter__()
    api = Api(port)
    try:
        assert api.reject(api.id_of("b.jpg"))[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            api.label(api.id_of("a.jpg"), "green")
        assert page.proc.wait(timeout=30) == CRASH_EXIT
    finally:
        page.__exit__(None, None, None)
    assert "crash point review.decided reached" in log.read_text()
    # Clicked again once the page is back: already decided.
    config = load_config(cfg)
    with ReviewServer(config, lambda model: None):
        assert api.label(JournalView(snapshots).file("a.jpg").id, "blue")[0] == 409
        assert api.names() == ["c.jpg"]
    after = run_cli("run", "-c", str(cfg), "--once")
    # 1: b.jpg failed in this run (0: the daemon that served the page rejected it before it died)
    assert after.returncode in (0, 1) and "Traceback" not in after.stderr, after.stderr[-2000:]
    assert_applied_once(snapshots, platform)
    if served_by == "daemon":
        assert run_cli("run", "-c", str(cfg), "--once").returncode == 0  # and again: nothing left to do
        assert_applied_once(snapshots, platform)


# --- uploads as the platform really answers (tests/platform_server.py cites each answer) ---------------------------


def _uploader(daemon: Any) -> Any:
    """The running daemon's deliverer of review uploads (rfwatch.default_plugins.review.Uploader)."""
    return daemon.deliveries.deliverers["roboflow-upload"][1]


def _annotates(platform: Any) -> list[tuple[int, str | None]]:
    """(status, overwrite parameter) of every annotate request the platform saw, in order."""
    return [(r.status, r.query.get("overwrite")) for r in platform.requests if "/annotate/" in r.path]


def _uploads_posted(platform: Any) -> list[int]:
    return [r.status for r in platform.requests if r.path.endswith("/upload")]


def test_an_annotate_404_right_after_the_upload_is_waited_for(tmp_path, server, platform):
    """luxonis/oak-examples#287: annotate answered 404 for an id the upload had just returned, for a while."""
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD)
    api, journal = Api(port), JournalView(tmp_path)
    with DaemonThread(cfg):
        wait_listening(port)
        write_one_by_one(tmp_path, {"a.jpg": gray_jpeg(60)})
        wait_for(lambda: api.items()["classes"], what="the model's classes")
        platform.reset()
        platform.annotate_lag = 1.5
        assert api.label(api.id_of("a.jpg"), "green")[0] == 200
        wait_for(
            lambda: [u["state"] for u in journal.uploads()] == ["delivered"], timeout=20, what="the label delivered"
        )
    (up,) = platform.uploads["colors"]
    assert platform.annotations["colors"] == {up["id"]: "green"}
    statuses = [status for status, _ in _annotates(platform)]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {404} and len(statuses) >= 2, statuses
    assert _uploads_posted(platform) == [200], "the image id was kept: the image was sent once"
    assert journal.uploads()[0]["result"]["annotation"] == "annotated"


def test_an_annotate_404_that_lasts_fails_clearly_is_counted_and_retry_uploads_sends_it(
    tmp_path, server, platform, caplog
):
    pytest.importorskip("prometheus_client")
    server.classifier = lambda image: dict(UNSURE)
    port, metrics_port = free_port(), free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD, metrics={"listen": f"127.0.0.1:{metrics_port}"})
    api, journal = Api(port), JournalView(tmp_path)

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()

    with DaemonThread(cfg) as d:
        _uploader(d.daemon).annotate_wait = 2.0  # 10 minutes in production
        wait_listening(port)
        write_one_by_one(tmp_path, {"a.jpg": gray_jpeg(61)})
        wait_for(lambda: api.items()["classes"], what="the model's classes")
        # every plugin that delivers has its series from the start, at 0
        assert 'rfwatch_deliveries_failed{plugin="rfwatch.default_plugins.review"} 0.0' in scrape()
        assert 'rfwatch_deliveries_failed{plugin="rfwatch.default_plugins.webhook"} 0.0' in scrape()
        platform.annotate_lag = float("inf")  # the platform never lets the image be labelled
        assert api.label(api.id_of("a.jpg"), "green")[0] == 200
        wait_for(
            lambda: [u["state"] for u in journal.uploads()] == ["failed"], timeout=20, what="the upload failed for good"
        )
        body = scrape()
        assert 'rfwatch_deliveries_failed{plugin="rfwatch.default_plugins.review"} 1.0' in body
        assert 'rfwatch_deliveries_failed{plugin="rfwatch.default_plugins.webhook"} 0.0' in body
    (up,) = platform.uploads["colors"]
    error = journal.uploads()[0]["last_error"]
    assert f"project 'colors': image {up['id']} was uploaded, but the annotate route still answered 404 " in error
    assert " s after the upload (" in error
    assert "without its label 'green'" in error and VALID_KEY not in error
    assert _uploads_posted(platform).count(200) == 1  # waited for the same image, never sent again
    assert "was uploaded, but the annotate route still answered 404" in caplog.text
    assert VALID_KEY not in caplog.text  # nor in any log line of the waiting and the failure
    assert "colors" not in platform.annotations

    status = run_cli("status", "-c", str(cfg))
    assert "deliveries failed for good: rfwatch.default_plugins.review 1" in status.stdout, status.stdout
    assert (
        f"roboflow-upload: roboflow:colors failed for good: 1 (last: project 'colors': image {up['id']}"
        in status.stdout
    )
    assert "`rfwatch retry --uploads` sends them again" in status.stdout
    report = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    assert report["deliveries_failed"] == {"rfwatch.default_plugins.review": 1, "rfwatch.default_plugins.webhook": 0}
    assert VALID_KEY not in status.stdout + status.stderr

    platform.annotate_lag = 0.0  # put right on the platform's side
    again = run_cli("retry", "-c", str(cfg), "--uploads")
    assert again.returncode == 0 and "1 failed upload(s) queued again" in again.stdout, again.stdout + again.stderr
    assert journal.state("a.jpg") == "done", "--uploads alone leaves the files as they are"
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0  # the next run sends it
    assert journal.uploads()[0]["state"] == "delivered"
    assert platform.annotations["colors"] == {up["id"]: "green"}
    assert len(platform.uploads["colors"]) == 1
    report = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    assert report["deliveries_failed"] == {"rfwatch.default_plugins.review": 0, "rfwatch.default_plugins.webhook": 0}
    assert "deliveries failed for good: none" in run_cli("status", "-c", str(cfg)).stdout


@pytest.mark.parametrize("answer", ["400", "400-no-hint", "409"])
def test_already_annotated_in_each_form_is_delivered_for_our_label_and_replaced_for_another(
    snapshots, server, platform, answer
):
    """roboflow-python#214 (400, with a hint), the same without it, rfapi's 409: none fails the upload."""
    platform.already_annotated = answer
    status = int(answer[:3])

    # A crash after the label arrived, before its answer was recorded: the retry is told "already annotated", and
    # this delivery had sent that very label: delivered, nothing replaced.
    cfg, _ = _restore(snapshots, "decided", server)
    crashed = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_CRASH_AT": "delivery.after_send"})
    assert crashed.returncode == CRASH_EXIT, crashed.stderr[-2000:]
    assert run_cli("run", "-c", str(cfg), "--once").returncode in (0, 1)
    (up,) = platform.uploads["colors"]
    assert platform.annotations["colors"] == {up["id"]: "green"}
    assert _annotates(platform) == [(200, None), (status, None)]
    (upload,) = JournalView(snapshots).uploads()
    assert upload["state"] == "delivered" and upload["result"]["annotation"] == "already annotated"

    # Someone labels the image in Roboflow between rfwatch's upload and its label: the person's label in review
    # replaces it (overwrite=true), it does not fail.
    platform.uploads.clear()
    platform.annotations.clear()
    platform.reset()
    cfg, _ = _restore(snapshots, "decided", server)
    crashed = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_CRASH_AT": "review.uploaded"})
    assert crashed.returncode == CRASH_EXIT, crashed.stderr[-2000:]
    (up,) = platform.uploads["colors"]
    platform.annotations["colors"] = {up["id"]: "red"}
    assert run_cli("run", "-c", str(cfg), "--once").returncode in (0, 1)
    assert platform.annotations["colors"] == {up["id"]: "green"}
    assert _annotates(platform) == [(status, None), (200, "true")]
    (upload,) = JournalView(snapshots).uploads()
    assert upload["state"] == "delivered" and upload["result"]["annotation"] == "annotated with overwrite"
    assert_applied_once(snapshots, platform)


DECIDE = """
import sys
from rfwatch.config import load_config
from rfwatch.journal import DecisionKind, open_journal
j = open_journal(load_config(sys.argv[1]))
(row,) = j.decisions.waiting()
j.decisions.decide(row.id, DecisionKind.LABEL, (sys.argv[2],), by="test")
j.close()
"""


def _decide(base: Path, label: str) -> None:
    """A person labels the one file waiting (as the page would), with no page served."""
    subprocess.run([sys.executable, "-c", DECIDE, str(base / "config.yaml"), label], check=True, timeout=60)


def test_a_relabel_reaches_the_project_with_overwrite(tmp_path, server, platform):
    """The same photo reviewed again (undo, then retry): the upload answers "duplicate", and the new label is sent
    with overwrite=true; before, the delivery was recorded as done and Roboflow kept the old label."""
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD)
    api, journal = Api(port), JournalView(tmp_path)
    with DaemonThread(cfg):
        wait_listening(port)
        write_one_by_one(tmp_path, {"a.jpg": gray_jpeg(62)})
        wait_for(lambda: api.items()["classes"], what="the model's classes")
        assert api.label(api.id_of("a.jpg"), "green")[0] == 200
        wait_for(lambda: platform.annotations.get("colors"), what="the first label uploaded")
        undone = run_cli("undo", "-c", str(cfg), str(tmp_path / "sorted" / "green" / "a.jpg"))
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert run_cli("retry", "-c", str(cfg), "--undone").returncode == 0
        wait_for(lambda: api.names() == ["a.jpg"], what="a.jpg in review again")
        assert api.label(api.id_of("a.jpg"), "blue")[0] == 200
        wait_for(lambda: [u["state"] for u in journal.uploads()] == ["delivered"] * 2, what="both labels delivered")
    (up,) = platform.uploads["colors"]
    assert platform.annotations["colors"] == {up["id"]: "blue"}
    assert _annotates(platform)[-1] == (200, "true")
    results = sorted((u["result"] for u in journal.uploads()), key=lambda r: r["duplicate"])
    assert [(r["duplicate"], r["annotation"]) for r in results] == [
        (False, "annotated"),
        (True, "annotated with overwrite"),
    ]


@pytest.mark.parametrize("dedupe", [True, False])
def test_kill_9_between_upload_and_annotate_leaves_one_image_with_the_last_label(tmp_path, server, platform, dedupe):
    """review.uploaded: the image is in the project, its label not sent. The restart sends the label to that image
    (its id was kept before the crash), so even a platform that does not deduplicate (oak-examples#287's author saw
    that) ends with one image; and a relabel's label replaces the first one."""
    server.classifier = lambda image: dict(UNSURE)
    platform.dedupe = dedupe
    cfg = review_config(tmp_path, server, upload=UPLOAD, concurrency=1)
    (tmp_path / "inbox" / "a.jpg").write_bytes(gray_jpeg(63))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    _decide(tmp_path, "green")
    crashed = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_CRASH_AT": "review.uploaded"})
    assert crashed.returncode == CRASH_EXIT and "crash point review.uploaded reached" in crashed.stderr
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    (up,) = platform.uploads["colors"]
    assert platform.annotations["colors"] == {up["id"]: "green"}
    if not dedupe:
        return  # a relabel finds its image by the platform's "duplicate" answer: nothing to find it by without it

    # The photo reviewed again and labelled blue; killed between the upload (a duplicate) and the label.
    assert run_cli("undo", "-c", str(cfg), str(tmp_path / "sorted" / "green" / "a.jpg")).returncode == 0
    assert run_cli("retry", "-c", str(cfg), "--undone").returncode == 0
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert (tmp_path / "review" / "a.jpg").exists()
    _decide(tmp_path, "blue")
    crashed = run_cli("run", "-c", str(cfg), "--once", env={"RFWATCH_CRASH_AT": "review.uploaded"})
    assert crashed.returncode == CRASH_EXIT, crashed.stderr[-2000:]
    assert platform.annotations["colors"] == {up["id"]: "green"}  # killed before the new label went out
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert [u["id"] for u in platform.uploads["colors"]] == [up["id"]]
    assert platform.annotations["colors"] == {up["id"]: "blue"}
    journal = JournalView(tmp_path)
    assert [u["state"] for u in journal.uploads()] == ["delivered", "delivered"]
    assert (tmp_path / "sorted" / "blue" / "a.jpg").exists()

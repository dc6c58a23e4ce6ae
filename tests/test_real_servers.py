"""What Roboflow's real servers do, and rfwatch doing the right thing with it (the stand-ins follow
roboflow/inference; see the docstring of rfwatch/testing/roboflow_server.py for where each behaviour comes from)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import DaemonThread, files_under, run_cli, unique_jpeg, wait_for, write_config
from metadata_reader import read_xmp
from PIL import Image, ImageCms
from roboflow_server import RoboflowServer
from webhook_receiver import Receiver

RED, YELLOW = (230, 10, 10), (230, 230, 10)
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


# --- multi-label -----------------------------------------------------------------------


@needs_exiftool
@pytest.mark.parametrize("engine", ["new", "old"])
def test_multi_label_classes_are_rfwatchs_own_everywhere(tmp_path, engine):
    """A sigmoid head scores absent classes a few percent; with confidence=0.01 the server calls all of them
    predicted (>= on the new engine, > on the old). rfwatch's threshold (0.5) decides, the same on both."""
    server = RoboflowServer(engine=engine).start()
    receiver = Receiver().start()
    try:
        rules = [
            {"name": "blue", "when": {"class": "blue"}, "then": [{"move": "blue/{name}"}]},
            {
                "name": "tagged",
                "then": [
                    {"tag": {"mode": "sidecar"}},
                    {"move": "sorted/{class}/{name}"},
                    {"log": "results.jsonl"},
                    {"webhook": {"url": receiver.url}},
                ],
            },
        ]
        cfg = write_config(tmp_path, server, model="tags/1", rules=rules)
        (tmp_path / "inbox" / "red.jpg").write_bytes(unique_jpeg(RED, 1))
        (tmp_path / "inbox" / "yellow.jpg").write_bytes(unique_jpeg(YELLOW, 2))
        assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
        # the hazard: the server's own list names every class
        answers = [r.answer for r in server.inference_requests()]
        assert all(set(a["predicted_classes"]) == {"red", "green", "blue"} for a in answers), answers
        assert all(min(s["confidence"] for s in a["predictions"].values()) < 0.1 for a in answers)
        assert not (tmp_path / "blue").exists(), "a rule for blue matched a red or yellow photo"
        assert (tmp_path / "sorted" / "red" / "red.jpg").exists()
        (yellow,) = [p for p in files_under(tmp_path / "sorted") if p.name == "yellow.jpg"]
        assert yellow.parent.name in ("red", "green")
        assert read_xmp(tmp_path / "sorted" / "red" / "red.jpg.xmp")["subject"] == ["red"]
        assert sorted(read_xmp(yellow.with_name("yellow.jpg.xmp"))["subject"]) == ["green", "red"]
        records = {Path(r["source"]).name: r for r in map(json.loads, (tmp_path / "results.jsonl").open())}
        assert records["red.jpg"]["predicted_classes"] == ["red"]
        assert sorted(records["yellow.jpg"]["predicted_classes"]) == ["green", "red"]
        wait_for(lambda: len(receiver.ok()) == 2, what="webhooks")
        bodies = {Path(json.loads(d.body)["data"]["source"]).name: json.loads(d.body) for d in receiver.ok()}
        assert bodies["red.jpg"]["data"]["prediction"]["predicted_classes"] == ["red"]
        status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
        classes = {Path(r["source"]).name: r["classes"] for r in status["last_done"]}
        assert classes["red.jpg"] == ["red"] and sorted(classes["yellow.jpg"]) == ["green", "red"]
        assert "None" not in run_cli("status", "-c", str(cfg)).stdout  # it showed None for multi-label files
        out = run_cli("classify", "--api-url", server.url, "--model", "tags/1", str(yellow)).stdout
        assert sorted(json.loads(out)["predicted_classes"]) == ["green", "red"]
    finally:
        server.stop()
        receiver.stop()


@pytest.mark.parametrize("engine", ["new", "old"])
def test_the_threshold_is_inclusive_and_configurable_whatever_the_engine(tmp_path, engine):
    server = RoboflowServer(engine=engine).start()
    try:
        server.classifier = lambda image: {"red": 0.93, "green": 0.5, "blue": 0.01}
        (tmp_path / "a.jpg").write_bytes(unique_jpeg(RED, 3))
        base = ["classify", "--api-url", server.url, "--model", "tags/1", str(tmp_path / "a.jpg")]
        doc = json.loads(run_cli(*base).stdout)
        assert doc["predicted_classes"] == ["red", "green"]  # 0.5 is "at or above" 0.5
        # the server cuts at the request's confidence (0.01), >= on the new engine and > on the old one:
        # its list differs by engine and names nearly every class; rfwatch's does not
        served = server.inference_requests()[-1].answer["predicted_classes"]
        assert "green" in served and ("blue" in served) == (engine == "new")
        cfg = write_config(tmp_path, server, model="tags/1")
        text = cfg.read_text().replace("  retries: 3", "  retries: 3\n  multi_label_threshold: 0.6")
        cfg.write_text(text)
        doc = json.loads(run_cli("classify", "-c", str(cfg), str(tmp_path / "a.jpg")).stdout)
        assert doc["predicted_classes"] == ["red"]
    finally:
        server.stop()


# --- active learning ------------------------------------------------------------------------


def test_active_learning_is_off_unless_the_config_asks_for_it(tmp_path, server):
    server.catalog.project("colors").active_learning = True  # the user's project has it configured
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 4))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert server.active_learning_saved == [], "photos were saved into the user's dataset silently"
    assert server.inference_requests()[-1].query["disable_active_learning"] == "true"
    text = cfg.read_text().replace("  retries: 3", "  retries: 3\n  active_learning: true")
    cfg.write_text(text)
    (tmp_path / "inbox" / "b.jpg").write_bytes(unique_jpeg(RED, 5))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(server.active_learning_saved) == 1
    assert "disable_active_learning" not in server.inference_requests()[-1].query


# --- answers that every request would get alike ----------------------------------------------------------


@pytest.mark.parametrize("status,said", [(501, "ONNX Runtime Provider"), (507, "restrictions of server configuration")])
def test_501_and_507_are_not_retried_and_files_wait(tmp_path, server, status, said):
    cfg = write_config(tmp_path, server, failed="failed")
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 6))
    server.fail_next(status, count=5)
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 3, result.stderr
    assert f"HTTP {status}" in result.stderr and said in result.stderr
    assert len(server.inference_requests()) == 1, "retried although it cannot clear"
    assert (tmp_path / "inbox" / "a.jpg").exists() and not (tmp_path / "failed").exists()


@pytest.mark.parametrize("profile", ["v1", "serverless"])
def test_402_means_the_quota_on_both_hosts(tmp_path, profile):
    server = RoboflowServer(profile=profile).start()
    try:
        cfg = write_config(tmp_path, server)
        (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 7))
        server.fail_next(402)
        result = run_cli("run", "-c", str(cfg), "--once")
        assert result.returncode == 3 and "the workspace is out of credits" in result.stderr
        assert (tmp_path / "inbox" / "a.jpg").exists()
    finally:
        server.stop()


# --- the connection ------------------------------------------------------------------------


def test_a_self_hosted_server_closing_idle_connections_costs_nothing(tmp_path, caplog):
    """uvicorn (the self-hosted server) closes a kept-alive connection after 5 s idle; here after 0.5 s."""
    server = RoboflowServer(profile="self-hosted").start()
    server.keepalive_timeout = 0.5
    try:
        cfg = write_config(tmp_path, server, concurrency=1)
        with DaemonThread(cfg):
            for i in range(3):
                (tmp_path / "inbox" / f"k{i}.jpg").write_bytes(unique_jpeg(RED, 10 + i))
                wait_for(lambda i=i: (tmp_path / "sorted" / "red" / f"k{i}.jpg").exists(), what=f"k{i} sorted")
                time.sleep(2.0)  # idle for well longer than the server keeps the connection: it closes it
        assert server.connections >= 3, "the idle connections were not closed: the test proves nothing"
        assert [r.status for r in server.inference_requests()] == [200, 200, 200]
    finally:
        server.stop()


# --- what support needs -------------------------------------------------------------------------


def test_history_shows_the_inference_id_and_status_where_each_file_is(tmp_path, server):
    cfg = write_config(tmp_path, server, failed="failed")
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 20))
    (tmp_path / "inbox" / "bad.jpg").write_text("not a picture")
    run_cli("run", "-c", str(cfg), "--once")
    inference_id = server.inference_requests()[-1].answer["inference_id"]
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "sorted" / "red" / "a.jpg")).stdout
    assert f"inference_id {inference_id}" in history
    status = run_cli("status", "-c", str(cfg)).stdout
    failed = str(tmp_path / "failed" / "bad.jpg")
    assert f"{failed} (from {tmp_path / 'inbox' / 'bad.jpg'})" in status  # where it is, and where it came from
    retry = run_cli("retry", "-c", str(cfg), "--failed").stdout
    assert f"queued again: {failed}" in retry


def test_json_log_lines_give_rules_as_a_list(tmp_path, server):
    rules = [
        {"name": "a", "continue": True, "then": [{"copy": "copies/{name}"}]},
        {"name": "b", "then": [{"move": "sorted/{name}"}]},
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 21))
    result = run_cli("run", "-c", str(cfg), "--once", "--log-format", "json")
    lines = [json.loads(x) for x in result.stderr.splitlines()]
    (done,) = [x for x in lines if x.get("outcome") == "done"]
    assert done["rule"] == ["a", "b"]


def test_log_action_times_are_rfc3339_utc(tmp_path, server):
    cfg = write_config(tmp_path, server, rules=[{"then": [{"log": "results.jsonl"}]}])
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 22))
    run_cli("run", "-c", str(cfg), "--once")
    (record,) = map(json.loads, (tmp_path / "results.jsonl").open())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["time"]), record["time"]


@needs_exiftool
def test_keywords_are_metadata_not_paths_and_hierarchies_nest(tmp_path, server):
    rules = [{"then": [{"tag": {"mode": "sidecar", "keywords": ["{class}", "{model}"], "hierarchy": "lab|colours"}}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 23))
    run_cli("run", "-c", str(cfg), "--once")
    xmp = read_xmp(tmp_path / "inbox" / "a.jpg.xmp")
    assert xmp["subject"] == ["red", "colors/1"]  # {model} became rf-colors_1 when sanitized like a path
    assert xmp["hierarchical"] == ["lab|colours|red", "lab|colours|colors/1"]
    assert xmp["tagslist"] == ["lab/colours/red", "lab/colours/colors/1"]  # not a tag literally named "lab|colours"


@needs_exiftool
def test_both_mode_sidecar_says_what_the_file_says(tmp_path, server, samples):
    import subprocess

    cfg = write_config(tmp_path, server, rules=[{"then": [{"tag": {"mode": "both"}}]}])
    photo = tmp_path / "inbox" / "cam.jpg"
    shutil.copyfile(samples / "jpg" / "Canon_40D.jpg", photo)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-IPTC:Keywords=iguana", str(photo)], check=True)
    run_cli("run", "-c", str(cfg), "--once")
    in_file = read_xmp(photo)["subject"]
    in_sidecar = read_xmp(tmp_path / "inbox" / "cam.jpg.xmp")["subject"]
    assert "iguana" in in_sidecar and set(in_file) <= set(in_sidecar), (in_file, in_sidecar)


def test_annotated_copies_keep_the_colour_profile_and_exif(tmp_path, server):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0112] = 6  # rotated: the copy is drawn upright, and says so
    photo = tmp_path / "inbox" / "p.jpg"
    photo.parent.mkdir()
    Image.new("RGB", (80, 60), RED).save(photo, icc_profile=profile, exif=exif)
    cfg = write_config(tmp_path, server, rules=[{"then": [{"annotate": "annotated/{name}"}]}])
    run_cli("run", "-c", str(cfg), "--once")
    with Image.open(tmp_path / "annotated" / "p.jpg") as copy:
        assert copy.info.get("icc_profile") == profile
        assert copy.getexif().get(0x010F) == "Canon" and copy.getexif().get(0x0112) in (None, 1)
        assert copy.size == (60, 80)


def test_a_late_event_for_a_file_already_moved_on_is_not_news(caplog):
    from rfwatch.config import WatchConfig
    from rfwatch.service.watcher import Settler

    caplog.set_level(logging.DEBUG, logger="rfwatch.service.watcher")
    taken = Settler(lambda *a: None, was_taken=lambda path: True)
    taken.offer(Path("/nonexistent/sorted-away.jpg"), WatchConfig(Path("/nonexistent")))
    fresh = Settler(lambda *a: None)
    fresh.offer(Path("/nonexistent/deleted.jpg"), WatchConfig(Path("/nonexistent")))
    lines = {(r.levelno, r.getMessage()) for r in caplog.records}
    assert (logging.INFO, "/nonexistent/deleted.jpg: removed before it settled; nothing to do") in lines
    assert not any("sorted-away.jpg: removed before it settled" in m for _, m in lines)


def test_status_names_every_model_in_use(tmp_path, server):
    watch = [{"path": "inbox", "settle": 0.2}, {"path": "tagged", "settle": 0.2, "model": "tags/1"}]
    (tmp_path / "tagged").mkdir()
    cfg = write_config(tmp_path, server, watch=watch)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 24))
    run_cli("run", "-c", str(cfg), "--once")
    status = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    assert status["models"] == ["colors/1", "tags/1"]
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT COUNT(*) FROM files WHERE state='done'").fetchone()[0] == 1


def test_classify_saves_an_annotated_copy_of_a_url(tmp_path, server, samples):
    server.files["cat.jpg"] = (samples / "jpg" / "orientation" / "portrait_6.jpg").read_bytes()
    url = f"{server.url}/files/cat.jpg"  # http:// on a bare IP: the hosted servers would refuse it as image=
    out = run_cli("classify", "--api-url", server.url, "--model", "colors/1", "--save", str(tmp_path / "o.jpg"), url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["image_path"] == url
    with Image.open(tmp_path / "o.jpg") as saved:
        assert saved.height > saved.width, "drawn on the upright picture"
    missing = run_cli("classify", "--api-url", server.url, "--model", "colors/1", f"{server.url}/files/nope.jpg")
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == f"rfwatch: {server.url}/files/nope.jpg: cannot fetch: HTTP 404 Not Found"
    )

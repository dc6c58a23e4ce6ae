"""Knowing the model: facts from the platform API (stand-in: rfwatch/testing/platform_server.py), uploads sized to
the model's input, rules checked against its classes, a bad key told from a bad model, and exiftool kept
running for tagging."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import time

import pytest
import yaml
from catalog import VALID_KEY, Project, resize, static_crop
from helpers import (
    UNREACHABLE_PLATFORM,
    DaemonProcess,
    DaemonThread,
    files_under,
    run_cli,
    unique_jpeg,
    wait_for,
    write_config,
)
from metadata_reader import read_xmp
from PIL import Image

from rfwatch.images.sizing import LETTERBOX_FORMATS, UploadSize

RED = (230, 10, 10)
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def photo(path, size=(1200, 900), color=RED):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=90)
    return path


# --- sizing, unit level ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,expected",
    [
        ("Stretch to", (299, 224)),  # both sides must cover 224: the short side decides
        ("Fill (with center crop) in", (299, 224)),  # scaled to cover, then cropped: the same
        ("Fit (black edges) in", (224, 168)),  # letterbox: fits inside, the long side decides
        ("Fit (white edges) in", (224, 168)),
        ("Fit (grey edges) in", (224, 168)),
        ("Fit (reflect edges) in", (299, 224)),  # applied as a stretch by the older engine: cover both
        ("Fit within", (299, 224)),  # ditto
        ("Some future format", (299, 224)),
    ],
)
def test_the_upload_covers_the_input_for_each_resize_format(fmt, expected):
    size = UploadSize(max_size=1024, model_input=(224, 224), letterbox=fmt in LETTERBOX_FORMATS)
    assert size.target((4000, 3000)) == expected
    assert size.target((3000, 4000)) == expected[::-1]


def test_a_static_crop_is_taken_into_account_and_limits_hold():
    crop = UploadSize(max_size=1024, model_input=(224, 224), crop=(10, 10, 90, 90))
    w, h = crop.target((4000, 3000))
    # what the server keeps after its crop (int() of each percentage) still covers 224x224
    assert int(0.9 * w) - int(0.1 * w) >= 224 and int(0.9 * h) - int(0.1 * h) >= 224
    assert (w, h) == (374, 280)
    assert UploadSize(max_size=1024, model_input=(224, 224)).target((200, 150)) == (200, 150)  # never enlarged
    assert UploadSize(max_size=256, model_input=(640, 640)).target((4000, 3000)) == (256, 192)  # never above max


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize(
    "size,covered",
    [
        (UploadSize(max_size=1024, model_input=(224, 224)), True),
        (UploadSize(max_size=1024, model_input=(640, 640)), True),
        (UploadSize(max_size=1024, model_input=(320, 320), letterbox=True, crop=(25, 25, 75, 75)), True),
        (UploadSize(max_size=1024), True),  # the platform never answered: max_size alone
        (UploadSize(max_size=2048, model_input=(1024, 1024)), False),  # more than the guess: decoded again
        (UploadSize(max_size=1024, model_input=(640, 640), crop=(25, 25, 75, 75)), False),
    ],
)
def test_a_picture_decoded_before_the_size_was_known_is_uploaded_as_if_decoded_for_it(
    tmp_path, size, covered, orientation
):
    """A cold start decodes new files for a guessed input while the platform's answer is on its way: once the size
    is known, the upload made from that decode has the size, orientation and look of one decoded for it."""
    from PIL import ImageChops, ImageStat

    from rfwatch.images.prepare import decode_image, prepare_image, size_decoded

    big = tmp_path / "big.jpg"
    picture = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    picture.paste((200, 30, 30), (0, 0, 1000, 750))  # a red corner: shows the turn
    exif = Image.Exif()
    exif[0x0112] = orientation
    picture.save(big, "JPEG", quality=90, exif=exif)
    early = decode_image(big, UploadSize(max_size=size.max_size).early())
    assert early.decoded != early.stored, "the early decode is at a reduced scale (a JPEG draft)"
    assert early.covers(size) is covered
    if not covered:
        return
    direct, late = prepare_image(big, size), size_decoded(early, size)
    assert late.upload_size == direct.upload_size and late.original_size == direct.original_size
    a, b = (Image.open(io.BytesIO(p.jpeg)).convert("RGB") for p in (direct, late))
    assert sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) < 6, "the early decode's upload looks different"


# --- facts, end to end -------------------------------------------------------------------------------------


def test_facts_are_fetched_cached_and_size_the_uploads(tmp_path, server, platform):
    cfg = write_config(tmp_path, server, model="colors/2")  # 224x224, "Stretch to"
    photo(tmp_path / "inbox" / "a.jpg")
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert server.inference_requests()[-1].image.size == (299, 224)
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    (facts,) = [json.loads(f) for (f,) in db.execute("SELECT facts FROM model_facts")]
    assert facts["model"] == "colors/2" and facts["classes"] == ["red", "green", "blue"]
    assert facts["resize"] == {"width": 224, "height": 224, "format": "Stretch to"}
    asked = len(platform.requests)
    photo(tmp_path / "inbox" / "b.jpg")
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(platform.requests) == asked, "cached facts (fresh for a day) were asked for again"
    assert server.inference_requests()[-1].image.size == (299, 224)
    shown = run_cli("model", "-c", str(cfg)).stdout
    assert "classes (3): red, green, blue" in shown and "input: 224x224, Stretch to" in shown
    assert "299x224" in shown
    platform.down()
    shown = run_cli("model", "-c", str(cfg), "--json")
    doc = json.loads(shown.stdout)
    assert doc["classes"] == ["red", "green", "blue"] and "from the journal's cache" in doc["how"]


def test_a_static_crop_and_a_letterbox_model(tmp_path, server, platform):
    cfg = write_config(tmp_path, server, model="colors/3")  # crop 25..75 %, then 320x320 "Fit (black edges) in"
    photo(tmp_path / "inbox" / "a.jpg", size=(1600, 1200))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    w, h = server.inference_requests()[-1].image.size
    assert (w, h) == (640, 480)  # the middle half (320x240) covers the letterboxed input's long side
    assert int(0.75 * w) - int(0.25 * w) >= 320


def test_an_explicit_max_size_decides_alone(tmp_path, server, platform):
    cfg = write_config(tmp_path, server, model="colors/2")
    doc = yaml.safe_load(cfg.read_text())
    doc["roboflow"]["max_size"] = 600
    cfg.write_text(yaml.safe_dump(doc))
    photo(tmp_path / "inbox" / "a.jpg")
    run_cli("run", "-c", str(cfg), "--once")
    assert server.inference_requests()[-1].image.size == (600, 450)
    out = run_cli(
        "classify",
        "--api-url",
        server.url,
        "--model",
        "colors/2",
        "--max-size",
        "400",
        str(photo(tmp_path / "b.jpg")),
        env={"ROBOFLOW_PLATFORM_URL": platform.url},
    )
    assert out.returncode == 0
    # at most 400 (a JPEG is decoded at 1/4 scale when that leaves 3/4 of max_size or more), never the 299x224
    # the model's input would call for
    assert server.inference_requests()[-1].image.size in ((400, 300), (300, 225))


def test_a_silent_platform_delays_nothing(tmp_path, server, platform):
    cfg = write_config(tmp_path, server, model="colors/2", concurrency=2)
    platform.delay = 30  # a firewall that drops packets: nothing answers
    for i in range(4):
        photo(tmp_path / "inbox" / f"p{i}.jpg", color=(230, 10 + i, 10))
    started = time.monotonic()
    result = run_cli("run", "-c", str(cfg), "--once")
    took = time.monotonic() - started
    assert result.returncode == 0 and len(files_under(tmp_path / "sorted")) == 4
    assert took < 10, f"{took:.1f}s: the run waited for the platform"
    # (the warning comes once the platform's timeout ends, after this run: see the next test for it)
    assert all(max(r.image.size) == 1024 for r in server.inference_requests()), "max_size when the input is unknown"


def test_an_unreachable_platform_costs_exactly_one_warning(tmp_path, server):
    """A platform that refuses connections (an air-gapped site): one warning at WARNING level for the whole run,
    however many models are in use, and the files are sorted as usual."""
    other = tmp_path / "other"
    other.mkdir()
    watch = [{"path": "inbox", "settle": 0.2}, {"path": "other", "settle": 0.2, "model": "colors/3"}]
    cfg = write_config(tmp_path, server, model="colors/2", watch=watch, platform_url=UNREACHABLE_PLATFORM)
    for i in range(3):
        photo(tmp_path / "inbox" / f"p{i}.jpg", color=(230, 10 + i, 10))
        photo(other / f"q{i}.jpg", color=(230, 10 + i, 10))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0 and len(files_under(tmp_path / "sorted")) == 6, result.stderr[-2000:]
    warned = [line for line in result.stderr.splitlines() if "could not ask the platform API" in line]
    assert len(warned) == 1, result.stderr[-3000:]
    level = warned[0].split(" rfwatch.")[0].split()[-1]  # "[time] LEVEL logger: message"
    assert level == "WARNING" and "uploads use max_size and rule classes are not checked" in warned[0]


def test_a_typo_in_a_rule_class_is_refused_with_a_hint(tmp_path, server, platform):
    rules = [{"name": "pets", "when": {"class": "gren"}, "then": [{"move": "g/{name}"}]}]
    cfg = write_config(tmp_path, server, model="colors/2", rules=rules)
    check = run_cli("check", "-c", str(cfg))
    hint = "rule 'pets': class 'gren' is not a class of colors/2 (did you mean 'green'?)"
    assert check.returncode == 2 and hint in check.stderr
    run = run_cli("run", "-c", str(cfg), "--once")
    assert run.returncode == 2 and hint in run.stderr
    platform.down()  # unreachable: the classes cannot be checked, and a warning says so
    check = run_cli("check", "-c", str(cfg))
    assert check.returncode == 0, check.stderr
    assert "the classes named in rules were not checked" in check.stdout


def test_a_reload_with_a_typo_in_a_class_keeps_the_running_config(tmp_path, server, platform):
    rules = [{"name": "reds", "when": {"class": "red"}, "then": [{"move": "reds/{name}"}]}]
    cfg = write_config(tmp_path, server, model="colors/2", rules=rules)
    log = tmp_path / "daemon.log"
    with DaemonProcess(cfg, log) as d:
        d.wait_ready()
        doc = yaml.safe_load(cfg.read_text())
        doc["rules"][0]["when"]["class"] = "rde"
        cfg.write_text(yaml.safe_dump(doc))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"reload failed, keeping the running config" in log.read_bytes(), what="refused reload")
        assert b"class 'rde' is not a class of colors/2 (did you mean 'red'?)" in log.read_bytes()
        photo(tmp_path / "inbox" / "a.jpg")
        wait_for(lambda: (tmp_path / "reds" / "a.jpg").exists(), what="the old rule still at work")
        assert d.terminate() == 0


@pytest.mark.parametrize("profile", ["v1", "self-hosted"])
def test_a_403_is_explained_both_ways(tmp_path, server, platform, profile):
    """classify.roboflow.com and self-hosted servers answer 403 for a bad key and for an unknown model."""
    from roboflow_server import RoboflowServer

    inference = RoboflowServer(profile=profile, catalog=server.catalog).start()
    try:
        a = photo(tmp_path / "a.jpg")
        env = {"ROBOFLOW_PLATFORM_URL": platform.url}
        base = ["classify", "--api-url", inference.url]
        bad_key = run_cli(*base, "--model", "colors/2", str(a), env=dict(env, ROBOFLOW_API_KEY="wrong-key"))
        assert bad_key.returncode == 1 and "HTTP 403" in bad_key.stderr
        assert "the API key is not valid" in bad_key.stderr
        bad_model = run_cli(*base, "--model", "colors/9", str(a), env=env)
        assert "HTTP 403" in bad_model.stderr and "the API key is not valid" not in bad_model.stderr
        assert "the key is valid (workspace 'acme') but project 'colors' has no version 9 (its versions: 1, 2, 3)" in (
            bad_model.stderr
        )
        no_project = run_cli(*base, "--model", "colours/1", str(a), env=env)
        assert "has no project 'colours'" in no_project.stderr
        # the daemon says it too, while the files wait (and run --once when it stops)
        cfg = write_config(tmp_path, inference, model="colors/9", platform_url=platform.url)
        photo(tmp_path / "inbox" / "b.jpg")
        once = run_cli("run", "-c", str(cfg), "--once")
        assert once.returncode == 3 and "project 'colors' has no version 9" in once.stderr
        with DaemonThread(cfg) as d:
            wait_for(lambda: "has no version 9" in (d.daemon.gate.reason or ""), what="the gate's reason")
            assert "has no version 9" in d.daemon.status_line()
    finally:
        inference.stop()


def test_check_reports_a_refused_key(tmp_path, server, platform):
    cfg = write_config(tmp_path, server, model="colors/2")
    check = run_cli("check", "-c", str(cfg), env={"ROBOFLOW_API_KEY": "wrong-key"})
    assert (
        check.returncode == 2
        and "roboflow.api_key: the platform" in check.stderr
        and "refuses the key" in (check.stderr)
    )
    good = run_cli("check", "-c", str(cfg))
    assert good.returncode == 0 and "api key: valid (workspace 'acme')" in good.stdout
    assert "model colors/2: classification, 3 classes, input 224x224 (Stretch to)" in good.stdout


def test_a_workspace_in_the_model_id_is_used_as_it_is(tmp_path, server, platform):
    server.catalog.add(Project("shapes", classes=["round", "square"], versions={4: {"resize": resize(96, 64)}}))
    cfg = write_config(tmp_path, server, model="acme/shapes/4")
    photo(tmp_path / "inbox" / "a.jpg")
    run_cli("run", "-c", str(cfg), "--once")
    assert server.inference_requests()[-1].path == "/shapes/4"
    assert server.inference_requests()[-1].image.size == (96, 72)  # covers 96x64, "Stretch to"
    assert not any(r.path == "/" for r in platform.requests), "the workspace was named: no need to ask"


def test_a_workspace_in_the_model_id_is_the_one_diagnosed(tmp_path, server, platform):
    """The key-versus-model diagnosis asks about the workspace the model id names, not the key's own: a 403 for
    `globex/colors/1` is explained by globex having no such project, though acme's colors/1 exists."""
    server.fail_next(403)
    refused = run_cli(
        "classify",
        "--api-url",
        server.url,
        "--model",
        "globex/colors/1",
        str(photo(tmp_path / "a.jpg")),
        env={"ROBOFLOW_PLATFORM_URL": platform.url},
    )
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr, refused.stderr
    assert "the key is valid (workspace 'acme') but workspace 'globex' has no project 'colors'" in refused.stderr
    assert "exists" not in refused.stderr


def test_facts_are_fetched_again_on_sighup(tmp_path, server, platform):
    """Cached facts are fresh for a day, except that a reload (SIGHUP) asks the platform again."""
    cfg = write_config(tmp_path, server, model="colors/2")

    def version_asked() -> int:
        return sum(1 for r in platform.requests if r.path == "/acme/colors/2")

    with DaemonProcess(cfg, tmp_path / "daemon.log") as d:
        d.wait_ready()
        wait_for(lambda: version_asked() == 1, what="the facts fetched at start")
        # and kept (the answer is in once logged): a reload before that would fetch them for want of any
        log = tmp_path / "daemon.log"
        wait_for(lambda: "model colors/2: classification" in log.read_text(), what="the facts known to the daemon")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: version_asked() == 2, timeout=10, what="the facts fetched again after SIGHUP")
        assert d.terminate() == 0


def test_static_crop_facts_parse_from_the_platforms_strings(tmp_path, server, platform):
    server.catalog.add(
        Project("scans", classes=["a", "b"], versions={1: {"static-crop": static_crop(0, 50, 100, 100)}})
    )
    cfg = write_config(tmp_path, server, model="scans/1")
    shown = json.loads(run_cli("model", "-c", str(cfg), "--json").stdout)
    assert shown["static_crop"] == [0, 50, 100, 100] and shown["resize"] is None


def test_a_multi_label_project_is_read_from_its_multilabel_flag(tmp_path, server, platform):
    """The platform says "classification" with "multilabel": true (roboflow-python core/project.py)."""
    cfg = write_config(tmp_path, server, model="tags/1")
    shown = json.loads(run_cli("model", "-c", str(cfg), "--json").stdout)
    assert shown["project_type"] == "classification" and shown["multi_label"] is True, shown
    assert "in workspace acme: classification (multi-label)" in run_cli("model", "-c", str(cfg)).stdout
    check = run_cli("check", "-c", str(cfg))
    assert "model tags/1: classification (multi-label), 3 classes" in check.stdout, check.stdout
    single = json.loads(run_cli("model", "-c", str(cfg), "--model", "colors/2", "--json").stdout)
    assert single["project_type"] == "classification" and single["multi_label"] is False, single


@pytest.mark.parametrize("status", [500, 404])
def test_an_unknown_version_is_explained_whether_the_platform_answers_500_or_404(server, status):
    """inference's roboflow_api.py: the platform answers 500 for an unknown version ("empirically checked")."""
    from platform_server import PlatformServer

    from rfwatch.roboflow.facts import diagnose, fetch_facts
    from rfwatch.roboflow.platform import NotFound, PlatformClient, PlatformUnavailable

    srv = PlatformServer(catalog=server.catalog, unknown_version_status=status).start()
    client = PlatformClient(VALID_KEY, srv.url)
    try:
        said = diagnose(client, "colors/9", 403)
        assert (
            said == "the key is valid (workspace 'acme') but project 'colors' has no version 9 (its versions: 1, 2, 3)"
        )
        with pytest.raises(NotFound, match="has no version 9" if status == 500 else "Version with ID"):
            fetch_facts(client, "colors/9")  # `rfwatch check` and `rfwatch model` say so too
        assert "has no project 'colours'" in diagnose(client, "colours/1", 403)
        # A 500 for a version the project has is the platform's own trouble, never "no such version".
        srv.fail_next(500, count=2, path="/acme/colors/2")
        assert diagnose(client, "colors/2", 403) is None
        with pytest.raises(PlatformUnavailable):
            fetch_facts(client, "colors/2")
        assert fetch_facts(client, "colors/2").resize is not None  # and once it is over, the facts
    finally:
        client.close()
        srv.stop()


# --- exiftool kept running --------------------------------------------------------------------------------


@needs_exiftool
def test_the_exiftool_pool_survives_a_killed_exiftool_and_a_newline_in_a_name(tmp_path, server):
    from rfwatch.plugin import exiftool_pool

    cfg = write_config(tmp_path, server, rules=[{"then": [{"tag": {"mode": "embed"}}, {"move": "sorted/{name}"}]}])
    with DaemonThread(cfg):
        (tmp_path / "inbox" / "one.jpg").write_bytes(unique_jpeg(RED, 1))
        wait_for(lambda: (tmp_path / "sorted" / "one.jpg").exists(), what="one tagged")
        pids = [t.pid for t in exiftool_pool().tools if t.pid]
        assert pids, "the tag went through the pool"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # exiftool dies between two files
        (tmp_path / "inbox" / "two.jpg").write_bytes(unique_jpeg(RED, 2))
        (tmp_path / "inbox" / "new\nline.jpg").write_bytes(unique_jpeg(RED, 3))  # argfiles cannot carry it
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 3, what="two more tagged")
        # A killed exiftool is restarted when it is next used (a pool member not used since keeps its dead pid).
        assert set(t.pid for t in exiftool_pool().tools if t.pid) - set(pids), "a new exiftool took over"
    for name in ("one.jpg", "two.jpg", "new_line.jpg"):
        assert read_xmp(tmp_path / "sorted" / name)["subject"] == ["red"], name
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall() == [("done", 3)]


def test_facts_fetched_before_the_journal_is_open_are_kept_in_it(tmp_path, platform):
    """rfwatch/service/early.py: a first run asks before its journal exists; what came back before the daemon gave
    the service the journal's cache is put there then, and asked for no second time."""
    from rfwatch.journal import Journal
    from rfwatch.roboflow.facts import FactsCache, ModelFactsService
    from rfwatch.roboflow.platform import PlatformClient

    service = ModelFactsService(None, PlatformClient(VALID_KEY, platform.url))
    service.refresh(["colors/2"])
    service.wait(10)
    assert not service.fetching() and service.get("colors/2") is not None, "the facts did not come"
    asked = len(platform.requests)
    journal = Journal.open(str(tmp_path / "journal.db"))
    try:
        service.attach(FactsCache(journal.facts))
        assert journal.facts.get("colors/2")["resize"] == {"width": 224, "height": 224, "format": "Stretch to"}
        service.refresh(["colors/2"])  # the daemon's own start: nothing to ask
        assert len(platform.requests) == asked
    finally:
        journal.close()

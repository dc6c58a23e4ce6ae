"""A cold start overlaps the platform's answer about the model (issue 23 item 2): files are found, hashed and
journaled while the facts are on their way; uploads still wait for the model's input size, and actions for the
check of the rules' classes. Real stand-ins on loopback: rfwatch/testing/platform_server.py (its ``delay``) and
rfwatch/testing/roboflow_server.py."""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import yaml
from helpers import (
    UNREACHABLE_PLATFORM,
    VALID_KEY,
    DaemonThread,
    JournalView,
    files_under,
    run_cli,
    wait_for,
    write_config,
)
from PIL import Image

from rfwatch.service.daemon import Daemon


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


@pytest.fixture
def slow_platform(platform, monkeypatch):
    """The platform answers after 1.5 s; the daemon's wait for it is long enough that its answer always counts."""
    platform.delay = 1.5
    monkeypatch.setattr(Daemon, "FACTS_WAIT", 60.0)
    return platform


def photos(inbox, count=4):
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        # 2400x1800: decoded early at half scale (for the guessed input), at an eighth for the model's 224x224
        Image.new("RGB", (2400, 1800), (230, 10 + 7 * i, 10)).save(inbox / f"p{i}.jpg", "JPEG", quality=90)


def journaled(tmp_path) -> int:
    """Files in the journal with their content's hash (what pipeline.take writes once it has read a file)."""
    db = tmp_path / "state" / "journal.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT count(*) FROM files WHERE length(sha256) = 64").fetchone()[0]
        except sqlite3.OperationalError:  # the schema not written yet
            return 0


def test_files_are_journaled_while_the_facts_come_and_uploads_are_sized_once_they_do(tmp_path, server, slow_platform):
    cfg = write_config(tmp_path, server, model="colors/2", concurrency=2)  # 224x224, "Stretch to"
    photos(tmp_path / "inbox")
    d = DaemonThread(cfg, once=True)
    decoded, decoded_again = count_decodes(d)
    with d:
        wait_for(lambda: len(decoded) == 4, what="the 4 files hashed, journaled and decoded")
        # The order, not a time: the platform has not answered yet, and nothing was uploaded unsized meanwhile.
        assert journaled(tmp_path) == 4
        assert d.daemon.facts.get("colors/2") is None, "the files were taken only after the facts came"
        assert not server.inference_requests(), "an upload went out before the model's input size was known"
        d.thread.join(60)
    assert d.result == 0
    assert len(files_under(tmp_path / "sorted")) == 4
    sizes = {r.image.size for r in server.inference_requests()}
    assert sizes == {(299, 224)}, f"uploads not sized to the model's 224x224 input: {sizes}"
    assert decoded_again == [], "a file decoded while the facts came was decoded again once they had"


def count_decodes(d: DaemonThread, tried: list | None = None) -> tuple[list, list]:
    """(decodes while the size was unknown, files decoded from disk once it was known), as the daemon runs;
    ``tried`` gets every early decode asked for, once it has answered (refused by the memory bound too)."""
    client = d.daemon.runtime.client
    decoded, decoded_again = [], []
    for name, calls in (("decode_early", decoded), ("prepare", decoded_again)):
        real = getattr(client, name)

        def counted(*a, _real=real, _calls=calls, _name=name, **kw):
            answer = _real(*a, **kw)
            if answer is not None:  # an early decode the memory bound refused is none
                _calls.append(a)
            if _name == "decode_early" and tried is not None:
                tried.append(a)
            return answer

        setattr(client, name, counted)
    return decoded, decoded_again


def test_a_broken_picture_taken_while_the_facts_come_fails_with_its_reason(tmp_path, server, slow_platform, caplog):
    """A file that cannot be decoded early is not lost in the overlap: once the size is known it is tried as any
    file is, and fails with the reason a person can act on, named in the journal; the others are sorted."""
    cfg = write_config(tmp_path, server, model="colors/2", concurrency=2)
    photos(tmp_path / "inbox", count=2)
    whole = (tmp_path / "inbox" / "p0.jpg").read_bytes()
    (tmp_path / "inbox" / "broken.jpg").write_bytes(whole[: len(whole) // 3])  # cut off mid-scan
    d = DaemonThread(cfg, once=True)
    decoded, _ = count_decodes(d)
    with d:
        wait_for(lambda: journaled(tmp_path) == 3, what="the 3 files hashed and journaled")
        d.thread.join(60)
    assert d.result == 1  # README: "1 some input failed"
    assert len(decoded) == 2, "the broken file was decoded early"
    assert sorted(p.name for p in files_under(tmp_path / "sorted")) == ["p0.jpg", "p1.jpg"]
    with sqlite3.connect(tmp_path / "state" / "journal.db") as con:
        state, error = con.execute("SELECT state, last_error FROM files WHERE source = ?", (b"broken.jpg",)).fetchone()
    assert state == "failed" and error.startswith("cannot decode image: image file is truncated"), (state, error)
    assert f"{tmp_path / 'inbox' / 'broken.jpg'}: failed: cannot decode image" in caplog.text
    assert "unexpected error" not in caplog.text, "a broken picture made rfwatch log an internal error"


def test_what_a_cold_start_decodes_early_is_bounded_in_memory(tmp_path, server, slow_platform, monkeypatch):
    """Early decodes wait in memory for the size: beyond EARLY_DECODE_BYTES a file is decoded once it is known."""
    from rfwatch.processing import pipeline

    monkeypatch.setattr(pipeline, "EARLY_DECODE_BYTES", 5_000_000)  # room for one picture at 1200x900 (4.3 MB)
    cfg = write_config(tmp_path, server, model="colors/2", concurrency=2)
    photos(tmp_path / "inbox")
    d = DaemonThread(cfg, once=True)
    tried: list = []
    decoded, decoded_again = count_decodes(d, tried)
    with d:
        # (each file is journaled before its decode is tried: wait for the tries, not the journal rows)
        wait_for(lambda: len(tried) == 4, what="an early decode tried for each of the 4 files")
        assert d.daemon.facts.get("colors/2") is None
        assert len(decoded) == 1, "more early decodes held than the bound allows"
        d.thread.join(60)
    assert d.result == 0
    assert len(decoded_again) == 3 and len(files_under(tmp_path / "sorted")) == 4
    assert {r.image.size for r in server.inference_requests()} == {(299, 224)}
    gc.collect()  # (a reference cycle, such as an exception's traceback, frees its objects only then)
    assert d.daemon.pipeline._early_bytes == 0, "what the sized decodes held was given back"


def test_an_early_decode_freed_by_the_garbage_collector_under_the_pipelines_locks_gives_its_memory_back(
    tmp_path, server
):
    """An early decode kept alive by a reference cycle (an exception's traceback) is freed by the garbage collector,
    in whatever thread allocates then, also one inside the pipeline's own critical sections: its memory is counted
    back there without waiting for a lock that thread holds (a worker once hung that way, and the daemon with it
    at its next stop)."""
    cfg = write_config(tmp_path, server, model="colors/2")
    photos(tmp_path / "inbox", count=1)
    pipeline = DaemonThread(cfg).daemon.pipeline
    pipeline.can_size_now = lambda: False
    picture = tmp_path / "inbox" / "p0.jpg"
    decoded = pipeline._decode_early(picture.read_bytes(), picture)
    assert pipeline._early_bytes == 1200 * 900 * 4  # decoded at half scale: 1200x900, four bytes a pixel
    cycle: list = [decoded]
    cycle.append(cycle)
    del decoded

    def collect_inside_the_locks():
        nonlocal cycle
        with pipeline._lock, pipeline._early_lock:
            del cycle
            gc.collect()

    collector = threading.Thread(target=collect_inside_the_locks, daemon=True)
    collector.start()
    collector.join(10)
    assert not collector.is_alive(), "the thread that freed the decode waits for a lock it holds itself"
    assert pipeline._early_bytes == 0


def test_a_file_whose_turn_at_a_core_comes_after_the_size_is_not_decoded_for_the_guess(
    tmp_path, server, slow_platform, monkeypatch
):
    """One core, two workers: the first file's early decode holds the core until the platform has answered; the
    second file, waiting for the core meanwhile, gives way (it is decoded for the model's real input, after the
    files decoded early) instead of being decoded for the guess when its turn comes."""
    from rfwatch.processing import pipeline

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 1)
    cfg = write_config(tmp_path, server, model="colors/2", concurrency=2)
    photos(tmp_path / "inbox", count=2)
    d = DaemonThread(cfg, once=True)
    client = d.daemon.runtime.client
    real_decode = client.decode_early
    decoded = []

    def decode_when_the_size_is_known(*a, **kw):  # holds the only core meanwhile
        wait_for(d.daemon.pipeline.can_size_now, timeout=30, what="the model's input size")
        decoded.append(a)
        return real_decode(*a, **kw)

    client.decode_early = decode_when_the_size_is_known
    with d:
        d.thread.join(60)
    assert d.result == 0
    assert len(files_under(tmp_path / "sorted")) == 2
    assert {r.image.size for r in server.inference_requests()} == {(299, 224)}
    assert len(decoded) == 1, "the file that waited for the core was decoded for the guess after the size came"


@pytest.mark.parametrize("once", [True, False], ids=["run --once", "daemon"])
def test_a_rule_naming_an_unknown_class_is_refused_before_any_file_moves(tmp_path, server, slow_platform, caplog, once):
    rules = [
        {"name": "pets", "when": {"class": "gren"}, "then": [{"move": "g/{name}"}]},
        {"name": "rest", "then": [{"move": "sorted/{class}/{name}"}]},
    ]
    # With max_size set the uploads need no facts: files are classified meanwhile, and only the actions wait.
    cfg = write_config(tmp_path, server, model="colors/2", rules=rules, concurrency=2, failed="failed")
    doc = yaml.safe_load(cfg.read_text())
    doc["roboflow"]["max_size"] = 600
    cfg.write_text(yaml.safe_dump(doc))
    photos(tmp_path / "inbox")
    caplog.set_level(logging.INFO)
    with DaemonThread(cfg, once=once) as d:
        wait_for(lambda: journaled(tmp_path) == 4, what="the 4 files hashed and journaled meanwhile")
        d.thread.join(60)  # it stops by itself once the facts show the rule's mistake
        assert not d.thread.is_alive(), "the daemon kept running under a rule naming an unknown class"
    assert d.result == 2
    hint = "rule 'pets': class 'gren' is not a class of colors/2 (did you mean 'green'?)"
    assert hint in caplog.text
    assert sorted(p.name for p in files_under(tmp_path / "inbox")) == [f"p{i}.jpg" for i in range(4)]
    assert not [p for d in ("g", "sorted", "failed") for p in files_under(tmp_path / d)], "a file was moved"


def test_no_delivery_threads_run_while_nothing_is_to_be_delivered(tmp_path, server, platform):
    """A config whose rules deliver nothing (a move) starts no delivery thread, so none polls the journal; the
    webhook tests (tests/test_delivery.py) show them starting once a delivery is queued."""
    cfg = write_config(tmp_path, server, model="colors/2")
    photos(tmp_path / "inbox", 2)
    with DaemonThread(cfg) as d:
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 2, what="the 2 files sorted")
        wait_for(lambda: d.daemon.counts["done"] == 2, what="both files done")
        running = [t.name for t in threading.enumerate() if t.name.startswith("rfwatch-delivery")]
        assert running == [], f"delivery threads with nothing to deliver: {running}"


# --- the cold run's two ends: the platform asked before the daemon is loaded, the exit -----------------------------


def test_a_first_run_asks_the_platform_before_its_journal_exists_and_only_once(tmp_path, server, platform):
    """rfwatch/service/early.py: on a first run the model is asked about right after the config is read, while the
    daemon is still being loaded (its journal is created after that); the daemon takes that fetch over instead of
    asking again, and the journal keeps the facts it brought (tests/test_model_facts.py: a second run asks
    nothing)."""
    platform.delay = 1.0  # still on its way when the daemon, loaded, looks for the facts
    # A plugin that takes a second to load (the daemon loads its plugins before it makes its journal): the request
    # must be a second ahead of the journal, not the few tens of ms the daemon's own loading takes, which a loaded
    # CI machine could swallow between the request's arrival and the stand-in noting it.
    slow = tmp_path / "slow_plugin.py"
    slow.write_text("import time\n\ntime.sleep(1.0)\n")
    cfg = write_config(tmp_path, server, model="colors/2", plugins=[str(slow)])
    photos(tmp_path / "inbox", 2)
    db = tmp_path / "state" / "journal.db"
    appeared: list[float] = []
    done = threading.Event()

    def watch_for_the_journal() -> None:
        while not done.is_set() and not appeared:
            if db.exists():
                appeared.append(time.monotonic())
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_for_the_journal)
    watcher.start()
    try:
        run = run_cli("run", "-c", str(cfg), "--once")
    finally:
        done.set()
        watcher.join()
    assert run.returncode == 0, run.stderr
    assert len(files_under(tmp_path / "sorted")) == 2
    asked = [r.path for r in platform.requests]
    assert asked == ["/", f"/{platform.catalog.workspace}/colors/2"], "the facts were asked for more than once"
    assert appeared, "no journal was made"
    assert platform.requests[0].at < appeared[0], "the platform was asked only once the journal existed"
    with sqlite3.connect(db) as con:
        assert [m for (m,) in con.execute("SELECT model FROM model_facts")] == ["colors/2"]


#: ``rfwatch run --once`` through the console script's entry (rfwatch.cli.console), with an atexit handler and, when
#: asked, a thread of its own still running: what a library or the host program may have left for the exit.
CONSOLE_WITH_LEFTOVERS = """
import atexit, sys, threading, time
from pathlib import Path

out, leaves_a_thread = Path(sys.argv[1]), sys.argv[2] == "thread"
atexit.register(lambda: (out / "atexit-ran").write_text("yes"))
if leaves_a_thread:
    def late():
        time.sleep(0.5)
        (out / "thread-ran").write_text("yes")
    threading.Thread(target=late, name="left-running").start()  # not a daemon thread: the exit waits for it
sys.argv = ["rfwatch", *sys.argv[3:]]
from rfwatch.cli import console
console()
"""


@pytest.mark.parametrize("leaves_a_thread", [False, True], ids=["atexit only", "a thread left running"])
def test_run_once_ends_without_the_teardown_yet_runs_the_atexit_handlers_and_waits_for_threads(
    tmp_path, server, leaves_a_thread
):
    """A finished ``run --once`` ends with os._exit (the interpreter's teardown cost 50 to 70 ms of a cold run), but
    the atexit handlers still run, and a non-daemon thread still alive is waited for (the usual exit, then)."""
    cfg = write_config(tmp_path, server)
    photos(tmp_path / "inbox", 1)
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY, ROBOFLOW_PLATFORM_URL=UNREACHABLE_PLATFORM)
    argv = [str(tmp_path), "thread" if leaves_a_thread else "-", "run", "-c", str(cfg), "--once"]
    run = subprocess.run(
        [sys.executable, "-c", CONSOLE_WITH_LEFTOVERS, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert len(files_under(tmp_path / "sorted")) == 1
    assert (tmp_path / "atexit-ran").read_text() == "yes"
    assert (tmp_path / "thread-ran").exists() == leaves_a_thread


PLUGIN_WITH_A_FILE_LEFT_OPEN = """
from pathlib import Path
from rfwatch.plugin import hookimpl

NOTES = None


@hookimpl
def startup(config):
    global NOTES
    NOTES = open(Path(__file__).with_name("notes.txt"), "w")  # buffered, never closed: the teardown flushes it
    NOTES.write("started\\n")
"""


def test_run_once_with_a_plugin_of_someone_else_exits_the_usual_way(tmp_path, server):
    """A plugin other than the built-ins may leave a file open for the interpreter's teardown to flush: with one
    loaded, ``run --once`` exits the usual way and nothing it wrote is lost."""
    plugin = tmp_path / "noting.py"
    plugin.write_text(PLUGIN_WITH_A_FILE_LEFT_OPEN)
    cfg = write_config(tmp_path, server, plugins=[str(plugin)])
    photos(tmp_path / "inbox", 1)
    run = run_cli("run", "-c", str(cfg), "--once")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "notes.txt").read_text() == "started\n"


def test_an_answer_waiting_for_the_check_of_the_rules_classes_is_journaled_meanwhile(tmp_path, server, slow_platform):
    """With ``max_size`` set, uploads go out before the platform answers, and the actions wait for the check of the
    rules' classes. A worker's job then ends between the model's answer and the file's first step: the answer,
    which otherwise waits for that step's transaction (rfwatch.journal.files), is journaled alone meanwhile, so
    `status` says classified, and a stop (or a crash) then costs no second request to the API."""
    slow_platform.delay = 8.0
    rules = [{"name": "reds", "when": {"class": "red"}, "then": [{"move": "sorted/{name}"}]}]
    cfg = write_config(tmp_path, server, rules, model="colors/2", concurrency=2)
    doc = yaml.safe_load(cfg.read_text())
    doc["roboflow"]["max_size"] = 640
    cfg.write_text(yaml.safe_dump(doc))
    photos(tmp_path / "inbox", count=1)
    view = JournalView(cfg)
    with DaemonThread(cfg) as d:
        # Classified with no step begun: while the actions wait. (The platform's answer never comes: its client gives
        # up after 5 s, and the check then lets the actions run; their first step would journal the answer too, but
        # that is not the case this test is about. A look that saw only "classified" passed during that step.)
        wait_for(
            lambda: view.state("p0.jpg") == "classified" and not view.steps(view.file("p0.jpg").id),
            what="the answer journaled while the check waits",
        )
        assert d.daemon.facts.get("colors/2") is None, "the platform answered: the check did not hold the actions"
        assert view.file("p0.jpg").prediction["top"] == "red"
        d.stop()
    assert len(server.inference_requests()) == 1
    slow_platform.delay = 0.0
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert [p.name for p in files_under(tmp_path / "sorted")] == ["p0.jpg"]
    assert len(server.inference_requests()) == 1, "the answer journaled before the stop was asked for again"

"""The daemon with real watchdog observers on temporary folders and a real protocol server."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from helpers import DaemonThread, files_under, record_takes, run_cli, unique_jpeg, wait_for, write_config
from roboflow_server import VALID_KEY

RED, GREEN, BLUE = (230, 10, 10), (10, 230, 10), (10, 10, 230)


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def test_files_present_before_start_are_sorted(tmp_path, server):
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 1))
    (tmp_path / "inbox" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "inbox" / "deep" / "er" / "b.JPG").write_bytes(unique_jpeg(BLUE, 2))
    with DaemonThread(cfg):
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 2, what="two sorted files")
    assert (tmp_path / "sorted" / "red" / "a.jpg").read_bytes() == unique_jpeg(RED, 1)
    assert (tmp_path / "sorted" / "blue" / "b.JPG").exists()
    assert files_under(tmp_path / "inbox") == []


def _sort_a_marker(tmp_path: Path, n: int) -> None:
    """Write a small red file and wait until it is sorted: a positive barrier for "nothing happened".

    Everything written before it has been seen by the daemon, and quiet for at least as long as the marker.
    """
    (tmp_path / "inbox" / f"marker{n}.jpg").write_bytes(unique_jpeg(RED, 10_000 + n))
    wait_for(lambda: (tmp_path / "sorted" / "red" / f"marker{n}.jpg").exists(), what=f"marker{n}.jpg sorted")


def test_slow_writer_is_not_taken_before_it_closes(tmp_path, server):
    cfg = write_config(tmp_path, server, settle=0.2)
    data = unique_jpeg(GREEN, 3, size=(400, 300))
    target = tmp_path / "inbox" / "slow.jpg"
    markers = 0
    with DaemonThread(cfg):
        with open(target, "wb") as fh:
            for i in range(0, len(data), len(data) // 4 + 1):
                fh.write(data[i : i + len(data) // 4 + 1])
                fh.flush()
                time.sleep(0.6)  # the writer pauses three times longer than settle
                # A file written after the pause is sorted: slow.jpg was quiet longer still, and was kept.
                markers += 1
                _sort_a_marker(tmp_path, markers)
                sizes = [r.image.size for r in server.inference_requests()]
                assert sizes == [(48, 32)] * markers, "taken while still being written"
        wait_for(lambda: (tmp_path / "sorted" / "green" / "slow.jpg").exists(), what="slow.jpg sorted")
    requests = server.inference_requests()
    assert len(requests) == markers + 1
    assert requests[-1].image.size == (400, 300)
    assert (tmp_path / "sorted" / "green" / "slow.jpg").read_bytes() == data


def test_temp_name_then_rename_is_taken_once_by_its_final_name(tmp_path, server):
    from rfwatch.states import Outcome

    cfg = write_config(tmp_path, server)
    holder = DaemonThread(cfg)
    takes = record_takes(holder.daemon)
    with holder:
        part = tmp_path / "inbox" / "upload.jpg.part"
        part.write_bytes(unique_jpeg(BLUE, 4))
        _sort_a_marker(tmp_path, 1)  # written after the .part file: the daemon saw it, and left it
        assert len(server.inference_requests()) == 1 and part.exists()
        part.rename(tmp_path / "inbox" / "upload.jpg")
        wait_for(lambda: (tmp_path / "sorted" / "blue" / "upload.jpg").exists(), what="renamed file sorted")
        _sort_a_marker(tmp_path, 2)  # every event for upload.jpg has been seen: it is not taken again
    assert len(server.inference_requests()) == 3, "upload.jpg classified more than once"
    assert not [p for p, _ in takes if p.name.endswith(".part")], "the temporary name was taken"
    assert [a.outcome for p, a in takes if p.name == "upload.jpg"].count(Outcome.DONE) == 1
    # rsync style: written under a hidden temporary name, renamed into place
    with DaemonThread(cfg):
        tmp = tmp_path / "inbox" / ".rsync.tmp123"
        tmp.write_bytes(unique_jpeg(BLUE, 5))
        tmp.rename(tmp_path / "inbox" / "synced.jpg")
        wait_for(lambda: (tmp_path / "sorted" / "blue" / "synced.jpg").exists(), what="rsynced file sorted")


def test_burst_of_500_one_request_per_distinct_image_and_restart_makes_none(tmp_path, server):
    cfg = write_config(tmp_path, server, concurrency=8, settle=0.3)
    inbox = tmp_path / "inbox"
    colors = [RED, GREEN, BLUE]
    expected = {}
    with DaemonThread(cfg):
        for i in range(500):
            seed = i % 400  # 100 files repeat earlier content
            data = unique_jpeg(colors[seed % 3], seed)
            sub = inbox / f"cam{i % 5}"
            sub.mkdir(exist_ok=True)
            (sub / f"img{i:03}.jpg").write_bytes(data)
            expected[f"img{i:03}.jpg"] = data
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 500, timeout=120, what="500 sorted files")
    requests = server.inference_requests()
    assert len(requests) == 400
    sorted_files = files_under(tmp_path / "sorted")
    assert sorted(p.name for p in sorted_files) == sorted(expected)
    for p in sorted_files:
        assert p.read_bytes() == expected[p.name]
        assert p.parent.name == ["red", "green", "blue"][int(p.stem[3:]) % 400 % 3]
    assert files_under(inbox) == []
    with DaemonThread(cfg) as d:
        _sort_a_marker(tmp_path, 1)  # the start-up scan and the look at the journal came before it
        wait_for(d.daemon._idle, what="the restarted daemon to be idle")
    assert len(server.inference_requests()) == 401, "a restart must not classify finished files again"


def test_unmatched_files_stay_and_the_journal_says_so(tmp_path, server):
    rules = [{"name": "reds only", "when": {"class": "red"}, "then": [{"move": "sorted/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "g.jpg").write_bytes(unique_jpeg(GREEN, 6))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert (tmp_path / "inbox" / "g.jpg").exists()
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT state FROM files").fetchall() == [("unmatched",)]
    # and it is not classified again on the next run
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert len(server.inference_requests()) == 1


def test_bad_images_go_to_failed_with_a_reason_and_good_ones_are_sorted(tmp_path, server):
    cfg = write_config(tmp_path, server, failed="failed")
    inbox = tmp_path / "inbox"
    (inbox / "text.jpg").write_text("not an image")
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "good.jpg").write_bytes(unique_jpeg(RED, 7))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 1  # something failed
    assert "text.jpg: failed: not a recognised image format" in result.stderr
    assert "empty.jpg: failed: file is empty" in result.stderr
    assert sorted(p.name for p in files_under(tmp_path / "failed")) == ["empty.jpg", "text.jpg"]
    assert (tmp_path / "sorted" / "red" / "good.jpg").exists()


def test_api_rejection_of_one_image_fails_only_that_file(tmp_path, server):
    cfg = write_config(tmp_path, server, failed="failed", concurrency=1)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 8))
    server.fail_next(400, message="Could not decode the input image.")
    result = run_cli("run", "-c", str(cfg), "--once")
    assert "a.jpg: failed: rejected by the API" in result.stderr and "Could not decode" in result.stderr
    assert (tmp_path / "failed" / "a.jpg").exists()


@pytest.mark.parametrize(
    "mode,expect",
    [
        ("rename", {"x.jpg": "old", "x (1).jpg": "new"}),
        ("skip", {"x.jpg": "old"}),
        ("overwrite", {"x.jpg": "new"}),
    ],
)
def test_conflicts(tmp_path, server, mode, expect):
    rules = [{"name": "r", "then": [{"move": {"to": "sorted/{name}", "on_conflict": mode}}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "sorted").mkdir()
    old, new = unique_jpeg(RED, 9), unique_jpeg(RED, 10)
    (tmp_path / "sorted" / "x.jpg").write_bytes(old)
    (tmp_path / "inbox" / "x.jpg").write_bytes(new)
    run_cli("run", "-c", str(cfg), "--once")
    found = {p.name: p.read_bytes() for p in files_under(tmp_path / "sorted")}
    assert found == {k: {"old": old, "new": new}[v] for k, v in expect.items()}
    assert (tmp_path / "inbox" / "x.jpg").exists() == (mode == "skip")


def test_dedupe_drops_identical_and_renames_different(tmp_path, server):
    rules = [{"name": "r", "then": [{"move": {"to": "sorted/{name}", "on_conflict": "dedupe"}}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "sorted").mkdir()
    same, other = unique_jpeg(RED, 11), unique_jpeg(RED, 12)
    # one size (bytes after the JPEG's end are ignored by decoders): only the content tells them apart
    size = max(len(same), len(other))
    same, other = same.ljust(size, b"\0"), other.ljust(size, b"\0")
    (tmp_path / "sorted" / "a.jpg").write_bytes(same)
    (tmp_path / "sorted" / "b.jpg").write_bytes(same)
    (tmp_path / "inbox" / "a.jpg").write_bytes(same)
    (tmp_path / "inbox" / "b.jpg").write_bytes(other)
    run_cli("run", "-c", str(cfg), "--once")
    assert {p.name: p.read_bytes() for p in files_under(tmp_path / "sorted")} == {
        "a.jpg": same,
        "b.jpg": same,
        "b (1).jpg": other,
    }
    assert files_under(tmp_path / "inbox") == []


def test_hostile_class_names_cannot_escape_the_destination(tmp_path, server):
    hostile = ["../../escape", "/etc/passwd", "a/../../b", "..", "\x00nul\nline", ".hidden", "x" * 600, "c:\\win"]
    counter = iter(range(1000))
    server.classifier = lambda image: {hostile[next(counter) % len(hostile)]: 0.9, "other": 0.1}
    cfg = write_config(tmp_path, server, concurrency=1)
    for i in range(len(hostile)):
        (tmp_path / "inbox" / f"h{i}.jpg").write_bytes(unique_jpeg(RED, 100 + i))
    run_cli("run", "-c", str(cfg), "--once")
    outside = [
        p
        for p in files_under(tmp_path)
        if not str(p).startswith(str(tmp_path / "sorted")) and "state" not in p.parts and p.name != "config.yaml"
    ]
    assert outside == []
    sorted_files = files_under(tmp_path / "sorted")
    assert len(sorted_files) == len(hostile)
    for p in sorted_files:
        cls = p.parent.relative_to(tmp_path / "sorted")
        assert len(cls.parts) == 1 and not cls.name.startswith(".")
        assert len(os.fsencode(cls.name)) <= 200 and "\n" not in cls.name


def test_cross_device_move(tmp_path, server):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (tmpfs at /dev/shm) here")
    dest = Path(os.path.realpath(shm)) / f"rfwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        rules = [{"name": "r", "then": [{"move": str(dest) + "/{class}/{name}"}]}]
        cfg = write_config(tmp_path, server, rules=rules)
        data = unique_jpeg(BLUE, 13)
        (tmp_path / "inbox" / "x.jpg").write_bytes(data)
        (tmp_path / "inbox" / "x.jpg.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
        assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
        assert (dest / "blue" / "x.jpg").read_bytes() == data
        assert (dest / "blue" / "x.jpg.xmp").exists(), "the sidecar travels with the file"
        assert files_under(tmp_path / "inbox") == []
        assert [p.name for p in dest.rglob("*") if p.name.startswith(".rfwatch-tmp")] == []
    finally:
        import shutil

        shutil.rmtree(dest, ignore_errors=True)


def test_dry_run_changes_nothing(tmp_path, server):
    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 14))
    before = {p: p.stat().st_mtime_ns for p in files_under(tmp_path)}
    result = run_cli("run", "-c", str(cfg), "--once", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would move -> " in result.stderr and str(tmp_path / "sorted" / "red" / "a.jpg") in result.stderr
    assert {p: p.stat().st_mtime_ns for p in files_under(tmp_path)} == before
    assert not (tmp_path / "state").exists() and not (tmp_path / "sorted").exists()


def test_copy_into_a_watched_tree_is_not_taken_again(tmp_path, server):
    from rfwatch.states import Outcome, StepKind

    rules = [{"name": "r", "then": [{"copy": "inbox/copies/{class}/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    original, copy = tmp_path / "inbox" / "a.jpg", tmp_path / "inbox" / "copies" / "green" / "a.jpg"
    first = DaemonThread(cfg)
    takes = record_takes(first.daemon)
    # The copy's step result commits only after the copy has settled (as a loaded disk's fsync can make it):
    # the daemon must look at the copy, and leave it, while its step is still at work.
    files = first.daemon.journal.files
    real_finish = files.finish_step

    held = []

    def slow_finish(file_id, seq, kind, *args, **kwargs):
        if kind == StepKind.ACTION and not held:  # the original's copy step (a copy taken as new is not held)
            held.append(file_id)
            wait_for(lambda: any(p == copy for p, _ in takes), what="the daemon to look at the copy mid-step")
        return real_finish(file_id, seq, kind, *args, **kwargs)

    files.finish_step = slow_finish
    with first:
        original.write_bytes(unique_jpeg(GREEN, 15))
        wait_for(copy.exists, what="copy")
        # The copy landed in the watched tree: the daemon looks at it, and leaves it.
        wait_for(lambda: any(p == copy for p, _ in takes), what="the daemon to look at the copy")
        wait_for(lambda: first.daemon.journal.files.counts().get("done") == 1, what="the original to be done")
    # (An event and the scan of its new folder may hand it on twice, at once: the second finds it busy.)
    looks = {(a.outcome, a.detail) for p, a in takes if p == copy}
    assert (Outcome.SKIPPED, "written by rfwatch") in looks
    assert looks <= {(Outcome.SKIPPED, "written by rfwatch"), (Outcome.SKIPPED, "already being processed")}
    second = DaemonThread(cfg)
    takes = record_takes(second.daemon)
    with second:  # its start-up scan finds both known (one it finished, one it wrote) and hands on neither
        wait_for(lambda: second.daemon.watcher.known_found == 2, what="the start-up scan to pass over both files")
        wait_for(lambda: not second.daemon.watcher.scanning(), what="the start-up scan to end")
    assert takes == []
    assert len(server.inference_requests()) == 1
    assert len(files_under(tmp_path / "inbox")) == 2
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 1


def test_plugin_from_a_py_path_adds_an_action(tmp_path, server):
    (tmp_path / "myplugin.py").write_text(
        "import rfwatch\n"
        "from pathlib import Path\n"
        "@rfwatch.hookimpl\n"
        "def register_actions(register):\n"
        "    def factory(options):\n"
        "        out = options['file']\n"
        "        def action(ctx):\n"
        "            Path(ctx.config.resolve(out)).open('a').write(f'{ctx.path.name} {ctx.prediction.top}\\n')\n"
        "            return {'wrote': out}\n"
        "        return action\n"
        "    register('note', factory)\n"
    )
    rules = [{"name": "r", "then": [{"note": {"file": "notes.txt"}}, {"move": "sorted/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules, plugins=["myplugin.py"])
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(BLUE, 16))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "notes.txt").read_text() == "a.jpg blue\n"
    listing = run_cli("plugins", "-c", str(cfg)).stdout
    assert "myplugin.py" in listing and "note" in listing


def test_a_plugin_that_raises_in_a_hook_does_not_stop_the_daemon(tmp_path, server):
    (tmp_path / "boom.py").write_text(
        "import rfwatch\n@rfwatch.hookimpl\ndef file_classified(ctx):\n    raise RuntimeError('boom from plugin')\n"
    )
    cfg = write_config(tmp_path, server, plugins=["boom.py"])
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 17))
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0
    assert "boom.py failed in file_classified" in result.stderr
    assert (tmp_path / "sorted" / "red" / "a.jpg").exists()


def test_multi_label_rules_match_any_predicted_class(tmp_path, server):
    rules = [{"name": "greens", "when": {"class": ["green"]}, "then": [{"move": "sorted/{class}/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules, model="tags/1")
    (tmp_path / "inbox" / "yellow.jpg").write_bytes(unique_jpeg((230, 230, 0), 18))
    run_cli("run", "-c", str(cfg), "--once")
    assert (tmp_path / "sorted" / "green" / "yellow.jpg").exists()


def test_continue_lets_later_rules_run(tmp_path, server):
    rules = [
        {"name": "copy all", "continue": True, "then": [{"copy": "all/{name}"}]},
        {"name": "never", "when": {"class": "blue"}, "then": [{"move": "blue/{name}"}]},
        {"name": "then move", "then": [{"move": "sorted/{class}/{confidence:.0%}-{name}"}]},
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 19))
    run_cli("run", "-c", str(cfg), "--once")
    assert (tmp_path / "all" / "a.jpg").exists()
    (moved,) = files_under(tmp_path / "sorted")
    assert moved.parent.name == "red" and moved.name.endswith("%-a.jpg")


def test_once_shows_a_progress_bar_on_a_tty(tmp_path, server):
    import pty
    import subprocess

    from helpers import rfwatch_cmd

    cfg = write_config(tmp_path, server)
    for i in range(5):
        (tmp_path / "inbox" / f"p{i}.jpg").write_bytes(unique_jpeg(RED, 300 + i))
    leader, follower = pty.openpty()
    env = dict(os.environ, ROBOFLOW_API_KEY=VALID_KEY)
    proc = subprocess.run(
        rfwatch_cmd("run", "-c", str(cfg), "--once"), stderr=follower, stdout=subprocess.DEVNULL, env=env, timeout=60
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"[" + b"#" * 30 + b"] 5/5 files, 5 done, 0 unmatched, 0 failed" in out


def test_polling_watch_takes_new_and_existing_files(tmp_path, server):
    cfg = write_config(tmp_path, server, watch=[{"path": "inbox", "settle": 0.3, "polling": True}])
    (tmp_path / "inbox" / "old.jpg").write_bytes(unique_jpeg(RED, 400))
    os.utime(tmp_path / "inbox" / "old.jpg", (1, 1))  # a share's clock may be anything: not trusted
    with DaemonThread(cfg):
        (tmp_path / "inbox" / "new.jpg").write_bytes(unique_jpeg(GREEN, 401))
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 2, what="both files via polling")


def test_a_large_pending_set_is_not_restated_on_every_tick(tmp_path, monkeypatch):
    from rfwatch.config import WatchConfig
    from rfwatch.service.watcher import Settler

    ready = []
    settler = Settler(lambda *a: ready.append(a))
    watch = WatchConfig(path=tmp_path, settle=30.0)
    for i in range(500):
        p = tmp_path / f"f{i}.jpg"
        p.write_bytes(b"x")
        settler.offer(p, watch)
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a, **k))
    for _ in range(50):
        assert settler.tick() == 500
    assert stats == [] and ready == []


def _rewrite_during_prepare(client, monkeypatch, path: Path, final: bytes) -> list[Path]:
    """The writer's last write lands while the early hand-off prepares the upload (before settled_at)."""
    real_prepare = client.prepare
    rewritten: list[Path] = []

    def prepare_then_rewrite(*args, **kw):
        prepared = real_prepare(*args, **kw)
        if not rewritten:
            path.write_bytes(final)
            rewritten.append(path)
        return prepared

    monkeypatch.setattr(client, "prepare", prepare_then_rewrite)
    return rewritten


def test_a_file_changed_before_it_settled_is_not_sent_nor_journaled(tmp_path, server, monkeypatch):
    from rfwatch.service.daemon import Daemon
    from rfwatch.states import Outcome

    cfg = write_config(tmp_path, server, settle=1.0)
    path = tmp_path / "inbox" / "a.jpg"
    first, final = unique_jpeg(RED, 500), unique_jpeg(RED, 501, size=(60, 40))
    path.write_bytes(first)
    daemon = Daemon(cfg)  # its pipeline, never run: the test is the worker
    try:
        # A cold start prepares early only once the model's input size is known or cannot come (here: the
        # platform refuses at once); until then a file is journaled first and prepared later.
        wait_for(lambda: not daemon.facts.fetching(), what="the platform asked about the model")
        watch = daemon.config.watch[0]
        rewritten = _rewrite_during_prepare(daemon.runtime.client, monkeypatch, path, final)
        attempt = daemon.pipeline.take(path, watch, settled_at=time.monotonic() + 0.3)
        assert rewritten, "the early hand-off did not prepare the upload: the case was not staged"
        assert attempt.outcome == Outcome.CHANGING
        assert server.inference_requests() == [], "sent while it was still changing"
        db = sqlite3.connect(tmp_path / "state" / "journal.db")
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0, "journaled while it was still changing"
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0
        # Once it has settled, its final version is taken.
        attempt = daemon.pipeline.take(path, watch, settled_at=0.0)
        assert attempt.outcome == Outcome.DONE
        (req,) = server.inference_requests()
        assert req.image.size == (60, 40)
        assert (tmp_path / "sorted" / "red" / "a.jpg").read_bytes() == final
    finally:
        daemon._close()


def test_a_file_changed_before_it_settled_is_watched_again_and_taken_once(tmp_path, server, monkeypatch):
    from rfwatch.states import Outcome

    cfg = write_config(tmp_path, server, settle=0.3)
    path = tmp_path / "inbox" / "a.jpg"
    first, final = unique_jpeg(GREEN, 502), unique_jpeg(GREEN, 503, size=(60, 40))
    with DaemonThread(cfg) as d:
        for observer in d.daemon.watcher._observers:  # blind: only the worker's give-back can bring it back
            observer.unschedule_all()
        wait_for(lambda: not d.daemon.watcher.scanning(), what="the start-up scan (of an empty inbox)")
        wait_for(lambda: not d.daemon.facts.fetching(), what="the platform asked about the model")
        path.write_bytes(first)
        rewritten = _rewrite_during_prepare(d.daemon.runtime.client, monkeypatch, path, final)
        # The watcher's early hand-off: due to settle in a second, so the worker prepares its upload meanwhile.
        d.daemon.watcher.ready(path, d.daemon.config.watch[0], time.monotonic() + 1.0)
        wait_for(lambda: (tmp_path / "sorted" / "green" / "a.jpg").exists(), what="the final version sorted")
        # The file is in place a moment before the worker that moved it counts it done.
        wait_for(lambda: d.daemon.counts[Outcome.DONE] >= 1, what="the worker counting the file done")
        assert rewritten, "the early hand-off did not prepare the upload: the case was not staged"
        assert d.daemon.counts[Outcome.CHANGING] == 1 and d.daemon.counts[Outcome.DONE] == 1
    (req,) = server.inference_requests()
    assert req.image.size == (60, 40), "the version sent is not the final one"
    assert (tmp_path / "sorted" / "green" / "a.jpg").read_bytes() == final
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT state, size FROM files").fetchall() == [("done", len(final))]


def test_a_restart_passes_over_known_files_and_takes_only_the_new_or_changed(tmp_path, server):
    """The start-up scan asks the journal once per folder: files it knows (same size and mtime) are not even
    handed to a worker; a new file, and a known name with new content, are taken as before."""
    from rfwatch.service.daemon import Daemon
    from rfwatch.states import Outcome

    rules = [{"name": "never", "when": {"class": "no-such-class"}, "then": [{"move": "x/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    (inbox / "cam1").mkdir()
    for n in range(3):
        (inbox / f"a{n}.jpg").write_bytes(unique_jpeg(RED, 700 + n))
        (inbox / "cam1" / f"a{n}.jpg").write_bytes(unique_jpeg(GREEN, 710 + n))
    old = time.time() - 60
    for f in files_under(inbox):
        os.utime(f, (old, old))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0  # all six left in place, unmatched
    (inbox / "cam1" / "new.jpg").write_bytes(unique_jpeg(BLUE, 720))
    (inbox / "a1.jpg").write_bytes(unique_jpeg(RED, 721))  # the same name, new content
    os.utime(inbox / "cam1" / "new.jpg", (old, old))
    os.utime(inbox / "a1.jpg", (old + 1, old + 1))
    daemon = Daemon(cfg, once=True)
    takes = record_takes(daemon)
    assert daemon.run() == 0
    assert sorted(p.relative_to(inbox).as_posix() for p, _ in takes) == ["a1.jpg", "cam1/new.jpg"]
    assert all(a.outcome == Outcome.UNMATCHED for _, a in takes)
    assert daemon.watcher.known_found == 5


def test_run_once_ends_only_once_the_file_a_worker_took_is_done(tmp_path, server, monkeypatch):
    """A file a worker has taken from the queue is work until it is done, also while it waits to start (the
    journal's read of its state, a gate): `run --once` ends once it is sorted, not while a slow journal keeps it in
    the worker's hand (it ended then, exit 0, the file left in the inbox for the next run)."""
    from rfwatch.service.daemon import Daemon

    cfg = write_config(tmp_path, server)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg(RED, 900))
    server.fail_next(402, count=10_000)  # a spent quota: the first run journals the file, then stops
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 3
    server.reset()
    daemon = Daemon(cfg, once=True)
    real = daemon._needs_api

    def slow(job):  # the journal takes its time to answer (a database far away, or busy)
        time.sleep(0.5)
        return real(job)

    monkeypatch.setattr(daemon, "_needs_api", slow)
    assert daemon.run() == 0
    assert files_under(tmp_path / "sorted") == [tmp_path / "sorted" / "red" / "a.jpg"]


def test_files_are_read_and_prepared_one_per_core_while_more_wait_for_the_api(tmp_path, server, monkeypatch):
    """Workers beyond the cores keep requests in flight; the decoding itself takes turns, one file per core."""
    import threading

    import rfwatch.processing.pipeline as pipeline

    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    cfg = write_config(tmp_path, server, concurrency=6, settle=0.1)
    for n in range(12):
        (tmp_path / "inbox" / f"red-{n}.jpg").write_bytes(unique_jpeg(RED, 700 + n))
    running = DaemonThread(cfg)
    client = running.daemon.runtime.client
    real_prepare = client.prepare
    lock, now, most = threading.Lock(), [0], [0]

    def counting_prepare(*args, **kw):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.05)  # long enough for the other workers to reach their decode
            return real_prepare(*args, **kw)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(client, "prepare", counting_prepare)
    with running:
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 12, what="twelve sorted files")
    assert 1 <= most[0] <= 2, f"{most[0]} files were prepared at once on 2 cores"


def test_a_file_busy_with_its_actions_holds_no_request_slot(tmp_path, server, monkeypatch):
    """``concurrency`` counts requests in flight (README), not files: at ``concurrency: 1`` the next files are sent
    while the first one's actions still run, and never two requests at once."""
    import threading

    server.latency = 0.2  # long enough that two requests sent without a slot would overlap
    cfg = write_config(tmp_path, server, concurrency=1, settle=0.1)
    for n in range(4):
        (tmp_path / "inbox" / f"red-{n}.jpg").write_bytes(unique_jpeg(RED, 720 + n))
    running = DaemonThread(cfg)
    pipeline, client = running.daemon.pipeline, running.daemon.runtime.client
    real_act, real_classify = pipeline._act, client.classify_prepared
    release, held = threading.Event(), threading.Event()
    lock, now, most = threading.Lock(), [0], [0]

    def slow_act(row, *args, **kw):
        if not held.is_set():  # the first file's actions take their time (a slow share, a slow plugin)
            held.set()
            release.wait(20)
        return real_act(row, *args, **kw)

    def counting_classify(*args, **kw):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            return real_classify(*args, **kw)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(pipeline, "_act", slow_act)
    monkeypatch.setattr(client, "classify_prepared", counting_classify)
    with running:
        try:
            wait_for(held.is_set, what="the first file at its actions")
            wait_for(lambda: len(server.inference_requests()) == 4, what="the other files sent meanwhile")
        finally:
            release.set()
        wait_for(lambda: len(files_under(tmp_path / "sorted")) == 4, what="the four files sorted")
    assert most[0] == 1, f"{most[0]} requests in flight at concurrency 1"


def test_files_waiting_for_a_request_slot_send_nothing_once_the_api_refused(tmp_path, server):
    """The workers beyond ``concurrency`` wait for a request slot with a file ready. When the request before theirs
    finds the quota spent, the gate closes before the slot is handed on: they send nothing (one request, not one per
    worker) and journal no failed attempt; the files wait, unharmed."""
    server.latency = 1.0  # the others are taken and at the slot, waiting, when the answer comes
    server.fail_next(402, count=10_000)
    cfg = write_config(tmp_path, server, concurrency=1, settle=0.1)
    for n in range(4):
        (tmp_path / "inbox" / f"red-{n}.jpg").write_bytes(unique_jpeg(RED, 740 + n))
    with DaemonThread(cfg) as d:
        wait_for(lambda: d.daemon.gate.reason, what="the daemon to notice the spent quota")
        db = sqlite3.connect(tmp_path / "state" / "journal.db")
        taken = min(4, len(d.daemon._threads))  # a file each for the workers (the gate holds the rest untaken)
        wait_for(lambda: db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == taken, what="the files taken")
        time.sleep(1.5)  # the workers at the slot, had they gone ahead, would have sent theirs by now (1 s each)
        assert len(server.inference_requests()) == 1, "files waiting for a slot were sent after the API refused"
    failed = db.execute("SELECT COUNT(*) FROM files WHERE last_error IS NOT NULL").fetchone()[0]
    assert failed == 1, f"{failed} files carry a failed attempt; only the one sent was tried"
    assert len(files_under(tmp_path / "inbox")) == 4


def test_waiting_for_a_request_slot_does_not_count_as_stuck(tmp_path, server):
    """A worker waiting for a slot behind other files' requests is not stuck: its clock (the systemd watchdog's
    health check) starts again when it gets the slot."""
    from rfwatch.service.daemon import Daemon

    server.latency = 1.0
    cfg = write_config(tmp_path, server, concurrency=1, settle=0.1, timeout=2)
    doc = yaml.safe_load(cfg.read_text())
    doc["roboflow"]["retries"] = 1
    cfg.write_text(yaml.safe_dump(doc))
    for n in range(3):
        (tmp_path / "inbox" / f"red-{n}.jpg").write_bytes(unique_jpeg(RED, 750 + n))
    running = DaemonThread(cfg)
    running.daemon.STUCK_GRACE = 0.5  # stuck once a file is busy for 2 x 1 + 0.5 s; the third waits 2 s for its slot
    assert Daemon.STUCK_GRACE != 0.5
    unhealthy = []
    with running as d:
        deadline = time.monotonic() + 60  # a file failed (its request outlasted the 2 s timeout): fail, never hang
        while len(files_under(tmp_path / "sorted")) < 3:
            assert time.monotonic() < deadline, f"not all sorted: {files_under(tmp_path)}"
            if not d.daemon.healthy():
                unhealthy.append(time.monotonic())
            time.sleep(0.05)
            assert d.thread.is_alive()
    assert not unhealthy, "the daemon said it was stuck while its workers waited for a request slot"


def test_a_file_heard_of_after_its_early_hand_off_is_given_back_not_taken(tmp_path, server, monkeypatch):
    """A file renamed in complete is handed on before it has been watched MIN_OBSERVATION long; an event heard
    for it in that time (a write queued late) keeps its worker from taking it: nothing is journaled or sent."""
    import rfwatch.service.watcher as watcher
    from rfwatch.service.daemon import Daemon
    from rfwatch.states import Outcome

    # Handed on 1.5 s before it settles (0.15 s by default): the test's steps between the hand-off and the check
    # that it came early must fit in that lead however slow a loaded machine is.
    monkeypatch.setattr(watcher, "MIN_OBSERVATION", 2.0)
    monkeypatch.setattr(watcher, "EARLY_LEAD", 1.5)
    cfg = write_config(tmp_path, server, settle=4.0)
    path = tmp_path / "inbox" / "a.jpg"
    path.write_bytes(unique_jpeg(RED, 600))
    hour_ago = time.time() - 3600
    os.utime(path, (hour_ago, hour_ago))
    daemon = Daemon(cfg)  # never run: the test is the settle loop and the worker
    try:
        wait_for(lambda: not daemon.facts.fetching(), what="the platform asked about the model")
        watch = daemon.config.watch[0]
        settler = daemon.watcher.settler
        settler.offer(path, watch, polling=False)
        wait_for(lambda: settler.tick() == 0, what="the early hand-off")
        job = daemon.queue.get_nowait()
        assert job.settled_at > time.monotonic(), "handed on once settled: the case was not staged"
        settler.offer(path, watch, writing=True)  # the write event, heard after the hand-off
        attempt = daemon.pipeline.take(job.path, job.watch, job.settled_at)
        assert attempt.outcome == Outcome.CHANGING
        assert server.inference_requests() == [], "sent although an event was heard before it settled"
        db = sqlite3.connect(tmp_path / "state" / "journal.db")
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0, "journaled although it was heard of"
        assert len(settler) == 1, "watched again"
    finally:
        daemon._close()

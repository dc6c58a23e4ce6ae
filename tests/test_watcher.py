"""The settle check on a fake clock: what counts as quiet, and how long a file is watched before it is taken.

The Settler takes its clock as an argument; these tests step it by hand, so each one states exactly when a
file is handed on (and when it will have settled) without waiting for real seconds to pass.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import unique_jpeg, wait_for

from rfwatch.config import WatchConfig
from rfwatch.service.watcher import EARLY_LEAD, MIN_OBSERVATION, OPEN_WRITE_GRACE, FolderWatcher, Settler

STEP = 0.01  # the fake clock's tick, as fine as the daemon's main loop (0.02 s)
HOUR = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A Settler on a fake clock, and every hand-off it made: (path, fake time handed on, settled_at)."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.handed: list[tuple[Path, float, float]] = []
        self.settler = Settler(lambda path, watch, at: self.handed.append((path, self.clock(), at)), clock=self.clock)

    def run_until(self, until: float) -> None:
        """Tick every STEP of fake time up to ``until`` (absolute fake time)."""
        while self.clock.now < until - 1e-9:
            self.clock.now = round(self.clock.now + STEP, 6)
            self.settler.tick()

    def handed_on(self, path: Path) -> tuple[float, float] | None:
        found = [(t, at) for p, t, at in self.handed if p == path]
        assert len(found) <= 1, f"{path.name} handed on more than once"
        return found[0] if found else None


def _file(folder: Path, name: str, mtime: float | None = None) -> Path:
    path = folder / name
    path.write_bytes(unique_jpeg((230, 10, 10), len(name)))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_polling_counts_only_the_time_rfwatch_watched_the_file(tmp_path):
    """A share's clock may be anything: an hour-old mtime there does not make a file settled."""
    settle = 2.0
    h = Harness()
    old = time.time() - HOUR
    shared = _file(tmp_path, "shared.jpg", mtime=old)
    local = _file(tmp_path, "local.jpg", mtime=old)
    t0 = h.clock.now
    h.settler.offer(shared, WatchConfig(path=tmp_path, settle=settle, polling=True))
    h.settler.offer(local, WatchConfig(path=tmp_path, settle=settle, polling=False))

    # Local: the mtime is trusted, so it has been quiet for an hour; it is only watched MIN_OBSERVATION
    # long, so that the events already queued for it are seen first. It is handed on EARLY_LEAD before (to be
    # read meanwhile), due to settle once watched MIN_OBSERVATION long: an event heard until then is remembered.
    h.run_until(t0 + MIN_OBSERVATION - EARLY_LEAD - STEP)
    assert h.handed_on(local) is None, "handed on before every queued event for it could be seen"
    h.run_until(t0 + MIN_OBSERVATION)
    handed, settled_at = h.handed_on(local)
    assert handed == pytest.approx(t0 + MIN_OBSERVATION - EARLY_LEAD)
    assert settled_at == pytest.approx(t0 + MIN_OBSERVATION), "due to settle before every queued event was seen"
    assert h.settler.heard_since_handed_on(local) is False

    # Polling: only the time rfwatch watched it counts. It is handed on EARLY_LEAD before `settle` seconds of
    # observation (to prepare its upload), with the promise that it will have settled after all `settle` seconds.
    h.run_until(t0 + settle - EARLY_LEAD - STEP)
    assert h.handed_on(shared) is None, "the share's hour-old mtime was trusted"
    h.run_until(t0 + settle + 1.0)
    handed, settled_at = h.handed_on(shared)
    assert handed == pytest.approx(t0 + settle - EARLY_LEAD)
    assert settled_at == pytest.approx(t0 + settle), "due to settle before `settle` seconds of observation"
    assert len(h.settler) == 0


@pytest.mark.parametrize("polling", [False, True], ids=["local", "polling"])
def test_a_polling_scan_watches_old_files_settle_instead_of_taking_them_at_once(tmp_path, polling):
    """The start-up scan too: an old mtime on a share is no proof; on a local disk it is."""
    path = _file(tmp_path, "old.jpg", mtime=time.time() - HOUR)
    ready: list[tuple[Path, float]] = []
    watch = WatchConfig(path=tmp_path, settle=2.0, polling=polling)
    watcher = FolderWatcher((watch,), lambda p, w, at: ready.append((p, at)))
    watcher.start(observe=False)
    try:
        wait_for(lambda: not watcher.scanning(), what="the start-up scan")
        if polling:
            assert ready == [] and watcher.pending() == 1, "an old mtime on a share was trusted"
        else:
            assert ready == [(path, 0.0)] and watcher.pending() == 0
    finally:
        watcher.stop()


def test_a_writer_never_seen_closing_is_given_the_open_write_grace(tmp_path):
    """A write seen, its close never (a missed event, a writer that keeps the file open): 60 s, not `settle`."""
    settle = 10.0
    watch = WatchConfig(path=tmp_path, settle=settle)
    h = Harness()
    still_open = _file(tmp_path, "open.jpg")
    closed = _file(tmp_path, "closed.jpg")
    closed_later = _file(tmp_path, "closed-later.jpg")
    t0 = h.clock.now
    h.settler.offer(still_open, watch, writing=True)
    h.settler.offer(closed, watch, writing=False)
    h.settler.offer(closed_later, watch, writing=True)

    h.run_until(t0 + 5.0)
    h.settler.offer(closed_later, watch, writing=False)  # its close arrives: settle counts from its last change
    h.run_until(t0 + settle + 1.0)
    # Closed after writing: handed on at `settle` (EARLY_LEAD before, due to settle at `settle`).
    handed, settled_at = h.handed_on(closed)
    assert handed == pytest.approx(t0 + settle - EARLY_LEAD) and settled_at == pytest.approx(t0 + settle)
    handed, settled_at = h.handed_on(closed_later)
    assert handed == pytest.approx(t0 + settle - EARLY_LEAD) and settled_at == pytest.approx(t0 + settle)
    # Never seen closing: not at `settle`...
    assert h.handed_on(still_open) is None, "taken at settle although no close was ever seen"
    h.run_until(t0 + OPEN_WRITE_GRACE - STEP)
    assert h.handed_on(still_open) is None
    # ...but once it has been unchanged for the whole grace.
    h.run_until(t0 + OPEN_WRITE_GRACE + 1.0)
    handed, settled_at = h.handed_on(still_open)
    assert handed == pytest.approx(t0 + OPEN_WRITE_GRACE) and settled_at == pytest.approx(handed)
    assert len(h.settler) == 0


def test_a_rewrite_of_the_same_size_restarts_the_settle_time(tmp_path):
    """Size and mtime must both stay unchanged for `settle` seconds: a rewrite that keeps the size (a camera
    app filling a preallocated file) starts the wait again."""
    settle = 2.0
    watch = WatchConfig(path=tmp_path, settle=settle, polling=True)  # polling: only rfwatch's own clock counts
    h = Harness()
    path = _file(tmp_path, "same.jpg", mtime=time.time() - 10)
    t0 = h.clock.now
    h.settler.offer(path, watch)
    h.run_until(t0 + 1.0)
    os.utime(path, (time.time(), time.time()))  # rewritten in place: same size, a new mtime
    h.settler.offer(path, watch)
    h.run_until(t0 + settle + 0.5)
    assert h.handed_on(path) is None, "taken although it changed a second ago"
    h.run_until(t0 + 1.0 + settle + 0.5)
    handed, settled_at = h.handed_on(path)
    assert handed == pytest.approx(t0 + 1.0 + settle - EARLY_LEAD) and settled_at == pytest.approx(t0 + 1.0 + settle)


def test_an_excluded_folder_name_keeps_its_files_out(tmp_path):
    """`exclude` applies to folder names too: a file written below `.cache/` (default exclude `.*`) or a folder
    the config excludes is never handed on, while one written after it elsewhere is."""
    watch = WatchConfig(path=tmp_path, settle=0.05, exclude=(".*", "*.part", "thumbs"))
    ready: list[Path] = []
    for folder in (".cache", "thumbs", "ok"):  # there before the watches are: no race with adding them
        (tmp_path / folder).mkdir()
    watcher = FolderWatcher((watch,), lambda p, w, at: ready.append(p))
    watcher.start(observe=True)
    try:
        wait_for(lambda: not watcher.scanning(), what="the start-up scan")
        hidden = _file(tmp_path / ".cache", "a.jpg")
        thumb = _file(tmp_path / "thumbs", "b.jpg")
        shown = _file(tmp_path / "ok", "c.jpg")  # written last: once it is handed on, the others were seen
        deadline = time.monotonic() + 10
        while shown not in ready and time.monotonic() < deadline:
            watcher.tick()
            time.sleep(0.02)
        for _ in range(10):  # a few more ticks: anything due with it would be handed on by now
            watcher.tick()
            time.sleep(0.02)
        assert shown in ready, "the file in an ordinary folder was never handed on"
        assert hidden not in ready and thumb not in ready, ready
    finally:
        watcher.stop()


def test_a_scan_starts_each_folder_at_its_turn_and_wraps_round(tmp_path):
    """The second of two scanning hosts starts every folder half-way in and ends where the first began; alone, or
    when the journal cannot say who else scans, a scan hands files on in name order. Each file once either way."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for n in range(6):
            _file(tmp_path / folder, f"{n}.jpg", mtime=time.time() - 60)  # settled long ago: handed on at once
    watch = WatchConfig(path=tmp_path, settle=0.05)

    def handed_on(turn) -> list[str]:
        ready: list[Path] = []
        watcher = FolderWatcher((watch,), lambda p, w, at: ready.append(p), turn=turn)
        watcher.start(observe=False)
        try:
            wait_for(lambda: not watcher.scanning(), what="the start-up scan")
        finally:
            watcher.stop()
        return [p.relative_to(tmp_path).as_posix() for p in ready]

    def journal_away() -> tuple[int, int]:
        raise OSError("the journal's database is unreachable")

    alone = handed_on(None)
    second = handed_on(lambda: (1, 2))
    assert handed_on(journal_away) == alone, "a scan whose turn cannot be asked goes in name order, not nowhere"
    by_folder = {f: [p for p in alone if p.startswith(f + "/")] for f in ("a", "b")}
    assert by_folder["a"] == [f"a/{n}.jpg" for n in range(6)] and by_folder["b"] == [f"b/{n}.jpg" for n in range(6)]
    assert [p for p in second if p.startswith("a/")] == [f"a/{n}.jpg" for n in (3, 4, 5, 0, 1, 2)]
    assert [p for p in second if p.startswith("b/")] == [f"b/{n}.jpg" for n in (3, 4, 5, 0, 1, 2)]
    assert sorted(second) == sorted(alone) and len(alone) == 12


def test_an_event_heard_for_a_file_handed_on_early_is_remembered_for_its_worker(tmp_path):
    """Handed on before it settled, a file is taken only if nothing was heard of it until it did: an event in
    that time (a write or a close queued late) makes its worker give it back to settle again."""
    h = Harness()
    old = time.time() - HOUR
    quiet, written = _file(tmp_path, "quiet.jpg", mtime=old), _file(tmp_path, "written.jpg", mtime=old)
    watch = WatchConfig(path=tmp_path, settle=2.0, polling=False)
    t0 = h.clock.now
    h.settler.offer(quiet, watch)
    h.settler.offer(written, watch)
    h.run_until(t0 + MIN_OBSERVATION - EARLY_LEAD)
    assert h.handed_on(quiet) and h.handed_on(written)
    h.settler.offer(written, watch, writing=True)  # a write event, delivered after the hand-off
    assert h.settler.heard_since_handed_on(quiet) is False
    assert h.settler.heard_since_handed_on(written) is True
    assert h.settler.heard_since_handed_on(written) is False, "asked once, by its one worker"
    assert len(h.settler) == 1, "the written file is watched again"

"""kill -9 at every named crash point (rfwatch/crashpoints.py), then a restart: nothing lost, nothing twice.

Random kill -9 storms (test_crash.py, test_drills.py) catch a broken recovery only by luck. Here each
point is hit exactly: ``RFWATCH_CRASH_AT=<point>:<n>`` stops ``rfwatch`` dead (os._exit, no cleanup) the
n-th time it gets there. The run must really stop there (exit status CRASH_EXIT: a point a scenario never
reaches fails the test), and the next run must finish the job: every file in exactly one place, whole,
every step done once (a webhook event has one id and is delivered; an upload is one image), no temporary
file left. The scenarios together cover every point in POINTS.

The walks that cross the journal's transitions (sorting, undoing, applying a review decision) run on both
backends, SQLite and PostgreSQL (a fresh database per point); the walks whose points are file operations alone
(across filesystems, embedding metadata, deduplicating) run on SQLite.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import JournalView, files_under, run_cli, unique_jpeg, write_config
from metadata_reader import jpeg_parts, read_xmp
from webhook_receiver import Receiver

import rfwatch.default_plugins.review  # noqa: F401 - the built-ins declare their own crash points when they load
import rfwatch.default_plugins.tag  # noqa: F401
from rfwatch.crashpoints import CRASH_EXIT, POINTS

RED, GREEN = (230, 10, 10), (10, 230, 10)
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Run:
    """One walk: a fresh folder, a crash at ``point`` (its ``n``-th arrival), then a run that finishes."""

    root: Path
    server: Any
    point: str
    n: int = 1
    receiver: Receiver = field(default_factory=lambda: Receiver().start())
    written: dict[str, bytes] = field(default_factory=dict)
    #: The journal: an SQLite file in the run's folder, or a fresh PostgreSQL database.
    state: str = "state/journal.db"

    def config(self, **kw: Any) -> Path:
        return write_config(self.root, self.server, state=self.state, **kw)

    def cli(self, *args: str, crash: bool = False) -> subprocess.CompletedProcess:
        env = {"RFWATCH_CRASH_AT": f"{self.point}:{self.n}"} if crash else {}
        return run_cli(*args, env=env, timeout=60)

    def crashed(self, result: subprocess.CompletedProcess) -> None:
        assert result.returncode == CRASH_EXIT, (
            f"{self.point}:{self.n} was not reached (exit {result.returncode}): {result.stderr[-1500:]}"
        )
        assert f"crash point {self.point} reached" in result.stderr

    def inbox(self, **files: bytes) -> None:
        (self.root / "inbox").mkdir(exist_ok=True)
        for name, data in files.items():
            (self.root / "inbox" / name).write_bytes(data)
            self.written[name] = data

    def webhook_ids(self) -> dict[str, set[str]]:
        """Delivered events by (type, file name): each must have exactly one id."""
        import json

        out: dict[str, set[str]] = {}
        for d in self.receiver.ok():
            doc = json.loads(d.body)
            out.setdefault(f"{doc['type']} {Path(doc['data']['source']).name}", set()).add(d.headers["webhook-id"])
        return out

    def journal(self) -> JournalView:
        return JournalView(self.root)


def _once_placed(run: Run, places: dict[str, tuple[str, ...]]) -> None:
    """Each file written is in exactly one of its expected places (and nowhere else), whole."""
    found: dict[str, list[Path]] = {}
    for p in files_under(run.root):
        if p.suffix in (".xmp", ".db", ".db-wal", ".db-shm", ".yaml", ".jsonl") or "state" in p.parts:
            continue
        found.setdefault(_digest(p.read_bytes()), []).append(p)
    for name, data in run.written.items():
        where = found.get(_digest(data), [])
        rel = sorted(str(p.relative_to(run.root)) for p in where)
        assert rel == sorted(places[name]), f"{run.point}: {name} is at {rel}, expected {places[name]}"
    leftovers = [p for p in files_under(run.root) if ".rfwatch-tmp" in p.name or p.name.endswith("_exiftool_tmp")]
    assert not leftovers, f"{run.point}: temporary files left: {leftovers}"


def _all_finished(run: Run, expected: dict[str, str] | None = None, content: bool = True) -> None:
    """Every file finished (as ``expected`` says, by name), and the journal says where each file really is."""
    rows = run.journal().rows()
    states = {r.source.name: str(r.state) for r in rows}
    assert set(states.values()) <= {"done", "failed", "undone"}, f"{run.point}: unfinished files: {states}"
    if expected is not None:
        assert states == expected, f"{run.point}: {states}"
    for row in rows:
        name, where, state = row.source.name, row.path, row.state
        data = run.written.get(name)
        assert where.exists(), f"{run.point}: the journal says {name} is at {where}, which does not exist"
        if content and data is not None and state != "undone":
            assert where.read_bytes() == data, f"{run.point}: the journal's path for {name} holds something else"


def _walk(
    points: list[tuple[str, int]],
    scenario: Callable[[Run], None],
    tmp_path: Path,
    server: Any,
    new_state: Callable[[], str] | None = None,
) -> set[str]:
    """Run ``scenario`` once per point, two at a time (two cores); returns the points walked. ``new_state``: a
    fresh journal for each point (a PostgreSQL database); default: an SQLite file in each run's folder."""

    def one(point: tuple[str, int]) -> str:
        root = tmp_path / f"{point[0]}-{point[1]}"
        root.mkdir()
        run = Run(root, server, *point)
        if new_state is not None:
            run.state = new_state()
        try:
            scenario(run)
        finally:
            run.receiver.stop()
        return point[0]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return set(pool.map(one, points))


# --- the scenarios ---------------------------------------------------------------------

SORT_POINTS = [
    ("journal.created", 1),
    ("journal.classified", 2),
    ("journal.step_begun", 1),
    ("journal.intent", 2),
    ("journal.step_finished", 2),
    ("journal.finished", 1),
    # concurrency 1: one request in flight, but a worker a core beside it (three workers here), so the n-th
    # arrival at a point may come from any file's worker; the numbers below name what it usually is (broken.jpg into
    # failed:, then green.jpg's steps), and the checks hold whichever file it was
    ("place.before_rename", 1),
    ("place.before_rename", 2),
    ("place.after_rename", 1),
    ("place.after_rename", 2),
    ("place.after_rename", 3),
    ("place.after_rename", 6),  # green's annotated copy in place (quarantine, move + sidecar, copy + sidecar first)
    ("place.after_copy", 1),
    ("place.after_copy", 2),  # usually the copy's sidecar (COPY_POINTS below makes sure of it, with one file)
    ("place.after_fsync", 1),
    ("annotate.after_save", 1),  # red's annotated copy written, not yet placed (no second temporary file of its own)
    ("quarantine.before_move", 1),
    ("quarantine.after_move", 1),
    ("delivery.before_enqueue", 1),
    ("delivery.before_send", 1),
    ("delivery.after_send", 1),
]


def _sort(run: Run) -> None:
    rules = [
        {
            "name": "all",
            "then": [
                {"tag": {"mode": "sidecar"}},
                {"move": "sorted/{class}/{name}"},
                {"copy": "copies/{class}/{name}"},
                # rename: an output placed before the crash must be recognised, not placed again as "(1)"
                {"annotate": {"to": "annotated/{class}/{name}", "on_conflict": "rename"}},
                {"webhook": {"url": run.receiver.url}},
            ],
        }
    ]
    cfg = run.config(rules=rules, failed="failed", settle=0.05, concurrency=1)
    run.inbox(**{"red.jpg": unique_jpeg(RED, 1), "green.jpg": unique_jpeg(GREEN, 2), "broken.jpg": b"not a picture"})
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert run.cli("run", "-c", str(cfg), "--once").returncode in (0, 1)  # 1 if broken.jpg failed in this run
    _once_placed(
        run,
        {
            "red.jpg": ("copies/red/red.jpg", "sorted/red/red.jpg"),
            "green.jpg": ("copies/green/green.jpg", "sorted/green/green.jpg"),
            "broken.jpg": ("failed/broken.jpg",),
        },
    )
    _all_finished(run, {"red.jpg": "done", "green.jpg": "done", "broken.jpg": "failed"})
    annotated = sorted(str(p.relative_to(run.root)) for p in files_under(run.root / "annotated"))
    assert annotated == ["annotated/green/green.jpg", "annotated/red/red.jpg"], (run.point, annotated)
    for name, cls in (("red", "red"), ("green", "green")):
        assert read_xmp(run.root / "sorted" / cls / f"{name}.jpg.xmp")["subject"] == [cls], run.point
    ids = run.webhook_ids()
    assert set(ids) == {"file.processed red.jpg", "file.processed green.jpg"}, (run.point, ids)
    assert all(len(v) == 1 for v in ids.values()), f"{run.point}: an event queued twice: {ids}"


COPY_POINTS = [("place.after_copy", 1), ("place.after_copy", 2)]


def _copy_with_sidecar(run: Run) -> None:
    """One file, so that the second arrival at place.after_copy is its sidecar's copy, whichever worker runs: that
    copy's temporary file is named in the step's intent before it exists, and a restart removes it."""
    cfg = run.config(rules=[{"then": [{"tag": {"mode": "sidecar"}}, {"copy": "copies/{name}"}]}])
    run.inbox(**{"red.jpg": unique_jpeg(RED, 11)})
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    _once_placed(run, {"red.jpg": ("copies/red.jpg", "inbox/red.jpg")})  # no temporary file left either
    for where in ("inbox", "copies"):
        assert read_xmp(run.root / where / "red.jpg.xmp")["subject"] == ["red"], (run.point, where)
    _all_finished(run, {"red.jpg": "done"})


@needs_exiftool
def test_every_crash_point_while_copying_a_file_and_its_sidecar(tmp_path, server, api_key):
    assert _walk(COPY_POINTS, _copy_with_sidecar, tmp_path, server) == {p for p, _ in COPY_POINTS}


def _journals(request: Any, backend: str) -> Callable[[], str] | None:
    """A fresh journal per point on PostgreSQL; None (an SQLite file per run) otherwise."""
    return request.getfixturevalue("pg_cluster").new_database if backend == "postgresql" else None


@pytest.mark.long
@needs_exiftool
def test_every_crash_point_while_sorting(tmp_path, server, api_key, backend, request):
    walked = _walk(SORT_POINTS, _sort, tmp_path, server, _journals(request, backend))
    assert walked == {p for p, _ in SORT_POINTS}


def _skip_without_another_filesystem(tmp_path: Path) -> None:
    if os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the test folder here: no cross-filesystem move")


@contextmanager
def _another_filesystem() -> Iterator[Path]:
    """A folder (not made yet) on /dev/shm, another filesystem than the test's: removed afterwards."""
    other = Path("/dev/shm") / f"rfwatch-test-{uuid.uuid4().hex[:8]}"
    try:
        yield other
    finally:
        shutil.rmtree(other, ignore_errors=True)


CROSS_FS_POINTS = [
    ("place.after_copy", 1),
    ("place.after_fsync", 1),
    ("place.after_tmp_rename", 1),
    ("place.after_unlink", 1),
]


def _across(run: Run) -> None:
    with _another_filesystem() as other:
        cfg = run.config(rules=[{"then": [{"move": f"{other}/{{class}}/{{name}}"}]}])
        run.inbox(**{"red.jpg": unique_jpeg(RED, 3)})
        run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
        assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
        moved = other / "red" / "red.jpg"
        assert moved.read_bytes() == run.written["red.jpg"], run.point
        assert not (run.root / "inbox" / "red.jpg").exists(), f"{run.point}: the source is still there"
        assert [p.name for p in files_under(other)] == ["red.jpg"], f"{run.point}: {files_under(other)}"
        _all_finished(run)


def test_every_crash_point_moving_across_filesystems(tmp_path, server, api_key):
    _skip_without_another_filesystem(tmp_path)
    assert _walk(CROSS_FS_POINTS, _across, tmp_path, server) == {p for p, _ in CROSS_FS_POINTS}


EMBED_POINTS = [("tag.before_embed", 1), ("tag.after_embed", 1)]


def _embed(run: Run) -> None:
    cfg = run.config(rules=[{"then": [{"tag": {"mode": "embed"}}, {"move": "sorted/{name}"}]}])
    run.inbox(**{"red.jpg": unique_jpeg(RED, 4, size=(96, 64))})
    original_scan = jpeg_parts(run.root / "inbox" / "red.jpg")[1]
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    (moved,) = files_under(run.root / "sorted")
    assert jpeg_parts(moved)[1] == original_scan, f"{run.point}: the image data changed"
    assert read_xmp(moved)["subject"] == ["red"], f"{run.point}: {read_xmp(moved)}"
    assert files_under(run.root / "inbox") == []
    _all_finished(run, {"red.jpg": "done"}, content=False)  # tagged in place: its metadata changed


@needs_exiftool
def test_every_crash_point_while_embedding(tmp_path, server, api_key):
    assert _walk(EMBED_POINTS, _embed, tmp_path, server) == {p for p, _ in EMBED_POINTS}


RESTORE_POINTS = [("tag.before_restore", 1), ("tag.after_restore", 1), ("undo.intent", 1), ("undo.step_finished", 1)]


def _restore(run: Run) -> None:
    """Undo of an embedded tag gives the original bytes back (tag_original.py): killed on the way, then again."""
    cfg = run.config(rules=[{"then": [{"move": "sorted/{name}"}, {"tag": {"mode": "embed"}}]}])
    tiff = (Path(__file__).parent / "data" / "exif-samples" / "tiff" / "Arbitro.tiff").read_bytes()
    run.inbox(**{"red.jpg": unique_jpeg(RED, 8, size=(96, 64)), "photo.tiff": tiff})
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    run.crashed(run.cli("undo", "-c", str(cfg), crash=True))
    again = run.cli("undo", "-c", str(cfg))
    assert again.returncode == 0, again.stdout + again.stderr
    # byte for byte, each in one place (the inbox), no temporary file left (_once_placed checks)
    _once_placed(run, {"red.jpg": ("inbox/red.jpg",), "photo.tiff": ("inbox/photo.tiff",)})
    assert "not byte-identical" not in again.stdout, f"{run.point}: {again.stdout}"
    states = [str(r.state) for r in run.journal().rows()]
    assert states == ["undone", "undone"], f"{run.point}: {states}"


@needs_exiftool
def test_every_crash_point_while_restoring_an_original(tmp_path, server, api_key):
    assert _walk(RESTORE_POINTS, _restore, tmp_path, server) == {p for p, _ in RESTORE_POINTS}


@pytest.mark.parametrize("point", ["place.after_copy", "place.after_tmp_rename"])
def test_retry_does_not_give_up_an_undo_cut_short_mid_move(tmp_path, server, api_key, point):
    """``rfwatch retry PATH`` on a file an undo left ``undoing`` mid-move (its temporary copy in the inbox; or back in
    the inbox, its old copy on the other filesystem still there) must not give the undo up: the copy would stay for
    ever, or the file in two places and the inbox's copy taken as a new file. It says to run undo again, which
    finishes the move."""
    _skip_without_another_filesystem(tmp_path)
    run = Run(tmp_path, server, point, 1)
    try:
        with _another_filesystem() as other:
            cfg = run.config(rules=[{"then": [{"move": f"{other}/{{class}}/{{name}}"}]}])
            run.inbox(**{"red.jpg": unique_jpeg(RED, 10)})
            assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
            run.crashed(run.cli("undo", "-c", str(cfg), crash=True))
            retried = run.cli("retry", "-c", str(cfg), str(run.root / "inbox" / "red.jpg"))
            assert retried.returncode == 1 and "run rfwatch undo on it again" in retried.stderr, retried.stderr
            assert [str(r.state) for r in run.journal().rows()] == ["undoing"]
            # the inbox's copy is claimed by the undo: a run takes nothing
            assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
            assert len(run.journal().rows()) == 1
            again = run.cli("undo", "-c", str(cfg))
            assert again.returncode == 0, again.stdout + again.stderr
            _once_placed(run, {"red.jpg": ("inbox/red.jpg",)})
            assert files_under(other) == [], f"left on the other filesystem: {files_under(other)}"
            assert [str(r.state) for r in run.journal().rows()] == ["undone"]
    finally:
        run.receiver.stop()


# Each file's sidecar intent, usually the third and the fifth (a worker per core takes files beside the one request
# slot, so the order can vary); the walk fails there on a tag whose sidecar intent drops the embed's.
BOTH_POINTS = [("journal.intent", 3), ("journal.intent", 5)]


def _both(run: Run) -> None:
    """tag ``mode: both``: the sidecar's intent carries the embed's on, so a resume after a kill between them does
    not take the tagged image for the original; undo then gives every byte back and keeps no copy of it."""
    cfg = run.config(rules=[{"then": [{"tag": {"mode": "both"}}, {"move": "sorted/{name}"}]}], concurrency=1)
    tiff = (Path(__file__).parent / "data" / "exif-samples" / "tiff" / "Arbitro.tiff").read_bytes()
    run.inbox(**{"red.jpg": unique_jpeg(RED, 9, size=(96, 64)), "photo.tiff": tiff})
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    for moved in ("sorted/red.jpg", "sorted/photo.tiff"):  # tagged, each with its one class
        assert len(read_xmp(run.root / moved)["subject"]) == 1, (run.point, moved, read_xmp(run.root / moved))
    undone = run.cli("undo", "-c", str(cfg))
    assert undone.returncode == 0, undone.stdout + undone.stderr
    _once_placed(run, {"red.jpg": ("inbox/red.jpg",), "photo.tiff": ("inbox/photo.tiff",)})  # byte for byte
    assert not list(run.root.glob("inbox/*.xmp")), f"{run.point}: a sidecar rfwatch created is still there"
    kept = files_under(run.root / "state" / "plugins") if (run.root / "state" / "plugins").exists() else []
    assert kept == [], f"{run.point}: copies of originals nobody will use again: {kept}"


@needs_exiftool
def test_every_crash_point_while_tagging_image_and_sidecar(tmp_path, server, api_key):
    assert _walk(BOTH_POINTS, _both, tmp_path, server) == {p for p, _ in BOTH_POINTS}


MADE_FOLDERS_POINTS = [("place.made_folders", 1)]


def _made_folders(run: Run) -> None:
    """Killed right after a move made its class folder: the restart's move finds the folder there, yet undo still
    removes it (and the folder above it), as it would have without the crash."""
    cfg = run.config(rules=[{"then": [{"move": "sorted/{class}/{name}"}]}])
    run.inbox(**{"red.jpg": unique_jpeg(RED, 21)})
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert (run.root / "sorted" / "red").is_dir() and not (run.root / "sorted" / "red" / "red.jpg").exists()
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    _once_placed(run, {"red.jpg": ("sorted/red/red.jpg",)})
    undone = run.cli("undo", "-c", str(cfg))
    assert undone.returncode == 0, undone.stdout + undone.stderr
    _once_placed(run, {"red.jpg": ("inbox/red.jpg",)})
    assert not (run.root / "sorted").exists(), f"{run.point}: undo left the folders the move made: {undone.stdout}"


def test_a_crash_right_after_a_move_made_its_folders_leaves_them_undo_s_to_remove(tmp_path, server, api_key):
    assert _walk(MADE_FOLDERS_POINTS, _made_folders, tmp_path, server) == {p for p, _ in MADE_FOLDERS_POINTS}


UNDO_ACROSS_POINTS = [
    ("place.after_tmp_rename", 1),  # the file back in the inbox, its copy on the other filesystem still there
    ("place.after_copy", 2),  # the sidecar's temporary copy written (named in the intent before it exists)
    ("place.after_tmp_rename", 2),  # the sidecar back, its old copy still there: no second "red (1).jpg.xmp"
]

_SIDECAR = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'


def _undo_across(run: Run) -> None:
    with _another_filesystem() as other:
        cfg = run.config(rules=[{"then": [{"move": f"{other}/{{class}}/{{name}}"}]}])
        run.inbox(**{"red.jpg": unique_jpeg(RED, 7)})
        (run.root / "inbox" / "red.jpg.xmp").write_bytes(_SIDECAR)  # the photographer's own sidecar
        assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
        assert sorted(p.name for p in files_under(other)) == ["red.jpg", "red.jpg.xmp"]
        run.crashed(run.cli("undo", "-c", str(cfg), crash=True))
        again = run.cli("undo", "-c", str(cfg))
        assert again.returncode == 0, again.stdout + again.stderr
        _once_placed(run, {"red.jpg": ("inbox/red.jpg",)})
        inbox = sorted(p.name for p in (run.root / "inbox").iterdir())
        assert inbox == ["red.jpg", "red.jpg.xmp"], f"{run.point}: {inbox}"
        assert (run.root / "inbox" / "red.jpg.xmp").read_bytes() == _SIDECAR, run.point
        assert files_under(other) == [], f"{run.point}: left on the other filesystem: {files_under(other)}"
        assert [str(r.state) for r in run.journal().rows()] == ["undone"], run.point


def test_every_crash_point_undoing_a_move_across_filesystems(tmp_path, server, api_key):
    """Undo moves the file and its sidecar back from another filesystem, each through a temporary copy."""
    _skip_without_another_filesystem(tmp_path)
    assert _walk(UNDO_ACROSS_POINTS, _undo_across, tmp_path, server) == {p for p, _ in UNDO_ACROSS_POINTS}


UNDO_POINTS = [
    ("undo.step_begun", 1),
    ("undo.intent", 1),
    ("undo.step_finished", 2),
    ("undo.finished", 1),
    ("place.before_rename", 1),
    ("place.after_rename", 1),
]


def _undo(run: Run) -> None:
    rules = [
        {
            "then": [
                {"tag": {"mode": "sidecar"}},
                {"move": "sorted/{class}/{name}"},
                {"copy": "copies/{name}"},
                {"webhook": {"url": run.receiver.url}},
            ]
        }
    ]
    cfg = run.config(rules=rules)
    run.inbox(**{"red.jpg": unique_jpeg(RED, 5), "green.jpg": unique_jpeg(GREEN, 6)})
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    run.crashed(run.cli("undo", "-c", str(cfg), crash=True))
    again = run.cli("undo", "-c", str(cfg))
    assert again.returncode == 0, again.stdout + again.stderr
    _once_placed(run, {"red.jpg": ("inbox/red.jpg",), "green.jpg": ("inbox/green.jpg",)})
    assert not list(run.root.glob("inbox/*.xmp")), f"{run.point}: a sidecar rfwatch created is still there"
    states = [str(r.state) for r in run.journal().rows()]
    assert states == ["undone", "undone"], f"{run.point}: {states}"
    # the second undo sent the file.undone events, the crashed one's too, before it exited
    sent = {k for k in run.webhook_ids() if k.startswith("file.undone")}
    assert sent == {"file.undone red.jpg", "file.undone green.jpg"}, (run.point, sent)
    run.cli("run", "-c", str(cfg), "--once")
    _once_placed(run, {"red.jpg": ("inbox/red.jpg",), "green.jpg": ("inbox/green.jpg",)})  # it takes nothing
    ids = run.webhook_ids()
    undone = {k: v for k, v in ids.items() if k.startswith("file.undone")}
    assert set(undone) == {"file.undone red.jpg", "file.undone green.jpg"}, (run.point, ids)
    assert all(len(v) == 1 for v in ids.values()), f"{run.point}: an event queued twice: {ids}"


DEDUPE_POINTS = [("place.duplicate", 1)]


def _dedupe(run: Run) -> None:
    """A photo already sorted by hand: rfwatch drops its identical copy, and undo never takes the person's file."""
    cfg = run.config(rules=[{"then": [{"move": {"to": "sorted/{name}", "on_conflict": "dedupe"}}]}])
    run.inbox(**{"red.jpg": unique_jpeg(RED, 7)})
    (run.root / "sorted").mkdir()
    (run.root / "sorted" / "red.jpg").write_bytes(run.written["red.jpg"])
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    _once_placed(run, {"red.jpg": ("sorted/red.jpg",)})
    assert run.cli("undo", "-c", str(cfg)).returncode == 0
    _once_placed(run, {"red.jpg": ("inbox/red.jpg", "sorted/red.jpg")})  # the person's file stays


def test_every_crash_point_deduplicating(tmp_path, server, api_key):
    assert _walk(DEDUPE_POINTS, _dedupe, tmp_path, server) == {p for p, _ in DEDUPE_POINTS}


@pytest.mark.long
@needs_exiftool
def test_every_crash_point_while_undoing(tmp_path, server, api_key, backend, request):
    walked = _walk(UNDO_POINTS, _undo, tmp_path, server, _journals(request, backend))
    assert walked == {p for p, _ in UNDO_POINTS}


REVIEW_POINTS = [
    ("review.decided", 1),
    ("journal.step_finished", 1),
    ("place.before_rename", 1),
    ("delivery.before_enqueue", 1),
    ("delivery.before_send", 1),
    ("review.uploaded", 1),  # uploaded, the label not yet sent: the restart sends the label to that one image
    ("delivery.after_send", 1),
]
DECIDE = """
import sys
from rfwatch.config import load_config
from rfwatch.journal import DecisionKind, open_journal
j = open_journal(load_config(sys.argv[1]))
(row,) = j.decisions.waiting()
j.decisions.decide(row.id, DecisionKind.LABEL, ("green",), by="test")
"""


def _run_tag(run: Run) -> str:
    return f"{run.point}-{run.n}"


def _waiting_for_review(run: Run, seed: int) -> Path:
    """photo.jpg set aside for review by an unsure model (labels go to the project "colors"); the config.

    The walk runs two points at a time against one platform stand-in: each run's photo is its own (the platform
    takes identical content for one image) and its uploads carry the run's tag, so that each run reads its own."""
    run.server.classifier = lambda image: {"red": 0.4, "green": 0.35, "blue": 0.25}  # the model is unsure
    rules = [
        {"name": "unsure", "when": {"max_confidence": 0.6}, "then": [{"review": "review/{name}"}]},
        {"name": "sorted", "then": [{"move": "sorted/{class}/{name}"}]},
    ]
    cfg = run.config(rules=rules, review={"upload": {"project": "colors", "tags": ["rfwatch", _run_tag(run)]}})
    own = int(hashlib.sha256(_run_tag(run).encode()).hexdigest()[:6], 16)
    run.inbox(**{"photo.jpg": unique_jpeg(RED, seed * 10_000_000 + own)})
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    return cfg


def _review(run: Run) -> None:
    cfg = _waiting_for_review(run, 7)
    assert (run.root / "review" / "photo.jpg").exists()
    journal = str(cfg)  # DECIDE opens the journal the config names
    env = dict(os.environ)
    if run.point == "review.decided":  # the process that records the decision (a review page) dies
        env["RFWATCH_CRASH_AT"] = f"{run.point}:{run.n}"
        decided = subprocess.run([sys.executable, "-c", DECIDE, journal], env=env, capture_output=True, text=True)
        run.crashed(decided)
    else:
        subprocess.run([sys.executable, "-c", DECIDE, journal], env=env, check=True, timeout=60)
        run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    _once_placed(run, {"photo.jpg": ("sorted/green/photo.jpg",)})
    _all_finished(run)
    _one_image_labelled(run, "green")


@pytest.mark.long
def test_every_crash_point_while_applying_a_review_decision(tmp_path, server, platform, api_key, backend, request):
    server.platform = platform
    walked = _walk(REVIEW_POINTS, _review, tmp_path, server, _journals(request, backend))
    assert walked == {p for p, _ in REVIEW_POINTS}


SEQUENCE_POINTS = [("sequence.waiting", 2), ("sequence.closed", 1), ("journal.step_finished", 4)]


def _sequence(run: Run) -> None:
    """A burst of three frames decided together, a webhook per frame and one sequence.closed event."""
    import json

    from test_sequences import DEER, EMPTY_UNSURE, FOX_UNSURE, burst, classify, minutes_ago

    run.server.classifier = classify
    rules = [{"name": "all", "then": [{"move": "sorted/{class}/{name}"}, {"webhook": {"url": run.receiver.url}}]}]
    cfg = run.config(rules=rules, settle=0.05, concurrency=1)
    doc = yaml.safe_load(cfg.read_text())
    doc["sequence"] = {"gap": 60}
    cfg.write_text(yaml.safe_dump(doc))
    burst(run.root / "inbox", "S", [FOX_UNSURE, DEER, EMPTY_UNSURE], minutes_ago(4), 1)
    run.written.update({p.name: p.read_bytes() for p in files_under(run.root / "inbox")})
    run.crashed(run.cli("run", "-c", str(cfg), "--once", crash=True))
    result = run.cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, f"{run.point}: {result.stderr[-1500:]}"
    _once_placed(run, {name: (f"sorted/deer/{name}",) for name in run.written})
    _all_finished(run, {name: "done" for name in run.written})
    events: dict[str, set[str]] = {}
    for d in run.receiver.ok():
        body = json.loads(d.body)
        what = body["data"].get("source") or f"sequence {body['data']['sequence']}"
        events.setdefault(f"{body['type']} {Path(what).name}", set()).add(d.headers["webhook-id"])
    assert sorted(events) == [
        "file.processed S01.jpg",
        "file.processed S02.jpg",
        "file.processed S03.jpg",
        "sequence.closed sequence 1",
    ], (run.point, events)
    assert all(len(v) == 1 for v in events.values()), f"{run.point}: an event queued twice: {events}"


def test_every_crash_point_of_a_sequence(tmp_path, server, api_key, backend, request):
    walked = _walk(SEQUENCE_POINTS, _sequence, tmp_path, server, _journals(request, backend))
    assert walked == {p for p, _ in SEQUENCE_POINTS}


TAKE_BACK_POINTS = [("undo.intent", 1), ("undo.step_finished", 1), ("review.taken_back", 1)]
TAKE_BACK = """
import sys
from pathlib import Path
from rfwatch.config import load_config
from rfwatch.host.runtime import load_extensions
from rfwatch.journal import open_journal
from rfwatch.processing.delivery import Deliveries
from rfwatch.processing.takeback import TakeBack
from rfwatch.processing.undo import Undoer
config = load_config(sys.argv[1])
extensions = load_extensions(config)
j = open_journal(config, kind="review")
undoer = lambda: Undoer(config, j, extensions.rules, extensions.plugins.actions, Deliveries(j))
(row,) = j.files.rows_in_state(("done", "undoing", "review"))
print(TakeBack(j, undoer)(row.id, by="test").outcome.value)
j.close()
"""


def _take_back(run: Run) -> None:
    """A label applied and uploaded, taken back on the page (killed at the point), then labelled again: one image in
    the project, with the last label, and the file in exactly one place."""
    cfg = _waiting_for_review(run, 8)
    decide = DECIDE.replace('("green",)', "(sys.argv[2],)")
    subprocess.run([sys.executable, "-c", decide, str(cfg), "green"], check=True, timeout=60)
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    _once_placed(run, {"photo.jpg": ("sorted/green/photo.jpg",)})
    env = dict(os.environ, RFWATCH_CRASH_AT=f"{run.point}:{run.n}")
    taken = subprocess.run([sys.executable, "-c", TAKE_BACK, str(cfg)], env=env, capture_output=True, text=True)
    run.crashed(taken)
    # The page again (a person presses z once more): it carries on, or says there is nothing left to take back.
    again = subprocess.run([sys.executable, "-c", TAKE_BACK, str(cfg)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-1500:]
    expected = "nothing to take back" if run.point == "review.taken_back" else "waiting again"
    assert again.stdout.strip() == expected, (run.point, again.stdout)
    _once_placed(run, {"photo.jpg": ("review/photo.jpg",)})
    assert [str(r.state) for r in run.journal().rows()] == ["review"], run.point
    subprocess.run([sys.executable, "-c", decide, str(cfg), "blue"], check=True, timeout=60)
    assert run.cli("run", "-c", str(cfg), "--once").returncode == 0
    _once_placed(run, {"photo.jpg": ("sorted/blue/photo.jpg",)})
    _all_finished(run)
    _one_image_labelled(run, "blue")


def _one_image_labelled(run: Run, label: str) -> None:
    """This run's photo is one image in the project (a relabel is no second image), with ``label``."""
    platform = run.server.platform
    mine = [u for u in platform.uploads.get("colors", []) if _run_tag(run) in u["tags"]]
    assert len({u["id"] for u in mine}) == 1, f"{run.point}: {mine}"
    assert platform.annotations["colors"].get(mine[0]["id"]) == label, run.point


@pytest.mark.long
def test_every_crash_point_while_taking_a_decision_back(tmp_path, server, platform, api_key, backend, request):
    server.platform = platform
    walked = _walk(TAKE_BACK_POINTS, _take_back, tmp_path, server, _journals(request, backend))
    assert walked == {p for p, _ in TAKE_BACK_POINTS}


def test_the_walks_cover_every_crash_point():
    """Every crash point of rfwatch/crashpoints.py is reached in rfwatch's code and named by a walk above (each
    walk fails when its run does not reach the point). Checked from the source and the lists alone, so it holds
    whichever tests this pytest run selects, and however they are spread over workers."""
    walkable = {p for _, group in _GROUPS for p, _ in group}
    assert walkable == set(POINTS), f"points no walk names: {set(POINTS) - walkable}; unknown: {walkable - set(POINTS)}"
    package = Path(__file__).resolve().parents[1] / "rfwatch"
    called = {
        name
        for path in package.rglob("*.py")
        if path.name != "crashpoints.py"
        for name in re.findall(r"""crash_point\(\s*["']([^"']+)["']\s*\)""", path.read_text())
    }
    assert called == set(POINTS), f"listed but never reached: {set(POINTS) - called}; unlisted: {called - set(POINTS)}"


_GROUPS = [
    ("sort", SORT_POINTS),
    ("copy", COPY_POINTS),
    ("dedupe", DEDUPE_POINTS),
    ("across", CROSS_FS_POINTS),
    ("embed", EMBED_POINTS),
    ("restore", RESTORE_POINTS),
    ("undo", UNDO_POINTS),
    ("review", REVIEW_POINTS),
    ("sequence", SEQUENCE_POINTS),
    ("take back", TAKE_BACK_POINTS),
    ("made folders", MADE_FOLDERS_POINTS),
    # walked in tests/test_exports.py (an export killed midway), where the exported project is built
    ("export", [("export.tables_written", 1)]),
]

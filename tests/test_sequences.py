"""Sequences (issue 22, item 1): the frames of a burst are decided together and land in one class folder.

The stand-in model (``server.classifier``) reads each frame's colour: red is a deer, blue a fox, green empty; a
grey frame with a tint is an unsure guess at that tint's class (about 0.37). Capture times are written into EXIF
(DateTimeOriginal, SubSecTimeOriginal, OffsetTimeOriginal) with Pillow, minutes before the test runs.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    DaemonProcess,
    DaemonThread,
    JournalView,
    back_to_schema_4,
    files_under,
    run_cli,
    wait_for,
    write_config,
)
from PIL import Image
from test_review_browser import browser  # noqa: F401 - the fixture
from webhook_receiver import Receiver

from rfwatch.config import SequenceLabel
from rfwatch.journal import Journal
from rfwatch.processing.sequences import label_sequence
from rfwatch.roboflow.result import Prediction

# Frame colours, by what the stand-in model makes of them.
DEER, FOX, EMPTY = (230, 10, 10), (10, 10, 230), (10, 230, 10)
DEER_UNSURE, FOX_UNSURE, EMPTY_UNSURE = (118, 100, 92), (92, 100, 118), (95, 118, 97)
MAYBE_DEER = (200, 60, 60)  # deer, but less sure than DEER
CLASSES = ("deer", "empty", "fox")


def classify(image: Image.Image) -> dict[str, float]:
    """Channel shares: red -> deer, green -> empty, blue -> fox (a softmax-like head, as color_scores)."""
    data = image.convert("RGB").resize((8, 8)).tobytes()
    sums = [sum(data[i::3]) for i in range(3)]
    total = sum(sums) or 1
    return {name: round(s / total, 4) for name, s in zip(("deer", "empty", "fox"), sums, strict=True)}


def frame(color: tuple[int, int, int], captured: dt.datetime, seed: int) -> bytes:
    """A small JPEG of one colour (its bytes unique per seed) with its capture time in EXIF."""
    img = Image.new("RGB", (48, 32), color)
    img.putpixel((seed % 48, (seed // 48) % 32), (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[0x9003] = captured.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    ifd[0x9291] = f"{captured.microsecond // 10000:02d}"  # SubSecTimeOriginal
    ifd[0x9011] = captured.strftime("%z")[:3] + ":" + captured.strftime("%z")[3:]  # OffsetTimeOriginal
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def minutes_ago(minutes: float) -> dt.datetime:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)).astimezone()


def burst(
    folder: Path, prefix: str, colors: list[tuple[int, int, int]], start: dt.datetime, seed: int, order=None
) -> dict[str, int]:
    """Write a burst (frames 2 s apart); returns {name: place by capture time, from 1}. ``order``: the capture
    slot of each frame in name order (a camera whose names do not follow its clock)."""
    folder.mkdir(parents=True, exist_ok=True)
    order = order or list(range(len(colors)))
    places = {}
    for n, (color, slot) in enumerate(zip(colors, order, strict=True)):
        name = f"{prefix}{n + 1:02d}.jpg"
        (folder / name).write_bytes(frame(color, start + dt.timedelta(seconds=2 * slot), seed + n))
        places[name] = slot + 1
    return places


def config(tmp_path: Path, server, state: str, sequence: dict | None, rules=None, **extra: Any) -> Path:
    server.classifier = classify
    move = "sorted/{class}/{name}"
    doc_rules = rules or [{"name": "sort", "then": [{"move": move}]}]
    cfg = write_config(tmp_path, server, rules=doc_rules, state=state, **extra)
    doc = yaml.safe_load(cfg.read_text())
    if sequence is not None:
        doc["sequence"] = sequence
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def sorted_classes(tmp_path: Path) -> dict[str, str]:
    """{file name: the class folder it is in} below sorted/."""
    return {p.name: p.parent.name for p in files_under(tmp_path / "sorted")}


# --- labelling ---------------------------------------------------------------------------


def _p(scores: dict[str, float]) -> Prediction:
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    return Prediction.from_json(
        {
            "predictions": [{"class": c, "confidence": v} for c, v in ranked],
            "top": ranked[0][0],
            "confidence": ranked[0][1],
        }
    )


def test_labels_max_mean_majority_and_empty_classes():
    frames = [
        (1, _p({"fox": 0.40, "deer": 0.35, "empty": 0.25})),
        (2, _p({"deer": 0.90, "fox": 0.05, "empty": 0.05})),
        (3, _p({"fox": 0.45, "deer": 0.30, "empty": 0.25})),
        (4, _p({"fox": 0.38, "deer": 0.32, "empty": 0.30})),
    ]
    assert label_sequence(frames, SequenceLabel.MAX).label == "deer"
    assert label_sequence(frames, "max").confidence == pytest.approx(0.90)
    # mean: deer (0.35+0.90+0.30+0.32)/4 = 0.4675 beats fox (0.40+0.05+0.45+0.38)/4 = 0.32
    mean = label_sequence(frames, "mean")
    assert (mean.label, mean.confidence) == ("deer", pytest.approx(0.4675))
    majority = label_sequence(frames, "majority")
    assert (majority.label, majority.confidence) == ("fox", pytest.approx((0.40 + 0.45 + 0.38) / 3))
    assert label_sequence(frames, "max").frames[3] == ("fox", 0.45)  # each frame keeps its own class

    empties = [(i, _p({"empty": 0.95, "deer": 0.03, "fox": 0.02})) for i in range(1, 5)]
    one_animal = [*empties, (5, _p({"deer": 0.37, "empty": 0.33, "fox": 0.30}))]
    for method in ("max", "mean", "majority"):
        everything_empty = label_sequence(empties, method, ("empty", "blank"))
        assert (everything_empty.label, everything_empty.empty) == ("empty", True), method
        animal = label_sequence(one_animal, method, ("empty", "blank"))
        assert (animal.label, animal.empty) == ("deer", False), method
    # two animal frames that disagree, each with "empty" second: their mean's best is still an animal
    split = [(1, _p({"deer": 0.40, "empty": 0.35, "fox": 0.25})), (2, _p({"fox": 0.40, "empty": 0.35, "deer": 0.25}))]
    assert label_sequence(split, "mean", ("empty",)).label in ("deer", "fox")
    assert label_sequence(split, "mean").label == "empty"  # (empty is a class like any other without empty:)
    # without empty classes the confident empties win
    assert label_sequence(one_animal, "max").label == "empty"


# --- a card dump ---------------------------------------------------------------------------


def test_card_dump_every_frame_of_a_burst_in_its_sequence_class_folder(tmp_path, server, journal_url, api_key):
    inbox = tmp_path / "inbox"
    rules = [{"name": "sort", "then": [{"move": "sorted/{class}/{frame}of{frames}-{frame_class}-{name}"}]}]
    cfg = config(tmp_path, server, journal_url, {"key": "{parent}", "gap": 60, "label": "max"}, rules=rules)
    expected: dict[str, tuple[str, int, str]] = {}
    bursts = [
        # (prefix, colours, label, minutes ago, capture order of the frames in name order)
        ("A", [FOX_UNSURE, DEER, EMPTY_UNSURE, FOX_UNSURE, DEER_UNSURE], "deer", 12, None),
        ("B", [DEER_UNSURE, DEER_UNSURE, FOX, EMPTY_UNSURE, DEER_UNSURE], "fox", 8, [4, 2, 0, 3, 1]),
        ("C", [FOX_UNSURE, EMPTY_UNSURE, MAYBE_DEER, FOX_UNSURE, EMPTY_UNSURE], "deer", 4, None),
    ]
    own = {FOX_UNSURE: "fox", DEER: "deer", EMPTY_UNSURE: "empty", DEER_UNSURE: "deer", FOX: "fox"}
    own[MAYBE_DEER] = "deer"
    for n, (prefix, colors, label, ago, order) in enumerate(bursts):
        places = burst(inbox, prefix, colors, minutes_ago(ago), 100 * n, order)
        for (name, place), color in zip(places.items(), colors, strict=True):
            expected[name] = (label, place, own[color])
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert files_under(inbox) == []
    got = {p.name.split("-", 2)[2]: (p.parent.name, p.name) for p in files_under(tmp_path / "sorted")}
    assert set(got) == set(expected)
    for name, (label, place, frame_class) in expected.items():
        folder, placed_as = got[name]
        assert folder == label, f"{name} sorted as {folder}, its sequence is {label}"
        assert placed_as == f"{place}of5-{frame_class}-{name}", placed_as
    journal = Journal.open(journal_url)
    try:
        rows = {r.source.name: r for r in JournalView(cfg).rows()}
        assert {str(r.state) for r in rows.values()} == {"done"}
        seqs = journal.sequences.of_files([r.id for r in rows.values()])
        by_burst = {p: {seqs[r.id].sequence_id for n, r in rows.items() if n.startswith(p)} for p in "ABC"}
        assert all(len(ids) == 1 for ids in by_burst.values()), by_burst
        assert len(set().union(*by_burst.values())) == 3
        assert {seqs[rows["B01.jpg"].id].frames, seqs[rows["B01.jpg"].id].label} == {5, "fox"}
        # as exports read it: (sequence_id, frame, frames, label, confidence, captured, key, empty)
        b = sorted((seqs[r.id] for n, r in rows.items() if n.startswith("B")), key=lambda of: of.frame)
        _, frame_no, frames, label, confidence, *_ = b[0]
        assert (frame_no, frames, label) == (1, 5, "fox") and confidence > 0.8
        assert [of.captured for of in b] == sorted(of.captured for of in b)  # places follow capture times
        assert {of.key for of in b} == {"inbox/inbox"} and not any(of.empty for of in b)
    finally:
        journal.close()
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "sorted" / "fox" / "5of5-deer-B01.jpg"))
    assert history.returncode == 0, history.stderr
    assert "sequence" in history.stdout and "frame 5 of 5" in history.stdout, history.stdout


def test_an_all_empty_burst_and_one_animal_among_empty_frames(tmp_path, server, journal_url, api_key):
    inbox = tmp_path / "inbox"
    cfg = config(tmp_path, server, journal_url, {"gap": 60, "empty": ["empty", "blank"]})
    start = minutes_ago(6)
    burst(inbox / "cam1", "E", [EMPTY, EMPTY_UNSURE, EMPTY, EMPTY, EMPTY_UNSURE], start, 1)
    # the same minutes, another camera (its own key): four confident empties and one unsure deer
    burst(inbox / "cam2", "M", [EMPTY, EMPTY, DEER_UNSURE, EMPTY, EMPTY], start, 50)
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    got = sorted_classes(tmp_path)
    assert got == {**{f"E0{n}.jpg": "empty" for n in range(1, 6)}, **{f"M0{n}.jpg": "deer" for n in range(1, 6)}}


# --- a live burst -------------------------------------------------------------------------------


def test_a_live_burst_arriving_frame_by_frame_waits_then_lands_together(tmp_path, server, api_key):
    receiver = Receiver().start()
    try:
        rules = [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}, {"webhook": receiver.url}]}]
        # gap 8: the frames come 1.5 s apart (capture times), and the burst closes 8 s of wall time after the
        # last one; margin for a loaded machine between two frames (a status command runs meanwhile)
        cfg = config(tmp_path, server, "state/journal.db", {"gap": 8}, rules=rules, settle=0.1)
        inbox = tmp_path / "inbox"
        view = JournalView(cfg)
        colors = [FOX_UNSURE, EMPTY_UNSURE, DEER, DEER_UNSURE, FOX_UNSURE]
        start = minutes_ago(3)
        with DaemonThread(cfg):
            for n, color in enumerate(colors):
                name = f"L{n + 1}.jpg"
                (inbox / name).write_bytes(frame(color, start + dt.timedelta(seconds=1.5 * n), 300 + n))
                wait_for(lambda name=name: view.state(name) == "waiting", what=f"{name} waiting")
                # every frame so far still waits in the inbox: nothing is decided before the burst ends
                assert sorted(p.name for p in files_under(inbox)) == [f"L{i + 1}.jpg" for i in range(n + 1)]
                if n == 2:
                    status = run_cli("status", "-c", str(cfg))
                    assert "waiting for their sequence 3" in status.stdout, status.stdout
                    assert "open sequences: 1" in status.stdout, status.stdout
                    assert "3 frame(s)" in status.stdout, status.stdout
            wait_for(lambda: len(files_under(tmp_path / "sorted")) == 5, timeout=30, what="the burst sorted")
            wait_for(lambda: any(json.loads(d.body)["type"] == "sequence.closed" for d in receiver.ok()))
            wait_for(lambda: len(receiver.ok()) == 6, what="5 file events and 1 sequence event")
        assert sorted_classes(tmp_path) == {f"L{n}.jpg": "deer" for n in range(1, 6)}
        events = [json.loads(d.body) for d in receiver.ok()]
        closed = [e for e in events if e["type"] == "sequence.closed"]
        assert len(closed) == 1
        data = closed[0]["data"]
        assert data["class"] == "deer" and data["label"] == "max"
        assert [Path(f["source"]).name for f in data["frames"]] == [f"L{n}.jpg" for n in range(1, 6)]
        assert [f["class"] for f in data["frames"]] == ["fox", "empty", "deer", "deer", "fox"]
        per_file = [e for e in events if e["type"] == "file.processed"]
        assert {e["data"]["sequence"]["id"] for e in per_file} == {data["sequence"]}
        assert {e["data"]["prediction"]["top"] for e in per_file} == {"deer"}
    finally:
        receiver.stop()


# --- kill -9 while frames wait -------------------------------------------------------------------


def test_kill_9_while_frames_wait_then_restart_nothing_lost(tmp_path, server, api_key):
    inbox = tmp_path / "inbox"
    # gap 30: the daemon keeps the frames waiting (no new frame for 30 s of wall time has not passed yet)
    cfg = config(tmp_path, server, "state/journal.db", {"gap": 30}, settle=0.1)
    burst(inbox, "A", [FOX_UNSURE, DEER, EMPTY_UNSURE, FOX_UNSURE, DEER_UNSURE], minutes_ago(9), 1)
    burst(inbox, "B", [DEER_UNSURE, FOX, EMPTY_UNSURE], minutes_ago(5), 20)
    written = {p.name: p.read_bytes() for p in files_under(inbox)}
    view = JournalView(cfg)
    log = tmp_path / "daemon.log"
    with DaemonProcess(cfg, log) as daemon:
        daemon.wait_ready()

        def burst_b_waits() -> bool:
            return all(view.state(f"B0{n}.jpg") == "waiting" for n in (1, 2, 3))

        wait_for(burst_b_waits, timeout=30, what="burst B waiting")
        daemon.kill()  # B waits (A may have closed already, by B's arrival: both are covered)
    assert {p.name for p in files_under(inbox)} >= {"B01.jpg", "B02.jpg", "B03.jpg"}
    result = run_cli("run", "-c", str(cfg), "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    got = sorted_classes(tmp_path)
    assert got == {**{f"A0{n}.jpg": "deer" for n in range(1, 6)}, **{f"B0{n}.jpg": "fox" for n in range(1, 4)}}
    for p in files_under(tmp_path / "sorted"):
        assert p.read_bytes() == written[p.name]
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    assert db.execute("SELECT COUNT(*) FROM sequences").fetchone()[0] == 2
    assert db.execute("SELECT COUNT(*) FROM files WHERE state != 'done'").fetchone()[0] == 0


# --- undo and review per sequence -------------------------------------------------------------------


def test_undo_a_whole_sequence_puts_every_frame_back(tmp_path, server, api_key):
    inbox = tmp_path / "inbox"
    cfg = config(tmp_path, server, "state/journal.db", {"gap": 60})
    burst(inbox, "A", [FOX_UNSURE, DEER, EMPTY_UNSURE], minutes_ago(9), 1)
    burst(inbox, "B", [DEER_UNSURE, FOX, EMPTY_UNSURE], minutes_ago(5), 20)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert sorted_classes(tmp_path) == {
        **{f"A0{n}.jpg": "deer" for n in (1, 2, 3)},
        **{f"B0{n}.jpg": "fox" for n in (1, 2, 3)},
    }
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "sorted" / "fox" / "B02.jpg"))
    seq_id = history.stdout.split("sequence ", 1)[1].split()[0]
    undo = run_cli("undo", "-c", str(cfg), "--sequence", seq_id)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert "3 file(s): 3 undone" in undo.stdout, undo.stdout
    assert sorted(p.name for p in files_under(inbox)) == ["B01.jpg", "B02.jpg", "B03.jpg"]
    assert sorted_classes(tmp_path) == {f"A0{n}.jpg": "deer" for n in (1, 2, 3)}
    unknown = run_cli("undo", "-c", str(cfg), "--sequence", "999")
    assert unknown.returncode == 2 and "--sequence 999: no closed sequence" in unknown.stderr, unknown.stderr
    # retried, the frames run their rules again with their sequence's label (it closed once, for good)
    assert run_cli("retry", "-c", str(cfg), "--undone").returncode == 0
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert sorted_classes(tmp_path)["B01.jpg"] == "fox"


def test_review_page_shows_a_sequence_frames_together_with_their_sequence(
    tmp_path,
    server,
    api_key,
    browser,  # noqa: F811 - the fixture of test_review_browser
):
    from test_review import REVIEW_RULES, Api, free_port, wait_listening
    from test_review_browser import Page

    port = free_port()
    cfg = config(tmp_path, server, "state/journal.db", {"gap": 5}, rules=REVIEW_RULES, settle=0.1)
    doc = yaml.safe_load(cfg.read_text())
    doc["review"] = {"listen": f"127.0.0.1:{port}"}
    cfg.write_text(yaml.safe_dump(doc))
    api, page = Api(port), Page(browser, port)
    with DaemonThread(cfg):
        wait_listening(port)
        # names against their capture order: the page shows them by their place in the sequence
        burst(tmp_path / "inbox", "U", [FOX_UNSURE, DEER_UNSURE, EMPTY_UNSURE], minutes_ago(2), 7, [2, 0, 1])
        wait_for(lambda: api.items()["waiting"] == 3, timeout=30, what="the unsure burst in review")
        items = api.items()["items"]
        assert [i["name"] for i in items] == ["U02.jpg", "U03.jpg", "U01.jpg"]
        assert {i["sequence"]["id"] for i in items} == {items[0]["sequence"]["id"]}
        seq = items[0]["sequence"]
        browser.get(page.base + "/")
        expected = [
            f"{n} \u00b7 sequence {seq['id']}, frame {k} of 3: {seq['class']}"
            for k, n in enumerate(["U02.jpg", "U03.jpg", "U01.jpg"], 1)
        ]
        wait_for(lambda: page.cards() == expected, timeout=10, what=f"cards {expected}, got {page.cards()}")
        # a person's label is one frame's: the others still wait
        status, _ = api.label(items[0]["id"], "deer")
        assert status == 200
        wait_for(lambda: (tmp_path / "sorted" / "deer" / "U02.jpg").exists(), what="the labelled frame sorted")
        assert [i["name"] for i in api.items()["items"]] == ["U03.jpg", "U01.jpg"]
        # or the whole sequence at once: Shift with a class's number on the page (API: /api/sequences/ID/label)
        status, _, body = api.post("/api/sequences/999/label", {"class": "fox"})
        assert status == 404, body
        status, _, body = api.post(f"/api/sequences/{seq['id']}/label", {"class": "wolf"})
        assert status == 400 and b"wolf" in body, body
        wait_for(lambda: page.cards() == expected[1:], timeout=10, what="the labelled frame gone from the page")
        assert items[1]["classes"] == ["deer", "empty", "fox"]
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(browser).key_down(Keys.SHIFT).send_keys("3").key_up(Keys.SHIFT).perform()
        wait_for(lambda: len(files_under(tmp_path / "sorted" / "fox")) == 2, what="both other frames sorted as fox")
        assert sorted(p.name for p in files_under(tmp_path / "sorted" / "fox")) == ["U01.jpg", "U03.jpg"]
        assert api.items()["items"] == []
        wait_for(lambda: page.cards() == [], timeout=10, what="an empty page")


# --- the journal: one closer, schema 3 upgraded --------------------------------------------------


def _waiting_frames(journal: Journal, root: Path, key: str, count: int, first: int = 0) -> list[int]:
    """``count`` frames of ``key`` 2 s apart, classified and waiting, as the pipeline leaves them."""
    ids = []
    for n in range(first, first + count):
        taken = journal.files.take(root / f"{key}-{n}.jpg", 10, n, f"sha{key}{n}", "m/1")
        assert isinstance(taken, int)
        doc = {"predictions": [{"class": "deer", "confidence": 0.5 + n / 100}], "top": "deer", "confidence": 0.5}
        journal.files.classified(taken, doc, f"sha{key}{n}", "m/1", "deer 0.50")
        journal.sequences.arrive(taken, key, 1000.0 + 2 * n, 60.0)
        assert journal.sequences.wait(taken, "deer", 0.5) is None
        ids.append(taken)
    return ids


def _decide(key, members):
    from rfwatch.journal import Decided

    return Decided("deer", 0.9, "max", False, {m.file_id: ("deer", 0.5) for m in members})


def test_each_sequence_is_closed_by_exactly_one_of_several_processes(journal_url, tmp_path):
    import threading

    from rfwatch.journal import Roots

    root = tmp_path / "inbox"
    handles = [Journal.open(journal_url, host=f"host-{n}", roots=Roots({"inbox": root})) for n in range(3)]
    try:
        frames = {f"cam{k}": _waiting_frames(handles[0], root, f"cam{k}", 3) for k in range(8)}
        start = threading.Barrier(len(handles))
        closed: list[list] = [[] for _ in handles]

        def close(n: int) -> None:
            start.wait()
            closed[n] = handles[n].sequences.close_due(_decide, final=True)

        threads = [threading.Thread(target=close, args=(n,)) for n in range(len(handles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        keys = [s.key for c in closed for s in c]
        assert sorted(keys) == sorted(frames), keys  # each key's sequence closed once, by one of them
        of = handles[1].sequences.of_files([i for ids in frames.values() for i in ids])
        for ids in frames.values():
            assert len({of[i].sequence_id for i in ids}) == 1
            assert [of[i].frame for i in ids] == [1, 2, 3] and {of[i].frames for i in ids} == {3}
        states = {str(handles[2].files.get(i).state) for ids in frames.values() for i in ids}
        assert states == {"classified"}  # released: any process carries them on
        assert handles[2].sequences.close_due(_decide, final=True) == []
    finally:
        for j in handles:
            j.close()


def test_a_schema_3_journal_is_upgraded_in_place(journal_url, tmp_path):
    from rfwatch.journal import SCHEMA_VERSION, Roots
    from rfwatch.journal.schema import _FILES_WORKING

    root = tmp_path / "inbox"
    journal = Journal.open(journal_url, roots=Roots({"inbox": root}))
    kept = journal.files.take(root / "old.jpg", 1, 1, "sha-old", "m/1")
    journal.close()
    # back to schema 3 as rfwatch before sequences wrote it
    old = Journal.open(journal_url, roots=Roots({"inbox": root}))

    def downgrade(tx):
        back_to_schema_4(tx, old.dialect)
        tx.run("DROP TABLE seq_frames")
        tx.run("DROP TABLE sequences")
        tx.run("DROP INDEX files_working")
        tx.run(_FILES_WORKING.replace(",'waiting'", ""))
        tx.run("UPDATE meta SET value='3' WHERE key='schema_version'")

    old.db.transact(downgrade)
    old.close()
    journal = Journal.open(journal_url, roots=Roots({"inbox": root}))
    try:
        assert journal.db.scalar("SELECT value FROM meta WHERE key='schema_version'") == str(SCHEMA_VERSION)
        assert journal.files.get(kept).source == root / "old.jpg"
        ids = _waiting_frames(journal, root, "cam", 2)
        # a waiting frame is one rfwatch still owns: no second row may take its path
        assert journal.files.take(root / "cam-0.jpg", 10, 0, "other", "m/1").reason == "being processed"
        assert [s.frames for s in journal.sequences.close_due(_decide, final=True)] == [2]
        assert journal.sequences.of_files(ids)[ids[1]].frame == 2
    finally:
        journal.close()


def test_a_frame_taken_after_its_sequence_closed_joins_it(journal_url, tmp_path):
    from rfwatch.journal import Roots

    root = tmp_path / "inbox"
    journal = Journal.open(journal_url, roots=Roots({"inbox": root}))
    try:
        _waiting_frames(journal, root, "cam", 3)  # captured at 1000, 1002, 1004
        (closed,) = journal.sequences.close_due(_decide, final=True)
        late = journal.files.take(root / "late.jpg", 10, 1, "sha-late", "m/1")
        journal.files.classified(late, {"predictions": []}, "sha-late", "m/1", "(none)")
        journal.sequences.arrive(late, "cam", 1030.0, 60.0)  # within gap of the sequence's last frame
        joined = journal.sequences.wait(late, "fox", 0.4)
        assert joined is not None and joined.id == closed.id and joined.frames == 4
        assert journal.sequences.of_files([late])[late].frame == 4
        later = journal.files.take(root / "later.jpg", 10, 2, "sha-later", "m/1")
        journal.files.classified(later, {"predictions": []}, "sha-later", "m/1", "(none)")
        journal.sequences.arrive(later, "cam", 1100.0, 60.0)  # more than gap after it: a sequence of its own
        assert journal.sequences.wait(later, "fox", 0.4) is None
        assert str(journal.files.get(later).state) == "waiting"
    finally:
        journal.close()


def test_sequence_config_errors_name_the_key(tmp_path):
    from rfwatch.config import ConfigError, config_from_dict
    from rfwatch.host.runtime import load_extensions

    def load(doc):
        return config_from_dict(
            {"roboflow": {"model": "a/1"}, "watch": ["inbox", {"path": "b", "sequence": False}], **doc}, tmp_path
        )

    with pytest.raises(
        ConfigError, match=r"^sequence.key: unknown placeholder \{class\}.*before the file is classified"
    ):
        load_extensions(load({"sequence": {"key": "{class}"}}))
    with pytest.raises(ConfigError, match=r"^sequence.label: expected max, mean or majority, got \"best\""):
        load({"sequence": {"label": "best"}})
    with pytest.raises(ConfigError, match=r"^sequence.gap: expected a positive number of seconds"):
        load({"sequence": {"gap": 0}})
    cfg = load({"sequence": {"gap": 30, "empty": "blank"}})
    assert [(w.sequence.gap, w.sequence.empty) if w.sequence else None for w in cfg.watch] == [(30.0, ("blank",)), None]


def test_journal_copy_keeps_sequences_and_waiting_frames(journal_url, tmp_path):
    from rfwatch.journal import Roots
    from rfwatch.journal.copy import copy_journal

    root = tmp_path / "inbox"
    source = Journal.open(str(tmp_path / "source.db"), roots=Roots({"inbox": root}))
    closed_ids = _waiting_frames(source, root, "cam1", 3)
    source.sequences.close_due(_decide, final=True)
    waiting_ids = _waiting_frames(source, root, "cam2", 2)
    source.close()
    source = Journal.open(str(tmp_path / "source.db"), roots=Roots({"inbox": root}))
    target = Journal.open(journal_url, roots=Roots({"inbox": root}))
    try:
        copy_journal(source, target)
        again = copy_journal(source, target)
        assert again.files == 0 and "sequences" not in again.counts
        of = target.sequences.of_files(closed_ids)
        assert [of[i].frame for i in closed_ids] == [1, 2, 3] and {of[i].label for i in closed_ids} == {"deer"}
        assert target.db.scalar("SELECT COUNT(*) FROM sequences") == 1
        assert {str(target.files.get(i).state) for i in waiting_ids} == {"waiting"}
        (closed,) = target.sequences.close_due(_decide, final=True)  # the waiting frames close in the target
        assert closed.frames == 2 and closed.id != of[closed_ids[0]].sequence_id
    finally:
        source.close()
        target.close()


def test_two_daemons_on_one_journal_close_each_sequence_once(tmp_path, server, journal_url, api_key):
    receiver = Receiver().start()
    try:
        rules = [{"name": "sort", "then": [{"move": "sorted/{class}/{name}"}, {"webhook": receiver.url}]}]
        cfg = config(tmp_path, server, journal_url, {"gap": 3}, rules=rules, settle=0.1, concurrency=2)
        inbox = tmp_path / "inbox"
        with DaemonThread(cfg), DaemonThread(cfg):
            burst(inbox, "A", [FOX_UNSURE, DEER, EMPTY_UNSURE, FOX_UNSURE, DEER_UNSURE], minutes_ago(9), 1)
            burst(inbox, "B", [DEER_UNSURE, FOX, EMPTY_UNSURE], minutes_ago(5), 20)
            wait_for(lambda: len(files_under(tmp_path / "sorted")) == 8, timeout=60, what="both bursts sorted")
            wait_for(lambda: len(receiver.ok()) >= 10, timeout=30, what="8 file events and 2 sequence events")
        assert sorted_classes(tmp_path) == {
            **{f"A0{n}.jpg": "deer" for n in range(1, 6)},
            **{f"B0{n}.jpg": "fox" for n in range(1, 4)},
        }
        events = [json.loads(d.body) for d in receiver.ok()]
        closed = sorted(
            (e["data"]["class"], len(e["data"]["frames"])) for e in events if e["type"] == "sequence.closed"
        )
        assert closed == [("deer", 5), ("fox", 3)]
        assert len(events) == 10 and len({e["id"] for e in events}) == 10
        view = JournalView(cfg)
        assert view._read(lambda j: j.db.scalar("SELECT COUNT(*) FROM sequences")) == 2
    finally:
        receiver.stop()


def test_a_card_dump_exports_one_observation_per_sequence(tmp_path, server, api_key):
    """What the sequences decided reaches the exports: Camtrap DP at event level (one observation per burst,
    valid against the shipped profile), and the sequence of each file in the CSV."""
    import csv

    from rfwatch.exports.profile import check_package

    inbox = tmp_path / "inbox"
    export = {
        "empty": ["empty"],
        "taxa": {"deer": "Capreolus capreolus", "fox": "Vulpes vulpes"},
        "project": {"title": "Edge", "samplingDesign": "targeted", "captureMethod": ["activityDetection"]},
        "contributors": [{"title": "Ana Example", "role": "principalInvestigator"}],
        "deployments": {"CAM01": {"latitude": 50.5, "longitude": 4.25}},
    }
    cfg = config(tmp_path, server, "state/journal.db", {"key": "{parent}", "gap": 60, "label": "max"}, export=export)
    burst(inbox / "CAM01", "A", [FOX_UNSURE, DEER, EMPTY_UNSURE], minutes_ago(12), 0)
    burst(inbox / "CAM01", "B", [FOX, DEER_UNSURE, FOX_UNSURE], minutes_ago(6), 100)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    result = run_cli("export", "-c", str(cfg), "--format", "csv", str(tmp_path / "files.csv"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "files.csv", newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    by_burst = {p: {r["sequence"] for n, r in rows.items() if n.startswith(p)} for p in "AB"}
    assert all(len(ids) == 1 and "" not in ids for ids in by_burst.values()), by_burst
    assert by_burst["A"] != by_burst["B"]
    result = run_cli("export", "-c", str(cfg), "--format", "camtrap-dp", str(tmp_path / "package"))
    assert result.returncode == 0, result.stderr
    package = json.loads((tmp_path / "package" / "datapackage.json").read_text())
    assert package["project"]["observationLevel"] == ["event"]
    with open(tmp_path / "package" / "observations.csv", newline="") as f:
        observations = list(csv.DictReader(f))
    assert sorted(o["scientificName"] for o in observations) == ["Capreolus capreolus", "Vulpes vulpes"]
    assert all(o["mediaID"] == "" and o["eventID"] for o in observations)
    assert check_package(tmp_path / "package" / "datapackage.json") == []

"""The review page's JSON API for many files: cursor pages, filters and sorts, bulk labels, and decisions taken back.

The page's browser side is in test_review_browser.py; single labels, rejects, uploads and the page's protections
in test_review.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonThread, JournalView, files_under, run_cli, unique_jpeg, wait_for
from test_review import (
    UNSURE,
    UPLOAD,
    Api,
    _annotates,
    free_port,
    gray_jpeg,
    review_config,
    wait_listening,
    write_one_by_one,
)

from rfwatch.config import load_config
from rfwatch.review.server import ReviewServer

COLORS = ("red", "green", "blue")


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


def scores(n: int) -> dict[str, float]:
    """Unsure scores whose top class and confidence vary with ``n``: top n%3, at 0.40 + (n % 20) / 100."""
    top = COLORS[n % 3]
    high = round(0.40 + (n % 20) / 100, 2)
    rest = [c for c in COLORS if c != top]
    return {top: high, rest[0]: round((1 - high) * 0.6, 4), rest[1]: round((1 - high) * 0.4, 4)}


def prediction_doc(n: int, path: Path) -> dict[str, Any]:
    s = sorted(scores(n).items(), key=lambda kv: -kv[1])
    return {
        "predictions": [{"class": c, "confidence": v} for c, v in s],
        "top": s[0][0],
        "confidence": s[0][1],
        "image": {"width": 48, "height": 32},
        "image_path": str(path),
        "time": 0.01,
    }


def make_waiting(base: Path, config: Path, count: int, folders: tuple[str, ...] = ("cam1", "cam2")) -> list[int]:
    """``count`` files waiting for review, journaled as a daemon leaves them (found, classified, waiting), in the
    order of their numbers: one transaction, quicker than classifying each through the stand-in. File ``n`` is
    ``inbox/<folders[n % len]>/w<n>.jpg`` and has :func:`scores` (n)."""
    from rfwatch.journal import open_journal

    journal = open_journal(load_config(config), kind="test")
    now = time.time()
    rows = []
    for n in range(count):
        path = base / "inbox" / folders[n % len(folders)] / f"w{n:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = unique_jpeg((128, 128, 128), 10_000 + n)
        path.write_bytes(data)
        st = path.stat()
        root, rel = journal.files._loc(path)
        doc = json.dumps(prediction_doc(n, path))
        found = now - count + n  # found in this order, a second apart
        sha = hashlib.sha256(data).hexdigest()
        rows.append((root, rel, root, rel, st.st_size, st.st_mtime_ns, sha, "colors/1", "review", doc, found, found))

    def insert(tx: Any) -> list[int]:
        return [
            int(
                tx.scalar(
                    "INSERT INTO files (root, source, path_root, path, size, mtime_ns, sha256, model, state,"
                    " prediction, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                    row,
                )
            )
            for row in rows
        ]

    try:
        return journal.db.transact(insert)
    finally:
        journal.close()


@pytest.fixture
def page(tmp_path, server, journal_url):
    """A review page (ReviewServer, as `rfwatch review` serves it) over a journal with nothing waiting yet, on
    each backend (SQLite, PostgreSQL)."""
    port = free_port()
    cfg = review_config(tmp_path, server, port, state=journal_url)

    def classes_of(model: str) -> tuple[str, ...] | None:
        return {"colors/1": COLORS, "pets/2": ("cat", "dog")}.get(model)

    return cfg, Api(port), ReviewServer(load_config(cfg), classes_of)


def all_pages(api: Api, query: str, between=None) -> tuple[list[int], list[dict[str, Any]]]:
    """Every item id over the pages of ``query``, and each page's document; ``between(n)`` runs after page n."""
    ids: list[int] = []
    docs: list[dict[str, Any]] = []
    cursor = None
    while True:
        status, _, body = api.get(f"/api/items?{query}" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        doc = json.loads(body)
        docs.append(doc)
        ids += [i["id"] for i in doc["items"]]
        cursor = doc["next"]
        if between is not None:
            between(len(docs))
        if cursor is None:
            return ids, docs


def test_cursor_pages_stay_stable_while_items_are_decided_and_filters_sort_and_count(tmp_path, page):
    cfg, api, server_ = page
    ids = make_waiting(tmp_path, cfg, 40)
    with server_:
        # Oldest first, in pages of 7, each saying the total; the last page says there is no next one.
        got, docs = all_pages(api, "limit=7")
        assert got == ids
        assert [len(d["items"]) for d in docs] == [7, 7, 7, 7, 7, 5]
        assert {d["total"] for d in docs} == {40} and {d["waiting"] for d in docs} == {40}

        # Decided meanwhile (on another page): after page 1, one item on page 1 (seen already) and two on pages
        # not yet seen. Nothing seen is shown again, nothing not yet seen is skipped; the two decided never come.
        decided_later = [ids[10], ids[30]]

        def decide(n: int) -> None:
            if n == 1:
                for file_id in (ids[3], *decided_later):
                    assert api.label(file_id, "red")[0] == 200

        got, docs = all_pages(api, "limit=7", decide)
        assert got == [i for i in ids if i not in decided_later]
        assert len(got) == len(set(got))
        assert docs[0]["total"] == 40 and docs[1]["total"] == 37  # the total as it is when each page is asked for
        left = [i for i in ids if i not in (ids[3], *decided_later)]

        # Newest first.
        assert all_pages(api, "limit=9&sort=-time")[0] == left[::-1]

        # Filter by the model's class: only its guesses, every page, and the total of those.
        greens = [i for n, i in enumerate(ids) if i in left and COLORS[n % 3] == "green"]
        got, docs = all_pages(api, "class=green&limit=4")
        assert got == greens and docs[0]["total"] == len(greens)
        assert all(item["guess"] == ["green"] and item["class"] == "green" for d in docs for item in d["items"])

        # A confidence range (the model's highest score), least sure first; with a folder.
        def score(n: int) -> float:
            return max(scores(n).values())

        in_range = [(score(n), i) for n, i in enumerate(ids) if i in left and 0.45 <= score(n) <= 0.5]
        got, docs = all_pages(api, "min=0.45&max=0.5&sort=confidence&limit=5")
        assert got == [i for _, i in sorted(in_range)]
        assert [item["score"] for d in docs for item in d["items"]] == sorted(s for s, _ in in_range)
        got, _ = all_pages(api, "min=0.45&max=0.5&sort=-confidence&limit=5")
        assert got == [i for _, i in sorted(in_range, reverse=True)]
        cam2 = [i for n, i in enumerate(ids) if i in left and n % 2 == 1]
        got, docs = all_pages(api, "folder=inbox/cam2&limit=50")
        assert got == cam2 and docs[0]["folders"] == ["inbox/cam1", "inbox/cam2"]
        assert {item["folder"] for d in docs for item in d["items"]} == {"inbox/cam2"}

        # What the page cannot take is refused with the parameter named.
        for query, named in [
            ("min=high", "min"),
            ("max=1.5", "max"),
            ("sort=name", "sort"),
            ("limit=0", "limit"),
            ("limit=5000", "limit"),
            ("cursor=%25%25", "cursor"),
        ]:
            status, _, body = api.get(f"/api/items?{query}")
            assert status == 400 and json.loads(body)["error"].startswith(named), (query, body)


def test_a_bulk_label_with_one_unknown_class_changes_nothing_and_accept_takes_the_models_guesses(tmp_path, page):
    cfg, api, server_ = page
    ids = make_waiting(tmp_path, cfg, 12)
    journal = JournalView(cfg)
    # One more, of another model (pets/2: cat, dog), made as the others are.
    from rfwatch.journal import open_journal

    j = open_journal(load_config(cfg), kind="test")
    pet = tmp_path / "inbox" / "cam1" / "pet.jpg"
    pet.write_bytes(unique_jpeg((200, 150, 100), 7))
    st = pet.stat()
    pet_id = j.files.take(pet, st.st_size, st.st_mtime_ns, "f" * 64, "pets/2")
    doc = {"predictions": [{"class": "dog", "confidence": 0.55}, {"class": "cat", "confidence": 0.45}]}
    j.files.classified(pet_id, dict(doc, top="dog", confidence=0.55), "f" * 64, "pets/2", "dog 0.55", {})
    j.files.wait_for_review(pet_id, "waiting")
    j.close()
    with server_:
        before = api.items()["waiting"]
        assert before == 13
        # "red" is a class of colors/1, not of pets/2: nothing is labelled, the item named.
        status, _, body = api.post("/api/decide", {"items": [*ids[:5], pet_id], "class": "red"})
        assert status == 400, body
        error = json.loads(body)["error"]
        assert f"item {pet_id}: 'red' is not a class of pets/2" in error and "nothing was labelled" in error
        assert api.items()["waiting"] == 13
        assert all(journal.decisions(i) == [] for i in [*ids[:5], pet_id])
        for bad in ({"items": []}, {"items": ids[:2]}, {"items": ["1"], "class": "red"}, [1, 2]):
            assert api.post("/api/decide", bad)[0] == 400, bad

        # One class for many: each a decision of its own, journaled as a single label is.
        status, _, body = api.post("/api/decide", {"items": ids[:2], "class": "blue"})
        assert status == 200, body
        assert [d["id"] for d in json.loads(body)["decided"]] == ids[:2]
        # The model's guess for ten (one of them decided meanwhile elsewhere: skipped, the others stand).
        assert api.label(ids[5], "green")[0] == 200
        ten = ids[2:12]
        status, _, body = api.post("/api/decide", {"items": ten, "accept": True})
        assert status == 200, body
        doc = json.loads(body)
        assert [s["id"] for s in doc["skipped"]] == [ids[5]] and doc["skipped"][0]["status"] == 409
        assert {d["id"]: d["classes"] for d in doc["decided"]} == {
            i: [COLORS[n % 3]] for n, i in enumerate(ids) if i in ten and i != ids[5]
        }
        assert api.names() == ["pet.jpg"]
    for n, file_id in enumerate(ids):
        (decision,) = journal.decisions(file_id)
        expected = "blue" if n < 2 else "green" if n == 5 else COLORS[n % 3]
        assert decision.kind == "label" and decision.classes == (expected,) and decision.by == "review page"
        assert journal.file(f"w{n:04d}.jpg").state == "decided"


def test_taking_back_a_sorted_file_puts_it_back_in_review_and_the_next_label_replaces_the_uploaded_one(
    tmp_path, server, platform
):
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD)
    api, journal = Api(port), JournalView(tmp_path)
    files = {"a.jpg": gray_jpeg(70), "b.jpg": gray_jpeg(71)}
    with DaemonThread(cfg):
        wait_listening(port)
        write_one_by_one(tmp_path, files)
        wait_for(lambda: api.items()["classes"], what="the model's classes")
        a, b = api.id_of("a.jpg"), api.id_of("b.jpg")
        assert api.post(f"/api/items/{a}/take-back")[0] == 409  # nothing decided yet
        assert api.label(a, "green")[0] == 200
        assert api.reject(b)[0] == 200
        wait_for(lambda: [u["state"] for u in journal.uploads()] == ["delivered"], what="the first label uploaded")
        wait_for(lambda: journal.state("b.jpg") == "failed", what="b.jpg rejected")
        assert (tmp_path / "sorted" / "green" / "a.jpg").exists() and (tmp_path / "failed" / "b.jpg").exists()

        for file_id, name in ((a, "a.jpg"), (b, "b.jpg")):
            status, _, body = api.post(f"/api/items/{file_id}/take-back")
            assert status == 200, body
            assert journal.state(name) == "review"
        assert sorted(api.names()) == ["a.jpg", "b.jpg"]
        assert files_under(tmp_path / "review") == [tmp_path / "review" / n for n in ("a.jpg", "b.jpg")]
        assert files_under(tmp_path / "sorted") == [] and files_under(tmp_path / "failed") == []
        assert api.post(f"/api/items/{a}/take-back")[0] == 409  # taken back already: it waits
        assert [d.taken_back is not None for d in journal.decisions(a)] == [True]

        assert api.label(a, "blue")[0] == 200
        wait_for(lambda: (tmp_path / "sorted" / "blue" / "a.jpg").exists(), what="a.jpg labelled again")
        wait_for(lambda: [u["state"] for u in journal.uploads()] == ["delivered"] * 2, what="the second label")
        assert api.names() == ["b.jpg"]
    (up,) = platform.uploads["colors"]  # one image, carrying the last label
    assert platform.annotations["colors"] == {up["id"]: "blue"}
    assert _annotates(platform)[-1] == (200, "true")
    assert [(d.classes, d.taken_back is not None) for d in journal.decisions(a)] == [
        (("green",), True),
        (("blue",), False),
    ]
    assert files_under(tmp_path / "sorted") == [tmp_path / "sorted" / "blue" / "a.jpg"]
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a.jpg")).stdout
    assert "decision taken back in review by review page" in history, history
    # The person's last label, the model's guess beside it: in history and in status (text and JSON).
    assert "labelled blue in review (model's guess: red 0.40)" in history, history
    status = run_cli("status", "-c", str(cfg))
    assert "labelled blue in review (model's guess: red 0.40) (sorted)" in status.stdout, status.stdout
    report = json.loads(run_cli("status", "-c", str(cfg), "--json").stdout)
    (a_brief,) = [r for r in report["last_done"] if r["source"].endswith("a.jpg")]
    assert (a_brief["class"], a_brief["confidence"], a_brief["model"]["class"]) == ("blue", 1.0, "red")
    # A later `rfwatch undo` reverses the last round and the review step, never the round taken back again.
    undone = run_cli("undo", "-c", str(cfg), str(tmp_path / "sorted" / "blue" / "a.jpg"))
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert (tmp_path / "inbox" / "a.jpg").read_bytes() == files["a.jpg"]
    assert files_under(tmp_path / "sorted") == [] and not (tmp_path / "review" / "a.jpg").exists()


def test_a_decision_not_yet_applied_is_taken_back_at_once(tmp_path, server):
    """`rfwatch review` alone, no daemon: the label waits to be applied, and taking it back leaves nothing to apply."""
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port)
    (tmp_path / "inbox" / "a.jpg").write_bytes(gray_jpeg(72))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    api, journal = Api(port), JournalView(tmp_path)
    from test_review import ReviewProcess

    with ReviewProcess(cfg, port, tmp_path / "review.log"):
        a = api.id_of("a.jpg")
        for cls in ("green", "red"):  # taken back twice over: each decision a row of its own
            assert api.label(a, cls)[0] == 200 and journal.state("a.jpg") == "decided"
            status, _, body = api.post(f"/api/items/{a}/take-back")
            assert status == 200, body
            assert journal.state("a.jpg") == "review" and api.names() == ["a.jpg"]
        assert api.label(a, "blue")[0] == 200
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert files_under(tmp_path / "sorted") == [tmp_path / "sorted" / "blue" / "a.jpg"]
    assert [(d.classes, d.taken_back is not None) for d in journal.decisions(journal.file("a.jpg").id)] == [
        (("green",), True),
        (("red",), True),
        (("blue",), False),
    ]
    log = (tmp_path / "review.log").read_text()
    assert f"review page at http://127.0.0.1:{port}/ (loopback only" in log


def test_an_upload_not_yet_through_is_cancelled_by_the_take_back_and_only_the_last_label_arrives(
    tmp_path, server, platform, caplog
):
    """The platform does not let the first label through yet (annotate answers 404, oak-examples#287): taken back
    meanwhile, that label must never arrive after the next one. Its delivery is cancelled with the take-back."""
    server.classifier = lambda image: dict(UNSURE)
    port = free_port()
    cfg = review_config(tmp_path, server, port, upload=UPLOAD)
    api, journal = Api(port), JournalView(tmp_path)
    with DaemonThread(cfg):
        wait_listening(port)
        write_one_by_one(tmp_path, {"a.jpg": gray_jpeg(73)})
        wait_for(lambda: api.items()["classes"], what="the model's classes")
        a = api.id_of("a.jpg")
        platform.annotate_lag = float("inf")
        assert api.label(a, "green")[0] == 200
        wait_for(lambda: "will retry" in caplog.text, what="the first label refused for now")
        assert journal.uploads()[0]["state"] == "pending" and _annotates(platform)[0][0] == 404
        # Taken back while an attempt is on its way (the platform answers slowly): that attempt's answer, when it
        # comes, must not put the delivery back in the queue.
        platform.delay = 1.5
        wait_for(lambda: journal.uploads()[0]["lease"], timeout=10, what="the next attempt under way")
        tried = caplog.text.count("will retry")
        status, _, body = api.post(f"/api/items/{a}/take-back")
        assert status == 200, body
        wait_for(lambda: caplog.text.count("will retry") > tried, timeout=10, what="the slow attempt answered")
        platform.delay = 0.0
        (first,) = journal.uploads()
        assert first["state"] == "cancelled" and "taken back" in first["last_error"]
        platform.annotate_lag = 0.0
        assert api.label(a, "blue")[0] == 200
        wait_for(
            lambda: sorted(u["state"] for u in journal.uploads()) == ["cancelled", "delivered"],
            what="the second label delivered",
        )
    (up,) = platform.uploads["colors"]
    assert platform.annotations["colors"] == {up["id"]: "blue"}
    assert [u["state"] for u in journal.uploads() if u["id"] == first["id"]] == ["cancelled"]
    history = run_cli("history", "-c", str(cfg), str(tmp_path / "inbox" / "a.jpg")).stdout
    assert "cancelled: its review decision was taken back" in history, history


def test_the_models_classes_show_once_the_platform_has_said_them(tmp_path, server):
    """Until the platform has said a model's classes, the page offers those its answers show (in name order); once
    it has, the model's own list in its order, for files listed before as well."""
    port = free_port()
    cfg = review_config(tmp_path, server, port)
    known: dict[str, tuple[str, ...]] = {}
    make_waiting(tmp_path, cfg, 3)
    api = Api(port)
    with ReviewServer(load_config(cfg), known.get):
        doc = api.items()
        assert doc["classes"] == ["blue", "green", "red"] and doc["items"][0]["classes"] == ["blue", "green", "red"]
        known["colors/1"] = ("red", "green", "blue", "violet")
        doc = api.items()
        assert doc["classes"] == ["red", "green", "blue", "violet"]
        assert {tuple(i["classes"]) for i in doc["items"]} == {("red", "green", "blue", "violet")}
        assert api.label(doc["items"][0]["id"], "violet")[0] == 200

"""Undo leaves no trace (issue 20, item 7): a tagged file nobody touched since comes back byte for byte, empty
folders rfwatch made go, and `file.undone` says where the file was and where it is now."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import needs_exiftool, run_cli, unique_jpeg, write_config
from metadata_reader import read_xmp

SAMPLES = Path(__file__).parent / "data" / "exif-samples"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _samples() -> list[Path]:
    """Every JPEG and TIFF sample: camera JPEGs (EXIF, maker notes), ones with XMP or IPTC already, TIFFs."""
    jpgs = [p for p in (SAMPLES / "jpg").rglob("*.jpg") if "invalid" not in p.parts and "orientation" not in p.parts]
    return sorted(jpgs) + sorted((SAMPLES / "tiff").glob("*.tiff"))


def _exiftool(*args: str) -> str:
    return subprocess.run(["exiftool", *args], capture_output=True, text=True, check=True).stdout


@needs_exiftool
def test_tagged_jpegs_and_tiffs_come_back_byte_identical(tmp_path, server, api_key):
    """The issue saw 7 of 20 files that had XMP or IPTC come back with XMPToolkit rewritten and blocks reordered."""
    rules = [{"name": "t", "then": [{"tag": {"mode": "embed"}}, {"move": "sorted/{class}/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    originals: dict[str, tuple[str, int]] = {}
    for sample in _samples():
        shutil.copy2(sample, inbox / sample.name)
        originals[sample.name] = (_digest(sample), (inbox / sample.name).stat().st_mtime_ns)
    # Some hold XMP or IPTC already: the case that went wrong.
    had = _exiftool("-if", "$XMP:all or $IPTC:all", "-p", "$FileName", *map(str, _samples()))
    assert len(had.split()) >= 5, had
    ran = run_cli("run", "-c", str(cfg), "--once")
    assert ran.returncode == 0, ran.stderr
    tagged = {p.name: p for p in (tmp_path / "sorted").rglob("*") if p.is_file()}
    assert set(tagged) == set(originals) and all(read_xmp(p)["subject"] for p in tagged.values())
    undone = run_cli("undo", "-c", str(cfg))
    assert undone.returncode == 0, undone.stdout + undone.stderr
    for name, (sha, mtime_ns) in originals.items():
        back = inbox / name
        assert _digest(back) == sha, f"{name} is not byte-identical after undo"
        assert back.stat().st_mtime_ns == mtime_ns, f"{name}: its modification time did not come back"
    assert undone.stdout.count("restored byte for byte") == len(originals), undone.stdout
    # The whole copies kept for TIFFs are gone with the undo that used them.
    kept = tmp_path / "state" / "plugins" / "tag" / "originals"
    assert not kept.exists() or not any(kept.iterdir())


@needs_exiftool
def test_a_file_changed_since_tagging_keeps_the_change_and_the_undo_line_says_it_is_not_the_original(
    tmp_path, server, api_key
):
    cfg = write_config(tmp_path, server, rules=[{"then": [{"tag": {"mode": "embed"}}]}])
    photo = tmp_path / "inbox" / "p.jpg"
    shutil.copy(SAMPLES / "jpg" / "Canon_40D.jpg", photo)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    _exiftool("-overwrite_original", "-XMP-dc:Subject+=holiday", str(photo))  # a person's keyword, after rfwatch
    undone = run_cli("undo", "-c", str(cfg))
    assert undone.returncode == 0, undone.stderr
    assert "not byte-identical: changed since rfwatch tagged it" in undone.stdout, undone.stdout
    assert read_xmp(photo)["subject"] == ["holiday"]  # rfwatch's keyword out, theirs kept


def test_undo_removes_the_empty_folders_rfwatch_made_and_only_those(tmp_path, server, api_key):
    rules = [{"then": [{"move": "sorted/{class}/{name}"}, {"copy": "copies/{class}/{name}"}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "copies").mkdir()
    (tmp_path / "copies" / "blue").mkdir()  # a person's folder, there before rfwatch
    inbox = tmp_path / "inbox"
    (inbox / "r.jpg").write_bytes(unique_jpeg((230, 10, 10), 1))
    (inbox / "b.jpg").write_bytes(unique_jpeg((10, 10, 230), 2))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    (tmp_path / "sorted" / "blue" / "notes.txt").write_text("a person's file, put there since")
    undone = run_cli("undo", "-c", str(cfg))
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert sorted(p.name for p in inbox.iterdir()) == ["b.jpg", "r.jpg"]
    assert not (tmp_path / "sorted" / "red").exists() and not (tmp_path / "copies" / "red").exists()
    assert (tmp_path / "sorted" / "blue" / "notes.txt").exists()  # not empty: stays, and sorted/ with it
    assert (tmp_path / "copies" / "blue").is_dir() and (tmp_path / "copies").is_dir()  # not rfwatch's
    assert f"removed the empty folder(s) rfwatch made: {tmp_path / 'sorted' / 'red'}" in undone.stdout


def test_file_undone_says_where_the_file_was_and_where_it_is_now(tmp_path, server, api_key, receiver):
    rules = [{"then": [{"move": "sorted/{class}/{name}"}, {"webhook": receiver.url}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((230, 10, 10), 3))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert run_cli("undo", "-c", str(cfg)).returncode == 0
    (event,) = [json.loads(d.body) for d in receiver.ok() if json.loads(d.body)["type"] == "file.undone"]
    assert event["data"]["path"] == str(tmp_path / "inbox" / "a.jpg")  # where it is now
    assert event["data"]["undone_from"] == str(tmp_path / "sorted" / "red" / "a.jpg")  # where it was
    assert (tmp_path / "inbox" / "a.jpg").exists()


@pytest.mark.parametrize("crash", [False, True])
def test_file_undone_after_an_interrupted_undo_still_names_where_it_was(tmp_path, server, api_key, receiver, crash):
    """An undo killed after the move back: the next one's event still says where the file had been sorted."""
    rules = [{"then": [{"move": "sorted/{class}/{name}"}, {"webhook": receiver.url}]}]
    cfg = write_config(tmp_path, server, rules=rules)
    (tmp_path / "inbox" / "a.jpg").write_bytes(unique_jpeg((230, 10, 10), 4))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    if crash:
        killed = run_cli("undo", "-c", str(cfg), env={"RFWATCH_CRASH_AT": "undo.step_finished:1"})
        assert "crash point undo.step_finished reached" in killed.stderr
    assert run_cli("undo", "-c", str(cfg)).returncode == 0
    (event,) = [json.loads(d.body) for d in receiver.ok() if json.loads(d.body)["type"] == "file.undone"]
    assert event["data"]["undone_from"] == str(tmp_path / "sorted" / "red" / "a.jpg")
    assert event["data"]["path"] == str(tmp_path / "inbox" / "a.jpg")


EMPTY_PACKET = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/>'
    "</x:xmpmeta>\n"
)


@needs_exiftool
@pytest.mark.parametrize("crash", [False, True])
def test_a_sidecar_of_the_users_that_held_nothing_holds_nothing_again_after_undo(tmp_path, server, api_key, crash):
    """A photographer's own sidecar with no metadata in it: tagged, then undone, it is an empty packet again (never
    truncated in place: killed while it is put back, the undo run again finishes it and leaves no temporary file)."""
    from rfwatch.crashpoints import CRASH_EXIT

    cfg = write_config(tmp_path, server, rules=[{"name": "t", "then": [{"tag": {"mode": "sidecar"}}]}])
    inbox = tmp_path / "inbox"
    (inbox / "a.jpg").write_bytes(unique_jpeg((230, 10, 10), 1))
    (inbox / "a.jpg.xmp").write_text(EMPTY_PACKET)
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert read_xmp(inbox / "a.jpg.xmp")["subject"] == ["red"]
    if crash:
        killed = run_cli("undo", "-c", str(cfg), env={"RFWATCH_CRASH_AT": "tag.before_restore"})
        assert killed.returncode == CRASH_EXIT, killed.stderr
    undone = run_cli("undo", "-c", str(cfg))
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert read_xmp(inbox / "a.jpg.xmp")["subject"] == []
    assert "rfwatch" not in _exiftool("-XMP:all", str(inbox / "a.jpg.xmp")).lower()
    assert sorted(p.name for p in inbox.iterdir()) == ["a.jpg", "a.jpg.xmp"]  # no temporary file left

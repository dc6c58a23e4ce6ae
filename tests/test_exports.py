"""`rfwatch export`: Camtrap DP 1.0 (validated by frictionless, offline, against rfwatch's shipped schemas and, where
this machine has them, the official 1.0 files, with which the shipped schemas are compared), MegaDetector batch
output (read back by a reader written from the format's documentation), and CSV."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from camtrap_dp_compare import differences
from helpers import run_cli, unique_jpeg, write_config
from megadetector_reader import read_batch_output
from PIL import Image

from rfwatch.config import ConfigError, load_config
from rfwatch.exports.camtrap_dp import write_camtrap_dp
from rfwatch.exports.events import group_events
from rfwatch.exports.profile import (
    ProfileMissing,
    check_official,
    check_package,
    official_dir,
    rfwatch_schemas,
    validate_package,
)
from rfwatch.exports.records import FileRecord, SequenceInfo
from rfwatch.exports.settings import ExportSettings, Taxon
from rfwatch.journal import DecisionKind, Journal, open_journal
from rfwatch.states import FileState

RED, GREEN, BLUE = (230, 10, 10), (10, 230, 10), (10, 10, 230)
CET = dt.timezone(dt.timedelta(hours=1))

EXPORT = {
    "empty": ["blue"],
    "taxa": {"red": "Vulpes vulpes", "green": {"scientificName": "Capreolus capreolus", "taxonRank": "species"}},
    "project": {"title": "Forest edge", "samplingDesign": "targeted", "captureMethod": ["activityDetection"]},
    "contributors": [{"title": "Ana Example", "role": "principalInvestigator"}],
    "deployments": {"CAM02": {"latitude": 50.5, "longitude": 4.25, "cameraModel": "TrailCam X"}},
}


@pytest.fixture(autouse=True)
def _key(api_key):
    return api_key


@pytest.fixture
def official() -> Path:
    """The official Camtrap DP 1.0 files (tdwg/camtrap-dp at tag 1.0), which rfwatch does not ship: where
    ``$RFWATCH_CAMTRAP_DP_SCHEMAS`` or ``shared/camtrap-dp/1.0`` beside the repository holds them."""
    folder = official_dir()
    if folder is None:
        pytest.skip(
            "the official Camtrap DP 1.0 profile files are not on this machine ($RFWATCH_CAMTRAP_DP_SCHEMAS unset, "
            "no shared/camtrap-dp/1.0 beside the repository): rfwatch's own schemas were used alone"
        )
    return folder


def _dms(value: float) -> tuple[float, float, float]:
    d = int(value)
    m = int((value - d) * 60)
    return (float(d), float(m), round((value - d - m / 60) * 3600, 4))


def camera_jpeg(color, seed: int, when: str | None = None, offset: str | None = None, gps=None) -> bytes:
    """A small JPEG as a camera trap writes it: DateTimeOriginal, OffsetTimeOriginal, GPS (each optional)."""
    img = Image.open(io.BytesIO(unique_jpeg(color, seed)))
    exif = Image.Exif()
    exif[0x0110] = "TrailCam X"
    sub = exif.get_ifd(0x8769)
    if when:
        sub[0x9003] = when
    if offset:
        sub[0x9011] = offset
    if gps:
        g = exif.get_ifd(0x8825)
        lat, lon = gps
        g[1], g[2] = ("N" if lat >= 0 else "S"), _dms(abs(lat))
        g[3], g[4] = ("E" if lon >= 0 else "W"), _dms(abs(lon))
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    return buf.getvalue()


def export(cfg: Path, fmt: str, out: Path, *args: str, code: int = 0, env=None):
    result = run_cli("export", "-c", str(cfg), "--format", fmt, *args, str(out), env=env)
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def card(tmp_path, server):
    """Two cameras' files, classified and sorted by `run --once`; one file then labelled by a person in review.

    CAM01 (EXIF GPS, capture times with offset): red-1 red-2 (a fox), blue-3 (empty), gray-4 (unsure: review,
    labelled green by a person). CAM02 (no GPS: the config gives its coordinates; no EXIF time: mtime): green-5.
    """
    rules = [
        {"name": "unsure", "when": {"max_confidence": 0.6}, "then": [{"review": "review/{name}"}]},
        {"name": "sort", "then": [{"move": "sorted/{class}/{name}"}]},
    ]
    cfg = write_config(tmp_path, server, rules=rules, export=EXPORT, roots={"archive": "sorted"})
    server.classifier = lambda image: (
        {"red": 0.4, "green": 0.35, "blue": 0.25} if max(_color(image).values()) < 0.6 else _color(image)
    )
    cam1, cam2 = tmp_path / "inbox" / "CAM01", tmp_path / "inbox" / "CAM02"
    cam1.mkdir(parents=True)
    cam2.mkdir(parents=True)
    gps = (50.8503, 4.3517)
    (cam1 / "red-1.jpg").write_bytes(camera_jpeg(RED, 1, "2026:11:27 06:10:00", "+01:00", gps))
    (cam1 / "red-2.jpg").write_bytes(camera_jpeg(RED, 2, "2026:11:27 06:10:02", "+01:00", gps))
    (cam1 / "blue-3.jpg").write_bytes(camera_jpeg(BLUE, 3, "2026:11:27 07:00:00", "+01:00", gps))
    (cam1 / "gray-4.jpg").write_bytes(camera_jpeg((128, 128, 128), 4, "2026:11:27 08:00:00", "+01:00", gps))
    (cam2 / "green-5.jpg").write_bytes(camera_jpeg(GREEN, 5))
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    journal = open_journal(load_config(cfg))
    try:
        waiting = journal.decisions.waiting()
        assert [w.source.name for w in waiting] == ["gray-4.jpg"]
        journal.decisions.decide(waiting[0].id, DecisionKind.LABEL, ("green",), by="ana")
    finally:
        journal.close()
    assert run_cli("run", "-c", str(cfg), "--once").returncode == 0
    assert (tmp_path / "sorted" / "green" / "gray-4.jpg").exists()
    return cfg


def _color(image) -> dict[str, float]:
    from roboflow_server import color_scores

    return color_scores(image)


# --- Camtrap DP -------------------------------------------------------------------------------------


def test_camtrap_dp_export_validates_against_the_profile_and_says_who_decided(tmp_path, card):
    out = tmp_path / "package"
    result = export(card, "camtrap-dp", out)
    assert "2 deployments, 5 media, 5 observations" in result.stdout
    # rfwatch's shipped schemas always; the official profile too where this machine has it
    assert validate_package(out / "datapackage.json") == []

    package = json.loads((out / "datapackage.json").read_text())
    assert package["profile"] == "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json"
    assert package["project"]["observationLevel"] == ["media"]  # no sequences: one observation per file
    assert [t["scientificName"] for t in package["taxonomic"]] == ["Capreolus capreolus", "Vulpes vulpes"]
    assert package["temporal"]["start"] <= "2026-11-27" <= package["temporal"]["end"]

    deployments = {d["deploymentID"]: d for d in read_rows(out / "deployments.csv")}
    # CAM01: coordinates from the files' EXIF GPS, start and end from the first and last capture
    assert (float(deployments["CAM01"]["latitude"]), float(deployments["CAM01"]["longitude"])) == pytest.approx(
        (50.8503, 4.3517), abs=1e-4
    )
    assert deployments["CAM01"]["deploymentStart"] == "2026-11-27T06:10:00+01:00"
    assert deployments["CAM01"]["deploymentEnd"] == "2026-11-27T08:00:00+01:00"
    # CAM02: the config's coordinates and camera
    assert (deployments["CAM02"]["latitude"], deployments["CAM02"]["cameraModel"]) == ("50.5", "TrailCam X")

    media = {m["fileName"]: m for m in read_rows(out / "media.csv")}
    assert media["red-1.jpg"]["timestamp"] == "2026-11-27T06:10:00+01:00"
    assert media["red-1.jpg"]["filePath"] == "archive/red/red-1.jpg"  # where it is now, below its named root
    assert media["green-5.jpg"]["timestamp"] == dt.datetime.fromtimestamp(
        (tmp_path / "sorted" / "green" / "green-5.jpg").stat().st_mtime
    ).astimezone().isoformat(timespec="seconds")  # no EXIF time: the file's mtime
    observations = {o["mediaID"]: o for o in read_rows(out / "observations.csv")}
    by_name = {name: observations[m["mediaID"]] for name, m in media.items()}
    fox = by_name["red-1.jpg"]
    assert (fox["observationType"], fox["scientificName"], fox["classificationMethod"]) == (
        "animal",
        "Vulpes vulpes",
        "machine",
    )
    assert 0.6 < float(fox["classificationProbability"]) <= 1
    assert by_name["blue-3.jpg"]["observationType"] == "blank"
    assert by_name["blue-3.jpg"]["scientificName"] == ""
    person = by_name["gray-4.jpg"]
    assert (person["classificationMethod"], person["classifiedBy"], person["scientificName"]) == (
        "human",
        "ana",
        "Capreolus capreolus",
    )
    assert person["classificationProbability"] == ""
    assert all(o["observationLevel"] == "media" for o in observations.values())


def _edit_table(out: Path, table: str, row: int, **cells: str) -> None:
    rows = read_rows(out / f"{table}.csv")
    rows[row].update(cells)
    with open(out / f"{table}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(params=["rfwatch's schemas", "official profile"])
def check(request):
    """Each validation on its own: rfwatch's shipped schemas (everywhere), the official files (where present)."""
    if request.param == "rfwatch's schemas":
        return check_package
    folder = request.getfixturevalue("official")
    return lambda descriptor: check_official(descriptor, folder)


def test_an_export_killed_midway_leaves_a_package_without_its_descriptor_and_the_next_one_whole(tmp_path, card):
    """Re-exported into the same folder and killed (kill -9, at a crash point) after two of the three tables: the old
    descriptor is gone, so the half-new package does not pass for whole; each table is whole, old or new; the next
    export completes it and leaves no temporary file."""
    from rfwatch.crashpoints import CRASH_EXIT

    out = tmp_path / "package"
    export(card, "camtrap-dp", out)
    export(card, "camtrap-dp", out, code=CRASH_EXIT, env={"RFWATCH_CRASH_AT": "export.tables_written"})
    assert not (out / "datapackage.json").exists()
    for table in ("deployments.csv", "media.csv", "observations.csv"):
        assert len(read_rows(out / table)) in (2, 5), table  # header and every row: never cut short
    export(card, "camtrap-dp", out)
    assert validate_package(out / "datapackage.json") == []
    assert sorted(p.name for p in out.iterdir()) == [
        "datapackage.json",
        "deployments.csv",
        "media.csv",
        "observations.csv",
    ]


def test_a_broken_package_fails_validation(tmp_path, card, check):
    out = tmp_path / "package"
    export(card, "camtrap-dp", out)
    assert check(out / "datapackage.json") == []

    _edit_table(out, "observations", 0, observationType="bird")  # not in the schema's enum
    problems = check(out / "datapackage.json")
    assert len(problems) == 1 and "observations" in problems[0] and "bird" in problems[0], problems

    export(card, "camtrap-dp", out)  # whole again
    _edit_table(out, "media", 1, timestamp="")  # a required value left empty
    problems = check(out / "datapackage.json")
    assert len(problems) == 1 and "timestamp" in problems[0] and "required" in problems[0], problems

    export(card, "camtrap-dp", out)
    _edit_table(out, "observations", 2, mediaID="file-999")  # a dangling foreign key
    problems = check(out / "datapackage.json")
    assert len(problems) == 1 and "foreign key" in problems[0] and "file-999" in problems[0], problems

    export(card, "camtrap-dp", out)
    _edit_table(out, "media", 0, deploymentID="CAM99")  # a file of a deployment the package does not have
    problems = check(out / "datapackage.json")
    assert len(problems) == 1 and "foreign key" in problems[0] and "CAM99" in problems[0], problems

    export(card, "camtrap-dp", out)
    package = json.loads((out / "datapackage.json").read_text())
    del package["project"]["samplingDesign"]  # a required property of the descriptor
    (out / "datapackage.json").write_text(json.dumps(package))
    problems = check(out / "datapackage.json")
    assert len(problems) == 1 and "samplingDesign" in problems[0], problems

    package = json.loads((out / "datapackage.json").read_text())
    package["project"]["samplingDesign"] = "targeted"
    del package["taxonomic"]
    (out / "datapackage.json").write_text(json.dumps(package))
    problems = check(out / "datapackage.json")
    assert len(problems) == 1 and "taxonomic" in problems[0], problems


def test_validation_never_reaches_for_the_network(tmp_path, card):
    """rfwatch's schemas need no URL: one frictionless would fetch (a further resource's schema) is refused and
    reported, never downloaded."""
    out = tmp_path / "package"
    export(card, "camtrap-dp", out)
    package = json.loads((out / "datapackage.json").read_text())
    (out / "notes.csv").write_text("note\nhello\n")
    package["resources"].append({"name": "notes", "path": "notes.csv", "schema": "https://example.invalid/notes.json"})
    (out / "datapackage.json").write_text(json.dumps(package))
    problems = check_package(out / "datapackage.json")
    assert len(problems) == 1, problems
    assert "https://example.invalid/notes.json is not fetched (no network" in problems[0], problems


def test_the_official_profile_is_read_from_local_files_only(tmp_path, card, official):
    out = tmp_path / "package"
    export(card, "camtrap-dp", out)
    package = json.loads((out / "datapackage.json").read_text())
    package["resources"][0]["schema"] = "https://example.invalid/1.0/deployments-table-schema.json"
    (out / "datapackage.json").write_text(json.dumps(package))
    assert check_official(out / "datapackage.json", official) != []
    with pytest.raises(ProfileMissing, match="camtrap-dp-profile.json"):
        check_official(out / "datapackage.json", tmp_path / "nowhere")


def test_a_named_folder_without_the_official_files_is_an_error_not_a_silent_skip(tmp_path, card, monkeypatch):
    out = tmp_path / "package"
    export(card, "camtrap-dp", out)
    monkeypatch.setenv("RFWATCH_CAMTRAP_DP_SCHEMAS", str(tmp_path / "empty"))
    assert official_dir() == tmp_path / "empty"
    with pytest.raises(ProfileMissing, match="camtrap-dp-profile.json"):
        validate_package(out / "datapackage.json")


def test_rfwatch_schemas_are_the_official_1_0_requirements(official):
    """rfwatch's transcription against the official files, field by field: a mistake in it shows here."""
    assert differences(rfwatch_schemas(), official) == []


def test_the_comparison_catches_a_transcription_mistake(official):
    def mistaken(change) -> list[str]:
        schemas = copy.deepcopy(rfwatch_schemas())
        change(schemas)
        return differences(schemas, official)

    def field(schemas, table, name):
        return next(f for f in schemas["tables"][table]["fields"] if f["name"] == name)

    def enum(s):
        field(s, "observations", "observationType")["constraints"]["enum"][0] = "animals"

    def required(s):
        field(s, "media", "filePublic")["constraints"].pop("required")

    def foreign_key(s):
        s["tables"]["observations"]["foreignKeys"].pop()

    def order(s):
        fields = s["tables"]["deployments"]["fields"]
        fields[3], fields[4] = fields[4], fields[3]

    def package_required(s):
        s["package"]["properties"]["project"]["required"].remove("individualAnimals")

    def bound(s):
        field(s, "deployments", "latitude")["constraints"]["minimum"] = -80

    assert mistaken(enum) == [
        "observations.observationType: constraints.enum ['animals', 'human', 'vehicle', 'blank', 'unknown', "
        "'unclassified'] != official ['animal', 'human', 'vehicle', 'blank', 'unknown', 'unclassified']"
    ]
    assert mistaken(required) == ["media.filePublic: constraints.required False != official True"]
    assert [d.split(" ")[:2] for d in mistaken(foreign_key)] == [["observations:", "foreignKeys"]]
    assert [d.split(" ")[:2] for d in mistaken(order)] == [["deployments:", "fields"]]
    assert [d.split(" ")[0] for d in mistaken(package_required)] == ["project:"]
    assert mistaken(bound) == ["deployments.latitude: constraints.minimum -80 != official -90"]


def test_a_required_value_nobody_gave_is_named_never_made_up(tmp_path, card):
    doc = yaml.safe_load(card.read_text())
    del doc["export"]["deployments"]  # CAM02's files have no GPS
    card.write_text(yaml.safe_dump(doc))
    result = export(card, "camtrap-dp", tmp_path / "p", code=2)
    assert "export.deployments.CAM02.latitude: required by Camtrap DP" in result.stderr
    assert "green-5.jpg" in result.stderr
    assert not (tmp_path / "p" / "datapackage.json").exists()

    del doc["export"]["project"]["samplingDesign"]
    doc["export"]["deployments"] = EXPORT["deployments"]
    card.write_text(yaml.safe_dump(doc))
    result = export(card, "camtrap-dp", tmp_path / "p", code=2)
    assert "export.project.samplingDesign: required by Camtrap DP" in result.stderr


# --- sequences: events --------------------------------------------------------------------------------


def _record(file_id: int, label: str, conf: float | None, at: dt.datetime, seq=None, by="model", person=None):
    return FileRecord(
        file_id=file_id,
        source=Path(f"/cards/CAM01/IMG_{file_id:04}.JPG"),
        path=Path(f"/archive/{label}/IMG_{file_id:04}.JPG"),
        root="archive",
        rel=f"{label}/IMG_{file_id:04}.JPG",
        captured=at,
        captured_from="exif",
        label=label,
        confidence=conf,
        decided_by=by,
        person=person,
        decided_at=1_800_000_000.0 + file_id,
        scores=((label, conf or 1.0),),
        model="traps/3",
        state="done",
        sequence=seq,
        gps=(50.85, 4.35),
    )


def sequence_records() -> list[FileRecord]:
    """Two bursts as the sequences work journals them (id, frame, frames, label, confidence), and a lone file."""
    t0 = dt.datetime(2026, 11, 27, 6, 0, 0, tzinfo=CET)
    s1 = [SequenceInfo("seq-1", n, 3, "red", 0.93) for n in (1, 2, 3)]
    s2 = [SequenceInfo("seq-2", n, 2, "blue", 0.88) for n in (1, 2)]
    return [
        # frame-level classes differ from the sequence's: the event takes the sequence's label
        _record(3, "blue", 0.55, t0 + dt.timedelta(seconds=4), s1[2]),
        _record(1, "red", 0.93, t0, s1[0]),
        _record(2, "green", 0.51, t0 + dt.timedelta(seconds=2), s1[1]),
        _record(4, "blue", 0.88, t0 + dt.timedelta(minutes=30), s2[0]),
        _record(5, "blue", 0.80, t0 + dt.timedelta(minutes=30, seconds=1), s2[1], by="person", person="ana"),
        _record(6, "green", 0.97, t0 + dt.timedelta(hours=2)),
    ]


def test_sequences_become_one_event_each():
    events = group_events(sequence_records())
    assert [e.id for e in events] == ["seq-1", "seq-2", "file-6"]
    first, second, lone = events
    assert [f.file_id for f in first.files] == [1, 2, 3]  # frame order
    assert (first.label, first.confidence, first.decided_by) == ("red", 0.93, "model")
    assert (first.start.time(), first.end.time()) == (dt.time(6, 0, 0), dt.time(6, 0, 4))
    # a person labelled a frame of the second burst: their label stands for the event
    assert (second.label, second.decided_by, second.person) == ("blue", "person", "ana")
    assert (lone.label, lone.is_sequence, len(lone.files)) == ("green", False, 1)


def test_sequences_are_exported_at_event_level(tmp_path):
    settings = ExportSettings(
        empty=frozenset({"blue"}),
        taxa={"red": Taxon("Vulpes vulpes"), "green": Taxon("Capreolus capreolus")},
        project={"title": "t", "samplingDesign": "targeted", "captureMethod": ["activityDetection"]},
        contributors=({"title": "Ana"},),
    )
    counts = write_camtrap_dp(sequence_records(), settings, tmp_path / "p")
    assert counts == {"deployments": 1, "media": 6, "observations": 3}
    assert validate_package(tmp_path / "p" / "datapackage.json") == []
    obs = read_rows(tmp_path / "p" / "observations.csv")
    assert [(o["eventID"], o["observationLevel"], o["mediaID"]) for o in obs] == [
        ("seq-1", "event", ""),
        ("seq-2", "event", ""),
        ("file-6", "media", "file-6"),
    ]
    assert (obs[0]["scientificName"], obs[0]["classificationProbability"]) == ("Vulpes vulpes", "0.93")
    assert (obs[0]["eventStart"], obs[0]["eventEnd"]) == ("2026-11-27T06:00:00+01:00", "2026-11-27T06:00:04+01:00")
    assert (obs[1]["observationType"], obs[1]["classificationMethod"]) == ("blank", "human")
    package = json.loads((tmp_path / "p" / "datapackage.json").read_text())
    assert package["project"]["observationLevel"] == ["event", "media"]


# --- MegaDetector -------------------------------------------------------------------------------------


def test_megadetector_output_reads_back_as_the_format_documents_it(tmp_path, card):
    out = tmp_path / "md.json"
    export(card, "megadetector", out)
    batch = read_batch_output(out)
    assert batch.format_version == "1.6"
    images = {Path(i.file).name: i for i in batch.images}
    assert {i.file for i in batch.images} >= {"archive/red/red-1.jpg", "archive/blue/blue-3.jpg"}
    assert set(images) == {"red-1.jpg", "red-2.jpg", "blue-3.jpg", "gray-4.jpg", "green-5.jpg"}
    assert images["blue-3.jpg"].detections == []  # an empty class: nothing detected
    fox = images["red-1.jpg"].detections
    assert len(fox) == 1 and fox[0].bbox == [0.0, 0.0, 1.0, 1.0]
    assert batch.detection_categories[fox[0].category] == "animal"
    names = [(batch.classification_name(c), conf) for c, conf in fox[0].classifications]
    assert names[0][0] == "red" and names[0][1] == pytest.approx(fox[0].conf)
    assert {n for n, _ in names} == {"red", "green", "blue"}  # every score the model gave
    person = images["gray-4.jpg"].detections
    assert [(batch.classification_name(c), conf) for c, conf in person[0].classifications] == [("green", 1.0)]
    assert "Vulpes vulpes" in batch.classification_category_descriptions.values()


# --- CSV, time windows, reading only ----------------------------------------------------------------------


def test_csv_has_one_row_per_file_with_who_decided_and_where_it_is(tmp_path, card):
    out = tmp_path / "files.csv"
    export(card, "csv", out)
    rows = {Path(r["found_at"]).name: r for r in read_rows(out)}
    assert set(rows) == {"red-1.jpg", "red-2.jpg", "blue-3.jpg", "gray-4.jpg", "green-5.jpg"}
    assert rows["gray-4.jpg"]["decided_by"] == "person" and rows["gray-4.jpg"]["class"] == "green"
    assert rows["gray-4.jpg"]["person"] == "ana" and rows["gray-4.jpg"]["confidence"] == ""
    assert rows["red-1.jpg"]["decided_by"] == "model" and float(rows["red-1.jpg"]["confidence"]) > 0.6
    assert rows["red-1.jpg"]["file"] == str(tmp_path / "sorted" / "red" / "red-1.jpg")
    assert Path(rows["red-1.jpg"]["file"]).exists()
    assert (rows["red-1.jpg"]["captured"], rows["red-1.jpg"]["captured_from"]) == ("2026-11-27T06:10:00+01:00", "exif")
    assert rows["green-5.jpg"]["captured_from"] == "mtime"
    assert rows["red-1.jpg"]["sequence"] == ""  # no sequences yet


def test_since_and_until_take_the_forms_undo_takes(tmp_path, card):
    db = sqlite3.connect(tmp_path / "state" / "journal.db")
    db.execute("UPDATE files SET created = created - 3 * 3600 WHERE CAST(source AS TEXT) LIKE '%red-%'")
    db.commit()
    db.close()
    export(card, "csv", tmp_path / "recent.csv", "--since", "2h")
    assert sorted(Path(r["found_at"]).name for r in read_rows(tmp_path / "recent.csv")) == [
        "blue-3.jpg",
        "gray-4.jpg",
        "green-5.jpg",
    ]
    export(card, "csv", tmp_path / "old.csv", "--until", (dt.datetime.now() - dt.timedelta(hours=2)).isoformat())
    assert sorted(Path(r["found_at"]).name for r in read_rows(tmp_path / "old.csv")) == ["red-1.jpg", "red-2.jpg"]
    result = export(card, "csv", tmp_path / "x.csv", "--since", "yesterday-ish", code=2)
    assert "--since/--until: expected a duration such as 2h" in result.stderr


def test_export_needs_no_api_key(tmp_path, card, monkeypatch):
    """It reads the journal only: the key's variable unset, it still works."""
    doc = yaml.safe_load(card.read_text())
    doc["roboflow"]["api_key"] = "${RFWATCH_TEST_UNSET_KEY}"
    card.write_text(yaml.safe_dump(doc))
    env = {"ROBOFLOW_API_KEY": ""}
    result = run_cli("export", "-c", str(card), "--format", "csv", str(tmp_path / "f.csv"), env=env)
    assert result.returncode == 0, result.stderr
    assert len(read_rows(tmp_path / "f.csv")) == 5


# --- the journal's read, on both backends ---------------------------------------------------------------


def test_the_journal_lists_classified_files_and_standing_decisions(journal_url):
    journal = Journal.open(journal_url)
    try:
        files = journal.files
        ids = {}
        for n, name in enumerate(["a", "b", "c", "d", "e"]):
            fid = files.take(Path(f"/in/{name}.jpg"), 10 + n, 1000 + n, f"{n:064x}", "m/1")
            assert isinstance(fid, int)
            assert files.claim(fid) is not None
            ids[name] = fid
        prediction = {"top": "red", "confidence": 0.9, "predictions": [{"class": "red", "confidence": 0.9}]}
        for name in "abcd":
            files.classified(ids[name], prediction, f"{ids[name]:064x}", "m/1", "red 0.90")
        files.finish(ids["a"], FileState.DONE)
        files.wait_for_review(ids["b"], "unsure")
        journal.decisions.decide(ids["b"], DecisionKind.LABEL, ("green",), by="ana")
        files.wait_for_review(ids["c"], "unsure")  # waits, undecided
        files.finish(ids["d"], FileState.UNDONE)  # put back by undo: not exported
        # e: never classified
        listed = [r.id for r in files.classified_between()]
        assert listed == [ids["a"], ids["b"], ids["c"]]
        standing = journal.decisions.standing()
        assert set(standing) == {ids["b"]} and standing[ids["b"]].classes == ("green",)
        assert standing[ids["b"]].by == "ana"
        # a decision taken back on the review page no longer stands (the file waits again)
        journal.db.transact(lambda tx: tx.run("UPDATE decisions SET taken_back=? WHERE file_id=?", (1.0, ids["b"])))
        assert journal.decisions.standing() == {}
        future = time.time() + 3600
        assert files.classified_between(since=future) == []
        assert [r.id for r in files.classified_between(until=future)] == listed
    finally:
        journal.close()


def test_export_settings_are_checked_with_the_key_named(tmp_path):
    from rfwatch.config import config_from_dict
    from rfwatch.exports.settings import export_settings

    def settings(export):
        return export_settings(config_from_dict({"export": export}, tmp_path))

    with pytest.raises(ConfigError, match=r"export\.taxa\.fox\.scientificName"):
        settings({"taxa": {"fox": {"taxonRank": "species"}}})
    with pytest.raises(ConfigError, match=r"export\.deployments\.C1\.latitude: expected a number between -90"):
        settings({"deployments": {"C1": {"latitude": 123}}})
    with pytest.raises(ConfigError, match=r"export\.observation_types\.car"):
        settings({"observation_types": {"car": "lorry"}})
    with pytest.raises(ConfigError, match=r"export\.colour: unknown key"):
        settings({"colour": 1})
    s = settings({"empty": "blank", "timezone": "Europe/Brussels"})
    assert s.empty == frozenset({"blank"}) and str(s.timezone) == "Europe/Brussels"


def test_the_readme_camera_traps_config_loads_and_its_export_settings_hold(tmp_path, monkeypatch):
    from rfwatch.config import _TOP_KEYS, config_from_dict
    from rfwatch.exports.settings import export_settings

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- camera-traps-config -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    if "sequence" not in _TOP_KEYS:  # the sequences work adds `sequence:`; until it is merged, leave it out
        doc.pop("sequence")
    monkeypatch.setenv("ROBOFLOW_API_KEY", "k")
    config = config_from_dict(doc, tmp_path)
    settings = export_settings(config)
    assert settings.empty == frozenset({"empty"})
    assert settings.taxa["roe_deer"].scientific_name == "Capreolus capreolus"
    assert settings.deployment_for(Path("/srv/cards/CAM02/IMG_0001.JPG")).extra["locationName"] == "Pond"
    cam1 = settings.deployment_for(Path("/srv/cards/CAM01/IMG_0001.JPG"))
    assert (cam1.latitude, cam1.start.isoformat()) == (50.8503, "2026-11-01T12:00:00+01:00")

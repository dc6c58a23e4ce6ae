"""Camera facts in rules: `{exif:TAG}` placeholders and `when: exif:` conditions, on real camera files.

The files are the camera samples in tests/data (tests/data/README.md), copied so that each test reads them
afresh (rfwatch keeps what it read per file). Maker notes: the samples carry Olympus, Panasonic and Nikon
ones. exiftool cannot create a maker note from scratch, so for a camera-trap file the test lays out an
empty Reconyx HyperFire maker note (the layout of exiftool's Reconyx.pm: version 0xf101, firmware 3, then
int16u fields) and has exiftool write Sequence, EventNumber, SerialNumber and UserLabel into it, as the
camera would have.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_exiftool, run_cli, write_config
from PIL import Image

import rfwatch.images.exif as exif_module
from rfwatch.config import ConfigError, config_from_dict
from rfwatch.host.context import FileContext
from rfwatch.host.rules import compile_rules, matching_rules
from rfwatch.host.templates import Template, TemplateError
from rfwatch.images.exif import camera_facts
from rfwatch.images.exiftool import ExifToolPool
from rfwatch.roboflow.result import Prediction

DOC = {"predictions": [{"class": "deer", "confidence": 0.93}], "top": "deer", "confidence": 0.93}
PREDICTION = Prediction.from_json(DOC)
EXIFTOOL = shutil.which("exiftool")


def sample(samples: Path, tmp_path: Path, name: str) -> Path:
    """A copy of a sample camera file (a new file: nothing about it is known yet)."""
    src = next(samples.rglob(name))
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    return dst


def ctx_for(path: Path) -> FileContext:
    return FileContext(
        path=path,
        source=path,
        watch_root=path.parent,
        prediction=PREDICTION,
        config=config_from_dict({}, path.parent),
        model="traps/1",
        rule="r",
    )


def render(template: str, path: Path) -> str:
    return Template(template).render(ctx_for(path).values())


@pytest.fixture
def no_exiftool(monkeypatch):
    """As on a machine without exiftool: it is not on PATH."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert shutil.which("exiftool") is None


def reconyx_file(path: Path, sequence: str = "4 5", event: int = 1234, serial: str = "H600HF04123456") -> Path:
    """A camera-trap photo as a Reconyx HyperFire writes it: EXIF Make/Model/DateTimeOriginal and its maker note."""
    words = [0] * 0x2B
    words[0], words[1] = 0xF101, 3  # maker note version 1.0, firmware 3: how exiftool recognises it
    note = struct.pack(f"<{len(words)}H", *words) + bytes(22)  # ... then UserLabel, string[22]
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "RECONYX", "HC600 HYPERFIRE"
    exif.get_ifd(0x8769)[0x9003] = "2024:06:20 03:04:05"
    exif.get_ifd(0x8769)[0x927C] = note
    Image.new("RGB", (64, 48), (60, 90, 50)).save(path, exif=exif, quality=85)
    subprocess.run(
        [
            EXIFTOOL or "exiftool",
            "-q",
            "-overwrite_original",
            f"-Reconyx:Sequence={sequence}",
            f"-Reconyx:EventNumber={event}",
            f"-Reconyx:SerialNumber={serial}",
            "-Reconyx:UserLabel=CAM-NORTH-07",
            str(path),
        ],
        check=True,
    )
    return path


# --- standard tags, with or without exiftool --------------------------------------------------------------


def test_standard_tags_render_from_real_camera_files_without_exiftool(samples, tmp_path, no_exiftool):
    canon = sample(samples, tmp_path, "Canon_40D.jpg")
    assert (
        render("{exif:Make}/{exif:Model}/{exif:DateTimeOriginal}", canon) == "Canon/Canon EOS 40D/2008:05:30 15:56:01"
    )
    assert render("{exif:FNumber} {exif:ExposureTime} {exif:ISO} {exif:FocalLength}", canon) == "7.1 0.00625 100 135"
    assert render("{exif:isospeedratings}", canon) == "100", "tag names are case-insensitive; EXIF's names work too"
    nikon = sample(samples, tmp_path, "DSCN0010.jpg")  # Nikon COOLPIX P6000 with a GPS fix in Italy
    assert render("{exif:GPSLatitude:.5f} {exif:GPSLongitude:.5f}", nikon) == "43.46745 11.88513"
    assert render("{exif:GPSLatitude}", nikon) == "43.4674483333333"  # as exiftool -n prints it
    kodak = sample(samples, tmp_path, "Kodak_CX7530.jpg")  # GPSLatitudeRef S: south is negative
    assert render("{exif:GPSLatitude}", kodak) == "-0.3713"


def test_a_tag_the_file_lacks_is_empty_and_never_a_path_component(samples, tmp_path, no_exiftool):
    canon = sample(samples, tmp_path, "Canon_40D.jpg")
    values = ctx_for(canon).values()
    assert Template("[{exif:LensModel}] [{exif:GPSLatitude:.3f}] [{exif:Sequence:>4}]").render(values) == "[] [] []"
    dest = Template("sorted/{exif:LensModel}/{exif:Model}/{name}").render_path(values, tmp_path)
    assert dest == tmp_path / "sorted" / "Canon EOS 40D" / "Canon_40D.jpg"


def test_values_in_paths_go_through_path_safety(tmp_path, no_exiftool):
    path = tmp_path / "evil.jpg"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "../../etc", "cam/\x01one"
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    values = ctx_for(path).values()
    assert Template("out/{exif:Make}/{exif:Model}/{name}").render_path(values, tmp_path) == (
        tmp_path / "out" / "_.._etc" / "cam__one" / "evil.jpg"
    )
    assert Template("{exif:Model}").render_text(values) == "cam/ one"  # metadata: as it is, control chars spaced


@pytest.mark.long
@needs_exiftool
def test_without_exiftool_the_standard_tags_are_exactly_what_exiftool_gives(samples, tmp_path, monkeypatch):
    """Every standard tag Pillow reads from every sample equals exiftool -n's value of that EXIF tag, so rules
    mean the same on a machine with exiftool and one without."""
    files = [p for p in sorted(samples.rglob("*")) if p.suffix.lower() in (".jpg", ".tiff", ".heif")]
    expected = {}
    for path in files:
        out = subprocess.run([EXIFTOOL, "-j", "-n", "-a", "-G0", str(path)], capture_output=True, text=True).stdout
        tags: dict[str, object] = {}
        for key, value in json.loads(out, object_pairs_hook=list)[0]:
            group, _, name = key.partition(":")
            if group == "Composite" and name.startswith("GPS"):  # GPSLatitude...: the composite, signed ones
                tags[name.lower()] = value
            elif group == "EXIF":  # the rest: the EXIF tag (IFD0's before IFD1's)
                tags.setdefault(name.lower(), value)
        expected[path.name] = tags
    monkeypatch.setenv("PATH", "/nonexistent")
    compared = 0
    for path in files:
        facts = camera_facts(shutil.copyfile(path, tmp_path / path.name))
        for name, value in facts.standard_tags().items():
            theirs = expected[path.name][name]
            theirs = theirs.split("\x00")[0].strip() if isinstance(theirs, str) else theirs
            assert str(value) == str(exif_module._exiftool_value(theirs)), f"{path.name} {name}"
            compared += 1
    assert compared > 500


# --- tags only exiftool reads ---------------------------------------------------------------------------


@needs_exiftool
def test_maker_notes_of_real_cameras_through_exiftool(samples, tmp_path):
    olympus = sample(samples, tmp_path, "corrupted.jpg")  # an Olympus u1020: its serial is in the maker notes
    assert render("{exif:SerialNumber}|{exif:MakerNotes:SerialNumber}|{exif:Olympus:SerialNumber}", olympus) == (
        "F70501740|F70501740|F70501740"
    )
    assert render("[{exif:EXIF:SerialNumber}]", olympus) == "[]"  # not in the EXIF group
    panasonic = sample(samples, tmp_path, "Panasonic_DMC-FZ30.jpg")
    assert render("{exif:InternalSerialNumber}", panasonic) == "S010604030293"
    nikon = sample(samples, tmp_path, "Nikon_COOLPIX_P1.jpg")
    # A standard name is the EXIF tag (0: auto); the maker note's own tag of that name needs its group.
    assert render("{exif:WhiteBalance} {exif:MakerNotes:WhiteBalance}", nikon) == "0 AUTO"
    # exiftool lists only the maker note's unless asked for duplicates (-a): the EXIF group's is still there.
    assert render("{exif:EXIF:WhiteBalance} {exif:ExifIFD:WhiteBalance}", nikon) == "0 0"


@needs_exiftool
def test_reconyx_maker_notes_in_templates_and_conditions(tmp_path):
    photo = reconyx_file(tmp_path / "RCNX0004.JPG")
    assert render("{exif:Model}/{exif:SerialNumber}/{exif:EventNumber}-{exif:Sequence}", photo) == (
        "HC600 HYPERFIRE/H600HF04123456/1234-4 5"
    )
    assert render("{exif:Reconyx:UserLabel} {exif:makernotes:sequence}", photo) == "CAM-NORTH-07 4 5"
    rules = _rules(
        {"name": "first frame", "when": {"exif": {"Sequence": "1 *"}}, "then": ["noop"]},
        {"name": "north", "when": {"exif": {"Reconyx:UserLabel": "CAM-NORTH-*", "Make": "RECONYX"}}, "then": ["noop"]},
    )
    assert _matched(rules, photo) == ["north"]
    assert _matched(rules, reconyx_file(tmp_path / "RCNX0001.JPG", sequence="1 5")) == ["first frame", "north"]


@needs_exiftool
def test_a_file_is_read_once_for_its_rules_and_all_its_placeholders(tmp_path, monkeypatch):
    photo = reconyx_file(tmp_path / "RCNX0002.JPG", sequence="2 5")
    exiftool_reads, pillow_reads = [], []
    real_run, real_pillow = ExifToolPool.run, exif_module._read_pillow

    def run(self, args, target, *a, **kw):
        exiftool_reads.append(target)
        return real_run(self, args, target, *a, **kw)

    def read_pillow(path):
        pillow_reads.append(path)
        return real_pillow(path)

    monkeypatch.setattr(ExifToolPool, "run", run)
    monkeypatch.setattr(exif_module, "_read_pillow", read_pillow)
    rules = _rules(
        {
            "name": "burst",
            "when": {"exif": {"Sequence": "2 *", "Model": "HC600*", "EventNumber": "1234"}},
            "then": ["noop"],
        }
    )
    assert _matched(rules, photo) == ["burst"]
    ctx = ctx_for(photo)
    for template in ("{exif:SerialNumber}/{name}", "{exif:EventNumber}-{exif:Sequence}", "{exif:UserLabel}"):
        Template(template).render(ctx.values())  # each action asks for values() anew
    moved = photo.rename(tmp_path / "moved.jpg")  # a move action ran: the same file, elsewhere
    ctx.path = moved
    assert Template("{exif:Make} {exif:BatteryVoltage}").render(ctx.values()) == "RECONYX 0"
    assert len(exiftool_reads) == 1 and len(pillow_reads) == 1


# --- conditions ----------------------------------------------------------------------------------------


def _rules(*rules: dict):
    config = config_from_dict({"rules": [dict(r, **{"continue": True}) for r in rules]}, Path("/tmp"))
    return compile_rules(config, {"noop": (lambda options: lambda ctx: None, "test")})


def _matched(rules, path: Path) -> list[str]:
    return [rule.name for rule, _ in matching_rules(rules, PREDICTION, path)]


def test_exif_conditions_on_real_camera_files(samples, tmp_path, no_exiftool):
    canon = sample(samples, tmp_path, "Canon_40D.jpg")
    nikon = sample(samples, tmp_path, "Nikon_D70.jpg")
    gps = sample(samples, tmp_path, "DSCN0010.jpg")
    rules = _rules(
        {"name": "canon", "when": {"exif": {"make": "Canon", "Model": "*40D"}}, "then": ["noop"]},
        {"name": "nikons", "when": {"exif": {"Make": ["NIKON", "NIKON CORPORATION"]}}, "then": ["noop"]},
        {"name": "iso 100", "when": {"exif": {"ISO": 100}}, "then": ["noop"]},
        {"name": "italy", "when": {"exif": {"GPSLatitude": "43.*", "GPSLongitude": "11.*"}}, "then": ["noop"]},
        {"name": "has a lens", "when": {"exif": {"LensModel": "*"}}, "then": ["noop"]},
        {"name": "deer on a canon", "when": {"class": "deer", "exif": {"Make": "Canon"}}, "then": ["noop"]},
    )
    assert _matched(rules, canon) == ["canon", "iso 100", "deer on a canon"]
    assert _matched(rules, nikon) == ["nikons"]
    assert _matched(rules, gps) == ["nikons", "italy"]  # ISO 64; no LensModel: "*" does not match a missing tag
    assert rules[0].describe_when() == "exif make matches Canon and exif Model matches *40D"


def test_a_file_without_exif_matches_no_exif_condition_and_renders_empty(tmp_path, no_exiftool):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    rules = _rules({"name": "any camera", "when": {"exif": {"Model": "*"}}, "then": ["noop"]})
    assert _matched(rules, plain) == []
    assert _matched(rules, tmp_path / "gone.jpg") == []
    assert render("[{exif:Model}]", plain) == "[]"


@pytest.mark.parametrize(
    "exif,message",
    [
        ("Model", r"rules\[0\]\.when\.exif: expected EXIF tags and globs such as"),
        ({}, r"rules\[0\]\.when\.exif: expected EXIF tags and globs"),
        ({"1bad": "x"}, r"rules\[0\]\.when\.exif\.1bad: expected an EXIF tag name such as Model"),
        ({"Model": None}, r'rules\[0\]\.when\.exif\.Model: expected a glob such as "\*D70\*"'),
        ({"Model": {"a": 1}}, r"rules\[0\]\.when\.exif\.Model: expected a string or a list of strings"),
    ],
)
def test_bad_exif_conditions_name_the_key(exif, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"rules": [{"when": {"exif": exif}, "then": ["noop"]}]}, Path("/tmp"))


def test_exif_placeholders_are_checked_when_the_config_loads():
    assert [
        t.text for t in Template("{exif:Model}/{exif:MakerNotes:Sequence:>5}/{exif:GPSLatitude:.3f}").exif_tags()
    ] == [
        "Model",
        "MakerNotes:Sequence",
        "GPSLatitude",
    ]
    for bad in ("{exif}", "{exif:}", "{exif:1x}", "{exif:a b}"):
        with pytest.raises(TemplateError):
            Template(bad)


# --- check and the daemon -----------------------------------------------------------------------------------


def test_check_says_when_a_rule_needs_exiftool_and_it_is_missing(tmp_path, server):
    rules = [
        {
            "name": "bursts",
            "when": {"exif": {"MakerNotes:Sequence": "1 *", "Model": "HC*"}},
            "then": [{"move": "sorted/{exif:Model}/{exif:EventNumber}/{name}"}],
        }
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    result = run_cli("check", "-c", str(cfg), env={"PATH": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: rules")]
    assert warnings == [
        "warning: rules[0].when.exif.MakerNotes:Sequence: {exif:MakerNotes:Sequence} is not a standard EXIF tag and "
        "exiftool is not installed: the condition never matches (apt-get install libimage-exiftool-perl)",
        "warning: rules[0].then[0].move: {exif:EventNumber} is not a standard EXIF tag and exiftool is not "
        "installed: the placeholder is empty (apt-get install libimage-exiftool-perl)",
    ]
    assert "exif MakerNotes:Sequence matches 1 *" in result.stdout
    if EXIFTOOL:
        with_exiftool = run_cli("check", "-c", str(cfg))
        assert with_exiftool.returncode == 0 and "warning: rules" not in with_exiftool.stdout


@needs_exiftool
def test_the_daemon_sorts_camera_trap_photos_by_their_camera(tmp_path, server, samples):
    rules = [
        {
            "name": "first frames",
            "when": {"exif": {"Sequence": "1 *"}},
            "then": [{"move": "traps/{exif:SerialNumber}/{exif:EventNumber}/{name}"}],
        },
        {"name": "other traps", "when": {"exif": {"Make": "RECONYX"}}, "then": [{"move": "traps/later/{name}"}]},
        {"name": "the rest", "then": [{"move": "cameras/{exif:Make}/{exif:Model}/{name}"}]},
    ]
    cfg = write_config(tmp_path, server, rules=rules)
    inbox = tmp_path / "inbox"
    reconyx_file(inbox / "RCNX0001.JPG", sequence="1 3", event=77)
    reconyx_file(inbox / "RCNX0002.JPG", sequence="2 3", event=77)
    sample(samples, inbox, "Canon_40D.jpg")
    result = run_cli("run", "-c", str(cfg), "--once", env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "traps" / "H600HF04123456" / "77" / "RCNX0001.JPG").is_file()
    assert (tmp_path / "traps" / "later" / "RCNX0002.JPG").is_file()
    assert (tmp_path / "cameras" / "Canon" / "Canon EOS 40D" / "Canon_40D.jpg").is_file()

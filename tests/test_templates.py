"""Destination templates: placeholders, safety of untrusted values, and {date}."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from rfwatch.config import config_from_dict
from rfwatch.host.context import FileContext
from rfwatch.host.templates import Template, TemplateError, UnsafePathError, safe_component
from rfwatch.roboflow.result import Prediction

DOC = {"predictions": [{"class": "cat", "confidence": 0.876}], "top": "cat", "confidence": 0.876}


def ctx_for(path: Path, root: Path) -> FileContext:
    return FileContext(
        path=path,
        source=path,
        watch_root=root,
        prediction=Prediction.from_json(DOC),
        config=config_from_dict({}, root),
        model="pets/2",
        rule="r1",
    )


def test_every_placeholder_renders(tmp_path, samples):
    src = tmp_path / "cam1" / "IMG_1.jpg"
    src.parent.mkdir()
    shutil.copyfile(samples / "jpg" / "Canon_40D.jpg", src)  # EXIF DateTimeOriginal 2008:05:30 15:56:01
    t = Template("{class}/{confidence:.0%}/{name}/{stem}/{ext}/{parent}/{relpath}/{model}/{rule}/{date:%Y-%m}/{now:%Y}")
    out = t.render(ctx_for(src, tmp_path).values())
    assert out == f"cat/88%/IMG_1.jpg/IMG_1/jpg/cam1/cam1/IMG_1.jpg/pets_2/r1/2008-05/{time.strftime('%Y')}"


def test_date_falls_back_to_mtime(tmp_path):
    src = tmp_path / "x.png"
    src.write_bytes(b"not even an image")
    os.utime(src, (0, 86400 * 365))
    assert Template("{date:%Y}").render(ctx_for(src, tmp_path).values()) == "1971"


def test_unknown_and_malformed_placeholders_fail_at_load():
    for text in ("{klass}", "{class!r}", "{}", "{class"):
        with pytest.raises(TemplateError):
            Template(text)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("../../etc", "_.._etc"),
        ("/abs", "_abs"),
        ("..", "_"),
        (".hidden", "hidden"),
        ("a\x00b\nc", "a_b_c"),
        ("c:\\win", "c:_win"),
        ("", "_"),
        ("ok name", "ok name"),
    ],
)
def test_safe_component(value, expected):
    assert safe_component(value) == expected


def test_long_and_multibyte_names_are_cut_on_a_character_boundary():
    cut = safe_component("é" * 300)
    assert len(os.fsencode(cut)) <= 200 and cut == "é" * 100


def test_destinations_cannot_leave_their_fixed_root(tmp_path):
    t = Template("sorted/{class}/{name}")
    assert t.fixed_root == "sorted"
    assert t.render_path({"class": "../../x", "name": "a.jpg"}, tmp_path) == tmp_path / "sorted" / "_.._x" / "a.jpg"
    with pytest.raises(UnsafePathError):
        Template("sorted/{path}").render_path({"path": "/../../etc/passwd"}, tmp_path)
    assert Template("/srv/out/{class}").fixed_root == "/srv/out"

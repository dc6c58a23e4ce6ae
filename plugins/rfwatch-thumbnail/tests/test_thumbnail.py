"""rfwatch-thumbnail's tests, as a plugin's own repository has them: rfwatch's daemon against local stand-ins of
Roboflow, through the fixtures rfwatch installs (rfwatch.testing; no conftest.py, no network, no account).

Run with the plugin installed (``pip install -e .``) and ``python -m pytest``.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

PREVIEWS = [{"name": "previews", "then": [{"thumbnail": {"to": "thumbs/{class}/{stem}.webp", "size": 64}}]}]


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (400, 300), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, colour)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation  # EXIF Orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_a_thumbnail_goes_into_the_folder_of_its_class(rfwatch_server, rfwatch_daemon):
    daemon = rfwatch_daemon(rules=PREVIEWS)
    daemon.drop("a.jpg", jpeg((40, 40, 210)))
    done = daemon.wait_for("a.jpg")
    assert (done.state, done.top) == ("done", "blue")
    thumb = daemon.root / "thumbs" / "blue" / "a.webp"
    with Image.open(thumb) as made:
        assert made.format == "WEBP" and made.size == (64, 48)
    assert done.results["thumbnail"]["thumbnail"] == str(thumb)  # what the action recorded in the journal
    assert [r.path for r in rfwatch_server.inference_requests()] == ["/colors/1"]


def test_a_photo_taken_sideways_gets_an_upright_thumbnail(rfwatch_daemon):
    daemon = rfwatch_daemon(rules=PREVIEWS)
    daemon.drop("side.jpg", jpeg((210, 40, 40), size=(400, 300), orientation=6))  # rotate 90 to view
    assert daemon.wait_for("side.jpg").state == "done"
    with Image.open(daemon.root / "thumbs" / "red" / "side.webp") as made:
        assert made.size == (48, 64)


@pytest.mark.rfwatch_server(profile="self-hosted")
def test_a_file_the_server_rejects_gets_no_thumbnail_and_the_next_one_does(rfwatch_server, rfwatch_daemon):
    rfwatch_server.fail_next(400)  # "Could not load input image": the server's answer to an image it cannot read
    daemon = rfwatch_daemon(rules=PREVIEWS)
    daemon.drop("bad.jpg", jpeg((40, 200, 40)))
    failed = daemon.wait_for("bad.jpg")
    assert failed.state == "failed" and "Could not load input image" in (failed.error or "")
    daemon.drop("good.jpg", jpeg((40, 200, 40)))
    assert daemon.wait_for("good.jpg").state == "done"
    assert sorted(p.name for p in (daemon.root / "thumbs").rglob("*.webp")) == ["good.webp"]

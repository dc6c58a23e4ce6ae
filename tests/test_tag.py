"""`tag`: keywords into XMP/IPTC with exiftool; everything else byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import needs_exiftool, unique_jpeg
from metadata_reader import (
    IRB_IPTC,
    PHOTOSHOP_APP13,
    XMP_APP1,
    chunks,
    iptc_keywords,
    jpeg_non_xmp_segments,
    jpeg_parts,
    photoshop_resources,
    read_xmp,
    tiff_strips,
    tiff_tags,
)
from PIL import Image

from rfwatch.config import config_from_dict
from rfwatch.default_plugins.tag import TagAction
from rfwatch.host.context import FileContext
from rfwatch.roboflow.result import Prediction

SINGLE = {
    "time": 0.1,
    "image": {"width": 10, "height": 10},
    "predictions": [{"class": "iguana", "confidence": 0.91}, {"class": "lizard", "confidence": 0.07}],
    "top": "iguana",
    "confidence": 0.91,
    "image_path": "",
    "prediction_type": "ClassificationModel",
}
MULTI = {
    "time": 0.1,
    "image": {"width": 10, "height": 10},
    "predictions": {"cat": {"confidence": 0.8}, "dog": {"confidence": 0.7}, "fox": {"confidence": 0.1}},
    "predicted_classes": ["cat", "dog"],
    "image_path": "",
    "prediction_type": "ClassificationModel",
}


def run_tag(path: Path, options: dict, doc: dict = SINGLE) -> dict:
    ctx = FileContext(
        path=path,
        source=path,
        watch_root=path.parent,
        prediction=Prediction.from_json(doc),
        config=config_from_dict({}, path.parent),
        model="animals/3",
        rule="r",
    )
    return TagAction(options)(ctx)


def camera_jpegs(samples: Path) -> list[Path]:
    """Every JPEG in the samples: camera makes, GPS, existing XMP, all orientations, odd and invalid EXIF."""
    return sorted((samples / "jpg").rglob("*.jpg"))


@needs_exiftool
def test_embed_into_every_camera_jpeg_is_lossless(samples, tmp_path):
    files = camera_jpegs(samples)
    kinds = {f.parent.name for f in files}
    assert len(files) >= 35 and {"jpg", "orientation", "gps", "xmp", "invalid"} <= kinds, "the sample set is incomplete"
    for original in files:
        path = tmp_path / f"{original.parent.name}-{original.name}"
        shutil.copyfile(original, path)
        existing = read_xmp(original)["subject"]
        result = run_tag(path, {"mode": "embed", "keywords": ["{class}", "wildlife"], "hierarchy": "rfwatch"})
        assert result["embedded"] == str(path)
        xmp = read_xmp(path)
        assert xmp["subject"] == existing + [k for k in ("iguana", "wildlife") if k not in existing], original.name
        assert xmp["hierarchical"] == ["rfwatch|iguana", "rfwatch|wildlife"]
        assert xmp["tagslist"] == ["rfwatch/iguana", "rfwatch/wildlife"]
        assert xmp["rfwatch"]["Class"] == "iguana" and xmp["rfwatch"]["Model"] == "animals/3"
        assert float(xmp["rfwatch"]["Confidence"]) == pytest.approx(0.91)
        assert {"iguana", "wildlife"} <= set(iptc_keywords(path))
        # the compressed image data and every other block (EXIF, maker notes, ICC, ...) are untouched
        assert jpeg_parts(path)[1] == jpeg_parts(original)[1], f"{original.name}: image data changed"
        assert jpeg_non_xmp_segments(path) == jpeg_non_xmp_segments(original), f"{original.name}: metadata changed"


@needs_exiftool
def test_tagging_twice_never_duplicates_and_keeps_other_keywords(samples, tmp_path):
    path = tmp_path / "b.jpg"
    shutil.copyfile(samples / "jpg" / "xmp" / "BlueSquare.jpg", path)
    before = read_xmp(path)["subject"]
    assert "Blue Square" in before
    for _ in range(2):
        run_tag(path, {"mode": "embed"})
    subject = read_xmp(path)["subject"]
    assert subject == before + ["iguana"]
    assert iptc_keywords(path).count("iguana") == 1 and "Blue Square" in iptc_keywords(path)


@needs_exiftool
def test_embed_into_tiff_keeps_strips_and_tags(samples, tmp_path):
    for original in sorted((samples / "tiff").glob("*.tif*")):
        path = tmp_path / original.name
        shutil.copyfile(original, path)
        run_tag(path, {"mode": "embed"})
        assert read_xmp(path)["subject"] == ["iguana"]
        assert tiff_strips(path) == tiff_strips(original)
        assert tiff_tags(path) == tiff_tags(original)


@needs_exiftool
@pytest.mark.parametrize("fmt,ext", [("PNG", ".png"), ("WEBP", ".webp")])
def test_embed_into_png_and_webp_keeps_image_chunks(tmp_path, fmt, ext):
    path = tmp_path / f"x{ext}"
    img = Image.linear_gradient("L").convert("RGB").resize((64, 48))
    img.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}), icc_profile=b"")
    before = [c for c in chunks(path) if c[0] not in (b"iTXt", b"XMP ", b"VP8X")]
    run_tag(path, {"mode": "embed"})
    assert read_xmp(path)["subject"] == ["iguana"]
    after = [c for c in chunks(path) if c[0] not in (b"iTXt", b"XMP ", b"VP8X")]
    assert after == before
    with Image.open(path) as check:
        assert check.convert("RGB").tobytes() == img.tobytes()


@needs_exiftool
@pytest.mark.parametrize("naming,name", [("full", "IMG_1.jpg.xmp"), ("stem", "IMG_1.xmp")])
def test_sidecar_names_and_merge(samples, tmp_path, naming, name):
    path = tmp_path / "IMG_1.jpg"
    shutil.copyfile(samples / "jpg" / "Nikon_D70.jpg", path)
    before = path.read_bytes()
    sidecar = tmp_path / name
    sidecar.write_text(
        "<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
        "<rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/' "
        "xmlns:xmp='http://ns.adobe.com/xap/1.0/' xmp:Rating='4'>"
        "<dc:subject><rdf:Bag><rdf:li>mine</rdf:li></rdf:Bag></dc:subject>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    for _ in range(2):
        result = run_tag(path, {"sidecar_name": naming, "hierarchy": "animals"})
    assert result["sidecar"] == str(sidecar)
    assert path.read_bytes() == before, "sidecar mode must not touch the image"
    xmp = read_xmp(sidecar)
    assert xmp["subject"] == ["mine", "iguana"] and xmp["hierarchical"] == ["animals|iguana"]
    assert "Rating" in sidecar.read_text()  # other XMP kept


@needs_exiftool
def test_new_sidecar_and_multi_label_classes(tmp_path, samples):
    path = tmp_path / "a.jpg"
    shutil.copyfile(samples / "jpg" / "Canon_40D.jpg", path)
    run_tag(path, {"keywords": ["pets"]}, MULTI)
    xmp = read_xmp(tmp_path / "a.jpg.xmp")
    assert xmp["subject"] == ["pets", "cat", "dog"]
    assert xmp["rfwatch"]["Class"] == "cat"


@needs_exiftool
def test_formats_that_cannot_embed_fall_back_to_a_sidecar(tmp_path, heic_file, caplog):
    caplog.set_level("INFO")
    heic = tmp_path / "phone.HEIC"
    shutil.copyfile(heic_file, heic)
    bmp = tmp_path / "scan.bmp"
    Image.new("RGB", (8, 8)).save(bmp)
    for path in (heic, bmp):
        before = path.read_bytes()
        result = run_tag(path, {"mode": "embed"})
        assert result["fallback"] == "sidecar" and path.read_bytes() == before
        assert read_xmp(Path(result["sidecar"]))["subject"] == ["iguana"]
    assert "cannot carry embedded XMP here; writing a sidecar instead" in caplog.text


def test_bad_tag_options_are_config_errors():
    for options, message in [
        ({"mode": "inline"}, "mode: expected one of"),
        ({"sidecar_name": "x"}, "sidecar_name: expected full"),
        ({"keywords": ["{klass}"]}, "unknown placeholder {klass}"),
    ]:
        with pytest.raises(ValueError, match=message):
            TagAction(options)


# --- the lossless check itself: what jpeg_non_xmp_segments leaves out, and what it does not --------------------


def _resource(rid: int, data: bytes, name: bytes = b"") -> bytes:
    pascal = bytes([len(name)]) + name
    pascal += b"\0" * (len(pascal) & 1)
    return b"8BIM" + rid.to_bytes(2, "big") + pascal + len(data).to_bytes(4, "big") + data + b"\0" * (len(data) & 1)


def _jpeg_with(tmp_path: Path, name: str, *segments: tuple[int, bytes]) -> Path:
    """A real JPEG with these marker segments inserted right after SOI."""
    data = unique_jpeg((10, 10, 230), 1)
    inserted = b"".join(b"\xff" + bytes([m]) + (len(p) + 2).to_bytes(2, "big") + p for m, p in segments)
    path = tmp_path / name
    path.write_bytes(data[:2] + inserted + data[2:])
    return path


def test_the_lossless_check_ignores_only_xmp_and_iptc(tmp_path):
    """Photoshop's APP13 holds IPTC (0x0404, which `tag` writes) next to other resources that must not change."""
    iptc = _resource(IRB_IPTC, b"\x1c\x02\x19\x00\x05hello")  # 2:25 Keywords "hello"
    resolution = _resource(0x03ED, bytes(range(16)))  # ResolutionInfo
    thumbnail = _resource(0x040C, b"odd length", name=b"thumb")  # a named resource with padding
    xmp = (0xE1, XMP_APP1 + b"<x:xmpmeta/>")
    original = _jpeg_with(tmp_path, "a.jpg", xmp, (0xED, PHOTOSHOP_APP13 + iptc + resolution + thumbnail))
    assert [r[0] for r in photoshop_resources(jpeg_parts(original)[0][1][1])] == [IRB_IPTC, 0x03ED, 0x040C]
    baseline = jpeg_non_xmp_segments(original)

    # What `tag` writes: other keywords in the IPTC resource, another XMP packet: no change.
    new_iptc = _resource(IRB_IPTC, b"\x1c\x02\x19\x00\x07iguanas")
    retagged = _jpeg_with(
        tmp_path,
        "b.jpg",
        (0xE1, XMP_APP1 + b"<x:xmpmeta>iguana</x:xmpmeta>"),
        (0xED, PHOTOSHOP_APP13 + new_iptc + resolution + thumbnail),
    )
    assert jpeg_non_xmp_segments(retagged) == baseline
    # Any other resource altered, dropped or added: a change.
    altered = _resource(0x03ED, bytes(range(15)) + b"\xff")
    for name, app13 in {
        "altered.jpg": iptc + altered + thumbnail,
        "renamed.jpg": iptc + resolution + _resource(0x040C, b"odd length", name=b"thumbs"),
        "dropped.jpg": iptc + resolution,
        "added.jpg": iptc + resolution + thumbnail + _resource(0x040B, b"https://example.com/"),
    }.items():
        changed = _jpeg_with(tmp_path, name, xmp, (0xED, PHOTOSHOP_APP13 + app13))
        assert jpeg_non_xmp_segments(changed) != baseline, name
    # An APP13 that holds only IPTC counts as none at all (`tag` adds one to a JPEG that had no IPTC).
    bare = _jpeg_with(tmp_path, "bare.jpg")
    only_iptc = _jpeg_with(tmp_path, "only-iptc.jpg", (0xED, PHOTOSHOP_APP13 + iptc))
    assert jpeg_non_xmp_segments(only_iptc) == jpeg_non_xmp_segments(bare)
    only_other = _jpeg_with(tmp_path, "only-other.jpg", (0xED, PHOTOSHOP_APP13 + resolution))
    assert jpeg_non_xmp_segments(only_other) != jpeg_non_xmp_segments(bare)


@needs_exiftool
def test_the_iptc_digest_stays_in_step_so_lightroom_reads_the_new_keywords(samples, tmp_path):
    """Photoshop's IPTCDigest: an MWG reader that finds it out of step with the IPTC ignores the XMP (exiftool's
    MWG notes). A digest that matched before matches after tagging; a file without one does not get one."""
    import json
    import subprocess

    def digests(path: Path) -> tuple[str | None, str | None]:
        (doc,) = json.loads(
            subprocess.run(
                ["exiftool", "-j", "-IPTCDigest", "-CurrentIPTCDigest", str(path)], capture_output=True, check=True
            ).stdout
        )
        return doc.get("IPTCDigest"), doc.get("CurrentIPTCDigest")

    with_digest = tmp_path / "blue.jpg"
    shutil.copyfile(samples / "jpg" / "xmp" / "BlueSquare.jpg", with_digest)
    before = digests(with_digest)
    assert before[0] == before[1], "the sample's digest matched its IPTC"
    run_tag(with_digest, {"mode": "embed"})
    after = digests(with_digest)
    assert after[0] == after[1] and after[0] != before[0], "the digest was left describing the old IPTC"
    without = tmp_path / "canon.jpg"
    shutil.copyfile(samples / "jpg" / "Canon_40D.jpg", without)
    run_tag(without, {"mode": "embed"})
    assert digests(without)[0] is None


@needs_exiftool
@pytest.mark.parametrize("mode", ["sidecar", "embed", "both"])
def test_what_an_exiftool_killed_mid_write_left_does_not_stop_the_next_attempt(tmp_path, mode):
    """exiftool dies with rfwatch (kill -9, power): its `<file>_exiftool_tmp` stays, and exiftool refuses to write
    while it exists. The redone step removes it (the kill -9 storm failed files this way)."""
    path = tmp_path / "a.jpg"
    path.write_bytes(unique_jpeg((200, 30, 30), 5))
    leftovers = [tmp_path / "a.jpg_exiftool_tmp", tmp_path / "a.jpg.xmp_exiftool_tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"half a file")
    run_tag(path, {"mode": mode})
    written = path.with_name("a.jpg.xmp") if mode == "sidecar" else path
    assert read_xmp(written)["subject"] == ["iguana"]
    # only the leftovers of the files this step writes are removed
    image_tmp, sidecar_tmp = (p.exists() for p in leftovers)
    assert (image_tmp, sidecar_tmp) == {"sidecar": (True, False), "embed": (False, True), "both": (False, False)}[mode]

"""`tag`: keywords into XMP/IPTC with exiftool; everything else byte-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from metadata_reader import chunks, iptc_keywords, jpeg_non_xmp_segments, jpeg_parts, read_xmp, tiff_strips, tiff_tags
from PIL import Image

from rfwatch.config import config_from_dict
from rfwatch.context import FileContext
from rfwatch.default_plugins.tag import TagAction
from rfwatch.result import Prediction

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool not installed")

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


def test_embed_into_tiff_keeps_strips_and_tags(samples, tmp_path):
    for original in sorted((samples / "tiff").glob("*.tif*")):
        path = tmp_path / original.name
        shutil.copyfile(original, path)
        run_tag(path, {"mode": "embed"})
        assert read_xmp(path)["subject"] == ["iguana"]
        assert tiff_strips(path) == tiff_strips(original)
        assert tiff_tags(path) == tiff_tags(original)


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


def test_new_sidecar_and_multi_label_classes(tmp_path, samples):
    path = tmp_path / "a.jpg"
    shutil.copyfile(samples / "jpg" / "Canon_40D.jpg", path)
    run_tag(path, {"keywords": ["pets"]}, MULTI)
    xmp = read_xmp(tmp_path / "a.jpg.xmp")
    assert xmp["subject"] == ["pets", "cat", "dog"]
    assert xmp["rfwatch"]["Class"] == "cat"


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

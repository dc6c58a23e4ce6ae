"""An independent reader for what `tag` writes: Pillow for the containers, ElementTree for XMP,
and our own JPEG/PNG/WebP chunk walkers to prove everything else is byte-identical."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, IptcImagePlugin

NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "rfwatch": "https://github.com/rfwatch/rfwatch/ns/1.0/",
}
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"


def xmp_bytes(path: Path) -> bytes | None:
    if path.suffix == ".xmp":
        return path.read_bytes()
    with Image.open(path) as img:
        if img.format == "TIFF":
            raw = img.tag_v2.get(700)
            return bytes(raw) if raw is not None else None
        data = img.info.get("xmp") or img.info.get("XML:com.adobe.xmp")
        return data.encode() if isinstance(data, str) else data


def _bag(root: ET.Element, tag: str) -> list[str]:
    out = []
    for el in root.iter(tag):
        out += [li.text or "" for li in el.iter(f"{{{NS['rdf']}}}li")]
    return out


def read_xmp(path: Path) -> dict[str, object]:
    data = xmp_bytes(path)
    if not data:
        return {"subject": [], "hierarchical": [], "tagslist": [], "rfwatch": {}}
    text = data.decode("utf-8", "replace")
    text = text[text.index("<x:xmpmeta") : text.rindex("</x:xmpmeta>") + len("</x:xmpmeta>")]
    root = ET.fromstring(text)
    own = {}
    for desc in root.iter(f"{{{NS['rdf']}}}Description"):
        for key, value in desc.attrib.items():
            if key.startswith(f"{{{NS['rfwatch']}}}"):
                own[key.split("}")[1]] = value
        for child in desc:
            if child.tag.startswith(f"{{{NS['rfwatch']}}}") and child.text and child.text.strip():
                own[child.tag.split("}")[1]] = child.text.strip()
    return {
        "subject": _bag(root, f"{{{NS['dc']}}}subject"),
        "hierarchical": _bag(root, f"{{{NS['lr']}}}hierarchicalSubject"),
        "tagslist": _bag(root, f"{{{NS['digiKam']}}}TagsList"),
        "rfwatch": own,
    }


def iptc_keywords(path: Path) -> list[str]:
    with Image.open(path) as img:
        info = IptcImagePlugin.getiptcinfo(img) or {}
    value = info.get((2, 25), [])
    values = value if isinstance(value, list) else [value]
    return [v.decode("utf-8", "replace") for v in values]


def jpeg_parts(path: Path) -> tuple[list[tuple[int, bytes]], bytes]:
    """Every marker segment before the scan (marker, payload), and everything from SOS to the end."""
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    i, segments = 2, []
    while i < len(data):
        assert data[i] == 0xFF, f"bad marker at {i}"
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: the compressed image data follows
            return segments, data[i:]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        segments.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
    raise AssertionError("no scan data")


def jpeg_non_xmp_segments(path: Path) -> list[tuple[int, bytes]]:
    segments, _ = jpeg_parts(path)
    return [
        (m, p) for m, p in segments if not (m == 0xE1 and p.startswith(XMP_APP1)) and m != 0xED
    ]  # XMP, Photoshop IRB (IPTC)


def chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """PNG or WebP chunks as (type, payload)."""
    data = path.read_bytes()
    out = []
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        i = 8
        while i < len(data):
            n = struct.unpack(">I", data[i : i + 4])[0]
            out.append((data[i + 4 : i + 8], data[i + 8 : i + 8 + n]))
            i += 12 + n
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        i = 12
        while i < len(data):
            n = struct.unpack("<I", data[i + 4 : i + 8])[0]
            out.append((data[i : i + 4], data[i + 8 : i + 8 + n]))
            i += 8 + n + (n & 1)
    return out


def tiff_strips(path: Path) -> list[bytes]:
    with Image.open(path) as img:
        offsets = img.tag_v2.get(273) or img.tag_v2.get(324)
        counts = img.tag_v2.get(279) or img.tag_v2.get(325)
    data = path.read_bytes()
    return [data[o : o + c] for o, c in zip(offsets, counts, strict=False)]


def tiff_tags(path: Path) -> dict[int, object]:
    ignore = {273, 279, 700, 33723, 34377}  # strip layout, XMP, IPTC, Photoshop
    with Image.open(path) as img:
        return {k: v for k, v in img.tag_v2.items() if k not in ignore}

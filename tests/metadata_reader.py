"""An independent reader for what `tag` writes: Pillow for the containers, ElementTree for XMP,
and our own JPEG/PNG/WebP chunk walkers to prove everything else is byte-identical."""

from __future__ import annotations

import hashlib
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


PHOTOSHOP_APP13 = b"Photoshop 3.0\x00"
IRB_IPTC = 0x0404  # IPTC-NAA: the record `tag` writes keywords into
IRB_IPTC_DIGEST = 0x0425  # MD5 of the IPTC-NAA data; compared as "matches its IPTC" rather than byte for byte


def photoshop_resources(payload: bytes) -> list[tuple[int, bytes, bytes]]:
    """An APP13 payload's Photoshop image resource blocks: (id, Pascal name, data), each as stored.

    Layout (Adobe's Photoshop File Formats Specification, "Image Resource Blocks"): the signature
    "Photoshop 3.0\\0", then resources: "8BIM", a 2-byte id, a Pascal name padded to an even length
    (length byte included), a 4-byte size, and the data padded to an even length.
    """
    assert payload.startswith(PHOTOSHOP_APP13), "not a Photoshop APP13 segment"
    i, out = len(PHOTOSHOP_APP13), []
    while i < len(payload):
        assert payload[i : i + 4] == b"8BIM", f"bad resource signature at {i}: {payload[i : i + 4]!r}"
        rid = struct.unpack(">H", payload[i + 4 : i + 6])[0]
        name_len = payload[i + 6]
        name_end = i + 6 + 1 + name_len + ((1 + name_len) & 1)
        name = payload[i + 6 : name_end]
        size = struct.unpack(">I", payload[name_end : name_end + 4])[0]
        data = payload[name_end + 4 : name_end + 4 + size]
        assert len(data) == size, f"resource 0x{rid:04x} is cut short"
        out.append((rid, name, data))
        i = name_end + 4 + size + (size & 1)
    return out


def _without_iptc(payload: bytes) -> bytes | None:
    """An APP13 segment minus its IPTC-NAA resource; None if nothing else is in it."""
    if not payload.startswith(PHOTOSHOP_APP13):
        return payload  # not Photoshop's: compared whole
    resources = photoshop_resources(payload)
    iptc = next((data for rid, _, data in resources if rid == IRB_IPTC), b"")
    kept, digest = [], []
    for rid, name, data in resources:
        if rid == IRB_IPTC:
            continue
        if rid == IRB_IPTC_DIGEST:
            # A digest that matches the IPTC beside it is what MWG readers check; exiftool rewrites it at the end
            # of the block when it updates it, so it is compared for that, wherever it is.
            digest.append((rid, name, b"in step with the IPTC" if data == hashlib.md5(iptc).digest() else data))
            continue
        kept.append((rid, name, data))
    kept += digest
    if not kept:
        return None
    return PHOTOSHOP_APP13 + b"".join(
        b"8BIM" + struct.pack(">H", rid) + name + struct.pack(">I", len(data)) + data + b"\0" * (len(data) & 1)
        for rid, name, data in kept
    )


def jpeg_non_xmp_segments(path: Path) -> list[tuple[int, bytes]]:
    """Every marker segment before the scan except what `tag` may write: the XMP APP1 and, in APP13, the
    IPTC-NAA resource. Every other Photoshop resource is kept, byte for byte; an APP13 left empty is dropped."""
    segments, _ = jpeg_parts(path)
    out = []
    for marker, payload in segments:
        if marker == 0xE1 and payload.startswith(XMP_APP1):
            continue
        if marker == 0xED:
            rest = _without_iptc(payload)
            if rest is not None:
                out.append((marker, rest))
            continue
        out.append((marker, payload))
    return out


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

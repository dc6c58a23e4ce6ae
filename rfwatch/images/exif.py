"""Camera facts: a file's EXIF tags for ``{exif:TAG}`` placeholders and ``when: exif:`` conditions.

Two sources, one set of names and values (exiftool's, as ``exiftool -n`` gives them):

* **Pillow**, always: the standard tags of IFD0, the Exif IFD and the GPS IFD (Make, Model, SerialNumber,
  DateTimeOriginal, LensModel, ISO, ...). GPSLatitude, GPSLongitude and GPSAltitude are signed decimal
  numbers (south, west and below sea level negative), as exiftool's composite tags of those names.
* **exiftool**, when installed: every tag it reads, maker notes included (a Reconyx camera's
  ``Sequence`` "4 5" and ``EventNumber``), in one ``-j -n -a -G0:1`` call through rfwatch's pool of
  stay-open processes. ``-a`` asks for every copy of a tag: exiftool may otherwise list only one of
  several same-named tags (with ``-G0`` an XMP Orientation hides the EXIF one), and a group prefix
  must find the copy it names.

A tag Pillow has is answered from Pillow, without a process; only a tag it lacks, or one named with a
group (``MakerNotes:Sequence``, ``Reconyx:Sequence``), asks exiftool, and then every tag of the file is
read at once and kept. When exiftool reports one name in several groups, a bare name means the
Composite tag, else the EXIF one, else the maker notes', else the first other one.

**Read once per file.** The rules see only where a file was found, the actions its FileContext, so the
two meet here: :func:`camera_facts` hands out the same :class:`CameraFacts` for the same file (device,
inode, size and modification time, so a file renamed by a ``move`` is still known and one rewritten is
read again), and a CameraFacts reads each source at most once, when a tag is first asked for.

Tag names are case-insensitive; the EXIF standard's names for tags exiftool names otherwise are
accepted too (BodySerialNumber is SerialNumber, ISOSpeedRatings is ISO, DateTimeDigitized is
CreateDate). A standard name means the EXIF tag even where exiftool's own listing would show a maker
note's tag of that name instead (some Nikons' WhiteBalance): the answer is the same with exiftool or
without; ``MakerNotes:WhiteBalance`` names the other. A tag the file lacks is None here: an empty string
in templates, no match in conditions.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from rfwatch.record import record

__all__ = ["TagRef", "CameraFacts", "ExifNumber", "camera_facts", "exiftool_available", "is_standard"]

log = logging.getLogger("rfwatch.images.exif")

#: Files whose facts are kept: enough for every worker's file and the few a rule looks at twice.
CACHE_SIZE = 256
EXIFTOOL_TIMEOUT = 30.0

_NAME = r"[A-Za-z][A-Za-z0-9_-]*"
_TAG = re.compile(rf"(?:({_NAME}):)?({_NAME})")

# Pillow's names (from the EXIF standard) where exiftool's differ: exiftool's are the ones rfwatch uses.
_RENAMED = {
    0x0101: "ImageHeight",  # ImageLength
    0x0132: "ModifyDate",  # DateTime
    0x8827: "ISO",  # ISOSpeedRatings
    0x9004: "CreateDate",  # DateTimeDigitized
    0x9204: "ExposureCompensation",  # ExposureBiasValue
    0x9214: "SubjectArea",  # SubjectLocation
    0x9290: "SubSecTime",
    0x9291: "SubSecTimeOriginal",
    0x9292: "SubSecTimeDigitized",
    0xA000: "FlashpixVersion",
    0xA405: "FocalLengthIn35mmFormat",  # FocalLengthIn35mmFilm
    0xA430: "OwnerName",  # CameraOwnerName
    0xA431: "SerialNumber",  # BodySerialNumber
    0xA432: "LensInfo",  # LensSpecification
}
# Pointers, blobs and the maker notes (exiftool decodes those): not values a rule can use.
_SKIPPED = {0x8769, 0x8825, 0xA005, 0x014A, 0x927C, 0x02BC, 0x83BB, 0x8773, 0xC4A5, 0x0201, 0x0202, 0x9C9B}
# exiftool gives these APEX values converted (seconds, f-number), -n or not.
_APEX = {0x9201: lambda v: 2.0 ** (-v), 0x9202: lambda v: 2.0 ** (v / 2), 0x9205: lambda v: 2.0 ** (v / 2)}
_GROUP_RANK = {"composite": 0, "exif": 1, "makernotes": 2}


class ExifNumber(float):
    """A number from the file, shown as exiftool shows it (15 significant digits) unless a template formats it."""

    def __format__(self, spec: str) -> str:
        return format(float(self), spec) if spec else f"{float(self):.15g}"

    def __str__(self) -> str:
        return format(self, "")

    __repr__ = __str__


@functools.cache
def _tables() -> tuple[dict[int, str], dict[int, str], dict[str, str]]:
    """(IFD0 and Exif IFD names by id, GPS names by id, canonical name by lower-case name or alias)."""
    from PIL import ExifTags

    main = {tag: _RENAMED.get(tag, name) for tag, name in ExifTags.TAGS.items() if tag not in _SKIPPED}
    gps = dict(ExifTags.GPSTAGS)
    canonical = {name.lower(): name for name in (*main.values(), *gps.values())}
    for tag, name in _RENAMED.items():
        canonical[ExifTags.TAGS[tag].lower()] = name  # the standard's own name works too
    return main, gps, canonical


def is_standard(name: str) -> bool:
    """Whether Pillow reads this tag (so it needs no exiftool)."""
    return name.lower() in _tables()[2]


@record
class TagRef:
    """A tag as a rule or a template names it: ``Model``, ``MakerNotes:Sequence``."""

    name: str
    group: str | None = None

    @classmethod
    def parse(cls, text: str) -> TagRef:
        m = _TAG.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"expected an EXIF tag name such as Model or MakerNotes:Sequence, got {text!r}")
        group, name = m.groups()
        return cls(_tables()[2].get(name.lower(), name), group)

    @property
    def text(self) -> str:
        return f"{self.group}:{self.name}" if self.group else self.name

    @property
    def standard(self) -> bool:
        """Answered without exiftool (a group prefix always asks exiftool)."""
        return self.group is None and is_standard(self.name)


def exiftool_available() -> bool:
    return shutil.which("exiftool") is not None


class CameraFacts:
    """The tags of one file, read lazily (each source once) and kept. Thread-safe."""

    def __init__(self, path: Path):
        #: Where the file is now (updated by :func:`camera_facts` when it moved before being read).
        self.path = path
        self._standard: dict[str, Any] | None = None
        self._exiftool: _ExifToolTags | None = None
        #: exiftool could not read the file: the next camera_facts() tries again.
        self.failed = False
        self._lock = threading.Lock()

    def get(self, tag: TagRef | str) -> Any | None:
        """The tag's value (str, int or :class:`ExifNumber`), or None when the file lacks it."""
        ref = TagRef.parse(tag) if isinstance(tag, str) else tag
        with self._lock:
            if ref.group is None:
                if self._standard is None:
                    self._standard = _read_pillow(self.path)
                value = self._standard.get(ref.name.lower())
                if value is not None:
                    return value
            if self._exiftool is None:
                self._exiftool = self._read_exiftool(ref)
            return self._exiftool.get(ref)

    def standard_tags(self) -> dict[str, Any]:
        """Every standard tag of the file Pillow reads, by lower-case name (a copy)."""
        with self._lock:
            if self._standard is None:
                self._standard = _read_pillow(self.path)
            return dict(self._standard)

    def text(self, tag: TagRef | str) -> str | None:
        """The value as text (for globs), or None when the file lacks the tag."""
        value = self.get(tag)
        return None if value is None else str(value)

    def _read_exiftool(self, ref: TagRef) -> _ExifToolTags:
        if not exiftool_available():
            if not ref.standard:
                _warn_no_exiftool(ref.text)
            return _ExifToolTags({}, {})
        from rfwatch.images.exiftool import ExifToolError, shared_pool

        try:
            result = shared_pool().run(["-j", "-n", "-a", "-G0:1"], self.path, EXIFTOOL_TIMEOUT, expect_write=False)
            # Pairs, not a dict: with -a one key can come twice (a tag repeated in one directory); the first counts.
            (pairs,) = json.loads(result.stdout or "[{}]", object_pairs_hook=list)
        except (ExifToolError, ValueError) as exc:
            log.warning("%s: exiftool could not read its tags (%s); only standard EXIF tags are known", self.path, exc)
            self.failed = True
            return _ExifToolTags({}, {})
        return _ExifToolTags.from_pairs(pairs)


@functools.cache
def _warn_no_exiftool(tag: str) -> None:
    log.warning(
        "{exif:%s}: exiftool is not installed, so only standard EXIF tags are read and this one is empty "
        "(apt-get install libimage-exiftool-perl)",
        tag,
    )


@record
class _ExifToolTags:
    by_name: dict[str, Any]
    by_group: dict[tuple[str, str], Any]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _ExifToolTags:
        by_name: dict[str, tuple[int, Any]] = {}
        by_group: dict[tuple[str, str], Any] = {}
        for key, raw in pairs:
            *groups, name = key.split(":")
            value = _exiftool_value(raw)
            if not groups or value is None:  # SourceFile
                continue
            lname = name.lower()
            rank = _GROUP_RANK.get(groups[0].lower(), 3)
            if lname not in by_name or rank < by_name[lname][0]:
                by_name[lname] = (rank, value)
            for group in groups:  # family 0 (EXIF, MakerNotes) and family 1 (IFD0, Reconyx)
                by_group.setdefault((group.lower(), lname), value)
        return cls({k: v for k, (_, v) in by_name.items()}, by_group)

    def get(self, ref: TagRef) -> Any | None:
        if ref.group is None:
            return self.by_name.get(ref.name.lower())
        return self.by_group.get((ref.group.lower(), ref.name.lower()))


def _number(value: float) -> int | ExifNumber | None:
    if math.isnan(value) or math.isinf(value):
        return None
    value = float(f"{value:.15g}")  # what exiftool prints; equal values from both sources compare equal
    return int(value) if value.is_integer() else ExifNumber(value)


def _exiftool_value(raw: Any) -> Any | None:
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return _number(raw)
    if isinstance(raw, str):
        if raw.startswith("(Binary data "):
            return None
        return raw.strip("\x00 \t\r\n")
    if isinstance(raw, list):
        return ", ".join(str(v) for v in (_exiftool_value(x) for x in raw) if v is not None)
    return json.dumps(raw, ensure_ascii=False)


# --- Pillow ---------------------------------------------------------------------------------


def _read_pillow(path: Path) -> dict[str, Any]:
    """The standard tags, by lower-case name; {} for a file Pillow cannot open."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            # The EXIF block itself (a TIFF's own directory): getexif() would take an XMP tiff:Orientation for EXIF's.
            raw = img.info.get("exif")
            exif = img.getexif() if img.format == "TIFF" else Image.Exif()
            if isinstance(raw, bytes):
                exif.load(raw)
            ifds = [(dict(exif), False), (dict(exif.get_ifd(0x8769)), False), (dict(exif.get_ifd(0x8825)), True)]
            endian = getattr(exif, "endian", None) or "<"
    except Exception as exc:  # any decoder error: the file simply has no facts Pillow can read
        log.debug("%s: no EXIF through Pillow: %s", path, exc)
        return {}
    main, gps_names, _ = _tables()
    out: dict[str, Any] = {}
    for tags, gps in ifds:
        names = gps_names if gps else main
        for tag, raw in tags.items():
            name = names.get(tag)
            if name is None:
                continue
            try:
                value = _pillow_value(tag, raw, endian, gps)
            except (ValueError, TypeError, ZeroDivisionError, OverflowError):
                value = None
            if value is not None:
                out.setdefault(name.lower(), value)
    if gps_tags := ifds[2][0]:
        out.update(_gps_decimal(gps_tags))
    return out


def _pillow_value(tag: int, raw: Any, endian: str, gps: bool) -> Any | None:
    if not gps and tag in _APEX:
        return _number(_APEX[tag](_rational(raw)))
    if not gps and tag == 0x9286:  # UserComment: an 8-byte character code, then the text
        return _user_comment(raw, endian) if isinstance(raw, bytes) else str(raw).strip("\x00 ")
    if gps and tag == 7 and isinstance(raw, tuple) and len(raw) == 3:  # GPSTimeStamp, as exiftool writes it
        seconds = (float(raw[0]) * 60 + float(raw[1])) * 60 + float(raw[2])
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        text = f"{secs:012.9f}".rstrip("0").rstrip(".")
        return f"{int(hours):02d}:{int(minutes):02d}:{text}"
    return _plain(raw)


def _plain(raw: Any) -> Any | None:
    if isinstance(raw, str):
        return raw.split("\x00", 1)[0].strip()  # exiftool ends a string at its first NUL
    if isinstance(raw, bytes):
        if len(raw) == 1:
            return raw[0]
        text = raw.rstrip(b"\x00")
        if text and all(32 <= b < 127 for b in text):
            return text.decode("ascii").strip()
        return " ".join(str(b) for b in raw) if len(raw) <= 16 else None
    if isinstance(raw, tuple):
        if len(raw) > 16:
            return None
        parts = [_plain(x) for x in raw]
        return None if any(p is None for p in parts) else " ".join(str(p) for p in parts)
    if isinstance(raw, int):
        return raw
    try:
        return _number(_rational(raw))  # IFDRational; 0/0 is NaN: no value
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _rational(raw: Any) -> float:
    """A rational as exiftool reads it: rounded to 10 significant digits."""
    return float(f"{float(raw):.10g}")


def _user_comment(raw: bytes, endian: str) -> str:
    code, text = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        decoded = text.decode("utf-16-be" if endian == ">" else "utf-16-le", "replace")
    elif code.startswith(b"ASCII"):
        decoded = text.decode("ascii", "replace")
    else:
        decoded = text.decode("utf-8", "replace")
    return decoded.strip("\x00 \t\r\n")


def _gps_decimal(tags: dict[int, Any]) -> dict[str, Any]:
    """GPSLatitude, GPSLongitude (degrees) and GPSAltitude (metres), signed: south, west, below sea level < 0."""
    out: dict[str, Any] = {}
    for tag, ref_tag, negative, name in ((2, 1, "S", "gpslatitude"), (4, 3, "W", "gpslongitude")):
        dms = tags.get(tag)
        try:
            degrees = sum(_rational(part) / 60**i for i, part in enumerate(dms))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        ref = tags.get(ref_tag)
        ref = ref.decode("ascii", "ignore") if isinstance(ref, bytes) else str(ref or "")
        value = _number(-degrees if ref.strip("\x00 ").upper() == negative else degrees)
        if value is not None:
            out[name] = value
    if 6 in tags:
        try:
            altitude = _rational(tags[6])
            below = tags.get(5) in (1, b"\x01")
            value = _number(-altitude if below else altitude)
            if value is not None:
                out["gpsaltitude"] = value
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    return out


# --- one CameraFacts per file ---------------------------------------------------------------------

_cache: OrderedDict[tuple[int, int, int, int], CameraFacts] = OrderedDict()
_cache_lock = threading.Lock()


def camera_facts(path: str | os.PathLike[str]) -> CameraFacts:
    """The facts of the file at ``path``: the same object for the same file, however often asked."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return CameraFacts(path)  # gone: nothing to read, every tag is missing
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        facts = _cache.get(key)
        if facts is not None and not facts.failed:
            _cache.move_to_end(key)
            facts.path = path
            return facts
        facts = _cache[key] = CameraFacts(path)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return facts

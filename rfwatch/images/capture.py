"""When a frame was captured: EXIF DateTimeOriginal with SubSecTimeOriginal and OffsetTimeOriginal, else the file's
mtime (as Unix seconds), for sequences (rfwatch.processing.sequences).

A time without OffsetTimeOriginal is read as this host's local time, as the camera's clock most likely was: the
frames of one camera are compared with each other, so only the differences matter, and those are right either
way (except across a change of daylight saving time inside one burst).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from rfwatch.images.exif import camera_facts

__all__ = ["capture_time"]

_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def capture_time(path: Path) -> float:
    """The frame's capture time; the file's mtime when it has no readable DateTimeOriginal (0.0 if it is gone)."""
    try:
        tags = camera_facts(path).standard_tags()
        when = _exif_time(tags.get("datetimeoriginal"), tags.get("subsectimeoriginal"), tags.get("offsettimeoriginal"))
    except Exception:  # an unreadable file has no EXIF: the mtime speaks for it
        when = None
    if when is not None:
        return when
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _exif_time(value: object, subsec: object, offset: object) -> float | None:
    if value is None:
        return None
    try:
        stamp = dt.datetime.strptime(str(value).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    digits = re.sub(r"\D", "", str(subsec or ""))
    fraction = float("0." + digits) if digits else 0.0
    m = _OFFSET.match(str(offset or "").strip("\x00 "))
    if m:
        sign = 1 if m.group(1) == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
        stamp = stamp.replace(tzinfo=tz)
    return stamp.timestamp() + fraction

"""Exports of what rfwatch decided, for the tools ecologists use: ``rfwatch export``.

- ``camtrap-dp``: a Camtrap DP 1.0 data package (camtrap_dp.py), validated offline by profile.py;
- ``megadetector``: MegaDetector batch output, for Timelapse and AddaxAI (megadetector.py);
- ``csv``: one row per file (table.py).

Exports only read the journal (records.py) and the files' EXIF; ``export:`` in the config (settings.py) supplies
what the journal cannot know. Sequences become events in events.py.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from rfwatch.config import Config, ConfigError
from rfwatch.exports.records import FileRecord, collect
from rfwatch.exports.settings import ExportSettings, export_settings
from rfwatch.journal import Journal

__all__ = ["Format", "run_export", "FileRecord", "ExportSettings"]


class Format(str, Enum):
    CAMTRAP_DP = "camtrap-dp"
    MEGADETECTOR = "megadetector"
    CSV = "csv"


def run_export(
    config: Config, journal: Journal, fmt: Format, out: Path, since: float | None = None, until: float | None = None
) -> dict[str, int]:
    """Write the export; return what it counts. ConfigError for a missing required value (named)."""
    settings = export_settings(config)
    records = collect(
        journal, since, until, multi_label_threshold=config.roboflow.multi_label_threshold, tz=settings.timezone
    )
    if fmt == Format.CAMTRAP_DP:
        from rfwatch.exports.camtrap_dp import write_camtrap_dp

        if not records:
            raise ConfigError("export: no file classified in that time window: a Camtrap DP package needs one")
        return write_camtrap_dp(records, settings, out)
    if fmt == Format.MEGADETECTOR:
        from rfwatch.exports.megadetector import write_megadetector

        return write_megadetector(records, settings, out)
    from rfwatch.exports.table import write_csv

    return write_csv(records, out)

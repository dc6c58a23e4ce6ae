"""Everything a plugin needs from rfwatch, in one module.

Third-party plugins and rfwatch's own (``rfwatch/default_plugins/``) import from here and from nowhere
else in rfwatch (a test enforces it for the built-ins); docs/plugins.md documents each name. What is not
here may change without notice.

    from rfwatch.plugin import hookimpl, Options, write_output

    @hookimpl
    def register_actions(register):
        register("thumbnail", Thumbnail)
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rfwatch import hookimpl
from rfwatch.config import Config
from rfwatch.crashpoints import crash_point
from rfwatch.files.place import (
    TMP_PREFIX,
    ConflictMode,
    Placed,
    fsync_dir,
    fsync_file,
    holds,
    place_file,
    recover_placement,
    sha256_file,
    sidecars_of,
)
from rfwatch.host.annotate import annotate_image, label_text
from rfwatch.host.context import FileContext
from rfwatch.host.delivery import Delivered, Delivery, Failed, Gone, Retry
from rfwatch.host.delivery import DeliveryStatus as Deliveries
from rfwatch.host.options import Options
from rfwatch.host.restore import copy_back, move_back
from rfwatch.host.runtime import platform_client
from rfwatch.host.templates import Template, TemplateError, UnsafePathError, safe_component
from rfwatch.images.exiftool import ExifToolError, exiftool_executable, exiftool_pool
from rfwatch.images.prepare import ImageError, open_image, open_upright, prepare_image
from rfwatch.redact import redact, register_secret
from rfwatch.roboflow import platform
from rfwatch.roboflow.result import ClassScore, Prediction

__all__ = [
    # hooks
    "hookimpl",
    # what an action sees
    "FileContext",
    "Prediction",
    "ClassScore",
    "Config",
    # options and templates
    "Options",
    "Template",
    "TemplateError",
    "UnsafePathError",
    "safe_component",
    # files, durably
    "ConflictMode",
    "Placed",
    "place_file",
    "recover_placement",
    "write_output",
    "remove_output",
    "move_back",
    "copy_back",
    "sidecars_of",
    "sha256_file",
    "holds",
    "fsync_file",
    "fsync_dir",
    "TMP_PREFIX",
    # images and metadata
    "open_image",
    "open_upright",
    "prepare_image",
    "ImageError",
    "annotate_image",
    "label_text",
    "exiftool_pool",
    "exiftool_executable",
    "ExifToolError",
    # deliveries
    "Delivery",
    "Delivered",
    "Retry",
    "Gone",
    "Failed",
    "Deliveries",
    # Roboflow's platform API (uploads, project facts): platform.PlatformClient and its errors
    "platform",
    "platform_client",
    # secrets and state
    "register_secret",
    "redact",
    "state_dir",
    # testing
    "crash_point",
]


def write_output(
    ctx: FileContext,
    destination: Path,
    write: Callable[[Path], Any],
    on_conflict: ConflictMode | str = ConflictMode.OVERWRITE,
) -> Placed:
    """Write a derived file (a thumbnail, an annotated copy) to ``destination`` durably; return where it went.

    ``write(tmp)`` writes the content to a temporary name in the destination's folder (hidden from watchers
    by its leading dot); the file is fsynced and renamed into place under ``on_conflict`` (never replacing
    anything unless it is ``overwrite``), recorded as produced so that a watcher on that folder does not take
    it as new, and its hash kept so ``rfwatch undo`` removes it only while nobody changed it. A crash leaves
    at most a temporary file, which the redone step removes; a crash after the file was in place, before the
    step finished, is recognised (the place and hash were recorded first): no second copy as ``name (1)``.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    resumed = ctx.resume or {}
    if resumed.get("output_tmp"):
        Path(resumed["output_tmp"]).unlink(missing_ok=True)
    placed_at, placed_sha = resumed.get("output_target"), resumed.get("output_sha256")
    if placed_at and holds(placed_at, placed_sha):
        outcome = "duplicate" if resumed.get("output_duplicate") else "moved"
        if outcome == "moved":
            ctx.produced(Path(placed_at))
        return Placed(outcome, Path(placed_at), placed_sha)
    tmp = destination.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}{destination.suffix}")
    ctx.intent(output_tmp=str(tmp), output=str(destination))
    try:
        write(tmp)
        fsync_file(tmp)
        digest = sha256_file(tmp)

        def record(**detail: Any) -> None:  # where it goes, before it goes there
            ctx.intent(
                output_tmp=str(tmp),
                output=str(destination),
                output_target=detail.get("target"),
                output_sha256=digest,
                output_duplicate=bool(detail.get("duplicate")),
            )

        placed = place_file(
            tmp, destination, keep_source=False, on_conflict=on_conflict, src_hash=digest, record=record
        )
    finally:
        tmp.unlink(missing_ok=True)
    if placed.outcome in ("moved", "copied"):
        ctx.produced(placed.path)
    return Placed(placed.outcome, placed.path, digest)


def remove_output(path: str | os.PathLike[str], sha256: str | None) -> str:
    """Undo an output file: remove it if it still holds what rfwatch wrote; say what happened.

    Returns ``"removed"``, ``"missing"`` (already gone), or ``"changed"`` (somebody edited it since: kept).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return "missing"
    if sha256 is not None and not holds(path, sha256):
        return "changed"
    try:
        path.unlink()
    except FileNotFoundError:
        return "missing"
    fsync_dir(path.parent)
    return "removed"


_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def state_dir(config: Config, plugin: str) -> Path:
    """A folder of the plugin's own next to rfwatch's journal (``<state>/plugins/<plugin>/``), created.

    Under systemd that is inside ``StateDirectory=``, so the service may write it.
    """
    name = _NAME.sub("_", plugin).strip("._") or "plugin"
    folder = config.state_dir / "plugins" / name
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    return folder

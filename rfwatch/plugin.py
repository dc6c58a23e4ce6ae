"""Everything a plugin needs from rfwatch, in one module.

Third-party plugins and rfwatch's own (``rfwatch/default_plugins/``) import from here and from nowhere
else in rfwatch (a test enforces it for the built-ins); docs/plugins.md documents each name. What is not
here may change without notice.

    from rfwatch.plugin import hookimpl, Options, write_output

    @hookimpl
    def register_actions(register):
        register("thumbnail", Thumbnail)

Importing this module loads almost nothing: each name is imported from where it lives when a plugin first uses
it (PEP 562), so that a plugin importing ``FileContext`` does not pay for Pillow or requests, and loading the
plugins costs little in commands such as ``rfwatch status`` (issue 23, item 1; tests/test_imports.py).
"""

from __future__ import annotations

import importlib
import os
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfwatch.host.actions import Action, ActionFactory, Describable, Undoable
from rfwatch.host.settings import ActionUse, PluginConfig, plugin_config, state_folder

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from rfwatch import hookimpl
    from rfwatch.crashpoints import crash_point
    from rfwatch.crashpoints import declare as declare_crash_points
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
    from rfwatch.host.templates import Template, TemplateError, UnsafePathError, safe_component
    from rfwatch.images.exiftool import ExifToolError, exiftool_executable, exiftool_pool
    from rfwatch.images.prepare import ImageError, open_image, open_upright, prepare_image
    from rfwatch.processing.outbox_view import UPLOAD_KIND
    from rfwatch.redact import redact, register_secret
    from rfwatch.roboflow.platform import KeyRefused, NotFound, PlatformClient, PlatformError, PlatformUnavailable
    from rfwatch.roboflow.result import ClassScore, Prediction

__all__ = [
    # hooks
    "hookimpl",
    # actions
    "Action",
    "Undoable",
    "Describable",
    "ActionFactory",
    # what an action sees
    "FileContext",
    "Prediction",
    "ClassScore",
    # a plugin's own settings and state
    "plugin_config",
    "PluginConfig",
    "ActionUse",
    "state_dir",
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
    "UPLOAD_KIND",
    # Roboflow's platform API (uploads, project facts)
    "platform_client",
    "PlatformClient",
    "PlatformError",
    "KeyRefused",
    "NotFound",
    "PlatformUnavailable",
    # secrets
    "register_secret",
    "redact",
    # testing
    "crash_point",
    "declare_crash_points",
]

#: name -> (module, attribute): imported on first use.
_LAZY: dict[str, tuple[str, str]] = {
    "hookimpl": ("rfwatch", "hookimpl"),
    "FileContext": ("rfwatch.host.context", "FileContext"),
    "Prediction": ("rfwatch.roboflow.result", "Prediction"),
    "ClassScore": ("rfwatch.roboflow.result", "ClassScore"),
    "Options": ("rfwatch.host.options", "Options"),
    "Template": ("rfwatch.host.templates", "Template"),
    "TemplateError": ("rfwatch.host.templates", "TemplateError"),
    "UnsafePathError": ("rfwatch.host.templates", "UnsafePathError"),
    "safe_component": ("rfwatch.host.templates", "safe_component"),
    "ConflictMode": ("rfwatch.files.place", "ConflictMode"),
    "Placed": ("rfwatch.files.place", "Placed"),
    "place_file": ("rfwatch.files.place", "place_file"),
    "recover_placement": ("rfwatch.files.place", "recover_placement"),
    "sidecars_of": ("rfwatch.files.place", "sidecars_of"),
    "sha256_file": ("rfwatch.files.place", "sha256_file"),
    "holds": ("rfwatch.files.place", "holds"),
    "fsync_file": ("rfwatch.files.place", "fsync_file"),
    "fsync_dir": ("rfwatch.files.place", "fsync_dir"),
    "TMP_PREFIX": ("rfwatch.files.place", "TMP_PREFIX"),
    "move_back": ("rfwatch.host.restore", "move_back"),
    "copy_back": ("rfwatch.host.restore", "copy_back"),
    "open_image": ("rfwatch.images.prepare", "open_image"),
    "open_upright": ("rfwatch.images.prepare", "open_upright"),
    "prepare_image": ("rfwatch.images.prepare", "prepare_image"),
    "ImageError": ("rfwatch.images.prepare", "ImageError"),
    "annotate_image": ("rfwatch.host.annotate", "annotate_image"),
    "label_text": ("rfwatch.host.annotate", "label_text"),
    "exiftool_pool": ("rfwatch.images.exiftool", "exiftool_pool"),
    "exiftool_executable": ("rfwatch.images.exiftool", "exiftool_executable"),
    "ExifToolError": ("rfwatch.images.exiftool", "ExifToolError"),
    "Delivery": ("rfwatch.host.delivery", "Delivery"),
    "Delivered": ("rfwatch.host.delivery", "Delivered"),
    "Retry": ("rfwatch.host.delivery", "Retry"),
    "Gone": ("rfwatch.host.delivery", "Gone"),
    "Failed": ("rfwatch.host.delivery", "Failed"),
    "Deliveries": ("rfwatch.host.delivery", "DeliveryStatus"),
    "UPLOAD_KIND": ("rfwatch.processing.outbox_view", "UPLOAD_KIND"),
    "PlatformClient": ("rfwatch.roboflow.platform", "PlatformClient"),
    "PlatformError": ("rfwatch.roboflow.platform", "PlatformError"),
    "KeyRefused": ("rfwatch.roboflow.platform", "KeyRefused"),
    "NotFound": ("rfwatch.roboflow.platform", "NotFound"),
    "PlatformUnavailable": ("rfwatch.roboflow.platform", "PlatformUnavailable"),
    "register_secret": ("rfwatch.redact", "register_secret"),
    "redact": ("rfwatch.redact", "redact"),
    "crash_point": ("rfwatch.crashpoints", "crash_point"),
    "declare_crash_points": ("rfwatch.crashpoints", "declare"),
}

#: Names this module exported before 0.2, kept working with a DeprecationWarning: name -> (module, attribute, use).
_DEPRECATED: dict[str, tuple[str, str, str]] = {
    "Config": ("rfwatch.config", "Config", "plugin_config(config, name) for a plugin's own settings"),
    "platform": ("rfwatch.roboflow.platform", "", "PlatformClient, PlatformError, NotFound ... from rfwatch.plugin"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # imported once; later lookups do not come here
        return value
    if name in _DEPRECATED:
        module, attribute, instead = _DEPRECATED[name]
        warnings.warn(
            f"rfwatch.plugin.{name} is deprecated and will be removed: use {instead}", DeprecationWarning, stacklevel=2
        )
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded
    raise AttributeError(f"module 'rfwatch.plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def platform_client(config: Any) -> PlatformClient | None:
    """A client for Roboflow's platform API with the configured key and ``roboflow.platform_url``; None without a key."""
    from rfwatch.host.runtime import platform_client as make

    return make(config)


def write_output(
    ctx: FileContext,
    destination: Path,
    write: Callable[[Path], Any],
    on_conflict: ConflictMode | str = "overwrite",
) -> Placed:
    """Write a derived file (a thumbnail, an annotated copy) to ``destination`` durably; return where it went.

    ``write(tmp)`` writes the content to a temporary name in the destination's folder (hidden from watchers
    by its leading dot); the file is fsynced and renamed into place under ``on_conflict`` (never replacing
    anything unless it is ``overwrite``), recorded as produced so that a watcher on that folder does not take
    it as new, and its hash kept so ``rfwatch undo`` removes it only while nobody changed it. A crash leaves
    at most a temporary file, which the redone step removes; a crash after the file was in place, before the
    step finished, is recognised (the place and hash were recorded first): no second copy as ``name (1)``.
    """
    from rfwatch.files.place import TMP_PREFIX, Placed, fsync_file, holds, place_file, sha256_file

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
    from rfwatch.files.place import fsync_dir, holds

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


def state_dir(config: Any, plugin: str) -> Path:
    """A folder of the plugin's own next to rfwatch's journal (``<state>/plugins/<plugin>/``), created.

    Under systemd that is inside ``StateDirectory=``, so the service may write it. The same as
    ``plugin_config(config, plugin).state_dir``.
    """
    return state_folder(config.state_dir, plugin)

"""Putting a file back where a step found it: the undo of every move (``move``, ``review``, into ``failed:``).

Durable and never replacing anything, like every move: when the old name is taken by other content now,
the file goes to ``name (1).ext`` and the result says so. The intent is recorded first, so that an undo
interrupted by a crash finishes the move instead of making a second one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rfwatch.files.place import ConflictMode, place_file, recover_placement, sha256_file
from rfwatch.host.context import FileContext

__all__ = ["move_back", "copy_back", "left_half_done"]


def move_back(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
    """Undo a move whose result was ``{"outcome": "moved", "from", "to", "sidecars"?}``; ``ctx.path`` follows."""
    wanted = Path(result["from"])
    resumed = ctx.resume or {}
    now_at: Path | None = None
    intent: dict[str, Any] = {}
    if resumed.get("target") and resumed.get("src") == str(ctx.path):
        if resumed.get("sidecar_tmp"):  # a sidecar's copy across filesystems cut short by the crash
            Path(resumed["sidecar_tmp"]).unlink(missing_ok=True)
        intent = {k: v for k, v in resumed.items() if k != "sidecar_tmp"}
        target = Path(resumed["target"])
        tmp = Path(resumed["tmp"]) if resumed.get("tmp") else None  # a copy across filesystems, half made
        if recover_placement(ctx.path, target, tmp, ctx.sha256, keep_source=False):
            now_at = target
    if now_at is None:
        if not ctx.path.exists():
            raise FileNotFoundError(f"{ctx.path} is no longer there: nothing to move back")

        def record(**detail: Any) -> None:
            intent.clear()
            intent.update(src=str(ctx.path), **detail)
            ctx.intent(**intent)

        placed = place_file(
            ctx.path, wanted, keep_source=False, on_conflict=ConflictMode.RENAME, src_hash=ctx.sha256, record=record
        )
        now_at = placed.path
    moved_from = ctx.path
    ctx.path = now_at
    ctx.produced(now_at)  # no watcher may take it as a new file
    for sidecar in result.get("sidecars", []):
        here = Path(sidecar["to"])
        if here.exists():  # named after the file, wherever it went back to: "x (1).jpg.xmp" too
            name = now_at.name + ".xmp" if here.name == moved_from.name + ".xmp" else now_at.stem + here.suffix
            _sidecar_back(ctx, intent, here, now_at.with_name(name))
    detail = f"moved back to {now_at}"
    if now_at != wanted:
        detail += f" ({wanted} is taken by other content)"
    return {"outcome": "undone", "detail": detail, "to": str(now_at)}


def _sidecar_back(ctx: FileContext, intent: dict[str, Any], here: Path, wanted: Path) -> None:
    """Move a sidecar back beside its file. Across filesystems it goes through a temporary copy, whose name
    joins the step's intent (the file's own placement, which recovery still needs) before it exists, so a
    kill -9 meanwhile leaves nothing the redone step does not remove. A crash after the copy was in place and
    before the sidecar left ``here`` finds the same content at ``wanted``: ``dedupe`` drops the leftover
    instead of making a second sidecar ``name (1).xmp``; other content there is never replaced."""

    def record(**detail: Any) -> None:
        if detail.get("tmp"):
            ctx.intent(**{**intent, "sidecar_tmp": detail["tmp"]})

    place_file(here, wanted, keep_source=False, on_conflict=ConflictMode.DEDUPE, record=record)


def copy_back(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
    """Undo a ``dedupe`` that dropped the file as a duplicate: a copy of the identical content goes back.

    Journaled like a move back: a crash after the copy is in place finishes it instead of making a second one.
    """
    wanted, kept = Path(result["from"]), Path(result["to"])
    resumed = ctx.resume or {}
    now_at: Path | None = None
    if resumed.get("target") and resumed.get("src") == str(kept) and resumed.get("sha256"):
        target = Path(resumed["target"])
        tmp = Path(resumed["tmp"]) if resumed.get("tmp") else None
        if recover_placement(kept, target, tmp, resumed["sha256"], keep_source=True):
            now_at, ctx.sha256 = target, resumed["sha256"]
    if now_at is None:
        content = sha256_file(kept)

        def record(**detail: Any) -> None:
            ctx.intent(src=str(kept), sha256=content, **detail)

        placed = place_file(
            kept, wanted, keep_source=True, on_conflict=ConflictMode.RENAME, src_hash=content, record=record
        )
        now_at, ctx.sha256 = placed.path, content
    ctx.path = now_at
    ctx.produced(now_at)
    detail = f"the dropped duplicate is back at {now_at}"
    if now_at != wanted:
        detail += f" ({wanted} is taken by other content)"
    return {"outcome": "undone", "detail": detail, "to": str(now_at)}


def left_half_done(intent: dict[str, Any], path: Path, sha256: str) -> str | None:
    """What a move back or copy back whose ``intent`` this is (the file at ``path`` with content ``sha256`` when it
    began) left behind when a crash cut it short: a temporary copy (the file's or a sidecar's), or the file at its
    target already. Only the step run again settles that (recover_placement, and the temporary files removed);
    None when the intent shows nothing done."""
    for key in ("tmp", "sidecar_tmp"):
        if isinstance(intent.get(key), str) and os.path.lexists(intent[key]):
            return f"its temporary copy {intent[key]} is still there"
    target = intent.get("target")
    if isinstance(target, str) and target != str(path) and os.path.isfile(target):
        try:
            if sha256_file(Path(target)) == (intent.get("sha256") or sha256):
                return f"it is at {target} already"
        except OSError:
            return None
    return None

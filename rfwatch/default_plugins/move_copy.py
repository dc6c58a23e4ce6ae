"""The ``move`` and ``copy`` actions.

``move: "sorted/{class}/{name}"`` or ``move: {to: ..., on_conflict: rename|skip|overwrite|dedupe}``.
XMP sidecars travel with a moved file (and are copied with a copied one).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rfwatch.plugin import (
    ConflictMode,
    FileContext,
    Options,
    copy_back,
    fsync_dir,
    hookimpl,
    move_back,
    place_file,
    recover_placement,
    remove_output,
    sha256_file,
    sidecars_of,
)

log = logging.getLogger(__name__)

EXAMPLE = 'a destination such as "sorted/{class}/{name}" or {to: ..., on_conflict: rename}'


class PlaceAction:
    """Places the file at a templated destination; ``Move`` and ``Copy`` say whether the source stays."""

    keep_source = False
    example = EXAMPLE
    #: What log lines and webhook bodies show of a result (made_dirs is undo's business).
    public_fields = ("outcome", "from", "to", "dropped", "sha256", "sidecars", "recovered", "reason")

    def __init__(self, options: Any):
        opts = Options(options, short="to", known={"to", "on_conflict"}, example=self.example)
        self.template, self.on_conflict = opts.destination(ConflictMode.RENAME)

    def destination(self, ctx: FileContext) -> Path:
        return self.template.render_path(ctx.values(), ctx.config.base_dir)

    def describe(self, ctx: FileContext) -> str:
        return f"-> {self.destination(ctx)}"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        src = ctx.path
        resumed = ctx.resume or {}
        if resumed.get("target") and resumed.get("src") == str(src):
            target = Path(resumed["target"])
            tmp = Path(resumed["tmp"]) if resumed.get("tmp") else None
            if resumed.get("sidecar_tmp"):  # a sidecar's copy cut short by the crash (see _carry_sidecar)
                Path(resumed["sidecar_tmp"]).unlink(missing_ok=True)
            if recover_placement(src, target, tmp, ctx.sha256, self.keep_source):
                if resumed.get("duplicate"):
                    # What is there was there before us (on_conflict: dedupe): never claimed as ours, so
                    # undo restores a copy and leaves it alone.
                    return self._done(ctx, src, target, "duplicate", [], True)
                # The crash may have come between the file and its sidecars.
                carried = [self._carry_sidecar(ctx, resumed, src, s, target) for s in sidecars_of(src)]
                made = resumed.get("made_dirs") or []
                return self._done(
                    ctx, src, target, "copied" if self.keep_source else "moved", carried, True, made_dirs=made
                )
        dst = self.destination(ctx)
        sidecars = sidecars_of(src)
        made = _missing_folders(dst.parent)  # the folders this placement creates: undo removes them when empty
        if resumed.get("src") == str(src):  # made before a crash (the intent says so), there now: still ours
            made = list(dict.fromkeys([*made, *(resumed.get("made_dirs") or [])]))

        intent: dict[str, Any] = {}

        def record(**detail: Any) -> None:
            intent.clear()
            intent.update(src=str(src), made_dirs=made, **detail)
            ctx.intent(**intent)

        placed = place_file(
            src, dst, keep_source=self.keep_source, on_conflict=self.on_conflict, src_hash=ctx.sha256, record=record
        )
        carried = []
        if placed.outcome in ("moved", "copied"):
            carried = [self._carry_sidecar(ctx, intent, src, sidecar, placed.path) for sidecar in sidecars]
        return self._done(ctx, src, placed.path, placed.outcome, carried, made_dirs=made)

    def _carry_sidecar(
        self, ctx: FileContext, intent: dict[str, Any], src: Path, sidecar: Path, placed: Path
    ) -> dict[str, str] | None:
        """Place ``sidecar`` beside ``placed``. A copy goes through a temporary file: its name joins the step's
        ``intent`` (the placement's own, which recovery still needs) before the file exists, so that a kill -9
        meanwhile leaves nothing the restart does not remove."""

        def record(**detail: Any) -> None:
            if detail.get("tmp"):
                ctx.intent(**{**intent, "sidecar_tmp": detail["tmp"]})

        name = placed.name + ".xmp" if sidecar.name == src.name + ".xmp" else placed.stem + sidecar.suffix
        try:
            moved = place_file(
                sidecar, placed.with_name(name), keep_source=self.keep_source, on_conflict="overwrite", record=record
            )
        except OSError as exc:
            log.warning("%s: sidecar %s not carried along: %s", src, sidecar.name, exc)
            return None
        carried = {"from": str(sidecar), "to": str(moved.path)}
        if self.keep_source:  # undo removes the copied sidecar only while it still holds this
            carried["sha256"] = sha256_file(moved.path)
        return carried

    def _done(
        self,
        ctx: FileContext,
        src: Path,
        target: Path,
        outcome: str,
        sidecars: list[dict[str, str] | None],
        recovered: bool = False,
        made_dirs: list[str] | None = None,
    ) -> dict[str, Any]:
        if outcome in ("moved", "duplicate") and not self.keep_source:
            ctx.path = target
        if outcome in ("moved", "copied"):
            ctx.produced(target)
        result: dict[str, Any] = {"outcome": outcome, "from": str(src), "to": str(target)}
        if outcome == "duplicate" and not self.keep_source:
            result["dropped"] = True  # the source was identical to what was there, and removed
        if outcome == "copied":
            result["sha256"] = ctx.sha256  # undo removes the copy only while it still holds this
        if any(sidecars):
            result["sidecars"] = [s for s in sidecars if s]
        if recovered:
            result["recovered"] = True
        if made_dirs and outcome in ("moved", "copied"):
            result["made_dirs"] = made_dirs
        return result

    @staticmethod
    def undo(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
        """A copy is removed while unchanged; a moved file goes back to where it was, never replacing anything.

        Reads only ``result`` (a static method): it works whatever the config says now, even with no such rule.
        """
        outcome = result.get("outcome")
        if outcome == "moved":
            return _without_made_dirs(move_back(ctx, result), result)
        if outcome == "duplicate" and result.get("dropped"):
            return copy_back(ctx, result)
        if outcome != "copied":
            return {"outcome": "nothing", "detail": f"nothing was placed ({outcome})"}
        # A copy recorded before rfwatch kept its hash holds the file's own content, if nobody changed it.
        outputs = [(result["to"], result.get("sha256") or ctx.sha256)]
        outputs += [(s["to"], s.get("sha256")) for s in result.get("sidecars", [])]
        done, kept = [], []
        for path, sha256 in outputs:
            removed = remove_output(path, sha256)
            if removed == "changed":
                kept.append(f"{path} was changed since rfwatch copied it: kept")
            else:
                done.append(f"copy {path} {removed}")
        if kept:
            return {"outcome": "kept", "detail": "; ".join(kept + done)}
        return _without_made_dirs({"outcome": "undone", "detail": "; ".join(done)}, result)


def _missing_folders(folder: Path) -> list[str]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(str(folder))
        folder = folder.parent
    return missing


def _without_made_dirs(undone: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """After an undo: the folders the placement created go too, while empty (another file keeps them), deepest
    first. rmdir removes only an empty folder: nobody's file is ever at stake; a crash just leaves one behind."""
    removed = []
    for folder in result.get("made_dirs") or []:
        try:
            os.rmdir(folder)
        except FileNotFoundError:  # removed by an undo that a crash interrupted
            continue
        except OSError:  # not empty (another file, a person's): the ones above stay too
            break
        fsync_dir(Path(folder).parent)
        removed.append(folder)
    if removed:
        undone = {
            **undone,
            "detail": f"{undone['detail']}; removed the empty folder(s) rfwatch made: {', '.join(removed)}",
        }
    return undone


class Move(PlaceAction):
    keep_source = False

    @staticmethod
    def undo(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
        """As for any placement; a duplicate a move found was always dropped (steps journaled before rfwatch
        recorded ``dropped`` say nothing of it), so a copy of it comes back."""
        if result.get("outcome") == "duplicate":
            result = {**result, "dropped": True}
        return PlaceAction.undo(ctx, result)


class Copy(PlaceAction):
    keep_source = True


@hookimpl
def register_actions(register):
    register("move", Move)
    register("copy", Copy)

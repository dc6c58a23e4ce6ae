"""The ``move`` and ``copy`` actions.

``move: "sorted/{class}/{name}"`` or ``move: {to: ..., on_conflict: rename|skip|overwrite|dedupe}``.
XMP sidecars travel with a moved file (and are copied with a copied one).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import hookimpl
from ..context import FileContext
from ..fileops import CONFLICT_MODES, place_file, recover_placement, sidecars_of
from .common import destination_options

log = logging.getLogger(__name__)


class PlaceAction:
    def __init__(self, options: Any, keep_source: bool):
        self.template, opts = destination_options(options)
        self.keep_source = keep_source
        self.on_conflict = opts.get("on_conflict", "rename")
        if self.on_conflict not in CONFLICT_MODES:
            raise ValueError(f"on_conflict: expected one of {', '.join(CONFLICT_MODES)}, got {self.on_conflict!r}")

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
            if recover_placement(src, target, tmp, ctx.sha256, self.keep_source):
                # The crash may have come between the file and its sidecars.
                for sidecar in sidecars_of(src):
                    self._carry_sidecar(src, sidecar, target)
                return self._done(ctx, src, target, "moved" if not self.keep_source else "copied", recovered=True)
        dst = self.destination(ctx)
        sidecars = sidecars_of(src)

        def record(**detail: Any) -> None:
            ctx.intent(src=str(src), **detail)

        placed = place_file(
            src, dst, keep_source=self.keep_source, on_conflict=self.on_conflict, src_hash=ctx.sha256, record=record
        )
        if placed.outcome in ("moved", "copied"):
            for sidecar in sidecars:
                self._carry_sidecar(src, sidecar, placed.path)
        return self._done(ctx, src, placed.path, placed.outcome)

    def _carry_sidecar(self, src: Path, sidecar: Path, placed: Path) -> None:
        name = placed.name + ".xmp" if sidecar.name == src.name + ".xmp" else placed.stem + sidecar.suffix
        try:
            place_file(sidecar, placed.with_name(name), keep_source=self.keep_source, on_conflict="overwrite")
        except OSError as exc:
            log.warning("%s: sidecar %s not carried along: %s", src, sidecar.name, exc)

    def _done(self, ctx: FileContext, src: Path, target: Path, outcome: str, recovered: bool = False) -> dict[str, Any]:
        if outcome in ("moved", "duplicate") and not self.keep_source:
            ctx.path = target
        if outcome in ("moved", "copied"):
            ctx.produced(target)
        result = {"outcome": outcome, "from": str(src), "to": str(target)}
        if recovered:
            result["recovered"] = True
        return result


@hookimpl
def register_actions(register):
    register("move", lambda options: PlaceAction(options, keep_source=False))
    register("copy", lambda options: PlaceAction(options, keep_source=True))

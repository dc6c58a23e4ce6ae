"""The ``annotate`` action: a copy with the label drawn on it; the original is only read.

``annotate: "annotated/{class}/{name}"`` or ``{to: ..., on_conflict: rename}``.
"""

from __future__ import annotations

import secrets
from typing import Any

from .. import hookimpl
from ..annotate import annotate_image
from ..context import FileContext
from ..fileops import CONFLICT_MODES, TMP_PREFIX, place_file
from .common import destination_options


class AnnotateAction:
    def __init__(self, options: Any):
        self.template, opts = destination_options(options)
        self.on_conflict = opts.get("on_conflict", "overwrite")
        if self.on_conflict not in CONFLICT_MODES:
            raise ValueError(f"on_conflict: expected one of {', '.join(CONFLICT_MODES)}, got {self.on_conflict!r}")

    def describe(self, ctx: FileContext) -> str:
        return f"-> {self.template.render_path(ctx.values(), ctx.config.base_dir)}"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        dst = self.template.render_path(ctx.values(), ctx.config.base_dir)
        # Drawn under a temporary name in the destination folder, then placed like any copy.
        tmp = dst.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}{dst.suffix}")
        ctx.intent(tmp=str(tmp))
        annotate_image(ctx.path, ctx.prediction, tmp)
        try:
            placed = place_file(tmp, dst, keep_source=False, on_conflict=self.on_conflict)
        finally:
            tmp.unlink(missing_ok=True)
        ctx.produced(placed.path)
        return {"outcome": "annotated" if placed.outcome == "moved" else placed.outcome, "to": str(placed.path)}


@hookimpl
def register_actions(register):
    register("annotate", AnnotateAction)

"""The ``annotate`` action: a copy with the label drawn on it; the original is only read.

``annotate: "annotated/{class}/{name}"`` or ``{to: ..., on_conflict: rename}`` (default: overwrite, since
these are derived copies).
"""

from __future__ import annotations

from typing import Any

from rfwatch.plugin import ConflictMode, FileContext, Options, hookimpl, remove_output, write_output


class AnnotateAction:
    def __init__(self, options: Any):
        opts = Options(
            options,
            short="to",
            known={"to", "on_conflict"},
            example='a destination such as "annotated/{class}/{name}" or {to: ..., on_conflict: rename}',
        )
        self.template, self.on_conflict = opts.destination(ConflictMode.OVERWRITE)

    def describe(self, ctx: FileContext) -> str:
        return f"-> {self.template.render_path(ctx.values(), ctx.config.base_dir)}"

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        from rfwatch.plugin import annotate_image  # Pillow, loaded by the first annotation, not by the plugin

        dst = self.template.render_path(ctx.values(), ctx.config.base_dir)
        placed = write_output(ctx, dst, lambda tmp: annotate_image(ctx.path, ctx.prediction, tmp), self.on_conflict)
        outcome = "annotated" if placed.outcome == "moved" else placed.outcome
        return {"outcome": outcome, "to": str(placed.path), "sha256": placed.sha256}

    @staticmethod
    def undo(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
        if result.get("outcome") != "annotated":
            return {"outcome": "nothing", "detail": "no annotated copy was written"}
        removed = remove_output(result["to"], result.get("sha256"))
        if removed == "changed":
            return {"outcome": "kept", "detail": f"{result['to']} was changed since rfwatch wrote it: kept"}
        return {"outcome": "undone", "detail": f"{result['to']} {removed}"}


@hookimpl
def register_actions(register):
    register("annotate", AnnotateAction)

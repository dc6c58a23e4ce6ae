"""rfwatch-thumbnail: a ``thumbnail`` action that writes a small upright preview of each file.

Everything it needs comes from ``rfwatch.plugin``: option checking, the template, durable placement of
the output (atomic, fsynced, recorded so no watcher takes it) and its undo.
"""

from __future__ import annotations

from PIL import Image

from rfwatch.plugin import ConflictMode, FileContext, Options, hookimpl, open_upright, remove_output, write_output


class Thumbnail:
    def __init__(self, options):
        opts = Options(
            options,
            short="to",
            known={"to", "size", "on_conflict"},
            example='a destination such as "thumbs/{class}/{stem}.webp" or {to: ..., size: 256}',
        )
        self.template, self.on_conflict = opts.destination(ConflictMode.OVERWRITE)
        self.size = opts.integer("size", 256, minimum=16, maximum=4096)

    def __call__(self, ctx: FileContext):
        dest = self.template.render_path(ctx.values(), ctx.config.base_dir)

        def write(tmp):
            thumb = open_upright(ctx.path)  # turned as the camera meant; a clear error for a broken file
            thumb.thumbnail((self.size, self.size))
            thumb.save(tmp, format=Image.registered_extensions().get(dest.suffix.lower(), "JPEG"))

        placed = write_output(ctx, dest, write, self.on_conflict)
        with Image.open(placed.path) as made:
            size = list(made.size)
        return {"thumbnail": str(placed.path), "size": size, "sha256": placed.sha256}

    @staticmethod  # reads only the recorded result: works after the rule changed, or is gone
    def undo(ctx: FileContext, result):
        """``rfwatch undo``: the thumbnail goes, unless somebody edited it since."""
        removed = remove_output(result["thumbnail"], result.get("sha256"))
        return {"outcome": "kept" if removed == "changed" else "undone", "detail": f"{result['thumbnail']} {removed}"}


@hookimpl
def register_actions(register):
    register("thumbnail", Thumbnail)

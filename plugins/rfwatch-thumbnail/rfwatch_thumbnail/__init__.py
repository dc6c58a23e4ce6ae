"""rfwatch-thumbnail: a ``thumbnail`` action that writes a small upright preview of each file."""

from __future__ import annotations

import os

from PIL import Image, ImageOps

import rfwatch
from rfwatch.templates import Template


class Thumbnail:
    def __init__(self, options):
        if isinstance(options, str):
            options = {"to": options}
        if not isinstance(options, dict) or not isinstance(options.get("to"), str):
            raise ValueError('expected a destination such as "thumbs/{class}/{stem}.webp" or {to: ..., size: 256}')
        unknown = set(options) - {"to", "size"}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r} (expected: size, to)")
        self.template = Template(options["to"])  # raises ValueError for unknown placeholders
        self.size = options.get("size", 256)
        if not isinstance(self.size, int) or not 16 <= self.size <= 4096:
            raise ValueError(f"size: expected an integer between 16 and 4096, got {self.size!r}")

    def __call__(self, ctx):
        dest = self.template.render_path(ctx.values(), ctx.config.base_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        with Image.open(ctx.path) as img:
            thumb = ImageOps.exif_transpose(img).convert("RGB")
            thumb.thumbnail((self.size, self.size))
            fmt = Image.registered_extensions().get(dest.suffix.lower(), "JPEG")
            thumb.save(tmp, format=fmt)
        os.replace(tmp, dest)
        ctx.produced(dest)  # so a watcher on that folder does not take it as a new image
        return {"thumbnail": str(dest), "size": list(thumb.size)}


@rfwatch.hookimpl
def register_actions(register):
    register("thumbnail", Thumbnail)

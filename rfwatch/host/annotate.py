"""Draw the classification on a copy of an image (``classify --save`` and the ``annotate`` action)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from rfwatch.crashpoints import crash_point
from rfwatch.images.prepare import ImageError, Source, _to_rgb, open_image
from rfwatch.roboflow.result import Prediction

__all__ = ["label_text", "annotate_image"]


def label_text(prediction: Prediction) -> str:
    if prediction.multi_label:
        shown = prediction.predicted_classes or (prediction.top,)
        return ", ".join(f"{c} {prediction.confidence_of(c):.0%}" for c in shown if c) or "(no class)"
    return f"{prediction.top or '(no class)'} {prediction.confidence:.0%}"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


#: Formats whose writer in Pillow carries an ICC profile and an EXIF block along.
_KEEPS_METADATA = {"JPEG", "PNG", "TIFF", "WEBP"}


def annotate_image(
    source: Source, prediction: Prediction, out: str | os.PathLike[str], name: str | None = None
) -> Path:
    """Write an upright copy of ``source`` with the label drawn on a banner to ``out``; the source is only read.

    ``out`` is written in place, with no temporary file of its own: the caller owns durability. An action
    passes ``write_output``'s temporary name, which the step's intent names before it exists, so a kill -9
    mid-write leaves nothing the redone step does not remove (a second, unjournaled temporary name here was
    left behind by such a kill). ``classify --save`` writes through its own temporary name.

    The copy keeps the original's ICC profile (an Adobe RGB or P3 photo must not shift colour) and its EXIF
    (with the orientation tag gone, since the pixels are now upright). ``source`` may be bytes named ``name``.
    """
    out = Path(out)
    with open_image(source, name) as img:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:
            pass
        canvas = _to_rgb(img).copy()
    text = label_text(prediction)
    size = max(12, canvas.height // 20)
    font = _font(size)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(4, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = Image.registered_extensions().get(out.suffix.lower(), "JPEG")
    try:
        options: dict[str, object] = {"quality": 90} if fmt == "JPEG" else {}
        if fmt in _KEEPS_METADATA:
            options.update({k: canvas.info[k] for k in ("icc_profile", "exif") if canvas.info.get(k)})
        canvas.save(out, format=fmt, **options)
        crash_point("annotate.after_save")
    except (OSError, ValueError) as exc:
        raise ImageError(out, f"cannot write annotated copy: {exc}") from None
    return out

"""How big the uploaded picture must be: the smallest that still covers the model's input.

A classification model sees its input at the size it was trained at (a version's ``resize``, e.g.
224x224), after an optional ``static-crop`` of the picture (percentages of each side). Pixels beyond
that are thrown away by the server, so uploading them only costs time on the link. Given the upright
size of the original, :meth:`UploadSize.target` returns the upload's size: scaled uniformly (the aspect
ratio is kept; the server distorts or pads as the format says), so that the cropped region still covers
the model's input on both sides for the resize format, never above ``max_size`` and never enlarged.

How the server resizes (roboflow/inference: inference/core/models/roboflow.py, ``preproc_image``; the
newer inference_models engine: common/roboflow/model_packages.py ``ResizeMode``):

- "Fit (black edges) in", "Fit (white edges) in", "Fit (grey edges) in": letterbox: the picture is scaled
  to fit inside the input, so covering means matching the tighter side (min of the two ratios);
- "Stretch to": each side scaled to the input's: both sides must cover (max of the ratios);
- "Fill (with center crop) in": scaled to cover, then cropped: max of the ratios;
- "Fit (reflect edges) in", "Fit within" and anything unknown: the older engine applies them as
  "Stretch to" and the newer one as a letterbox or a stretch, so the larger size (max) covers both.
"""

from __future__ import annotations

import math
from dataclasses import replace

from rfwatch.record import record

__all__ = ["UploadSize", "LETTERBOX_FORMATS", "EARLY_INPUT"]

#: Resize formats that both engines apply as a letterbox (scale to fit inside, pad the rest).
LETTERBOX_FORMATS = frozenset({"Fit (black edges) in", "Fit (white edges) in", "Fit (grey edges) in"})

#: A cold start decodes new files before the platform has said what input the model has (a guess, see
#: :meth:`UploadSize.early`): decoded as if for a model of this input, stretched (the larger way to cover it), a
#: picture covers any input up to 640 a side. Where a JPEG decoder reaches that scale, it costs little more than
#: the model's own (12 MP for a 224 model: 1/4 instead of 1/8, about 4 ms of a 40 ms decode, and a larger
#: resize); a larger input, or a static crop that asks for more, means decoding the file again.
EARLY_INPUT = (640, 640)


@record
class UploadSize:
    """The rule for one model: ``max_size`` alone (unknown model), or its input, format and crop."""

    max_size: int = 1024
    #: (width, height) the model was trained at; None when unknown.
    model_input: tuple[int, int] | None = None
    letterbox: bool = False
    #: (x_min, y_min, x_max, y_max) in percent of each side, the server's static crop; None for none.
    crop: tuple[float, float, float, float] | None = None

    def early(self) -> UploadSize:
        """The size to decode for before the model's input is known (the guess of :data:`EARLY_INPUT`)."""
        if self.model_input is not None:
            return self
        return replace(self, model_input=EARLY_INPUT, letterbox=False, crop=None)

    @property
    def knows_model(self) -> bool:
        return self.model_input is not None

    def target(self, size: tuple[int, int]) -> tuple[int, int]:
        """The upload's (width, height) for an upright picture of ``size``."""
        w, h = size
        if self.model_input is None:
            scale = min(1.0, self.max_size / max(w, h))
            return max(1, round(w * scale)), max(1, round(h * scale))
        x0, y0, x1, y1 = self.crop or (0.0, 0.0, 100.0, 100.0)
        crop_w, crop_h = w * (x1 - x0) / 100, h * (y1 - y0) / 100
        mw, mh = self.model_input
        ratios = (mw / max(crop_w, 1e-9), mh / max(crop_h, 1e-9))
        scale = min(ratios) if self.letterbox else max(ratios)
        scale = min(scale, 1.0, self.max_size / max(w, h))  # never enlarged, never above max_size
        tw, th = max(1, math.ceil(w * scale - 1e-6)), max(1, math.ceil(h * scale - 1e-6))
        # The server crops with int() of each percentage: make sure what it keeps still covers the input.
        for _ in range(4):
            if self._covers(tw, th) or tw >= w or max(tw, th) >= self.max_size:
                break
            tw, th = min(w, tw + 1), min(h, th + 1)
        return tw, th

    def _covers(self, tw: int, th: int) -> bool:
        assert self.model_input is not None
        x0, y0, x1, y1 = self.crop or (0.0, 0.0, 100.0, 100.0)
        kept_w = int(x1 / 100 * tw) - int(x0 / 100 * tw)
        kept_h = int(y1 / 100 * th) - int(y0 / 100 * th)
        mw, mh = self.model_input
        if self.letterbox:
            return kept_w >= mw or kept_h >= mh
        return kept_w >= mw and kept_h >= mh

    def draft(self, stored: tuple[int, int], rotated: bool) -> tuple[int, int]:
        """The size to ask a JPEG decoder for (it decodes at 1/2, 1/4, 1/8 almost for free, never smaller).

        ``stored`` is the size as stored in the file, ``rotated`` whether the EXIF orientation turns it by
        90 degrees. For an unknown model a scale that leaves the longest side at 3/4 of ``max_size`` or more
        is accepted: at 12 MP that decodes at 1/4 (1000 px) instead of 1/2, about twice as fast, for an upload
        still within "at most max_size". For a known model the decoder must deliver at least the target.
        """
        sw, sh = stored
        if self.model_input is None:
            floor = self.max_size * 3 / 4
            longest = max(sw, sh)
            return max(1, int(sw * floor / longest)), max(1, int(sh * floor / longest))
        upright = (sh, sw) if rotated else (sw, sh)
        tw, th = self.target(upright)
        return (th, tw) if rotated else (tw, th)

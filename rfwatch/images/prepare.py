"""Turn any image file into a small, upright JPEG for upload.

The official client re-encodes the full-size picture and drops the EXIF
orientation, so phone photos arrive sideways and a 12 MP file costs ~6 MB of
upload. Here the pixels are rotated as the camera meant, reduced to at most
``max_size`` on the longest side (decoding JPEGs at a reduced scale where
that is enough) and encoded as JPEG.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Union

from PIL import Image, ImageOps, UnidentifiedImageError

from rfwatch.images.sizing import UploadSize
from rfwatch.record import record

__all__ = [
    "PreparedImage",
    "DecodedImage",
    "ImageError",
    "prepare_image",
    "decode_image",
    "size_decoded",
    "MAX_UPLOAD_BYTES",
    "open_image",
    "open_upright",
]

log = logging.getLogger(__name__)

#: The hosted legacy API rejects request bodies over 5 MB (base64 included).
MAX_UPLOAD_BYTES = 5 * 1000 * 1000
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")
_plugins_loaded = False
_plugins_lock = threading.Lock()


class ImageError(Exception):
    """The file cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@record
class PreparedImage:
    jpeg: bytes
    #: Upright size of the original picture, as a viewer shows it.
    original_size: tuple[int, int]
    #: Size of the picture that is uploaded.
    upload_size: tuple[int, int]


def _load_optional_decoders() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    # Under a lock, and marked loaded only once registered: a worker opening its first HEIC while another thread
    # (the daemon's warm-up, another worker) is still registering the opener would be refused the format for good.
    with _plugins_lock:
        if _plugins_loaded:
            return
        try:
            import pillow_heif  # type: ignore[import-not-found]

            pillow_heif.register_heif_opener()
            if hasattr(pillow_heif, "register_avif_opener"):
                try:
                    pillow_heif.register_avif_opener()
                except Exception:  # newer pillow-heif dropped AVIF; Pillow 11.2+ reads it natively
                    pass
        except ImportError:
            pass
        _plugins_loaded = True


def _container_brand(head: bytes) -> str | None:
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
        if brand in _AVIF_BRANDS:
            return "AVIF"
    return None


Source = Union[str, "os.PathLike[str]", bytes]


def open_image(source: Source, name: str | None = None) -> Image.Image:
    """Open an image lazily, with a clear :class:`ImageError` for every way that can fail.

    ``source`` is a path, or the file's bytes (a fetched URL) with ``name`` saying where they came from.
    """
    _load_optional_decoders()
    path = _label(source, name)
    if isinstance(source, bytes):
        head, opened = source[:32], io.BytesIO(source)
    else:
        try:
            with open(source, "rb") as fh:
                head = fh.read(32)
        except IsADirectoryError:
            raise ImageError(path, "is a directory, not an image file") from None
        except FileNotFoundError:
            raise ImageError(path, "no such file") from None
        except OSError as exc:
            raise ImageError(path, f"cannot read file: {exc.strerror or exc}") from None
        opened = source
    if not head:
        raise ImageError(path, "file is empty (0 bytes)")
    try:
        img = Image.open(opened)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit
        raise ImageError(path, f"refused as a possible decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        brand = _container_brand(head)
        if brand:
            raise ImageError(
                path,
                f"{brand} images need an extra decoder: pip install 'rfwatch[heif]' (pillow-heif)",
            ) from None
        raise ImageError(path, "not a recognised image format") from None
    except OSError as exc:
        raise ImageError(path, f"cannot decode image: {exc}") from None
    # Over Pillow's limit (but under twice it, where its own error starts) Pillow only warns. The check is made here,
    # not by turning that warning into an error: warnings.catch_warnings swaps the process's filters and puts them
    # back on the way out, and two workers opening at once could each put back the other's.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        pixels = img.width * img.height
        img.close()
        raise ImageError(path, f"refused as a possible decompression bomb: {pixels} pixels, over the limit of {limit}")
    return img


def _stretch_to_l(img: Image.Image) -> Image.Image:
    lo, hi = img.getextrema()
    if hi <= 255 and lo >= 0:
        return img.convert("L")
    scale = 255.0 / ((hi - lo) or 1)
    offset = -lo * scale
    return img.point(lambda v: v * scale + offset).convert("L")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit and float greyscale (microscopes, scientific TIFF): stretch the
        # used range to 8 bits instead of letting convert() clip at 255.
        return _stretch_to_l(img.convert("F" if img.mode == "F" else "I")).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def _encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def open_upright(source: Source, name: str | None = None) -> Image.Image:
    """The whole picture, decoded, turned as the camera meant (EXIF orientation) and in RGB.

    For plugins that draw or resize (thumbnails, previews); :class:`ImageError` as from :func:`open_image`.
    """
    with open_image(source, name) as img:
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception:  # damaged EXIF: the picture as stored
            upright = img
        try:
            return _to_rgb(upright).copy()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(_label(source, name), f"cannot decode image: {exc}") from None


def _label(source: Source, name: str | None) -> str | os.PathLike[str]:
    """What error messages call the image: its path, or the name given with its bytes."""
    return (name or "image") if isinstance(source, bytes) else source


def prepare_image(
    source: Source, size: UploadSize | int = 1024, quality: int = 90, name: str | None = None
) -> PreparedImage:
    """Read ``source`` (a path, or bytes named ``name``): an upright RGB JPEG of the size ``size`` asks for.

    ``size`` is an :class:`~rfwatch.images.sizing.UploadSize` (the model's input, or a longest side), or just the
    longest side in pixels.
    """
    if isinstance(size, int):
        size = UploadSize(max_size=size)
    decoded = decode_image(source, size, name)
    assert decoded is not None  # (refused only by an ``admit``)
    return size_decoded(decoded, size, quality)


#: What Pillow holds per pixel of an RGB picture (its RGB mode keeps four bytes a pixel).
BYTES_PER_PIXEL = 4


@record
class DecodedImage:
    """A picture decoded (at a reduced scale where the decoder allows) and turned upright, not yet sized.

    A cold start decodes new files while the model's input size is still on its way (the decode is most of a
    preparation's CPU) and sizes them once it is known, if what was decoded still covers it (:meth:`covers`).
    """

    rgb: Image.Image
    #: Upright size of the original picture, as a viewer shows it.
    original_size: tuple[int, int]
    #: The picture's size as stored in the file, and as the decoder delivered it (the same unless a JPEG draft).
    stored: tuple[int, int]
    decoded: tuple[int, int]
    rotated: bool
    label: str

    def covers(self, size: UploadSize) -> bool:
        """Whether sizing this decode for ``size`` gives what decoding the file for ``size`` would: it holds at
        least the pixels a decode for ``size`` would have asked the decoder for."""
        if self.decoded == self.stored:
            return True
        need = size.draft(self.stored, self.rotated)
        return self.decoded[0] >= need[0] and self.decoded[1] >= need[1]


def decode_image(
    source: Source, size: UploadSize, name: str | None = None, admit: Callable[[int], bool] | None = None
) -> DecodedImage | None:
    """Decode ``source`` upright, in RGB, with the pixels an upload of ``size`` needs (and no more than a JPEG
    decoder's nearest scale above them); :class:`ImageError` as from :func:`open_image`.

    ``admit(nbytes)``, given the memory the decoded picture will take (known from the header, before the
    decode), may refuse it: then nothing is decoded and the answer is None.
    """
    path = _label(source, name)
    img = open_image(source, name)
    with _image_errors(path), img:
        orientation = _orientation(img)
        rotated = orientation in (5, 6, 7, 8)
        stored = img.size
        if img.format == "JPEG":
            img.draft("RGB", size.draft(img.size, rotated))
        decoded = img.size  # what the draft chose (the picture is read at that scale)
        if admit is not None and not admit(decoded[0] * decoded[1] * BYTES_PER_PIXEL):
            return None
        try:
            upright = ImageOps.exif_transpose(img)
        except Exception as exc:  # damaged EXIF must not stop classification
            log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
            upright = img
        rgb = _to_rgb(upright)
        rgb = rgb.copy() if rgb is img else rgb  # the file is closed on the way out: keep the pixels
        rgb.load()
        return DecodedImage(rgb, _upright(stored, orientation), stored, decoded, rotated, os.fspath(path))


def size_decoded(decoded: DecodedImage, size: UploadSize, quality: int = 90) -> PreparedImage:
    """The upload for ``size`` from a decoded picture (one that :meth:`DecodedImage.covers` it)."""
    with _image_errors(decoded.label):
        rgb = decoded.rgb
        target = size.target(decoded.original_size)
        if size.knows_model and rgb.width > target[0] and rgb.height > target[1]:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        elif max(rgb.size) > size.max_size:
            rgb = rgb.copy()  # thumbnail works in place: the decode stays as it was
            rgb.thumbnail((size.max_size, size.max_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
        jpeg = _encode(rgb, quality)
        # Only reachable with a very large max_size: shrink until the
        # base64 body fits the hosted API's limit.
        while len(jpeg) * 4 / 3 > MAX_UPLOAD_BYTES * 0.98:
            rgb = rgb.resize((max(1, rgb.width * 3 // 4), max(1, rgb.height * 3 // 4)), Image.Resampling.LANCZOS)
            jpeg = _encode(rgb, quality)
        return PreparedImage(jpeg=jpeg, original_size=decoded.original_size, upload_size=rgb.size)


@contextmanager
def _image_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Pillow's ways of failing on a picture, as an :class:`ImageError` naming the file and the reason."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/ValueError.
        raise ImageError(path, f"cannot decode image: {exc}") from None
    except MemoryError:
        raise ImageError(path, "image too large to decode in memory") from None


def warm_up() -> None:
    """Do once what the first preparation of a process would do on top of its work (about 15 ms: Pillow's
    decoders and EXIF code, pillow-heif), on a tiny picture. The daemon calls it in a thread of its own as it
    starts: on a cold start the cores idle while the platform's answer (the model's input size) is on its way,
    and the first uploads wait for it no longer than their own preparation."""
    try:
        buf = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: the upright path too
        Image.new("RGB", (16, 16)).save(buf, format="JPEG", exif=exif.tobytes())
        prepare_image(buf.getvalue(), UploadSize(max_size=16, model_input=(8, 8)), name="warm-up")
    except Exception as exc:  # only ever a head start: a real file reports a real problem
        log.debug("preparation's warm-up failed: %s", exc)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)

"""The ``tag`` action: labels into XMP (and IPTC) metadata with exiftool, never touching pixels.

exiftool rewrites only the metadata it is asked to change (its FAQ, Q13): the
compressed image data, EXIF, maker notes and ICC profile stay byte-identical.
Keywords are merged with ``-TAG-=kw -TAG+=kw`` so they are never duplicated.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .. import hookimpl
from ..context import FileContext
from ..fileops import fsync_dir, fsync_file
from ..templates import Template, TemplateError
from .common import mapping_options

log = logging.getLogger(__name__)

EXIFTOOL_CONFIG = Path(__file__).resolve().parent.parent / "data" / "exiftool-rfwatch.config"
EMBEDDABLE = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
_EMPTY_XMP = (
    "<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'>\n"
    "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
    "</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>\n"
)
_MODES = ("sidecar", "embed", "both")
_SIDECAR_NAMES = ("full", "stem")


class ExifToolError(RuntimeError):
    pass


def exiftool_path() -> str:
    found = shutil.which("exiftool")
    if not found:
        raise ValueError(
            "needs exiftool: apt-get install libimage-exiftool-perl (Debian/Ubuntu) "
            "or see https://exiftool.org/install.html"
        )
    return found


def run_exiftool(args: list[str], target: Path, timeout: float = 60) -> None:
    cmd = [
        exiftool_path(),
        "-config",
        str(EXIFTOOL_CONFIG),
        "-overwrite_original",
        "-P",
        "-m",
        "-q",
        "-q",
        "-charset",
        "filename=utf8",
        *args,
        "--",
        os.fsdecode(target),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExifToolError(f"exiftool timed out after {timeout:g}s on {target}") from None
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip() or proc.stdout.decode("utf-8", "replace").strip()
        raise ExifToolError(f"exiftool failed on {target}: {message[-500:]}")


def sidecar_path(path: Path, naming: str) -> Path:
    return path.with_name(path.name + ".xmp") if naming == "full" else path.with_suffix(".xmp")


class TagAction:
    def __init__(self, options: Any):
        opts = mapping_options(
            options if options is not None else {},
            "keywords",
            {"mode", "sidecar_name", "keywords", "hierarchy", "timeout"},
            "a mapping such as {mode: sidecar, keywords: ['{class}']}",
        )
        self.mode = opts.get("mode", "sidecar")
        if self.mode not in _MODES:
            raise ValueError(f"mode: expected one of {', '.join(_MODES)}, got {self.mode!r}")
        self.naming = opts.get("sidecar_name", "full")
        if self.naming not in _SIDECAR_NAMES:
            raise ValueError(f"sidecar_name: expected full (IMG.jpg.xmp) or stem (IMG.xmp), got {self.naming!r}")
        keywords = opts.get("keywords", ["{class}"])
        if isinstance(keywords, str):
            keywords = [keywords]
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise ValueError(f"keywords: expected a list of templates, got {keywords!r}")
        try:
            self.keywords = [Template(k) for k in keywords]
        except TemplateError as exc:
            raise ValueError(f"keywords: {exc}") from None
        hierarchy = opts.get("hierarchy")
        if hierarchy is not None and (not isinstance(hierarchy, str) or not hierarchy.strip("|/ ")):
            raise ValueError(f"hierarchy: expected a parent keyword such as rfwatch, got {hierarchy!r}")
        self.hierarchy = hierarchy.strip("|/ ") if hierarchy else None
        self.timeout = float(opts.get("timeout", 60))
        exiftool_path()  # fail at load time, not at the first file

    def describe(self, ctx: FileContext) -> str:
        return f"{self.mode} keywords {self._keywords(ctx)}"

    def _keywords(self, ctx: FileContext) -> list[str]:
        values = ctx.values()
        out: list[str] = []
        for template in self.keywords:
            kw = template.render(values).strip()
            if kw and kw not in out:
                out.append(kw)
        if ctx.prediction.multi_label:
            out += [c for c in ctx.prediction.predicted_classes if c and c not in out]
        return out

    def _args(self, ctx: FileContext, iptc: bool) -> list[str]:
        args: list[str] = []

        def merge(tag: str, value: str) -> None:
            args.extend([f"-{tag}-={value}", f"-{tag}+={value}"])

        keywords = self._keywords(ctx)
        for kw in keywords:
            merge("XMP-dc:Subject", kw)
            if iptc:
                merge("IPTC:Keywords", kw)
            if self.hierarchy:
                merge("XMP-lr:HierarchicalSubject", f"{self.hierarchy}|{kw}")
                merge("XMP-digiKam:TagsList", f"{self.hierarchy}/{kw}")
        if iptc:
            args.append("-IPTC:CodedCharacterSet=UTF8")
        pred = ctx.prediction
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y:%m:%d %H:%M:%S+00:00")
        args += [
            f"-XMP-rfwatch:Model={ctx.model}",
            f"-XMP-rfwatch:Class={pred.top}",
            f"-XMP-rfwatch:Confidence={pred.confidence:.4f}",
            f"-XMP-rfwatch:ClassifiedAt={when}",
            "-XMP-rfwatch:Classes=",
        ]
        args += [f"-XMP-rfwatch:Classes+={c}" for c in pred.predicted_classes]
        return args

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        path = ctx.path
        result: dict[str, Any] = {"keywords": self._keywords(ctx)}
        mode = self.mode
        if mode in ("embed", "both") and path.suffix.lower() not in EMBEDDABLE:
            log.info(
                "%s: %s files cannot carry embedded XMP here; writing a sidecar instead", path, path.suffix or "such"
            )
            mode = "sidecar"
            result["fallback"] = "sidecar"
        if mode in ("embed", "both"):
            _remove_exiftool_leftovers(path)  # a crash during an earlier attempt
            ctx.intent(embed=str(path))
            run_exiftool(self._args(ctx, iptc=EMBEDDABLE[path.suffix.lower()] == "JPEG"), path, self.timeout)
            _fsync(path)
            ctx.produced(path)  # its size changed; the watcher must not take it as a new file
            result["embedded"] = str(path)
        if mode in ("sidecar", "both"):
            sidecar = sidecar_path(path, self.naming)
            if not sidecar.exists():
                _write_new(sidecar)
            run_exiftool(self._args(ctx, iptc=False), sidecar, self.timeout)
            _fsync(sidecar)
            result["sidecar"] = str(sidecar)
        return result


def _write_new(sidecar: Path) -> None:
    tmp = sidecar.with_name(f".{sidecar.name}.rfwatch-tmp")
    tmp.write_text(_EMPTY_XMP, encoding="utf-8")
    try:
        os.link(tmp, sidecar)  # never replaces a sidecar that appeared meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _remove_exiftool_leftovers(path: Path) -> None:
    leftover = path.with_name(path.name + "_exiftool_tmp")
    if leftover.exists():
        leftover.unlink()


def _fsync(path: Path) -> None:
    fsync_file(path)
    fsync_dir(path.parent)


@hookimpl
def register_actions(register):
    register("tag", TagAction)

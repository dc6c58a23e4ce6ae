"""The ``tag`` action: labels into XMP (and IPTC) metadata with exiftool, never touching pixels.

exiftool rewrites only the metadata it is asked to change (its FAQ, Q13): the compressed image data, EXIF,
maker notes and ICC profile stay byte-identical. Keywords are merged with ``-TAG-=kw -TAG+=kw`` so they are
never duplicated. exiftool runs as a small pool of processes kept open (``-stay_open``, see
``rfwatch.plugin.exiftool_pool``): a call costs a few milliseconds instead of a process start.

What a file (or sidecar) held before is recorded with the step's intent, before exiftool writes, so that
``rfwatch undo`` takes out exactly what rfwatch added, even when the step was redone after a crash.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from rfwatch.default_plugins.tag_original import forget_original, keep_original, restore_original, write_durably
from rfwatch.plugin import (
    ExifToolError,
    FileContext,
    Options,
    crash_point,
    declare_crash_points,
    exiftool_executable,
    exiftool_pool,
    fsync_dir,
    fsync_file,
    holds,
    hookimpl,
    sha256_file,
)

log = logging.getLogger(__name__)

# Where tests/test_crash_points.py stops a process dead while embedding (RFWATCH_CRASH_AT=tag.before_embed).
declare_crash_points(
    {
        "tag.before_embed": "tag: intent recorded, exiftool not yet run on the image",
        "tag.after_embed": "tag: exiftool rewrote the image, not yet fsynced",
        "tag.before_restore": "tag undo: the original's bytes (or an emptied sidecar) written beside it and fsynced, not yet renamed",
        "tag.after_restore": "tag undo: the original renamed over the tagged image, the step not yet finished",
    }
)

EMBEDDABLE = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
_EMPTY_XMP = (
    "<?xpacket begin='\ufeff' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
    "<x:xmpmeta xmlns:x='adobe:ns:meta/'>\n"
    "<rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
    "</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>\n"
)
_MODES = ("sidecar", "embed", "both")
_SIDECAR_NAMES = ("full", "stem")
#: The keyword lists rfwatch merges into (IPTC only when embedding into a JPEG).
KEYWORD_LISTS = ("XMP-dc:Subject", "IPTC:Keywords", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList")
#: rfwatch's own fields (rfwatch/data/exiftool-rfwatch.config).
RFWATCH_FIELDS = ("Model", "Class", "Confidence", "Classes", "ClassifiedAt")


def sidecar_path(path: Path, naming: str) -> Path:
    return path.with_name(path.name + ".xmp") if naming == "full" else path.with_suffix(".xmp")


def _exiftool(args: list[str], target: Path, timeout: float, write: bool = True) -> str:
    if write:
        # An exiftool killed mid-write (with rfwatch, by kill -9 or a power cut) leaves its temporary file,
        # and exiftool refuses to write while it exists. Nobody else writes to a file rfwatch is tagging.
        _remove_exiftool_leftovers(target)
    result = exiftool_pool().run(args, target, timeout, expect_write=write)
    return result.stdout


def read_state(path: Path, timeout: float = 60) -> dict[str, Any]:
    """The keyword lists, rfwatch's fields and which metadata blocks ``path`` has: what undo restores."""
    args = ["-j", "-G1", "-XMP:all", "-IPTC:all", "-Photoshop:IPTCDigest", "-CurrentIPTCDigest"]
    try:
        (doc,) = json.loads(_exiftool(args, path, timeout, write=False) or "[{}]")
    except ValueError as exc:
        raise ExifToolError(f"exiftool could not read the metadata of {path}: {exc}") from None
    lists = {}
    for tag in KEYWORD_LISTS:
        values = doc.get(tag, [])
        lists[tag] = [str(v) for v in (values if isinstance(values, list) else [values])]
    fields = {name: doc.get(f"XMP-rfwatch:{name}") for name in RFWATCH_FIELDS if f"XMP-rfwatch:{name}" in doc}
    return {
        "lists": lists,
        "rfwatch": fields,
        "has_xmp": any(k.startswith("XMP-") for k in doc),
        "has_iptc": any(k.startswith("IPTC:") for k in doc),
        # which IPTC tags were there: undo takes out the character set rfwatch declares, unless it was there
        "iptc_tags": sorted(k for k in doc if k.startswith("IPTC:")),
        # Photoshop's digest of the IPTC block, and whether it matched it: an MWG reader (Lightroom, Bridge)
        # that finds a digest that no longer matches trusts the IPTC over the XMP rfwatch writes.
        "iptc_digest_in_sync": bool(doc.get("Photoshop:IPTCDigest"))
        and doc.get("Photoshop:IPTCDigest") == doc.get("File:CurrentIPTCDigest"),
    }


class TagAction:
    #: What log lines and webhook bodies show of a result; the rest (timeout, what the file held before) is
    #: kept in the journal for undo only.
    public_fields = ("keywords", "fallback", "embedded", "sidecar", "sidecar_name")

    def __init__(self, options: Any):
        opts = Options(
            options,
            short="keywords",
            known={"mode", "sidecar_name", "keywords", "hierarchy", "timeout"},
            example="a mapping such as {mode: sidecar, keywords: ['{class}']}",
        )
        self.mode = opts.choice("mode", _MODES, "sidecar")
        self.naming = opts.choice("sidecar_name", _SIDECAR_NAMES, "full", what="full (IMG.jpg.xmp) or stem (IMG.xmp)")
        self.keywords = opts.templates("keywords", ["{class}"])
        hierarchy = opts.string("hierarchy", None)
        if hierarchy is not None and not hierarchy.strip("|/ "):
            raise ValueError(f"hierarchy: expected a parent keyword such as rfwatch, got {hierarchy!r}")
        # "a|b" and "a/b" both mean keyword b under a: Lightroom joins levels with |, digiKam with /.
        self.hierarchy = [p.strip() for p in re.split(r"[|/]", hierarchy) if p.strip()] if hierarchy else []
        self.timeout = opts.number("timeout", 60.0, positive=True, unit="seconds")
        try:
            exiftool_executable()  # fails here, at load time, when exiftool is missing; not at the first file
        except ExifToolError as exc:
            raise ValueError(str(exc)) from None

    def describe(self, ctx: FileContext) -> str:
        return f"{self.mode} keywords {self._keywords(ctx)}"

    def _keywords(self, ctx: FileContext) -> list[str]:
        values = ctx.values()
        out: list[str] = []
        for template in self.keywords:
            kw = template.render_text(values).strip()  # metadata, not a path: {model} stays colors/1
            if kw and kw not in out:
                out.append(kw)
        if ctx.prediction.multi_label:
            out += [c for c in ctx.prediction.predicted_classes if c and c not in out]
        return out

    def _wanted(self, ctx: FileContext, iptc: bool) -> dict[str, list[str]]:
        """What each keyword list must contain after tagging."""
        keywords = self._keywords(ctx)
        wanted: dict[str, list[str]] = {"XMP-dc:Subject": list(keywords)}
        if iptc:
            wanted["IPTC:Keywords"] = list(keywords)
        if self.hierarchy:
            wanted["XMP-lr:HierarchicalSubject"] = ["|".join([*self.hierarchy, kw]) for kw in keywords]
            wanted["XMP-digiKam:TagsList"] = ["/".join([*self.hierarchy, kw]) for kw in keywords]
        return wanted

    def _args(self, ctx: FileContext, wanted: dict[str, list[str]], iptc: bool) -> list[str]:
        args: list[str] = []
        for tag, values in wanted.items():
            for value in values:
                args += [f"-{tag}-={value}", f"-{tag}+={value}"]
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
        resumed = ctx.resume or {}
        result: dict[str, Any] = {"keywords": self._keywords(ctx), "timeout": self.timeout}
        mode = self.mode
        if mode in ("embed", "both") and path.suffix.lower() not in EMBEDDABLE:
            log.info(
                "%s: %s files cannot carry embedded XMP here; writing a sidecar instead", path, path.suffix or "such"
            )
            mode = "sidecar"
            result["fallback"] = "sidecar"
        #: The embed's part of the intent: the sidecar's intent (mode both) must carry it on, since each intent
        #: replaces the one before; a resume that found none would read "before" from the tagged file.
        embed_intent: dict[str, Any] = {}
        if mode in ("embed", "both"):
            iptc = EMBEDDABLE[path.suffix.lower()] == "JPEG"
            # What the file held before rfwatch wrote into it: read once, before the first attempt.
            before = resumed.get("embed_before") if resumed.get("embed") == str(path) else None
            original = resumed.get("embed_original") if before is not None else None
            if before is None:
                before = read_state(path, self.timeout)
                # What undo needs for the very same bytes, journaled before the write (tag_original.py).
                original = keep_original(ctx.config, path)
                ctx.intent(embed=str(path), embed_before=before, embed_original=original)
            embed_intent = {"embed": str(path), "embed_before": before, "embed_original": original}
            wanted = self._wanted(ctx, iptc)
            crash_point("tag.before_embed")
            args = self._args(ctx, wanted, iptc)
            if iptc and before.get("iptc_digest_in_sync"):
                args.append("-Photoshop:IPTCDigest=new")  # kept in step with the IPTC it now describes
            _exiftool(args, path, self.timeout)
            crash_point("tag.after_embed")
            _fsync(path)
            ctx.produced(path)  # its size changed; the watcher must not take it as a new file
            result["embedded"] = str(path)
            result["embed_before"] = before
            if original is not None:
                result["embed_original"] = original
            result["embed_added"] = _added(before, wanted)
            # undo wipes blocks it created only while this holds; and rfwatch knows the file by it now
            result["embed_sha256"] = ctx.sha256 = sha256_file(path)
        if mode in ("sidecar", "both"):
            sidecar = sidecar_path(path, self.naming)
            _new_sidecar_tmp(sidecar).unlink(missing_ok=True)  # left by a crash during an earlier attempt
            recorded = resumed.get("sidecar") == str(sidecar)
            created = resumed["sidecar_created"] if recorded else not sidecar.exists()
            before = resumed.get("sidecar_before") if recorded else None
            if before is None:
                before = _EMPTY_STATE if created else read_state(sidecar, self.timeout)
            ctx.intent(
                **embed_intent,
                sidecar=str(sidecar),
                sidecar_created=created,
                sidecar_before=before,
            )
            if not sidecar.exists():
                _write_new(sidecar)
            wanted = self._wanted(ctx, iptc=False)
            if mode == "both":
                # The sidecar says what the file says: the keywords already in the image too (IPTC ones as XMP).
                carried = read_state(path, self.timeout)["lists"]
                carried["XMP-dc:Subject"] = carried.get("XMP-dc:Subject", []) + carried.pop("IPTC:Keywords", [])
                for tag, values in carried.items():
                    wanted[tag] = list(dict.fromkeys(values + wanted.get(tag, [])))
            _exiftool(self._args(ctx, wanted, iptc=False), sidecar, self.timeout)
            _fsync(sidecar)
            result["sidecar"] = str(sidecar)
            result["sidecar_name"] = self.naming
            result["sidecar_created"] = created
            result["sidecar_before"] = before
            result["sidecar_added"] = _added(before, wanted)
            result["sidecar_sha256"] = sha256_file(sidecar)  # undo removes it only while unchanged
        return result

    @staticmethod
    def undo(ctx: FileContext, result: dict[str, Any]) -> dict[str, Any]:
        """Take out what rfwatch added, losslessly: a sidecar it created goes; other metadata stays as it was.

        Reads only ``result`` (a static method), so it works whatever the rule says now. A file or sidecar
        changed since rfwatch wrote it (keywords added in Lightroom) loses only the values rfwatch added:
        nothing is wiped, and a sidecar rfwatch created stays with what someone else put in it.
        """
        if (result.get("sidecar") and "sidecar_added" not in result) or (
            result.get("embedded") and "embed_added" not in result
        ):
            # Tagged by an rfwatch from before undo: what the file held before was not recorded.
            return {
                "outcome": "partial",
                "detail": "tagged before rfwatch recorded a way back: keywords left as they are",
            }
        done = []
        timeout = float(result.get("timeout") or 60)
        # Undo runs newest step first: a move after this step is undone already, so the file (and a sidecar,
        # which travels with it and is named after it) is where it was when tagged, or at the name it got back.
        if result.get("sidecar"):
            path = sidecar_path(ctx.path, result.get("sidecar_name", "full"))
            unchanged = holds(path, result.get("sidecar_sha256"))  # unknown: nothing is wiped
            if result.get("sidecar_created") and unchanged:
                path.unlink(missing_ok=True)
                fsync_dir(path.parent)
                done.append(f"removed {path.name}")
            elif path.exists():
                before = result.get("sidecar_before") or _EMPTY_STATE
                _restore(path, before, result.get("sidecar_added", {}), timeout, wipe=unchanged)
                kept = "" if unchanged else " (changed since: the rest kept)"
                done.append(f"keywords taken out of {path.name}{kept}")
        if result.get("embedded"):
            original = result.get("embed_original")
            exact, why = (
                restore_original(ctx.path, original, result.get("embed_sha256"))
                if original
                else (False, "tagged before rfwatch kept originals")
            )
            if exact:
                forget_original(original)
                ctx.sha256 = original["sha256"]
                done.append(why)
            else:
                unchanged = holds(ctx.path, result.get("embed_sha256"))
                before = result.get("embed_before") or _EMPTY_STATE
                _restore(ctx.path, before, result.get("embed_added", {}), timeout, wipe=unchanged)
                kept = "" if unchanged else " (changed since: the rest kept)"
                # Say so: the file reads as before, but its bytes are not the original's.
                done.append(f"keywords taken out of {ctx.path.name}{kept}; not byte-identical: {why}")
            ctx.produced(ctx.path)  # its content changed again; no watcher may take it as new
        if not done:
            return {"outcome": "nothing", "detail": "no metadata was written"}
        return {"outcome": "undone", "detail": "; ".join(done)}


#: What tagging adds to a JPEG's IPTC besides the keywords: ``-IPTC:CodedCharacterSet=UTF8`` and its record.
_IPTC_ENVELOPE = ("IPTC:CodedCharacterSet", "IPTC:EnvelopeRecordVersion")
_EMPTY_STATE: dict[str, Any] = {"lists": {}, "rfwatch": {}, "has_xmp": False, "has_iptc": False}


def _added(before: dict[str, Any], wanted: dict[str, list[str]]) -> dict[str, list[str]]:
    """The values rfwatch put in that were not there before: only these are taken out again."""
    had = before.get("lists", {})
    return {tag: [v for v in values if v not in had.get(tag, [])] for tag, values in wanted.items()}


def _restore(path: Path, before: dict[str, Any], added: dict[str, list[str]], timeout: float, wipe: bool) -> None:
    """Put back what ``path`` held before tagging; ``wipe``: it is unchanged since, so blocks rfwatch created go."""
    if wipe and not before.get("has_xmp") and not before.get("has_iptc"):
        # Nothing was there: remove the blocks rfwatch created, leaving EXIF, ICC and the image as they are.
        if path.suffix.lower() == ".xmp":
            # A sidecar rfwatch did not create, empty again: written beside it and renamed over it as an original is
            # put back, never truncated in place (a kill -9 between the truncation and the write left 0 bytes, which
            # exiftool then refused to write to: the redone undo failed for ever).
            write_durably(path, _EMPTY_XMP.encode("utf-8"), None, mode_of=path)
            return
        _exiftool(["-XMP:all=", "-IPTC:all="], path, timeout)
        _fsync(path)
        return
    args: list[str] = []
    for tag, values in added.items():
        args += [f"-{tag}-={v}" for v in values]
    for name in RFWATCH_FIELDS:
        old = before.get("rfwatch", {}).get(name)
        if old is None:
            args.append(f"-XMP-rfwatch:{name}=")
        elif isinstance(old, list):
            args += [f"-XMP-rfwatch:{name}="] + [f"-XMP-rfwatch:{name}+={v}" for v in old]
        else:
            args.append(f"-XMP-rfwatch:{name}={old}")
    if wipe and not before.get("has_iptc") and added.get("IPTC:Keywords"):
        args.append("-IPTC:all=")
    elif wipe and "IPTC:Keywords" in added and "iptc_tags" in before:
        # Tagging declared UTF-8 (and exiftool wrote the envelope record that holds it): not there before, so out.
        args += [f"-{tag}=" for tag in _IPTC_ENVELOPE if tag not in before["iptc_tags"]]
    if before.get("iptc_digest_in_sync"):
        args.append("-Photoshop:IPTCDigest=new")  # the IPTC as it was: its digest as it was
    _exiftool(args, path, timeout)
    _fsync(path)


def _new_sidecar_tmp(sidecar: Path) -> Path:
    return sidecar.with_name(f".{sidecar.name}.rfwatch-tmp")


def _write_new(sidecar: Path) -> None:
    tmp = _new_sidecar_tmp(sidecar)
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

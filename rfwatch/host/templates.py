"""Path and argument templates such as ``sorted/{class}/{date:%Y/%m}/{name}``.

Placeholders are checked when the config loads. Values that come from
outside (class names from the API, file names, EXIF tags) are made safe before
they become part of a path, and a rendered destination can never leave the
template's fixed root: the part before the first placeholder.

``{exif:TAG}`` (``{exif:Model}``, ``{exif:MakerNotes:Sequence}``, ``{exif:GPSLatitude:.4f}``) names a tag
of the file (rfwatch.images.exif). Python's format syntax would read it as the field ``exif`` with the
format ``Model``; :class:`_Formatter` takes the tag (and an optional group before it) into the field
name, ``exif:Model``, and leaves what follows as the format.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rfwatch.images.exif import TagRef
from rfwatch.record import record

__all__ = ["PLACEHOLDERS", "MISSING", "Template", "TemplateError", "safe_component", "UnsafePathError"]

#: Every placeholder a template may use, with what it stands for.
PLACEHOLDERS: dict[str, str] = {
    "class": "the matched class (the top class unless the rule matched another predicted class)",
    "confidence": "its confidence, 0..1 (format it like {confidence:.0%})",
    "name": "the file name, e.g. IMG_1.jpg",
    "stem": "the file name without its extension, e.g. IMG_1",
    "ext": "the extension without the dot, e.g. jpg",
    "parent": "the name of the folder the file is in",
    "relpath": "the file's path below the watched folder, e.g. cam1/IMG_1.jpg",
    "model": "the model id, e.g. my-project/3 (as one path component: my-project_3)",
    "rule": "the rule's name",
    "date": "EXIF DateTimeOriginal, else the file's mtime (strftime format, default %Y-%m-%d)",
    "now": "the current time (strftime format, default %Y-%m-%d)",
    "path": "the file's current full path",
    "frame_class": "in a sequence: the frame's own class (class is then the sequence's)",
    "frame_confidence": "in a sequence: the frame's own confidence (confidence is then the sequence's)",
    "sequence": "in a sequence: its id (empty for a file outside sequences)",
    "frame": "in a sequence: the frame's place in it by capture time, from 1 (1 outside sequences)",
    "frames": "in a sequence: how many frames it has (1 outside sequences)",
    "exif": "{exif:TAG}: an EXIF tag of the file, e.g. {exif:Model}, {exif:SerialNumber}, {exif:GPSLatitude:.4f}; "
    "any tag exiftool reads when it is installed ({exif:MakerNotes:Sequence}); empty when the file lacks it",
}
_PATHLIKE = {"relpath", "path"}  # may contain separators on purpose
_MAX_COMPONENT_BYTES = 200
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TemplateError(ValueError):
    pass


class _Missing(str):
    """The value of a placeholder the file has no value for (an EXIF tag it lacks): empty, whatever the format."""


MISSING = _Missing("")


class UnsafePathError(ValueError):
    """A rendered path would leave its destination root."""


def safe_component(value: str, limit: int = _MAX_COMPONENT_BYTES) -> str:
    """One path component from untrusted text: no separators, control characters or leading dots."""
    text = _UNSAFE.sub("_", value).strip()
    text = text.lstrip(".")
    if not text:
        return "_"
    encoded = os.fsencode(text)
    if len(encoded) > limit:
        text = os.fsdecode(encoded[:limit])
        # a cut inside a multi-byte character leaves surrogates; drop them
        text = text.encode("utf-8", "ignore").decode("utf-8", "ignore") or "_"
    return text


def _safe_relpath(value: str) -> str:
    parts = [safe_component(p) for p in re.split(r"[/\\]+", value) if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


_EXIF_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]+")


def _split_exif(spec: str) -> tuple[str, str]:
    """``Model`` -> (Model, ""); ``MakerNotes:Sequence`` -> (MakerNotes:Sequence, ""); ``GPSLatitude:.4f`` ->
    (GPSLatitude, .4f). A second part is a group's tag when it is a name of two letters or more, else a format."""
    parts = spec.split(":")
    take = 2 if len(parts) > 1 and _EXIF_NAME.fullmatch(parts[1]) else 1
    return ":".join(parts[:take]), ":".join(parts[take:])


class _Formatter(string.Formatter):
    def parse(self, format_string: str):  # type: ignore[override]
        for literal, field_name, format_spec, conversion in super().parse(format_string):
            if field_name == "exif" and format_spec:
                tag, format_spec = _split_exif(format_spec)
                field_name = f"exif:{tag}"
            yield literal, field_name, format_spec, conversion

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, _Missing):
            return ""
        if isinstance(value, dt.datetime):
            return value.strftime(format_spec or "%Y-%m-%d")
        if type(value) is float and not format_spec:  # a confidence; EXIF numbers format themselves
            return f"{value:.2f}"
        return format(value, format_spec)


_FORMATTER = _Formatter()


class _Sanitized(Mapping[str, Any]):
    """Makes each value safe as it is looked up, so values a template does not use are never computed."""

    def __init__(self, values: Mapping[str, Any]):
        self.values = values

    def __getitem__(self, key: str) -> Any:
        value = self.values[key]
        if not isinstance(value, str) or key == "path" or isinstance(value, _Missing):
            return value
        return _safe_relpath(value) if key == "relpath" else safe_component(value)

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


@record
class Template:
    text: str
    allowed: frozenset[str] = frozenset(PLACEHOLDERS)

    def __post_init__(self) -> None:
        fields = self.fields()  # raises on syntax errors
        unknown = [f for f in fields if f.partition(":")[0] not in self.allowed]
        if unknown:
            known = ("{exif:TAG}" if p == "exif" else "{" + p + "}" for p in sorted(self.allowed))
            raise TemplateError(f"unknown placeholder {{{unknown[0]}}} in {self.text!r} (known: {', '.join(known)})")

    def fields(self) -> list[str]:
        try:
            parsed = list(_FORMATTER.parse(self.text))
        except ValueError as exc:
            raise TemplateError(f"bad template {self.text!r}: {exc}") from None
        out = []
        for _, field_name, _, conversion in parsed:
            if field_name is None:
                continue
            if field_name == "exif":
                raise TemplateError(f"name the tag in {self.text!r}: {{exif:Model}}, {{exif:MakerNotes:Sequence}}")
            if field_name.startswith("exif:"):
                try:
                    TagRef.parse(field_name[5:])
                except ValueError as exc:
                    raise TemplateError(f"bad placeholder {{{field_name}}} in {self.text!r}: {exc}") from None
            elif field_name == "" or not re.fullmatch(r"[a-z_]+", field_name):
                raise TemplateError(f"bad placeholder {{{field_name}}} in {self.text!r}: use a name such as {{class}}")
            if conversion:
                raise TemplateError(f"conversions like !{conversion} are not supported in {self.text!r}")
            out.append(field_name)
        return out

    def exif_tags(self) -> list[TagRef]:
        """The EXIF tags the template names."""
        return [TagRef.parse(f[5:]) for f in self.fields() if f.startswith("exif:")]

    @property
    def fixed_root(self) -> str:
        """The folder part of the template before the first placeholder ("" means the config's folder)."""
        if "{" not in self.text:
            return os.path.dirname(self.text)
        literal = self.text.split("{", 1)[0]
        head = literal.rpartition("/")[0]
        return head or ("/" if literal.startswith("/") else "")

    def render(self, values: Mapping[str, Any]) -> str:
        try:
            return _FORMATTER.vformat(self.text, (), _Sanitized(values))
        except (ValueError, TypeError, KeyError) as exc:
            raise TemplateError(f"cannot render {self.text!r}: {exc}") from None

    def render_text(self, values: Mapping[str, Any]) -> str:
        """Render as plain text (metadata, messages): values as they are, only control characters made spaces.

        Unlike :meth:`render`, nothing is treated as a path component: ``{model}`` stays ``colors/1``.
        """
        try:
            text = _FORMATTER.vformat(self.text, (), values)
        except (ValueError, TypeError, KeyError) as exc:
            raise TemplateError(f"cannot render {self.text!r}: {exc}") from None
        return _CONTROL.sub(" ", text)

    def render_path(self, values: Mapping[str, Any], base_dir: Path) -> Path:
        """Render as a destination path, absolute against ``base_dir``, confined to the fixed root."""
        rendered = Path(os.path.expanduser(self.render(values)))
        dest = Path(os.path.normpath(rendered if rendered.is_absolute() else base_dir / rendered))
        root_text = os.path.expanduser(self.fixed_root) or "."
        root = Path(os.path.normpath(root_text if os.path.isabs(root_text) else base_dir / root_text))
        if dest == root or root not in dest.parents:
            raise UnsafePathError(f"{self.text!r} rendered to {dest}, outside its root {root}")
        return dest

"""What a frame's actions know about its sequence (:class:`SequenceFacts`), and the ``sequence.key`` template.

A sequence's key is rendered when a frame is taken, before it is classified: it may name the file, its folder
and its EXIF tags (``{parent}``, ``{exif:SerialNumber}``), never its class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

from rfwatch.config import Config, ConfigError
from rfwatch.host.templates import PLACEHOLDERS, Template, TemplateError
from rfwatch.record import record

__all__ = ["SequenceFacts", "KEY_PLACEHOLDERS", "key_template", "check_sequence_keys"]

#: What a sequence key may name: what is known of a file before it is classified.
KEY_PLACEHOLDERS = frozenset(PLACEHOLDERS) - {
    "class",
    "confidence",
    "rule",
    "now",
    "frame_class",
    "frame_confidence",
    "sequence",
    "frame",
    "frames",
}


@record
class SequenceFacts:
    """A frame's sequence, once it closed: the label every frame's rules run with, and the frame's own."""

    id: int
    #: The same on every host and after every crash (a delivery's key derives from it).
    uid: str
    frame: int
    frames: int
    label: str
    confidence: float
    method: str
    empty: bool
    why: str
    key: str
    frame_class: str
    frame_confidence: float
    first_capture: float
    last_capture: float
    _members: Callable[[], list[dict[str, Any]]] | None = field(default=None, repr=False, compare=False)

    def members(self) -> list[dict[str, Any]]:
        """Every frame: {"frame", "file_id", "source", "class", "confidence", "captured"}, by place."""
        return self._members() if self._members is not None else []

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "key": self.key,
            "frame": self.frame,
            "frames": self.frames,
            "class": self.label,
            "confidence": self.confidence,
            "label": self.method,
            "empty": self.empty,
            "frame_class": self.frame_class,
            "frame_confidence": self.frame_confidence,
        }


def key_template(text: str) -> Template:
    return Template(text, allowed=KEY_PLACEHOLDERS)


def check_sequence_keys(config: Config) -> None:
    """A ConfigError naming ``sequence.key`` (or ``watch[N].sequence.key``) for a key template that cannot work."""
    for seq in {w.sequence for w in config.watch if w.sequence is not None} | (
        {config.sequence} if config.sequence else set()
    ):
        try:
            key_template(seq.key)
        except TemplateError as exc:
            raise ConfigError(f"{seq.where}.key: {exc} (a key is rendered before the file is classified)") from None

"""What an action sees about one file: :class:`FileContext`."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rfwatch.host.sequence import SequenceFacts
from rfwatch.host.templates import MISSING
from rfwatch.images.exif import CameraFacts, camera_facts
from rfwatch.roboflow.result import Prediction

if TYPE_CHECKING:
    from rfwatch.config import Config

__all__ = ["FileContext", "StepRecorder", "exif_datetime"]


class StepRecorder(Protocol):
    """Where the step now running records what it does (the pipeline's journal; a test's list)."""

    def intent(self, detail: dict[str, Any]) -> None: ...

    def produced(self, path: Path) -> None: ...

    def delivery_id(self, parts: tuple[str, ...]) -> str: ...

    def deliver(self, kind: str, target: str, payload: bytes, key: str) -> bool: ...


def exif_datetime(path: Path) -> dt.datetime | None:
    """EXIF DateTimeOriginal (else DateTime) without decoding pixels; None when absent or unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            exif = img.getexif()
            value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
        if isinstance(value, bytes):
            value = value.decode("ascii", "ignore")
        return dt.datetime.strptime(str(value).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S") if value else None
    except Exception:
        return None


@dataclass
class FileContext:
    """One file on its way through the rules. Actions read it and may update ``path``."""

    #: Where the file is now. An action that moves the file sets this.
    path: Path
    #: Where the file was found.
    source: Path
    #: The watched folder it was found in (its parent for files given on the command line).
    watch_root: Path
    prediction: Prediction
    config: Config
    model: str
    #: The file's content hash. An action that rewrites the file in place may set it to the new content's
    #: hash (else rfwatch hashes the file again after the step).
    sha256: str = ""
    file_id: int | None = None
    #: The rule now running (None before rules run or when none matched).
    rule: str | None = None
    #: The class the rule matched (the top class unless a multi-label rule matched another).
    matched_class: str | None = None
    #: Each finished action: {"action", "ok", "result" | "error"}.
    results: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    #: What this action recorded before a crash, when a step is being redone; else None.
    resume: dict[str, Any] | None = None
    #: The model's own prediction when ``prediction`` is a person's label (review); else None.
    model_prediction: Prediction | None = None
    #: Set by the pipeline for the step now running: where intents, outputs and deliveries are recorded.
    step: StepRecorder | None = field(default=None, repr=False)
    #: Why the file waits for a person, once an action called :meth:`hold`; else None.
    held: str | None = None
    #: During ``rfwatch undo``: where the file was before the undo began (an undo that tells someone, such as
    #: a ``file.undone`` event, runs after the file is back, and can say both where it was and where it is).
    undo_from: Path | None = None
    #: The frame's sequence, when its watched folder has ``sequence:`` (then ``prediction`` is the sequence's
    #: label, and this holds the frame's own class and confidence); else None.
    sequence: SequenceFacts | None = None
    _date: dt.datetime | None = field(default=None, repr=False)
    _exif: CameraFacts | None = field(default=None, repr=False)

    def intent(self, **detail: Any) -> None:
        """Record what the action is about to do, durably, before doing it (crash recovery reads it back as ``resume``)."""
        if self.step is not None:
            self.step.intent(detail)

    def produced(self, path: Path) -> None:
        """Tell rfwatch that an action wrote ``path``, so a watcher on that folder does not take it as new."""
        if self.step is not None:
            self.step.produced(Path(path))

    def hold(self, reason: str) -> None:
        """Stop here: after this action the file waits for a person (``review``); no later action runs now.

        A person's decision runs the rules again with their label (or rejects the file).
        """
        self.held = reason

    def delivery_id(self, *parts: str) -> str:
        """An id for a delivery of this step that is the same when the step is redone after a crash."""
        if self.step is None:
            raise RuntimeError("delivery_id() is only available while an action runs")
        return self.step.delivery_id(parts)

    def deliver(self, kind: str, payload: bytes | str | dict | list, *, target: str, key: str | None = None) -> bool:
        """Queue a delivery, written with this step's result (see rfwatch.processing.delivery); False if ``target`` is gone.

        ``kind`` names a deliverer a plugin registered (hook ``register_deliverers``); ``target`` is what it
        delivers to (a URL, a project); ``key`` (default :meth:`delivery_id` of ``kind`` and ``target``) makes
        a redone step queue the same delivery, never a second one.
        """
        if self.step is None:
            raise RuntimeError("deliver() is only available while an action runs")
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, ensure_ascii=False, default=str)
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "backslashreplace")
        return self.step.deliver(kind, target, payload, key or self.delivery_id(kind, target))

    @property
    def date(self) -> dt.datetime:
        if self._date is None:
            self._date = exif_datetime(self.path) or _mtime(self.path)
        return self._date

    @property
    def exif(self) -> CameraFacts:
        """The file's EXIF tags (rfwatch.images.exif), read when first asked for; the rules' read is shared."""
        if self._exif is None or self._exif.path != self.path:  # moved since: look it up where it is now
            self._exif = camera_facts(self.path)
        return self._exif

    def values(self) -> dict[str, Any]:
        """Placeholder values for templates (see rfwatch.host.templates.PLACEHOLDERS)."""
        name = self.path.name
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        try:
            rel = os.path.relpath(self.source, self.watch_root)
        except ValueError:
            rel = self.source.name
        cls = self.matched_class if self.matched_class is not None else self.prediction.top
        return _LazyValues(
            self,
            {
                "class": cls or "unclassified",
                "confidence": self.prediction.confidence_of(cls) if cls else self.prediction.confidence,
                "name": name,
                "stem": stem,
                "ext": ext,
                "parent": self.path.parent.name,
                "relpath": rel,
                "model": self.model,
                "rule": self.rule or "",
                "now": dt.datetime.now(),
                "path": str(self.path),
                **self._sequence_values(cls),
            },
        )

    def _sequence_values(self, cls: str | None) -> dict[str, Any]:
        seq = self.sequence
        if seq is None:  # a file outside sequences is its own
            own = self.prediction.confidence_of(cls) if cls else self.prediction.confidence
            return {
                "frame_class": cls or "unclassified",
                "frame_confidence": own,
                "sequence": "",
                "frame": 1,
                "frames": 1,
            }
        return {
            "frame_class": seq.frame_class or "unclassified",
            "frame_confidence": seq.frame_confidence,
            "sequence": str(seq.id),
            "frame": seq.frame,
            "frames": seq.frames,
        }


class _LazyValues(dict):
    """Placeholder values; {date} and {exif:TAG} read EXIF only when a template asks for them."""

    def __init__(self, ctx: FileContext, values: dict[str, Any]):
        super().__init__(values)
        self._ctx = ctx

    def __missing__(self, key: str) -> Any:
        if key == "date":
            self[key] = self._ctx.date
            return self[key]
        if key.startswith("exif:"):
            value = self._ctx.exif.get(key[5:])
            self[key] = MISSING if value is None else value
            return self[key]
        raise KeyError(key)


def _mtime(path: Path) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        return dt.datetime.now()

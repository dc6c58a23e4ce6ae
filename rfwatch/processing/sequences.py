"""Sequences: the frames of one burst decided together.

``sequence: {key: "{parent}", gap: 60, label: max, empty: [empty]}`` (top level or per watch). A frame is recorded
when it is taken (its key, rendered from the ``key`` template, and its capture time, rfwatch.images.capture),
classified as any file, then waits (``waiting``) until its sequence closes: frames of one key whose capture times
lie within ``gap`` seconds of the one before make one sequence. A sequence closes when a frame of its key captured
more than ``gap`` later arrives, when no frame of its key arrived for ``gap`` seconds of wall time, or when
``run --once`` has nothing left to read (see rfwatch.journal.sequences: one transaction, one closer).

Then it gets one label (:func:`label_sequence`) and every frame is a classified file again: the rules run for it
with the sequence's label as its prediction (:func:`sequence_prediction`), and ``ctx.sequence`` says which frame
of which sequence it is, with its own class.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from rfwatch.config import SequenceConfig, SequenceLabel
from rfwatch.host.context import FileContext
from rfwatch.host.sequence import SequenceFacts, key_template
from rfwatch.images.capture import capture_time
from rfwatch.journal import Decided, FileRow, Journal, Member, SequenceRow
from rfwatch.record import record
from rfwatch.roboflow.result import Prediction

if TYPE_CHECKING:
    from rfwatch.host.runtime import Runtime

__all__ = ["Sequencer", "label_sequence", "sequence_prediction", "Placed"]

log = logging.getLogger("rfwatch.sequences")


@record
class Placed:
    """Where a classified frame stands: it waits, or its rules run (with its sequence's facts, if it has one)."""

    waits: bool
    facts: SequenceFacts | None = None


class Sequencer:
    def __init__(self, runtime: Runtime, journal: Journal):
        self.runtime = runtime  # replaced by the pipeline on reload
        self.journal = journal

    # --- config ----------------------------------------------------------------------

    def config_for_root(self, root: str) -> SequenceConfig | None:
        config = self.runtime.config
        for w in config.watch:
            if w.name == root:
                return w.sequence
        return None

    def enabled(self) -> bool:
        return any(w.sequence is not None for w in self.runtime.config.watch)

    # --- a frame arrives, is placed --------------------------------------------------

    def arrive(self, row: FileRow) -> None:
        """Record a frame as it is taken (a file outside sequences is not recorded)."""
        seq = self.config_for_root(row.root)
        if seq is None:
            return
        ctx = FileContext(
            path=row.path,
            source=row.source,
            watch_root=row.watch_root,
            prediction=Prediction.from_json({"predictions": []}),
            config=self.runtime.config,
            model=row.model,
            sha256=row.sha256,
            file_id=row.id,
        )
        key = f"{row.root}/{key_template(seq.key).render_text(ctx.values())}"
        self.journal.sequences.arrive(row.id, key, capture_time(row.path), seq.gap)

    def place(self, row: FileRow, prediction: Prediction) -> Placed:
        """After classification: wait for the sequence, or run the rules (now, or as a sequence closed)."""
        sequences = self.journal.sequences
        frame = sequences.frame(row.id)
        if frame is None:
            if self.config_for_root(row.root) is None:
                return Placed(False)
            self.arrive(row)  # classified before its folder had sequences (or taken by an rfwatch without them)
            frame = sequences.frame(row.id)
        if frame is not None and frame.sequence_id is not None:
            return Placed(False, self.facts(row.id))
        own = _frame_label(prediction)
        late = sequences.wait(row.id, *own)
        if late is None:
            return Placed(True)
        log.info("%s: taken after its sequence %d closed: joins it with its label %s", row.source, late.id, late.label)
        return Placed(False, self.facts(row.id))

    def facts(self, file_id: int) -> SequenceFacts | None:
        """A frame's sequence, once closed; None for a file outside sequences (or one still waiting)."""
        sequences = self.journal.sequences
        frame = sequences.frame(file_id)
        if frame is None or frame.sequence_id is None:
            return None
        seq = sequences.get(frame.sequence_id)
        if seq is None:
            return None
        return _facts(self.journal, seq, frame.frame or 1, frame.frame_class or "", frame.frame_confidence or 0.0)

    # --- closing ------------------------------------------------------------------------

    def decide(self, key: str, members: list[Member]) -> Decided:
        seq = self.config_for_root(key.split("/", 1)[0]) or SequenceConfig()
        threshold = self.runtime.config.roboflow.multi_label_threshold
        return label_sequence(
            [(m.file_id, Prediction.from_json(m.prediction, threshold)) for m in members], seq.label, seq.empty
        )

    def close_due(self, final: bool = False) -> list[SequenceRow]:
        """Close the sequences that are due (``final``: every one whose frames are all classified)."""
        closed = self.journal.sequences.close_due(self.decide, final)
        for s in closed:
            log.info(
                "sequence %d (%s) closed: %d frame(s), %s %.2f (%s)%s; %s",
                s.id,
                s.key,
                s.frames,
                s.label,
                s.confidence,
                s.method,
                ", every frame empty" if s.empty else "",
                s.why,
            )
        return closed


def _frame_label(prediction: Prediction) -> tuple[str, float]:
    return prediction.top or "unclassified", prediction.confidence


def label_sequence(
    frames: list[tuple[int, Prediction]], method: SequenceLabel | str, empty: tuple[str, ...] = ()
) -> Decided:
    """One label for a sequence's frames (file id, prediction), in capture order.

    ``max``: the class of the most confident frame; ``mean``: the best class of the frames' averaged scores;
    ``majority``: the class most frames have as their top class (a tie goes to the larger summed confidence),
    with the mean confidence of those frames. Frames whose class is in ``empty`` count only when every frame is
    empty; otherwise the label comes from the other frames (and ``mean`` never picks an empty class).
    """
    method = SequenceLabel(method)
    own = {fid: _frame_label(p) for fid, p in frames}
    empties = set(empty)
    animal = [(fid, p) for fid, p in frames if own[fid][0] not in empties]
    is_empty = not animal
    use = frames if is_empty else animal
    if method == SequenceLabel.MAX:
        best = max(use, key=lambda fp: own[fp[0]][1])  # the first of equals: the earliest frame
        label, confidence = own[best[0]]
    elif method == SequenceLabel.MEAN:
        totals: dict[str, float] = {}
        for _, p in use:
            for s in p.predictions:
                totals[s.name] = totals.get(s.name, 0.0) + s.confidence
        candidates = {c: t for c, t in totals.items() if is_empty or c not in empties} or {
            own[fid][0]: own[fid][1] for fid, _ in use
        }
        label = max(candidates, key=lambda c: (candidates[c], c))
        confidence = candidates[label] / len(use)
    else:
        votes = Counter(own[fid][0] for fid, _ in use)
        sums: dict[str, float] = {}
        for fid, _ in use:
            sums[own[fid][0]] = sums.get(own[fid][0], 0.0) + own[fid][1]
        label = max(votes, key=lambda c: (votes[c], sums[c]))
        confidence = sums[label] / votes[label]
    return Decided(label, round(confidence, 6), str(method), is_empty, own)


def sequence_prediction(seq: SequenceFacts, frame: Prediction) -> Prediction:
    """The prediction a frame's rules run with: the sequence's class at the sequence's confidence (every other
    class the frame's model answered at 0), as a single-label answer."""
    names = [s.name for s in frame.predictions if s.name != seq.label]
    size = {"width": frame.image_size[0], "height": frame.image_size[1]} if frame.image_size else None
    doc = {
        "predictions": [{"class": seq.label, "confidence": seq.confidence}]
        + [{"class": n, "confidence": 0.0} for n in names],
        "top": seq.label,
        "confidence": seq.confidence,
        "image": size,
        "image_path": frame.image_path,
        "time": frame.time,
    }
    if frame.inference_id:
        doc["inference_id"] = frame.inference_id
    return Prediction.from_json(doc)


def _facts(journal: Journal, seq: SequenceRow, frame: int, frame_class: str, frame_confidence: float) -> SequenceFacts:
    def members() -> list[dict]:
        out = []
        for m in journal.sequences.members(seq.id):
            try:
                source = str(journal.files.get(m.file_id).source)
            except KeyError:
                source = ""
            out.append(
                {
                    "frame": m.frame,
                    "file_id": m.file_id,
                    "source": source,
                    "class": m.frame_class,
                    "confidence": m.frame_confidence,
                    "captured": m.capture,
                }
            )
        return out

    return SequenceFacts(
        id=seq.id,
        uid=journal.delivery_id("sequence", seq.id),
        frame=frame,
        frames=seq.frames,
        label=seq.label,
        confidence=seq.confidence,
        method=seq.method,
        empty=seq.empty,
        why=seq.why,
        key=seq.key,
        frame_class=frame_class,
        frame_confidence=frame_confidence,
        first_capture=seq.first_capture,
        last_capture=seq.last_capture,
        _members=members,
    )

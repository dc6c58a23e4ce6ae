"""Named crash points, for tests: stop the process dead at an exact step, as kill -9 would.

``RFWATCH_CRASH_AT=<point>[:<n>]`` (read once, when rfwatch starts) makes the ``n``-th arrival (default the
first) at ``crash_point(<point>)`` end the process with ``os._exit(CRASH_EXIT)``: no cleanup, no flush, no
finally blocks, exactly what a power cut or kill -9 leaves behind. Without the variable a crash point costs
one comparison. ``tests/test_crash_points.py`` walks every point in :data:`POINTS` and checks that each file
is in exactly one place, whole, and that a restart completes the run.
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["POINTS", "CRASH_EXIT", "crash_point", "declare", "check_target"]

#: The exit status of a process stopped at a crash point (the walk test tells it from a real failure).
CRASH_EXIT = 86

#: Every crash point, with where it is: rfwatch's own here, and each plugin's once it has loaded (``declare``; the tag
#: and review built-ins declare theirs). A point not listed is an error when crash points are on.
POINTS: dict[str, str] = {
    # the journal, after each committed write
    "journal.created": "a new file's row committed (state detected)",
    "journal.classified": "the model's answer taken (committed already, or waiting for the file's next transition)",
    "journal.step_begun": "a step about to run, nothing of it journaled or done yet",
    "journal.intent": "an action's intent committed, before its side effect",
    "journal.step_finished": "a step's result committed (with its queued deliveries)",
    "journal.finished": "the file's final state committed",
    # moving and copying (rfwatch/files/place.py)
    "place.made_folders": "a move or copy: its target's folders made (a new one journaled first), nothing placed",
    "place.before_rename": "a move: intent recorded, nothing renamed yet",
    "place.after_rename": "a move: renamed into place, folders not yet fsynced",
    "place.duplicate": "dedupe: identical content found at the target and recorded, the source not yet removed",
    "place.after_copy": "across filesystems: the temporary copy written, not yet fsynced",
    "place.after_fsync": "across filesystems: the temporary copy fsynced, not yet renamed into place",
    "place.after_tmp_rename": "across filesystems: the copy renamed into place, the source still there",
    "place.after_unlink": "across filesystems: the source removed, its folder not yet fsynced",
    # derived files (rfwatch/host/annotate.py)
    "annotate.after_save": "an annotated copy written to the name it was given (write_output's temporary one), not placed",
    # exports (rfwatch/exports/camtrap_dp.py)
    "export.tables_written": "a Camtrap DP export: an earlier descriptor removed, two tables replaced, not the third",
    # failed files
    "quarantine.before_move": "a failed file: about to be moved into failed:",
    "quarantine.after_move": "a failed file: moved into failed:, the step not yet finished",
    # review
    "review.decided": "a person's decision committed, nothing applied yet",
    # sequences
    "sequence.waiting": "a classified frame's wait for its sequence committed",
    "sequence.closed": "a sequence's close committed (its frames classified again), none of their actions run yet",
    # review page
    "review.taken_back": "a decision taken back on the page committed: the file waits for review again",
    # undo
    "undo.step_begun": "an undo step about to run, nothing of it journaled or done yet",
    "undo.intent": "an undo's intent committed, before its side effect (moving a file back)",
    "undo.step_finished": "an undo step's result committed (with a file.undone event)",
    "undo.finished": "the file marked undone",
    # deliveries (webhooks, review uploads)
    "delivery.before_enqueue": "a delivery about to be written with its step's transaction",
    "delivery.before_send": "a delivery claimed, nothing sent yet",
    "delivery.after_send": "a delivery sent and answered, the answer not yet recorded",
}

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS and "." not in name:  # a plugin's point ("tag.before_embed") is known once it loads
        _unknown(name)
    return name, int(count or 1)


def _unknown(name: str) -> None:
    raise SystemExit(f"RFWATCH_CRASH_AT: unknown crash point {name!r} (known: {', '.join(sorted(POINTS))})")


def declare(points: dict[str, str]) -> None:
    """Add a plugin's crash points (name -> where it is); the same name with another meaning is an error."""
    for name, where in points.items():
        if POINTS.get(name, where) != where:
            raise ValueError(f"crash point {name!r} is declared twice: {POINTS[name]!r} and {where!r}")
        POINTS[name] = where


def check_target() -> None:
    """Once the plugins are loaded: ``RFWATCH_CRASH_AT`` must name a point somebody declared (a typo fails loudly)."""
    if _TARGET is not None and _TARGET[0] not in POINTS:
        _unknown(_TARGET[0])


_TARGET = _parse(os.environ.get("RFWATCH_CRASH_AT"))


def crash_point(name: str) -> None:
    """Die here if ``RFWATCH_CRASH_AT`` names this point and this is its n-th arrival."""
    if _TARGET is None:
        return
    if name not in POINTS:
        raise AssertionError(f"crash point {name!r} is not listed in rfwatch.crashpoints.POINTS")
    if name != _TARGET[0]:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == _TARGET[1]:
            sys.stderr.write(f"rfwatch: crash point {name} reached: exiting now\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT)

"""The review page's list: filters, sorts and cursor pages over the files that wait for review.

The journal gives the waiting files' ids in one index-only query (``files_state``: state, then the time each
began to wait), and the rows of those not seen before; the filters on the model's answer (a class, a confidence range) read the prediction, which is JSON in the
journal, so they run here, over entries cached by (id, updated): a list of thousands costs one index-only query and a
pass in memory, not a read and parse of every prediction each time the page asks (every two seconds).

Pages are keyset pages: the cursor is the sort key of the last item shown, and the next page starts after it. An
item decided meanwhile drops out without shifting the others; no item is shown twice or skipped.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from rfwatch.journal import FileRow
from rfwatch.record import record
from rfwatch.roboflow.result import Prediction

__all__ = ["Listing", "Query", "QueryError", "SORTS", "MAX_LIMIT", "entry_of"]

#: Sort orders: time (the file found first comes first, the default), -time, confidence (least sure first),
#: -confidence.
SORTS = ("time", "-time", "confidence", "-confidence")
DEFAULT_LIMIT = 60
MAX_LIMIT = 500


class QueryError(ValueError):
    """A query parameter the list cannot take (named in the message)."""


@record
class Query:
    cls: str | None = None  # the model's guess (a predicted class) is this class
    min_score: float | None = None  # the model's highest score, within [min, max]
    max_score: float | None = None
    folder: str | None = None
    sort: str = "time"
    after: tuple[float, int] | None = None  # the cursor: the sort key of the last item of the page before
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, params: Any) -> Query:
        def number(name: str) -> float | None:
            text = params.get(name)
            if text in (None, ""):
                return None
            try:
                value = float(text)
            except ValueError:
                raise QueryError(f"{name}: expected a number between 0 and 1, got {text!r}") from None
            if not 0.0 <= value <= 1.0:
                raise QueryError(f"{name}: expected a number between 0 and 1, got {text!r}")
            return value

        sort = params.get("sort") or "time"
        if sort not in SORTS:
            raise QueryError(f"sort: expected one of {', '.join(SORTS)}, got {sort!r}")
        try:
            limit = int(params.get("limit") or DEFAULT_LIMIT)
        except ValueError:
            raise QueryError(f"limit: expected a whole number, got {params.get('limit')!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError(f"limit: expected 1 to {MAX_LIMIT}, got {limit}")
        return cls(
            cls=params.get("class") or None,
            min_score=number("min"),
            max_score=number("max"),
            folder=params.get("folder") or None,
            sort=sort,
            after=_decode(params["cursor"]) if params.get("cursor") else None,
            limit=limit,
        )


def _key(entry: dict[str, Any], sort: str) -> tuple[float, int]:
    """The item's place in ``sort``, as an ascending tuple (descending orders negate it)."""
    value = entry["found"] if sort.endswith("time") else entry["score"]
    return (-value, -entry["id"]) if sort.startswith("-") else (value, entry["id"])


def _encode(key: tuple[float, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[float, int]:
    try:
        value, ident = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(value), int(ident)
    except (ValueError, TypeError):
        raise QueryError("cursor: not one this page gave out") from None


def entry_of(row: FileRow, prediction: Prediction) -> dict[str, Any]:
    """An item as the JSON API shows it (its ``classes`` are filled in by :meth:`Listing.page`)."""
    try:
        folder_rel = row.source.parent.relative_to(row.watch_root).as_posix()
    except ValueError:
        folder_rel = row.source.parent.as_posix()
    folder = row.root + ("" if folder_rel in ("", ".") else "/" + folder_rel)
    return {
        "id": row.id,
        "name": row.path.name,
        "path": str(row.path),
        "folder": folder,
        "prediction": prediction.json(),
        "image": f"/api/items/{row.id}/image",
        "full": f"/api/items/{row.id}/full",
        "model": row.model,
        # The model's classes as far as its answers show: until the platform has said what they are.
        "_answered": sorted(s.name for s in prediction.predictions),
        "classes": [],
        "multi_label": prediction.multi_label,
        # What the model guessed: its predicted classes, and the one that decides {class} (the highest-scoring).
        "guess": list(prediction.predicted_classes),
        "class": prediction.top,
        "score": prediction.predictions[0].confidence if prediction.predictions else 0.0,
        # Time order is the order files were found in: a decision taken back puts its file back in its place.
        "found": row.created,
        "waiting_since": row.updated,
    }


class Listing:
    def __init__(
        self,
        keys: Callable[[], list[tuple[int, float]]],
        rows: Callable[[list[int]], Iterable[FileRow]],
        make_entry: Callable[[FileRow], dict[str, Any]],
        classes_of: Callable[[str], tuple[str, ...] | None],
    ):
        self.keys = keys  # (id, updated) of every waiting file: an index-only query
        self.rows = rows  # the full rows of some of them
        self.make_entry = make_entry
        self.classes_of = classes_of  # a model's classes, once the platform has said (asked on every page)
        self._cache: dict[tuple[int, float], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def entries(self) -> list[dict[str, Any]]:
        keys = self.keys()
        with self._lock:
            missing = [k for k in keys if k not in self._cache]
        fresh = {}
        if missing:
            for row in self.rows([file_id for file_id, _ in missing]):
                fresh[(row.id, row.updated)] = self.make_entry(row)
        with self._lock:
            self._cache.update(fresh)
            wanted = set(keys)
            for key in [k for k in self._cache if k not in wanted]:  # forget the files that no longer wait
                del self._cache[key]
            # a row changed between the two queries is left out until the next look
            return [self._cache[k] for k in keys if k in self._cache]

    def page(self, q: Query) -> dict[str, Any]:
        everything = self.entries()
        known: dict[str, tuple[str, ...] | None] = {}
        for e in everything:
            model = e["model"]
            if model not in known:
                known[model] = self.classes_of(model)
            e["classes"] = list(known[model] or e["_answered"])
        classes: list[str] = []
        for names in dict.fromkeys(tuple(e["classes"]) for e in everything):  # the models' class lists, once each
            classes += [c for c in names if c not in classes]
        folders = {e["folder"] for e in everything}
        chosen = [
            e
            for e in everything
            if (q.cls is None or q.cls in e["guess"])
            and (q.min_score is None or e["score"] >= q.min_score)
            and (q.max_score is None or e["score"] <= q.max_score)
            and (q.folder is None or e["folder"] == q.folder)
        ]
        chosen.sort(key=lambda e: _key(e, q.sort))
        after = q.after
        chosen_after = chosen if after is None else [e for e in chosen if _key(e, q.sort) > after]
        shown = chosen_after[: q.limit]
        more = len(chosen_after) > q.limit
        return {
            "items": [{k: v for k, v in e.items() if not k.startswith("_")} for e in shown],
            "classes": classes,
            "folders": sorted(folders),
            "total": len(chosen),  # every item the filters match, on all pages
            "waiting": len(everything),
            "next": _encode(_key(shown[-1], q.sort)) if more and shown else None,
        }

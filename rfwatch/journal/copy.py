"""``rfwatch journal copy``: move a journal to another database (SQLite to PostgreSQL) without losing history.

Everything that makes history, undo and pending work carry on is copied: files, steps, events, undo records,
decisions, sequences and their frames (a frame waiting for its sequence waits on in the target), the prediction
cache, the marks of files rfwatch wrote, deliveries (pending ones keep their ids, so a
receiver sees the same ``webhook-id``), gone targets and model facts, and the paths a step left between its intent
and its result had claimed (``claims``). Who held a file is not: no process of the old journal works on the new one.

Idempotent: each file copied is recorded in the target (``copies``: the source journal's id and the file's old and
new ids), in the same transaction as its rows, so running the copy again (after an interruption, or to take files
the source gained since) copies only what is missing, never twice. Into an empty target the ids stay as they were
and the target takes the source's journal id, so delivery ids derived later are the ones the source would have
given; into a target that has files of its own, copied files get new ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rfwatch.journal.db import Dialect, Tx

__all__ = ["copy_journal", "CopyReport", "SourceBusy"]

_BATCH = 500


class SourceBusy(Exception):
    """Processes still work on the source journal: their later changes would not be copied."""


@dataclass
class CopyReport:
    files: int = 0
    already: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    same_ids: bool = False

    def add(self, table: str, n: int) -> None:
        self.counts[table] = self.counts.get(table, 0) + n


def copy_journal(source: Any, target: Any, progress: Callable[[int], None] | None = None) -> CopyReport:
    """Copy ``source`` (a Journal) into ``target`` (a Journal); see the module's docstring."""
    live = source.holders.live()
    if live:
        names = ", ".join(f"{h['kind']} on {h['host']} (pid {h['pid']})" for h in live)
        raise SourceBusy(f"processes still work on {source.display}: {names}; stop them first")
    report = CopyReport()
    src, dst = source.db, target.db
    target_empty = not dst.scalar("SELECT COUNT(*) FROM files") and not dst.scalar("SELECT COUNT(*) FROM copies")
    report.same_ids = target_empty
    if target_empty:
        dst.transact(lambda tx: tx.run("UPDATE meta SET value=? WHERE key='journal_id'", (source.id,)))
        target.id = source.id

    sequences = dst.transact(
        lambda tx: _copy_sequences(tx, src.all("SELECT * FROM sequences ORDER BY id"), report, target_empty)
    )
    last = 0
    while True:
        rows = src.all("SELECT * FROM files WHERE id > ? ORDER BY id LIMIT ?", (last, _BATCH))
        if not rows:
            break
        last = rows[-1]["id"]
        batch = [dict(r) for r in rows]
        related = {
            table: _rows_of(src, table, [r["id"] for r in batch])
            for table in ("steps", "events", "undo_steps", "decisions", "produced", "claims", "outbox", "seq_frames")
        }
        dst.transact(
            lambda tx, b=batch, rel=related: _copy_batch(tx, source.id, b, rel, report, target_empty, sequences)
        )
        if progress is not None:
            progress(report.files + report.already)

    def rest(tx: Tx) -> None:
        for table, key in (
            ("predictions", "(sha256, model)"),
            ("gone_urls", "(url)"),
            ("model_facts", "(model)"),
            ("deliverers", "(kind)"),
        ):
            for r in src.all(f"SELECT * FROM {table}"):
                cols = list(r.keys())
                report.add(table, _insert(tx, table, cols, [r[c] for c in cols], key))
        for r in src.all("SELECT * FROM outbox WHERE file_id IS NULL"):
            report.add("outbox", _insert_delivery(tx, dict(r), None))
        if dst.dialect == Dialect.POSTGRESQL:
            # Ids were given explicitly: the identity sequences must continue after them.
            for table in ("files", "events", "sequences"):
                tx.run(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                    f" GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))"
                )

    dst.transact(rest)
    # The triggers on files wrote a +1 row for each file copied in: folded now, so that status on the new
    # journal reads a few rows before any daemon has run on it.
    target.files.fold_counts()
    return report


def _rows_of(db: Any, table: str, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    marks = ",".join("?" * len(ids))
    order = " ORDER BY id" if table == "events" else ""
    out: dict[int, list[dict[str, Any]]] = {}
    for r in db.all(f"SELECT * FROM {table} WHERE file_id IN ({marks}){order}", ids):
        out.setdefault(r["file_id"], []).append(dict(r))
    return out


def _insert(tx: Tx, table: str, cols: list[str], values: list[Any], key: str) -> int:
    holes = ",".join("?" * len(cols))
    return tx.run(f"INSERT INTO {table} ({','.join(cols)}) VALUES ({holes}) ON CONFLICT {key} DO NOTHING", values)


def _insert_delivery(tx: Tx, row: dict[str, Any], file_id: int | None) -> int:
    row = dict(row, file_id=file_id, lease=None)  # no process of the old journal holds anything here
    row["body"] = bytes(row["body"])
    cols = list(row)
    return _insert(tx, "outbox", cols, [row[c] for c in cols], "(id)")


def _copy_sequences(tx: Tx, rows: list[Any], report: CopyReport, same_ids: bool) -> dict[int, int]:
    """Closed sequences, by their old id -> new id. A sequence copied before (same key, captures and close) is
    found again, so a second copy adds none."""
    out = {}
    for r in rows:
        row = dict(r)
        found = tx.scalar(
            "SELECT id FROM sequences WHERE key=? AND first_capture=? AND last_capture=? AND closed=?",
            (row["key"], row["first_capture"], row["last_capture"], row["closed"]),
        )
        if found is None:
            found = _insert_new(tx, "sequences", row, same_ids)
            report.add("sequences", 1)
        out[r["id"]] = found
    return out


def _insert_new(tx: Tx, table: str, row: dict[str, Any], same_ids: bool) -> int:
    """Insert a copied row; its new id. ``same_ids``: the target is empty, so rows keep the ids they had (the
    journal id and delivery ids derive from them)."""
    if not same_ids:
        row = {k: v for k, v in row.items() if k != "id"}
    cols = list(row)
    return tx.scalar(
        f"INSERT INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))}) RETURNING id",
        [row[c] for c in cols],
    )


def _copy_batch(
    tx: Tx,
    source_id: str,
    files: list[dict[str, Any]],
    related: dict[str, dict[int, list[dict[str, Any]]]],
    report: CopyReport,
    same_ids: bool,
    sequences: dict[int, int],
) -> None:
    for f in files:
        old = f["id"]
        if tx.one("SELECT new_id FROM copies WHERE source=? AND old_id=?", (source_id, old)) is not None:
            report.already += 1
            continue
        row = dict(f, holder=None)
        row["source"], row["path"] = bytes(row["source"]), bytes(row["path"])
        new = _insert_new(tx, "files", row, same_ids)
        tx.run("INSERT INTO copies (source, old_id, new_id) VALUES (?,?,?)", (source_id, old, new))
        report.files += 1
        for s in related["steps"].get(old, []):
            s = dict(s, file_id=new)
            report.add("steps", _insert(tx, "steps", list(s), list(s.values()), "(file_id, seq)"))
        for e in related["events"].get(old, []):
            tx.run(
                "INSERT INTO events (file_id, at, message, host) VALUES (?,?,?,?)",
                (new, e["at"], e["message"], e.get("host")),
            )
            report.add("events", 1)
        for u in related["undo_steps"].get(old, []):
            u = dict(u, file_id=new)
            report.add("undo_steps", _insert(tx, "undo_steps", list(u), list(u.values()), "(file_id, seq)"))
        for d in related["decisions"].get(old, []):
            d = dict(d, file_id=new)
            report.add("decisions", _insert(tx, "decisions", list(d), list(d.values()), "(file_id, round)"))
        for p in related["produced"].get(old, []):
            p = dict(p, file_id=new, path=bytes(p["path"]))
            report.add("produced", _insert(tx, "produced", list(p), list(p.values()), "(path_root, path)"))
        for c in related["claims"].get(old, []):  # a step that a crash left between its intent and its result
            c = dict(c, file_id=new, path=bytes(c["path"]))
            report.add("claims", _insert(tx, "claims", list(c), list(c.values()), "(path_root, path, file_id)"))
        for o in related["outbox"].get(old, []):
            report.add("outbox", _insert_delivery(tx, o, new))
        for q in related["seq_frames"].get(old, []):
            q = dict(q, file_id=new, sequence_id=sequences.get(q["sequence_id"]))
            report.add("seq_frames", _insert(tx, "seq_frames", list(q), list(q.values()), "(file_id)"))

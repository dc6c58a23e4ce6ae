"""The daemon's commands: run, plugins, status, retry, history, prune.

Every command but ``run`` works on the journal; a running daemon notices what ``retry`` changes there
(see Daemon.poll_journal), so nothing needs a signal or a restart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfwatch.errors import ConfigError
from rfwatch.redact import redact
from rfwatch.states import ACTIVE_STATES, FileState

if TYPE_CHECKING:  # imported where used: `rfwatch --help` loads no journal (issue 23, item 1)
    from rfwatch.journal import FileRow, Journal

__all__ = ["add_commands"]


def load_config(path: str | os.PathLike[str], **options: Any):
    """``rfwatch.config.load_config``, imported on first use: `rfwatch --help` needs no YAML (issue 23, item 1)."""
    from rfwatch.config import load_config as load

    return load(path, **options)


def _journal(config, kind: str = "command") -> Journal:
    from rfwatch.journal import is_postgres_url, open_journal

    if not is_postgres_url(config.journal_url) and not config.state_path.exists():
        raise ConfigError(
            f"state: no journal at {config.state_path} yet (has `rfwatch run` been started with this config?)"
        )
    return open_journal(config, kind=kind)


def load_for_reading(path: str, journal_only: bool = True):
    """The config for a command that only reads the journal (status, history, undo --dry-run, export): an unset
    ``${VAR}`` or an unreadable secret file does not stop it; stderr says what would not run without it."""
    from rfwatch.config import unavailable_actions

    config = load_config(path, journal_only=journal_only)
    for line in unavailable_actions(config):
        print(f"rfwatch: note: {line}", file=sys.stderr)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from rfwatch.service.early import ask_early

    config = load_config(args.config)
    if args.log_format is None and config.log_format != "text":
        from rfwatch.service.logs import setup_logging

        setup_logging(-1 if args.quiet else args.verbose, config.log_format)
    # On a first run the platform is asked about the model now, while the daemon's modules load (the upload size
    # is needed before the first upload): rfwatch/service/early.py.
    facts = ask_early(config)
    from rfwatch.service.daemon import Daemon

    daemon = Daemon(
        args.config,
        config=config,
        dry_run=args.dry_run,
        once=args.once,
        progress=args.once and sys.stderr.isatty() and not args.quiet,
        facts=facts,
    )
    return daemon.run()


def cmd_plugins(args: argparse.Namespace) -> int:
    from rfwatch.host.manager import PluginHost

    extra = load_config(args.config).plugins if args.config else ()
    host = PluginHost.load(extra)
    described = host.describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for p in described:
        print(p["name"] + (f"  ({p['distribution']})" if p["distribution"] else ""))
        print("  hooks:   " + (", ".join(p["hooks"]) or "-"))
        if p["actions"]:
            print("  actions: " + ", ".join(p["actions"]))
    return 0


def _ts(t: float | None) -> str:
    """RFC 3339 with the local offset, as in the logs: unambiguous across hosts and summer time."""
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds") if t else "-"


def status_report(config, with_plugins: bool = False) -> dict[str, Any]:
    """What ``rfwatch status`` prints. The plugins are loaded only ``with_plugins`` (``status --plugins``): for their
    names, their ``status_lines`` and every plugin that delivers listed at 0; plain ``status`` runs no plugin code
    and names each delivery by the plugin the outbox recorded (issue 23: only commands that run actions load the
    plugins, and loading them was a third of status's start-up)."""
    from rfwatch.processing.outbox_view import DeliveryView

    journal = _journal(config)
    try:
        counts = journal.files.counts()
        threshold = config.roboflow.multi_label_threshold
        deliveries = DeliveryView(journal)
        plugin_names: list[str] | None = None
        lines: list[str] = []
        if with_plugins:
            from rfwatch.host.manager import PluginHost
            from rfwatch.processing.delivery import Deliveries

            deliveries = Deliveries(journal)  # what the hook is documented to get

            # The rules are not built: status runs no action, and a rule that does not build leaves status working.
            plugins = PluginHost.load(config.plugins)
            try:
                deliveries.deliverers = plugins.deliverers(config)
            except ConfigError:  # a deliverer refusing its options: status still reports what the journal holds
                pass
            for contributed in plugins.hook.status_lines(config=config, deliveries=deliveries) or []:
                lines += [str(line) for line in contributed or []]
            plugin_names = plugins.names()
        report = {
            "model": config.roboflow.model,
            # Every model in use: the default and each folder's own (watch[].model).
            "models": sorted({str(m) for m in [config.roboflow.model, *(w.model for w in config.watch)] if m}),
            "journal": journal.display,
            "counts": {str(s): counts.get(s, 0) for s in FileState},
            # Queued: new, classified, retried, or with a person's decision to apply (a running daemon takes
            # them within a second or so; otherwise the next `rfwatch run`).
            "backlog": sum(counts.get(s, 0) for s in ACTIVE_STATES),
            "waiting_for_review": journal.decisions.count_waiting(),
            # Frames classified and waiting for their burst to end (sequence:), grouped as they would close now.
            "open_sequences": [
                {
                    "key": o.key,
                    "frames": o.frames,
                    "classified": o.waiting,
                    "captured": [_ts(o.first_capture), _ts(o.last_capture)],
                    "quiet_for": round(o.quiet_for, 1),
                    "gap": o.gap,
                }
                for o in journal.sequences.open_sequences()
            ],
            "last_done": [
                _row_brief(r, threshold, journal) for r in journal.files.recent((FileState.DONE, FileState.UNMATCHED))
            ],
            "last_failed": [_row_brief(r, threshold, journal) for r in journal.files.recent((FileState.FAILED,))],
            # The processes working on the journal now, on every host (each renews its lease).
            "holders": [
                {"host": h["host"], "pid": h["pid"], "kind": h["kind"], "since": _ts(h["started"])}
                for h in journal.holders.live()
            ],
            "waiting_reason": _waiting_reason(journal),
            "deliveries_pending": deliveries.pending_by_plugin(),
            # Failed for good (a refusal, an image the platform never let rfwatch label): per plugin, 0 included.
            "deliveries_failed": deliveries.failed_by_plugin(),
            # Targets that answer with errors, that failed for good, or that said 410: rfwatch's own outbox, read
            # without the plugins.
            "delivery_problems": deliveries.problems(),
            "plugins": plugin_names,
            "plugins_status": lines,
        }
    finally:
        journal.close()
    return report


def _waiting_reason(journal: Journal) -> str | None:
    return journal.files.latest_error(FileState.DETECTED)


def _row_brief(row, threshold: float, journal: Journal) -> dict[str, Any]:
    from rfwatch.review.labels import person_and_model
    from rfwatch.roboflow.result import Prediction

    pred = Prediction.from_json(row.prediction, threshold) if row.prediction else None
    label = person_and_model(journal, row, threshold)  # a person's label stands before the model's guess
    return {
        "path": str(row.path),
        "source": str(row.source),
        "state": str(row.state),
        "class": label.cls if label else pred.top if pred else None,
        "classes": list(label.classes) if label else list(pred.predicted_classes) if pred else [],
        "confidence": 1.0 if label else pred.confidence if pred else None,
        "summary": label.summary if label else pred.summary() if pred else None,
        "labelled_by": label.by if label else None,
        "model": {
            "class": pred.top,
            "classes": list(pred.predicted_classes),
            "confidence": pred.confidence,
            "summary": pred.summary(),
        }
        if pred
        else None,
        "rule": row.rule,
        "host": row.host,
        "error": row.last_error,
        "at": _ts(row.updated),
    }


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(load_for_reading(args.config), with_plugins=args.plugins)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    c = report["counts"]
    print(f"model {', '.join(report['models']) or '(none)'}; journal {report['journal']}")
    line = f"done {c['done']}, unmatched {c['unmatched']}, failed {c['failed']}, backlog {report['backlog']}"
    if report["waiting_for_review"]:
        line += f", waiting for review {report['waiting_for_review']}"
    if c["waiting"]:
        line += f", waiting for their sequence {c['waiting']}"
    if c["undone"]:
        line += f", undone {c['undone']}"
    if c["undoing"]:
        line += f", undo unfinished {c['undoing']} (run rfwatch undo again; rfwatch retry PATH gives it up)"
    print(line)
    if report["open_sequences"]:
        print(f"open sequences: {len(report['open_sequences'])}")
        for o in report["open_sequences"]:
            print(
                f"  {o['key']}: {o['frames']} frame(s) ({o['classified']} classified), captured {o['captured'][0]}"
                f" to {o['captured'][1]}; no new frame for {o['quiet_for']:g} s (closes after {o['gap']:g} s)"
            )
    pending = report["deliveries_pending"]
    print("deliveries pending: " + (", ".join(f"{p} {n}" for p, n in sorted(pending.items())) or "none"))
    failed = {p: n for p, n in report["deliveries_failed"].items() if n}
    print("deliveries failed for good: " + (", ".join(f"{p} {n}" for p, n in sorted(failed.items())) or "none"))
    if report["waiting_reason"]:
        print(f"waiting: {report['waiting_reason']}")
    for title, rows in (("last processed", report["last_done"]), ("last failures", report["last_failed"])):
        if rows:
            print(f"{title}:")
            for r in rows:
                what = r["error"] if r["state"] == "failed" else f"{r['summary']} ({r['rule'] or 'no rule'})"
                # Where the file is now, and where it came from when it moved.
                where = r["path"] if r["path"] == r["source"] else f"{r['path']} (from {r['source']})"
                print(f"  {r['at']}  {where}: {what}")
    for problem in report["delivery_problems"]:
        print(problem)
    for extra in report["plugins_status"]:
        print(extra)
    if report["plugins"] is not None:
        print("plugins: " + ", ".join(report["plugins"]))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    journal = _journal(config)
    if args.uploads:
        _retry_uploads(journal)
        if not (args.failed or args.undone or args.paths):  # --uploads alone: the uploads only
            journal.close()
            return 0
    states: tuple[str, ...] = (FileState.FAILED,)
    if args.undone or args.paths:
        states = (FileState.FAILED, FileState.UNDONE) if args.paths or args.failed else (FileState.UNDONE,)
    if args.paths:  # named: an undo that cannot finish is given up, and the file processed from where it is
        states += (FileState.UNDOING,)
    queued = 0
    try:
        rows = journal.files.rows_in_state(states, [Path(os.path.abspath(p)) for p in args.paths] or None)
        for row in rows:
            cut = _undo_cut_short(journal, row) if row.state == FileState.UNDOING else None
            if cut is not None:
                print(
                    f"rfwatch: {row.path}: an rfwatch undo was cut short while moving it ({cut}): run rfwatch undo "
                    "on it again to finish that; retry gives up only an undo that cannot go on",
                    file=sys.stderr,
                )
                continue
            if row.state == FileState.UNDOING and not journal.undo.give_up(row):
                print(f"rfwatch: {row.path}: an rfwatch undo is working on it: retry when it ends", file=sys.stderr)
                continue
            requeued = journal.files.requeue(row.id, states)  # a given-up undo left it undone: in states with a PATH
            if requeued is None:  # taken meanwhile (by an undo, or a worker)
                print(f"rfwatch: {row.path}: not queued: it is {journal.files.get(row.id).state} now", file=sys.stderr)
                continue
            queued += 1
            print(f"queued again: {requeued.path}")
    finally:
        journal.close()
    if args.paths and len(rows) < len(args.paths):
        print(
            f"rfwatch: {len(args.paths) - len(rows)} path(s) have no failed or undone entry in the journal",
            file=sys.stderr,
        )
    print(f"{queued} file(s) queued again: a running rfwatch takes them within seconds, else the next run")
    return 1 if queued < len(rows) or (args.paths and len(rows) < len(args.paths)) else 0


def _undo_cut_short(journal: Journal, row: FileRow) -> str | None:
    """What an undo step cut short by a crash left half done (a temporary copy, the file at its new place), which only
    ``rfwatch undo`` run again settles; None when nothing is (the step failed before it moved anything).

    ``retry PATH`` gives up an undo that cannot finish, with the file where the journal says it is: given up after
    such a crash, the temporary copy would stay for ever, or the file would be in two places (the copy in the inbox
    then taken as a new file) or where the journal does not look for it."""
    from rfwatch.host.restore import left_half_done  # where those intents are written

    for intent in journal.undo.pending_intents(row.id):
        found = left_half_done(intent, row.path, row.sha256)
        if found is not None:
            return found
    return None


def _retry_uploads(journal: Journal) -> None:
    """``retry --uploads``: every upload to Roboflow that failed for good is queued again."""
    from rfwatch.processing.delivery import Deliveries
    from rfwatch.processing.outbox_view import UPLOAD_KIND

    queued, left = Deliveries(journal).requeue_failed(UPLOAD_KIND)
    print(f"{queued} failed upload(s) queued again: a running rfwatch sends them within seconds, else the next run")
    if left:
        print(f"rfwatch: {left} failed upload(s) kept no image to send again (failed before rfwatch kept it)")


def cmd_history(args: argparse.Namespace) -> int:
    from rfwatch.review.labels import person_and_model

    config = load_for_reading(args.config)
    journal = _journal(config)
    try:
        rows = journal.files.history_for(Path(os.path.abspath(args.path)))
        if not rows:
            print(f"rfwatch: no journal entry for {args.path}", file=sys.stderr)
            return 1
        for row in rows:
            print(f"#{row.id} {row.source} -> {row.path} [{row.state}] sha256 {row.sha256[:12]} model {row.model}")
            label = person_and_model(journal, row, config.roboflow.multi_label_threshold)
            if label is not None:
                print(f"  {label.summary}")
            if row.support:
                print("  for Roboflow support: " + "; ".join(f"{k} {v}" for k, v in row.support.items()))
            _print_sequence(journal, row.id)
            for at, message, host in journal.files.events(row.id):
                print(f"  {_ts(at)}  {message}" + (f"  (on {host})" if host else ""))
            for d in journal.outbox.for_file(row.id):
                print(f"  {d['kind']} {d['id']} to {redact(d['url'])}: {_delivery_state(d)}")
    finally:
        journal.close()
    return 0


def _print_sequence(journal: Journal, file_id: int) -> None:
    frame = journal.sequences.frame(file_id)
    if frame is None:
        return
    seq = journal.sequences.get(frame.sequence_id) if frame.sequence_id is not None else None
    if seq is None:
        print(f"  sequence: open (key {frame.key}, captured {_ts(frame.capture)}): waits for the burst to end")
        return
    print(
        f"  sequence {seq.id} (key {seq.key}): frame {frame.frame} of {seq.frames}, its own class"
        f" {frame.frame_class} {frame.frame_confidence or 0:.2f}; the sequence's {seq.label} {seq.confidence:.2f}"
        f" ({seq.method}{', every frame empty' if seq.empty else ''}); closed {_ts(seq.closed)}: {seq.why}"
        f" (rfwatch undo --sequence {seq.id})"
    )


def _delivery_state(d: dict[str, Any]) -> str:
    if d["state"] == "delivered":
        result = "; ".join(f"{k} {v}" for k, v in (d["result"] or {}).items())
        status = f" (HTTP {d['last_status']})" if d["last_status"] else ""
        return f"delivered {_ts(d['delivered'])}{status}" + (f"; {result}" if result else "")
    if d["state"] == "pending":
        if not d["attempts"]:
            return "queued, not yet sent"
        return (
            f"not yet delivered: {d['attempts']} attempt(s), last error {d['last_error']}; next try {_ts(d['next_at'])}"
        )
    return f"{d['state']}: {d['last_error']}"


def cmd_prune(args: argparse.Namespace) -> int:
    import time

    if args.older_than < 0:
        raise ConfigError(f"--older-than: expected a number of days >= 0, got {args.older_than:g}")
    config = load_config(args.config)
    journal = _journal(config)
    try:
        older_than = time.time() - args.older_than * 86400
        counts = journal.files.prune(older_than)
        counts["finished deliveries"] = journal.outbox.prune(older_than)
    finally:
        journal.close()
    print("removed " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


def _not_undone(journal: Journal, path: Path) -> str:
    """Why a PATH named to ``rfwatch undo`` was not undone."""
    from rfwatch.processing.undo import UNDOABLE

    known = journal.files.history_for(path)
    if not known:
        return "no finished file of the journal is or was there"
    state = known[-1].state
    if state == FileState.UNDONE:
        return "already undone"
    if state in UNDOABLE:
        return "not selected: --rule, --class, --since or --until leave it out"
    return f"not finished (it is {state}): nothing to undo yet"


def cmd_undo(args: argparse.Namespace) -> int:
    """Undo what rfwatch did to the files selected, newest first; one line per file and a summary."""
    import time

    from rfwatch.host.runtime import load_extensions
    from rfwatch.processing.delivery import Deliveries
    from rfwatch.processing.undo import Undoer, UndoFilter, parse_window

    config = load_for_reading(args.config, journal_only=args.dry_run)
    try:
        since, until = parse_window(args.since, args.until)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    extensions = load_extensions(config)
    journal = _journal(config, kind="undo")
    deliveries = Deliveries(journal, deliverers=dict(extensions.deliverers))
    undoer = Undoer(config, journal, extensions.rules, extensions.plugins.actions, deliveries, dry_run=args.dry_run)
    paths = [Path(os.path.abspath(p)) for p in args.paths]
    for sequence_id in args.sequence or []:  # a sequence's frames, by where each is now
        frames = journal.sequences.file_ids(sequence_id)
        if not frames:
            journal.close()
            raise ConfigError(
                f"--sequence {sequence_id}: no closed sequence has this id (rfwatch history shows a frame's)"
            )
        paths += [journal.files.get(file_id).path for file_id in frames]
    chosen = UndoFilter(args.rule, args.cls, since, until, tuple(paths))
    tally: dict[str, int] = {}
    kept: list[str] = []
    nothing: set[str] = set()
    no_undo: set[str] = set()
    try:
        rows = undoer.select(chosen)
        for row in rows:
            report = undoer.undo(row)
            outcome = "would be undone" if args.dry_run else report.outcome
            tally[outcome] = tally.get(outcome, 0) + 1
            kept += report.kept
            nothing.update(report.nothing)
            no_undo.update(report.no_undo)
            print(f"{row.path}: {outcome}: " + "; ".join(report.lines), flush=True)
        unknown = [p for p in chosen.paths if not any(p in (r.path, r.source) for r in rows)]
        for path in unknown:
            print(f"rfwatch: {path}: {_not_undone(journal, path)}", file=sys.stderr)
        if undoer.queued_keys:
            # The file.undone events go out now: a running daemon sends them within a second or two, else we
            # do (each queued delivery is leased to one process: never both).
            deliveries.flush(time.monotonic() + 2, undoer.queued_keys)
            if journal.outbox.untried(undoer.queued_keys):
                deliveries.start()
                deliveries.flush(time.monotonic() + 10, undoer.queued_keys)
                deliveries.stop()
    finally:
        journal.close()
    summary = ", ".join(f"{n} {what}" for what, n in sorted(tally.items())) or "no file matched"
    print(f"{len(rows)} file(s): {summary}")
    if kept:
        print("kept (changed since rfwatch wrote them): " + "; ".join(kept))
    if nothing:
        print("nothing to reverse for: " + ", ".join(sorted(nothing)))
    if no_undo:
        print("partly undone: these actions offer no undo: " + ", ".join(sorted(no_undo)))
    return 1 if tally.get("failed") or unknown else 0


def cmd_review(args: argparse.Namespace) -> int:
    """Serve the review page alone; the daemon applies the decisions (now if it runs, else when it starts)."""
    import dataclasses

    from rfwatch.review.server import ReviewServer
    from rfwatch.roboflow.client import ModelId
    from rfwatch.roboflow.facts import FactsCache

    config = load_config(args.config)
    listen = args.listen or config.review.listen or "127.0.0.1:8765"
    try:
        config = dataclasses.replace(config, review=dataclasses.replace(config.review, listen=listen))
        from rfwatch.config import check_review

        check_review(config.review)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("review.listen", "--listen")) from None
    journal = _journal(config)
    cache = FactsCache(journal.facts)

    def classes_of(model: str) -> tuple[str, ...] | None:
        facts = cache.get(ModelId.parse(model).key)
        return facts.classes if facts is not None else None

    from rfwatch.host.runtime import load_extensions
    from rfwatch.processing.delivery import Deliveries
    from rfwatch.processing.undo import Undoer

    extensions = load_extensions(config)  # a decision taken back on the page is undone by the rules' actions

    def undoer(page_journal: Journal) -> Undoer:
        deliveries = Deliveries(page_journal, deliverers=dict(extensions.deliverers))
        return Undoer(config, page_journal, extensions.rules, extensions.plugins.actions, deliveries)

    server = ReviewServer(config, classes_of, undoer)
    print(f"review page at {server.url}{server.how_to_open()}", flush=True)
    try:
        server.serve_forever()
    finally:
        journal.close()
    return 0


def cmd_journal_copy(args: argparse.Namespace) -> int:
    """Copy the config's journal (files, history, undo records, pending deliveries) into another database."""
    from rfwatch.journal import Journal, JournalUnavailable, Roots
    from rfwatch.journal.copy import SourceBusy, copy_journal

    config = load_config(args.config)
    if args.to == config.journal_url:
        raise ConfigError("--to: that is the journal the config already names")
    source = _journal(config)
    try:
        try:
            target = Journal.open(args.to, roots=Roots(config.named_roots), host=config.host)
        except JournalUnavailable as exc:
            raise ConfigError(f"--to: {exc}") from None
        try:
            report = copy_journal(source, target)
        except SourceBusy as exc:
            print(f"rfwatch: {exc}", file=sys.stderr)
            return 1
        finally:
            target.close()
    finally:
        source.close()
    from rfwatch.journal import display_url

    copied = ", ".join(f"{n} {table}" for table, n in sorted(report.counts.items()))
    print(f"copied {report.files} file(s) into {display_url(args.to)} ({report.already} there already); {copied}")
    print("ids " + ("kept as they were" if report.same_ids else "renumbered (the target had files of its own)"))
    print(f"now set `state: {display_url(args.to)}` in {args.config} and restart rfwatch")
    return 0


def add_commands(sub, common) -> None:
    p = sub.add_parser("undo", help="reverse what rfwatch did to finished files, newest step first")
    common(p, True)
    p.add_argument("--rule", metavar="NAME", help="files a rule of this name acted on")
    p.add_argument("--class", dest="cls", metavar="C", help="files sorted as this class (or labelled so in review)")
    p.add_argument("--since", metavar="WHEN", help="files taken since WHEN: 2h, 3d, or 2026-11-27T14:00")
    p.add_argument("--until", metavar="WHEN", help="files taken until WHEN")
    p.add_argument("--dry-run", action="store_true", help="say what would be undone; change nothing")
    p.add_argument(
        "--sequence", type=int, action="append", metavar="ID", help="every frame of this sequence (see rfwatch history)"
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files, by where they are now or where they were found")
    p.set_defaults(func=cmd_undo)

    p = sub.add_parser("review", help="serve the review page alone (the daemon serves it too, with review.listen)")
    common(p, True)
    p.add_argument("--listen", metavar="HOST:PORT", help="default: review.listen, else 127.0.0.1:8765")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("run", help="watch the configured folders and process new images")
    common(p, True)
    p.add_argument("--once", action="store_true", help="process what is there now, then exit")
    p.add_argument("--dry-run", action="store_true", help="classify and log what would be done; change no file")
    p.add_argument("--log-format", choices=("text", "json"), help="log line format (default: config log_format)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plugins", help="list loaded plugins, their hooks and actions")
    common(p, False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("status", help="counts, backlog, recent results and failures")
    common(p, True)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--plugins", action="store_true", help="also load the plugins: their names and status lines (slower)"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("retry", help="queue failed (or undone) files again; a running daemon takes them")
    common(p, True)
    p.add_argument("--failed", action="store_true", help="every failed file (the default without PATHs)")
    p.add_argument("--undone", action="store_true", help="every file that rfwatch undo put back")
    p.add_argument("--uploads", action="store_true", help="every upload to Roboflow that failed for good")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("prune", help="forget old step-by-step history (finished files stay known)")
    common(p, True)
    p.add_argument(
        "--older-than", type=float, default=90, metavar="DAYS", help="files finished more than DAYS ago (default 90)"
    )
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("journal", help="the journal itself: copy it to another database")
    jsub = p.add_subparsers(dest="journal_command", required=True, metavar="ACTION", prog="rfwatch journal")
    c = jsub.add_parser("copy", help="copy the journal (history, undo records, pending work) into another database")
    common(c, True)
    c.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db (or an SQLite file)")
    c.set_defaults(func=cmd_journal_copy)

    p = sub.add_parser("history", help="what happened to one file, step by step")
    common(p, True)
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_history)

"""The daemon's commands: run, plugins, status, retry, history."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config
from .journal import Journal

__all__ = ["add_commands"]


def _journal(config) -> Journal:
    path = config.state_path
    if not path.exists():
        raise ConfigError(f"state: no journal at {path} yet (has `rfwatch run` been started with this config?)")
    return Journal(path)


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon

    config = load_config(args.config)
    if args.log_format is None and config.log_format != "text":
        from .logsetup import setup_logging

        setup_logging(-1 if args.quiet else args.verbose, config.log_format)
    daemon = Daemon(
        args.config,
        config=config,
        dry_run=args.dry_run,
        once=args.once,
        progress=args.once and sys.stderr.isatty() and not args.quiet,
    )
    return daemon.run()


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import PluginHost

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
    return dt.datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else "-"


def status_report(config) -> dict[str, Any]:
    from .plugins import PluginHost

    journal = _journal(config)
    try:
        counts = journal.counts()
        report = {
            "model": config.roboflow.model,
            "journal": str(config.state_path),
            "counts": {s: counts.get(s, 0) for s in ("detected", "classified", "done", "unmatched", "failed")},
            "backlog": counts.get("detected", 0) + counts.get("classified", 0),
            "last_done": [_row_brief(r) for r in journal.recent(("done", "unmatched"))],
            "last_failed": [_row_brief(r) for r in journal.recent(("failed",))],
            "waiting_reason": _waiting_reason(journal),
            "outbox": journal.outbox_depth(),
            "plugins": PluginHost.load(config.plugins).names(),
        }
    finally:
        journal.close()
    return report


def _waiting_reason(journal: Journal) -> str | None:
    rows = [r for r in journal.recent(("detected",), limit=1) if r.last_error]
    return rows[0].last_error if rows else None


def _row_brief(row) -> dict[str, Any]:
    pred = row.prediction or {}
    return {
        "path": str(row.path),
        "source": str(row.source),
        "state": row.state,
        "class": pred.get("top"),
        "confidence": pred.get("confidence"),
        "rule": row.rule,
        "error": row.last_error,
        "at": _ts(row.updated),
    }


def cmd_status(args: argparse.Namespace) -> int:
    report = status_report(load_config(args.config))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    c = report["counts"]
    print(f"model {report['model']}; journal {report['journal']}")
    print(
        f"done {c['done']}, unmatched {c['unmatched']}, failed {c['failed']}, backlog {report['backlog']}, "
        f"webhook outbox {report['outbox']}"
    )
    if report["waiting_reason"]:
        print(f"waiting: {report['waiting_reason']}")
    for title, rows in (("last processed", report["last_done"]), ("last failures", report["last_failed"])):
        if rows:
            print(f"{title}:")
            for r in rows:
                what = (
                    r["error"]
                    if r["state"] == "failed"
                    else f"{r['class']} {r['confidence']} ({r['rule'] or 'no rule'})"
                )
                print(f"  {r['at']}  {r['source']}: {what}")
    print("plugins: " + ", ".join(report["plugins"]))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    journal = _journal(config)
    try:
        rows = journal.failed_rows([Path(os.path.abspath(p)) for p in args.paths] or None)
        for row in rows:
            journal.requeue(row.id)
            print(f"queued again: {row.path}")
    finally:
        journal.close()
    if args.paths and len(rows) < len(args.paths):
        print(f"rfwatch: {len(args.paths) - len(rows)} path(s) have no failed entry in the journal", file=sys.stderr)
        return 1
    print(f"{len(rows)} file(s) will be processed again when rfwatch runs")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    journal = _journal(config)
    try:
        rows = journal.history_for(Path(os.path.abspath(args.path)))
        if not rows:
            print(f"rfwatch: no journal entry for {args.path}", file=sys.stderr)
            return 1
        for row in rows:
            print(f"#{row.id} {row.source} -> {row.path} [{row.state}] sha256 {row.sha256[:12]} model {row.model}")
            for at, message in journal.events(row.id):
                print(f"  {_ts(at)}  {message}")
    finally:
        journal.close()
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import time

    if args.older_than < 0:
        raise ConfigError(f"--older-than: expected a number of days >= 0, got {args.older_than:g}")
    config = load_config(args.config)
    journal = _journal(config)
    try:
        counts = journal.prune(time.time() - args.older_than * 86400)
    finally:
        journal.close()
    print("removed " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


def add_commands(sub, common) -> None:
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
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("retry", help="queue failed files again")
    common(p, True)
    p.add_argument("--failed", action="store_true", help="every failed file (the default without PATHs)")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("prune", help="forget old step-by-step history (finished files stay known)")
    common(p, True)
    p.add_argument(
        "--older-than", type=float, default=90, metavar="DAYS", help="files finished more than DAYS ago (default 90)"
    )
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("history", help="what happened to one file, step by step")
    common(p, True)
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_history)

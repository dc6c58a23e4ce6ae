"""``rfwatch export -c FILE --format camtrap-dp|megadetector|csv [--since WHEN] [--until WHEN] OUT``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rfwatch.config import Config, ConfigError, load_config
from rfwatch.exports import Format, run_export
from rfwatch.journal import is_postgres_url, open_journal
from rfwatch.processing.undo import parse_window

__all__ = ["cmd_export"]


def _config(path: str) -> Config:
    """The config, for reading the journal only: unset secrets (``${VAR}`` of an API key the export never uses)
    are left out, as for status and history."""
    return load_config(path, journal_only=True)


def cmd_export(args: argparse.Namespace) -> int:
    config = _config(args.config)
    try:
        since, until = parse_window(args.since, args.until)  # the forms `rfwatch undo` takes
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not is_postgres_url(config.journal_url) and not config.state_path.exists():
        raise ConfigError(
            f"state: no journal at {config.state_path} yet (has `rfwatch run` been started with this config?)"
        )
    out = Path(args.out)
    fmt = Format(args.format)
    if fmt == Format.CAMTRAP_DP and out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: a Camtrap DP package is a folder; this is a file")
    if fmt != Format.CAMTRAP_DP and out.is_dir():
        raise ConfigError(f"{out}: is a folder; give the name of the {fmt.value} file to write")
    journal = open_journal(config, kind="export")
    try:
        counts = run_export(config, journal, fmt, out, since, until)
    finally:
        journal.close()
    print(f"wrote {out}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0

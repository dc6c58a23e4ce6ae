"""Command line: ``rfwatch classify|check|run|plugins|status|retry|history``.

Exit codes: 0 success, 1 some input failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .client import ApiError, is_url
from .config import Config, ConfigError, config_from_dict, load_config
from .logsetup import setup_logging
from .prepare import ImageError
from .redact import redact
from .result import ResponseFormatError
from .runtime import make_client

log = logging.getLogger("rfwatch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _load(args: argparse.Namespace) -> Config:
    if getattr(args, "config", None):
        return load_config(args.config)
    return config_from_dict({}, Path.cwd())


# --- classify ------------------------------------------------------------------


def cmd_classify(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.confidence is not None and not 0.01 <= args.confidence <= 1:
        raise UsageError(f"--confidence: expected a number between 0.01 and 1, got {args.confidence}")
    client = make_client(cfg, pool_size=4, model=args.model, api_url=args.api_url, confidence=args.confidence)
    if args.save and len(args.images) > 1 and not (Path(args.save).is_dir() or args.save.endswith(os.sep)):
        raise UsageError("--save: with several inputs, give a folder (ending in /) for the annotated copies")
    failures = 0
    with client:
        for source in args.images:
            try:
                prediction = client.classify(source)
            except (ApiError, ImageError, ResponseFormatError) as exc:
                failures += 1
                print(f"rfwatch: {source}: {redact(str(exc))}", file=sys.stderr)
                continue
            print(json.dumps(prediction.json(), ensure_ascii=False), flush=True)
            if args.save:
                failures += _save_annotated(source, prediction, args.save, len(args.images) > 1)
    return EXIT_FAILED if failures else EXIT_OK


def _save_annotated(source: str, prediction, save: str, many: bool) -> int:
    from .annotate import annotate_image

    out = Path(save)
    if many or out.is_dir() or save.endswith(os.sep):
        name = Path(source.split("?", 1)[0]).name if is_url(source) else Path(source).name
        out = out / (name or "image.jpg")
    if is_url(source):
        print(f"rfwatch: {source}: --save works on local files only", file=sys.stderr)
        return 1
    try:
        annotate_image(source, prediction, out)
    except ImageError as exc:
        print(f"rfwatch: {exc}", file=sys.stderr)
        return 1
    return 0


# --- check ----------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    from .runtime import build_runtime_parts

    plugins, rules = build_runtime_parts(cfg)
    r = cfg.roboflow
    print(f"config: {cfg.source}")
    print(f"model: {r.model or '(none)'} at {r.api_url}; confidence {r.confidence:g}; max_size {r.max_size}")
    print(f"api key: {'set' if r.api_key else 'MISSING: ' + (r.api_key_problem or 'set ROBOFLOW_API_KEY')}")
    print(f"journal: {cfg.state_path}")
    for w in cfg.watch:
        print(
            f"watch: {w.path} ({'polling' if w.polling else 'inotify'}, settle {w.settle:g}s"
            f"{', model ' + w.model if w.model else ''})"
        )
    for rule in rules:
        print(f"rule {rule.name!r}: {rule.describe_when()} -> {', '.join(a.name for a in rule.actions)}")
    print(f"plugins: {', '.join(plugins.names()) or '(none)'}")
    print("ok")
    return EXIT_OK


# --- entry point -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rfwatch", description="Watch folders and classify images with Roboflow.")
    parser.add_argument("--version", action="version", version=f"rfwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, config_required: bool) -> None:
        p.add_argument("-c", "--config", required=config_required, help="YAML config file")
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for DEBUG)")
        p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    p = sub.add_parser("classify", help="classify image files or URLs and print one JSON object per input")
    common(p, False)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_URL")
    p.add_argument("--model", help="project/version (or workspace/project/version)")
    p.add_argument("--api-url", help="API base URL (default https://classify.roboflow.com)")
    p.add_argument("--confidence", type=float, help="lowest confidence the server returns (0.01-1)")
    p.add_argument("--save", metavar="OUT", help="write an annotated copy to OUT (a folder for several inputs)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("check", help="validate a config file and print a summary")
    common(p, True)
    p.set_defaults(func=cmd_check)

    _add_daemon_commands(sub, common)
    return parser


def _add_daemon_commands(sub, common) -> None:
    try:
        from . import commands
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    commands.add_commands(sub, common)


def main(argv: Sequence[str] | None = None) -> int:
    # File names need not be UTF-8; print them escaped rather than crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
    setup_logging(verbosity, getattr(args, "log_format", None) or "text")
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"rfwatch: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130

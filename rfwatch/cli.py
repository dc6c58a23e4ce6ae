"""Command line: ``rfwatch classify|check|model`` here; the journal's commands (run, status, retry,
undo, review, history, prune, plugins) in rfwatch/commands.py.

Exit codes: 0 success, 1 some input failed, 2 usage or configuration error (3: ``run --once`` stopped
because the API refused to work).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import closing as _closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rfwatch import __version__
from rfwatch.errors import ConfigError
from rfwatch.redact import redact
from rfwatch.roboflow.ids import ModelId, is_url
from rfwatch.service.logs import setup_logging

if TYPE_CHECKING:
    from rfwatch.config import Config

# Each command imports what it uses inside its function: `rfwatch --help`, `status` and `history` must not pay
# for requests, Pillow or the plugins (issue 23, item 1; tests/test_imports.py holds it).

log = logging.getLogger("rfwatch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def _load(args: argparse.Namespace) -> Config:
    from rfwatch.config import config_from_dict, load_config

    if getattr(args, "config", None):
        return load_config(args.config)
    return config_from_dict({}, Path.cwd())


# --- classify ------------------------------------------------------------------


def cmd_classify(args: argparse.Namespace) -> int:
    from rfwatch.host.runtime import make_client, platform_client
    from rfwatch.images.prepare import ImageError
    from rfwatch.roboflow.client import ApiError, fetch_image
    from rfwatch.roboflow.facts import diagnose
    from rfwatch.roboflow.result import ResponseFormatError

    cfg = _load(args)
    if args.confidence is not None and not 0 < args.confidence < 1:
        raise UsageError(
            f"--confidence: expected a fraction (0 < x < 1) such as 0.5, got {args.confidence:g} "
            "(the server reads 1 or more as a percentage)"
        )
    if args.max_size is not None and args.max_size < 1:
        raise UsageError(f"--max-size: expected a positive number of pixels, got {args.max_size}")
    platform = platform_client(cfg)
    facts = _model_facts(platform, args.model or cfg.roboflow.model) if args.max_size is None else None
    client = make_client(
        cfg,
        pool_size=4,
        facts=facts,
        model=args.model,
        api_url=args.api_url,
        confidence=args.confidence,
        max_size=args.max_size,
    )
    if args.save and len(args.images) > 1 and not (Path(args.save).is_dir() or args.save.endswith(os.sep)):
        raise UsageError("--save: with several inputs, give a folder (ending in /) for the annotated copies")
    failures = 0
    explained: dict[int | None, str | None] = {}
    with client:
        for source in args.images:
            try:
                # A URL is fetched once here, so that --save can draw on the same bytes.
                image: str | bytes = fetch_image(source) if is_url(source) else source
                prepared = client.prepare(image, name=source)
                prediction = client.classify_prepared(prepared, source)
            except ImageError as exc:
                failures += 1
                print(f"rfwatch: {source}: {exc.reason}", file=sys.stderr)
                continue
            except ApiError as exc:
                failures += 1
                if exc.status not in explained:  # the key or the model? the platform can tell (once per status)
                    explained[exc.status] = diagnose(platform, str(client.model_key), exc.status)
                # The verdict first ("the API key is not valid"), then the server's own, often hedged, words.
                said = redact(str(exc))
                why = f"{explained[exc.status]} (the server said: {said})" if explained[exc.status] else said
                print(f"rfwatch: {source}: {why}", file=sys.stderr)
                continue
            except ResponseFormatError as exc:
                failures += 1
                print(f"rfwatch: {source}: {redact(str(exc))}", file=sys.stderr)
                continue
            print(json.dumps(prediction.json(), ensure_ascii=False), flush=True)
            if args.save:
                failures += _save_annotated(source, image, prediction, args.save, len(args.images) > 1)
    return EXIT_FAILED if failures else EXIT_OK


def _model_facts(platform: Any, model: str | None) -> Any:
    """Facts about the model for sizing uploads: one short question to the platform; None if it cannot say."""
    from rfwatch.roboflow.facts import fetch_facts
    from rfwatch.roboflow.platform import PlatformError

    if platform is None or not model:
        return None
    try:
        known = fetch_facts(platform, ModelId.parse(model).key)
    except (PlatformError, ValueError):
        return None
    return lambda key: known if key == known.model else None


def _save_annotated(source: str, image: str | bytes, prediction, save: str, many: bool) -> int:
    from rfwatch.host.annotate import annotate_image
    from rfwatch.images.prepare import ImageError

    out = Path(save)
    if many or out.is_dir() or save.endswith(os.sep):
        name = Path(source.split("?", 1)[0]).name if is_url(source) else Path(source).name
        out = out / (name or "image.jpg")
    # A temporary name beside the copy, renamed over it once whole: an interrupted save leaves no half picture.
    # Its suffix is the copy's, since the suffix chooses the format.
    tmp = out.with_name(f".{out.stem}.rfwatch-tmp{out.suffix}")
    try:
        annotate_image(image, prediction, tmp, name=source)
        os.replace(tmp, out)
    except (ImageError, OSError) as exc:
        print(f"rfwatch: {exc}", file=sys.stderr)
        return 1
    finally:
        tmp.unlink(missing_ok=True)
    return 0


# --- check ----------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Validate the config, then ask the platform about the key, the model and the rules' classes."""
    from rfwatch.config import load_config
    from rfwatch.journal import display_url

    cfg = load_config(args.config)
    from rfwatch.host.runtime import load_extensions
    from rfwatch.roboflow.facts import check_rules, describe, models_in_use

    extensions = load_extensions(cfg)
    plugins, rules = extensions.plugins, extensions.rules
    r = cfg.roboflow
    sizing = f"max_size {r.max_size}" + ("" if r.max_size_set else " at most; uploads sized to the model when known")
    print(f"config: {cfg.source}")
    print(f"model: {r.model or '(none)'} at {r.api_url}; confidence {r.confidence:g}; {sizing}")
    from rfwatch.service.preflight import machine_findings

    findings = machine_findings(cfg)  # what run would stop on, on this machine (folders, packages, the key)
    problems: list[str] = [str(f) for f in findings if f.error]
    facts: dict[str, Any] = {}
    if not r.api_key:
        print(f"api key: MISSING: {r.api_key_problem or 'set ROBOFLOW_API_KEY'}")
    else:
        facts, key_line, failures = _ask_platform(cfg, models_in_use(cfg))
        print(f"api key: {key_line}")
        problems += failures
        for model, known in facts.items():
            print(f"model {model}: {describe(known)}; classes {', '.join(known.classes) or '(none)'}")
        rule_problems, unchecked = check_rules(cfg, facts.get)
        problems += rule_problems
        if unchecked:
            print(f"warning: the classes named in rules were not checked (nothing known about {', '.join(unchecked)})")
    print(f"journal: {display_url(cfg.journal_url)}")
    from rfwatch.service.mounts import MountTable, plan_watch

    mounts = MountTable.current()
    for w in cfg.watch:
        root, *submounts = plan_watch(w.path, w.polling, w.recursive, mounts).choices
        print(f"watch: {w.path} ({root.describe()}; settle {w.settle:g}s{', model ' + w.model if w.model else ''})")
        for sub in submounts:
            print(f"watch: {sub.path}, a mount below {w.path} ({sub.describe()})")
    for rule in rules:
        print(f"rule {rule.name!r}: {rule.describe_when()} -> {', '.join(a.name for a in rule.actions)}")
    _check_exif(cfg)
    if cfg.review.listen:
        print(f"review page: http://{cfg.review.listen}/" + (" (token required)" if cfg.review.token else ""))
    print(f"plugins: {', '.join(plugins.names()) or '(none)'}")
    if problems:
        for problem in problems:
            print(f"rfwatch: {redact(problem)}", file=sys.stderr)
        print(f"rfwatch: {len(problems)} problem(s): `rfwatch run` would fail", file=sys.stderr)
        return EXIT_USAGE
    print("ok")
    return EXIT_OK


def _check_exif(cfg: Config) -> None:
    """Say which EXIF tags the rules name that only exiftool reads, when it is not installed."""
    from rfwatch.host.rules import exif_uses
    from rfwatch.images.exif import exiftool_available

    if exiftool_available():
        return
    for key, tag, condition in exif_uses(cfg):
        if not tag.standard:
            outcome = "the condition never matches" if condition else "the placeholder is empty"
            print(
                f"warning: {key}: {{exif:{tag.text}}} is not a standard EXIF tag and exiftool is not installed: "
                f"{outcome} (apt-get install libimage-exiftool-perl)"
            )


def _ask_platform(cfg: Config, models: list[str]) -> tuple[dict[str, Any], str, list[str]]:
    """(facts per model, a line about the key, problems) from the platform API, synchronously."""
    from rfwatch.host.runtime import platform_client
    from rfwatch.roboflow.facts import fetch_facts
    from rfwatch.roboflow.platform import KeyRefused, NotFound, PlatformError

    platform = platform_client(cfg)
    assert platform is not None
    with _closing(platform):
        try:
            workspace = platform.workspace()
        except KeyRefused as exc:
            return {}, "REFUSED", [f"roboflow.api_key: the platform ({platform.url}) refuses the key ({exc})"]
        except PlatformError as exc:
            # Not an error: a self-hosted site may never reach the platform. check_rules() reports the classes.
            return {}, f"set; not checked: the platform API cannot be reached ({exc})", []
        facts: dict[str, Any] = {}
        problems: list[str] = _check_upload_project(cfg, platform, workspace)
        for model in models:
            try:
                facts[model] = fetch_facts(platform, model)
            except NotFound:
                from rfwatch.roboflow.facts import diagnose

                problems.append(f"roboflow.model: {model}: {diagnose(platform, model, 404) or 'not found'}")
            except PlatformError as exc:
                problems.append(f"roboflow.model: {model}: the platform could not say ({exc})")
        return facts, f"valid (workspace {workspace!r})", problems


def _check_upload_project(cfg: Config, platform: Any, workspace: str) -> list[str]:
    """review.upload.project must be a project the key reaches, or every upload fails for good."""
    from rfwatch.roboflow.platform import KeyRefused, NotFound, PlatformError

    upload = cfg.review.upload
    if upload is None or not upload.project:
        return []
    try:
        platform.project(workspace, upload.project)
    except (NotFound, KeyRefused):
        return [
            f"review.upload.project: the key cannot reach project {upload.project!r} in workspace {workspace!r}: "
            "name a project of that workspace (its URL slug), or leave project out to upload into the model's own"
        ]
    except PlatformError as exc:
        print(f"warning: review.upload.project: not checked: the platform could not say ({exc})")
    return []


def cmd_model(args: argparse.Namespace) -> int:
    """What rfwatch knows about the model: asked of the platform now, else from the journal's cache."""
    from rfwatch.host.runtime import platform_client
    from rfwatch.journal import is_postgres_url, open_journal
    from rfwatch.roboflow.facts import FactsCache, fetch_facts
    from rfwatch.roboflow.platform import PlatformError

    cfg = _load(args)
    model = args.model or cfg.roboflow.model
    if not model:
        raise UsageError("--model: expected a model such as my-project/3 (or roboflow.model in the config)")
    try:
        key = ModelId.parse(model).key
    except ValueError as exc:
        raise UsageError(f"--model: {exc}") from None
    cache = None
    if getattr(args, "config", None) and (is_postgres_url(cfg.journal_url) or cfg.state_path.exists()):
        cache = FactsCache(open_journal(cfg).facts)
    how = ""
    facts = None
    platform = platform_client(cfg) if cfg.roboflow.api_key else None
    if platform is not None:
        with _closing(platform):
            try:
                facts = fetch_facts(platform, key)
                how = f"asked {platform.url} now"
                if cache is not None:
                    cache.put(facts)
            except PlatformError as exc:
                how = f"the platform could not be asked ({exc})"
    else:
        how = "no API key to ask the platform with"
    if facts is None and cache is not None:
        facts = cache.get(key)
        if facts is not None:
            fetched = dt.datetime.fromtimestamp(facts.fetched).astimezone().isoformat(timespec="seconds")
            how = f"from the journal's cache, fetched {fetched} ({how})"
    if facts is None:
        print(f"rfwatch: nothing is known about {key}: {how}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(dict(facts.json(), how=how), indent=2))
        return EXIT_OK
    r = cfg.roboflow
    size = facts.upload_size(r.max_size)
    print(f"model {facts.model} in workspace {facts.workspace}: {facts.kind}")
    print(f"classes ({len(facts.classes)}): {', '.join(facts.classes) or '(none)'}")
    if facts.resize:
        print(f"input: {facts.resize.width}x{facts.resize.height}, {facts.resize.format}")
        example = size.target((4000, 3000))
        print(f"uploads: sized to cover it, e.g. a 4000x3000 photo is sent as {example[0]}x{example[1]}")
    else:
        print(f"input: unknown (uploads at most {r.max_size} px)")
    if facts.static_crop:
        x0, y0, x1, y1 = facts.static_crop
        print(f"static crop: x {x0:g}-{x1:g} %, y {y0:g}-{y1:g} %")
    print(f"source: {facts.source}; {how}")
    return EXIT_OK


# --- entry point -----------------------------------------------------------------


class _Unbuilt:
    """A command's parser not built because another command was asked for: every call on it is a no-op."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _OnlyOne:
    """The subparsers, building only the parser of the command asked for (``only``): a light command need not pay
    for the options of every other (about 4 ms of the start, issue 23). ``--help`` and mistakes get them all."""

    def __init__(self, sub: Any, only: str):
        self.sub, self.only, self.built = sub, only, False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name != self.only:
            return _Unbuilt()
        self.built = True
        return self.sub.add_parser(name, **kwargs)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, asking the terminal for its width only when it formats something.

    argparse makes a formatter for every ``add_argument`` (to check the metavar) and each one asks the terminal
    for its width at once, the first one importing shutil (with bz2, lzma and zlib): about 2 ms of a light
    command's start (issue 23), for help that is seldom printed. The width is only read by ``format_help``.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width=width or 80)
        self._asked = None if width else max_help_position

    def format_help(self) -> str:
        if self._asked is not None:  # as HelpFormatter.__init__ computes them for width=None
            import shutil

            self._width = shutil.get_terminal_size().columns - 2
            self._max_help_position = min(self._asked, max(self._width - 20, self._indent_increment * 2))
            self._asked = None
        return super().format_help()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with :class:`_HelpFormatter`; the subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, formatter_class: Any = _HelpFormatter, **kwargs: Any):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``only``: just that command's parser (the others are not built)."""
    parser = _Parser(prog="rfwatch", description="Watch folders and classify images with Roboflow.")
    parser.add_argument("--version", action="version", version=f"rfwatch {__version__}")
    # prog given: argparse would format a usage line to find it ("rfwatch": no positionals come before COMMAND).
    sub: Any = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="rfwatch")
    if only is not None:
        sub = _OnlyOne(sub, only)

    def common(p: argparse.ArgumentParser, config_required: bool) -> None:
        p.add_argument("-c", "--config", required=config_required, help="YAML config file")
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for DEBUG)")
        p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")

    p = sub.add_parser("classify", help="classify image files or URLs and print one JSON object per input")
    common(p, False)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_URL")
    p.add_argument("--model", help="project/version (or workspace/project/version); default $ROBOFLOW_MODEL")
    p.add_argument("--api-url", help="API base URL (default $ROBOFLOW_API_URL, else https://classify.roboflow.com)")
    p.add_argument("--confidence", type=float, help="lowest confidence the server returns (0 < C < 1)")
    p.add_argument("--save", metavar="OUT", help="write an annotated copy to OUT (a folder for several inputs)")
    p.add_argument(
        "--max-size", type=int, help="longest side of the upload, in pixels (default: sized to the model's input)"
    )
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("check", help="validate a config file, the key, the model and the rules' classes")
    common(p, True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("model", help="what rfwatch knows about the model (classes, input size), from the platform")
    common(p, False)
    p.add_argument("--model", help="project/version (default: roboflow.model of the config, else $ROBOFLOW_MODEL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("demo", help="see rfwatch work with no account: a toy model on this machine, nothing sent out")
    p.add_argument("--dir", default="rfwatch-demo", help="the demo folder (default ./rfwatch-demo)")
    p.add_argument("--review-port", type=int, help="the review page's port on 127.0.0.1 (default 8765; 0: any free)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for DEBUG)")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.set_defaults(func=cmd_demo)

    _add_daemon_commands(sub, common)
    p = sub.add_parser("export", help="what rfwatch decided, as Camtrap DP, MegaDetector batch output or CSV")
    common(p, True)
    p.add_argument("--format", required=True, choices=["camtrap-dp", "megadetector", "csv"])
    p.add_argument("--since", metavar="WHEN", help="files taken since WHEN: 2h, 3d, or 2026-11-27T14:00")
    p.add_argument("--until", metavar="WHEN", help="files taken until WHEN")
    p.add_argument("out", metavar="OUT", help="a folder for camtrap-dp, a file for megadetector (.json) and csv")
    p.set_defaults(func=cmd_export)
    if isinstance(sub, _OnlyOne) and not sub.built:
        return build_parser()  # not a command: the whole parser names them all
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    from rfwatch.exports.command import cmd_export as export  # the exports' stack only when asked for

    return export(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from rfwatch.demo import run_demo

    return run_demo(Path(args.dir), args.review_port)


def _add_daemon_commands(sub, common) -> None:
    try:
        from rfwatch import commands
    except ImportError:  # pragma: no cover - during bootstrap only
        return
    commands.add_commands(sub, common)


#: Commands that only read the journal and print: the console script ends them without the interpreter's
#: teardown (see console).
_READ_ONLY = frozenset({"status", "history"})


def console() -> None:
    """The ``rfwatch`` console script and ``python -m rfwatch``: main(), then the exit.

    A read-only command (and ``--help``, ``--version``; not ``status --plugins``, which runs plugin code) ends with
    os._exit once its output and its log are flushed: the interpreter's teardown (every module and object freed one
    by one) was about 15 ms of a 90 ms ``status`` (issue 23), and these commands hold nothing that needs it (their
    journal is closed, nothing is written). A finished ``run --once`` ends the same way once the atexit handlers
    have run, unless a thread the usual exit would wait for is still alive or a plugin other than the built-ins was
    loaded. Every other command exits the usual way. main() itself never does this, so callers in-process (tests,
    other tools) keep their interpreter.
    """
    argv = sys.argv[1:]
    first = argv[0] if argv else None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help, --version (printed), or a usage error (2)
        if exc.code in (0, None) and first in ("-h", "--help", "--version"):
            _exit_at_once(0)
        raise
    # Not with --plugins: third-party code is loaded then, and its atexit handlers and threads must run as usual.
    if first in _READ_ONLY and "--plugins" not in argv:
        _exit_at_once(code)
    if first == "run" and "--once" in argv and _only_daemon_threads_left() and not _other_plugins_loaded():
        # A finished one-shot run: its daemon stopped every thread it started and closed the journal. Freeing
        # the interpreter object by object took 50 to 70 ms at the end of a cold run (issue 23: exit does not
        # wait on what is idle). The atexit handlers still run. The usual exit instead when a thread it would wait
        # for is alive, or when a plugin other than the built-ins was loaded (a file it left open is flushed by
        # the teardown).
        run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
        if run_exit_handlers is not None:
            run_exit_handlers()
            _exit_at_once(code)
    raise SystemExit(code)


def _other_plugins_loaded() -> bool:
    manager = sys.modules.get("rfwatch.host.manager")
    return manager is not None and manager.others_loaded()


def _only_daemon_threads_left() -> bool:
    """Whether the usual exit would wait for no thread (it waits for every non-daemon thread but this one)."""
    import threading

    return all(t.daemon or t is threading.current_thread() for t in threading.enumerate())


def _exit_at_once(code: int) -> NoReturn:
    logging.shutdown()  # what atexit would do: every handler flushed and closed
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # `rfwatch status | head -1`: the rest stayed in the buffer until now
        code = 141
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    # File names need not be UTF-8; print them escaped rather than crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    argv = list(sys.argv[1:] if argv is None else argv)
    # A known command first: build its parser alone. Anything else (--help, --version, a mistake) gets them all.
    first = argv[0] if argv and not argv[0].startswith("-") else None
    args = build_parser(first).parse_args(argv)
    verbosity = -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0)
    setup_logging(verbosity, getattr(args, "log_format", None) or "text")
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"rfwatch: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rfwatch status | head -2`: the reader left. Quietly, as other tools do; stdout goes to /dev/null so
        # that the interpreter's last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)
    except Exception as exc:
        code = _exit_code_for(exc)
        if code is None:
            raise
        print(f"rfwatch: {redact(str(exc))}", file=sys.stderr)
        return code


def _exit_code_for(exc: Exception) -> int | None:
    """The exit code for an error a user can act on; None for a bug (the traceback is shown).

    Looked up in sys.modules, not imported: an exception of a module that was never loaded cannot have been
    raised, and importing the config or the journal here would undo the lazy imports above.
    """
    kinds = (
        ("rfwatch.journal.db", "JournalUnavailable"),  # the database away
        ("rfwatch.journal.schema", "SchemaTooNew"),  # written by a newer rfwatch
    )
    for module_name, name in kinds:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, name)):
            return EXIT_FAILED
    return None

"""Load and validate rfwatch's YAML configuration into typed objects.

Errors name the key path and what was expected, e.g.
``roboflow.max_size: expected a positive integer, got 'big'``. Relative
paths are relative to the config file's folder; ``${VAR}`` and
``${VAR:-default}`` are expanded from the environment.
"""

from __future__ import annotations

import os
import re
from dataclasses import field, replace
from pathlib import Path
from typing import Any

import yaml

from rfwatch.errors import ConfigError as ConfigError  # defined there, so the CLI catches it cheaply
from rfwatch.record import record
from rfwatch.roboflow.ids import DEFAULT_API_URL, DEFAULT_PLATFORM_URL, ModelId
from rfwatch.states import StrEnum

__all__ = [
    "ConfigError",
    "Config",
    "RoboflowConfig",
    "WatchConfig",
    "RuleConfig",
    "When",
    "ActionSpec",
    "load_config",
    "config_from_dict",
    "default_state_path",
    "unavailable_actions",
]

DEFAULT_INCLUDE = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.tif", "*.tiff", "*.bmp", "*.heic", "*.heif", "*.avif")
DEFAULT_EXCLUDE = ("*.part", "*.tmp", "*.crdownload", ".*", "~$*")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@record
class RoboflowConfig:
    """The ``roboflow:`` section: the model, the API and platform URLs, the key and the upload settings."""

    api_key: str | None = field(default=None, repr=False)
    #: Why there is no key (an unreadable api_key_file), for the error when one is needed.
    api_key_problem: str | None = None
    model: str | None = None
    api_url: str = DEFAULT_API_URL
    #: Roboflow's platform API: asked about the key and the model (see rfwatch.roboflow.facts).
    platform_url: str = DEFAULT_PLATFORM_URL
    confidence: float = 0.01
    #: Multi-label models: a class is predicted when it scores at or above this (see rfwatch.roboflow.result).
    multi_label_threshold: float = 0.5
    #: Let Roboflow's active learning save the uploaded images into the project (off unless asked for).
    active_learning: bool = False
    max_size: int = 1024
    #: max_size was given: it decides the upload size, whatever the model's input is.
    max_size_set: bool = False
    jpeg_quality: int = 90
    timeout: float = 60.0
    connect_timeout: float = 10.0
    retries: int = 5


class SequenceLabel(StrEnum):
    """How a sequence's one label comes from its frames' predictions (rfwatch.processing.sequences)."""

    MAX = "max"  # the class of its most confident frame
    MEAN = "mean"  # the best class of the frames' averaged scores
    MAJORITY = "majority"  # the class most frames have as their top class


@record
class SequenceConfig:
    """``sequence:`` (top level or per watch): frames of one key captured within ``gap`` seconds are decided
    together."""

    key: str = "{parent}"
    gap: float = 60.0
    label: SequenceLabel = SequenceLabel.MAX
    #: Classes that mean "nothing there": a sequence is empty only when every frame is.
    empty: tuple[str, ...] = ()
    #: Where it was configured, for error messages ("sequence", "watch[1].sequence").
    where: str = "sequence"


@record
class WatchConfig:
    """One folder of ``watch:``: its path, its name in the journal and how files in it are taken."""

    path: Path
    #: The root's name in the journal (``watch[].name``; by default the folder's own name): hosts that mount one
    #: share at different paths give it the same name, and see one file.
    name: str = ""
    recursive: bool = True
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    settle: float = 1.0
    #: true or false as configured, or "auto": poll on network and FUSE filesystems (rfwatch.service.mounts).
    polling: bool | str = "auto"
    model: str | None = None
    #: Its files' sequences (``watch[].sequence``, else the top-level ``sequence``); None: each file alone.
    sequence: SequenceConfig | None = None


@record
class When:
    """A rule's ``when:``: the classes and the confidence a prediction must have."""

    classes: tuple[str, ...] = ()
    min_confidence: float | None = None
    max_confidence: float | None = None
    path: str | None = None
    #: EXIF conditions: (tag, globs), each tag must match one of its globs (rfwatch.images.exif names the tags).
    exif: tuple[tuple[str, tuple[str, ...]], ...] = ()


@record
class ActionSpec:
    """One entry of a rule's ``then:``: the action's name and its options as written."""

    name: str
    options: Any
    key: str  # e.g. "rules[0].then[1]", for error messages


@record
class RuleConfig:
    """One rule: its name, its ``when:`` and its actions in order."""

    name: str
    when: When
    then: tuple[ActionSpec, ...]
    continue_: bool = False
    key: str = ""


@record
class UploadConfig:
    """``review.upload``: where reviewed images go (Roboflow's upload and annotate routes)."""

    project: str | None = None  # None: the model's own project
    split: str = "train"
    batch: str = "rfwatch review {now:%Y-%m}"
    tags: tuple[str, ...] = ("rfwatch",)


@record
class ReviewConfig:
    """``review:``: the page for files a ``review`` action set aside."""

    listen: str | None = None  # host:port; None: the daemon serves no page
    token: str | None = field(default=None, repr=False)
    upload: UploadConfig | None = None

    @property
    def loopback(self) -> bool:
        host = (self.listen or "").rpartition(":")[0].strip("[]")
        return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


@record
class Config:
    """A whole config file, read and checked (rfwatch.config.load_config)."""

    base_dir: Path
    source: Path | None = None
    roboflow: RoboflowConfig = field(default_factory=RoboflowConfig)
    state: Path | None = None
    concurrency: int = 8
    rate_limit: float = 0.0
    watch: tuple[WatchConfig, ...] = ()
    failed: Path | None = None
    rules: tuple[RuleConfig, ...] = ()
    plugins: tuple[str, ...] = ()
    rescan_interval: float = 0.0
    metrics_listen: str | None = None
    log_format: str = "text"
    review: ReviewConfig = field(default_factory=lambda: ReviewConfig())
    #: ``state:`` as a PostgreSQL URL (then ``state`` is None).
    state_url: str | None = None
    #: This host's id in the journal (``host:``; by default the host name).
    host: str | None = None
    #: Seconds without a heartbeat after which a process's claims are free (``lease:``).
    lease: float = 60.0
    #: Other named trees (``roots:``), e.g. an archive the rules sort into: (name, folder).
    roots: tuple[tuple[str, Path], ...] = ()
    #: ``export:`` as written (a mapping or None): rfwatch/exports/settings.py checks it when an export runs.
    export: Any = None
    #: Loaded for the journal only: what was left out (an unset ``${VAR}``, an unreadable secret file), each
    #: "key: reason". Empty otherwise (such a config fails to load).
    unavailable: tuple[str, ...] = ()
    #: The top-level ``sequence:`` (each watched folder has its own in ``watch[].sequence``).
    sequence: SequenceConfig | None = None

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """A path from the config, made absolute against the config file's folder."""
        p = Path(os.path.expanduser(os.fspath(path)))
        return p if p.is_absolute() else self.base_dir / p

    @property
    def state_path(self) -> Path:
        """The SQLite journal's file (meaningless when ``state:`` is a PostgreSQL URL: see journal_url)."""
        return self.state or default_state_path()

    @property
    def journal_url(self) -> str:
        """Where the journal is: a ``postgresql://`` URL, or the SQLite file's path."""
        return self.state_url or str(self.state_path)

    @property
    def state_dir(self) -> Path:
        """A folder for this host's own state (plugins' folders): next to an SQLite journal, else the default."""
        return (self.state_path if self.state_url is None else default_state_path()).parent

    @property
    def named_roots(self) -> dict[str, Path]:
        """Every named folder: the watched ones and ``roots:``."""
        return {**{w.name: w.path for w in self.watch}, **dict(self.roots)}


def default_state_path() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY (possibly several, colon-separated).
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir:
        return Path(state_dir.split(":")[0]) / "journal.db"
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(xdg) / "rfwatch" / "journal.db"


# --- helpers -------------------------------------------------------------------


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f'"{value}"'


class _Unset:
    """A value that named an unset ``${VAR}`` (or an unreadable secret file) while reading for the journal only."""


_UNSET = _Unset()


def _expand(value: Any, key: str, unset: list[str] | None = None) -> Any:
    """``${VAR}`` expanded; with ``unset`` (a list), a value naming an unset variable is left out of its mapping
    or list and the reason recorded, instead of failing (see :func:`load_config`'s ``journal_only``)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{key}: environment variable {name} is not set")

        try:
            return _ENV_REF.sub(sub, value)
        except ConfigError as exc:
            if unset is None:
                raise
            unset.append(str(exc))
            return _UNSET
    if isinstance(value, list):
        items = [_expand(v, f"{key}[{i}]", unset) for i, v in enumerate(value)]
        return [v for v in items if v is not _UNSET]
    if isinstance(value, dict):
        pairs = {k: _expand(v, f"{key}.{k}" if key else str(k), unset) for k, v in value.items()}
        return {k: v for k, v in pairs.items() if v is not _UNSET}
    return value


class _Section:
    """Typed access to one mapping of the config, tracking the key path and unknown keys."""

    def __init__(self, data: Any, key: str, known: set[str]):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{key or 'config'}: expected a mapping, got {_show(data)}")
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ConfigError(f"{_join(key, unknown[0])}: unknown key (expected one of: {', '.join(sorted(known))})")
        self.data = data
        self.key = key

    def path_of(self, name: str) -> str:
        return _join(self.key, name)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def str(self, name: str, default: str | None = None, *, secret: bool = False) -> str | None:
        """A string; a ``secret`` one (a key, a token) is never shown in the error, whatever it holds."""
        v = self.data.get(name, default)
        if v is None:
            return None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if secret and isinstance(v, str) and not v.strip():
            # Most often a ${VAR} set to nothing: say so plainly.
            raise ConfigError(f"{self.path_of(name)}: is empty (is its ${{VAR}} set to nothing?): give a value")
        if not isinstance(v, str) or not v.strip():
            got = f"a {type(v).__name__}" if secret else _show(v)
            raise ConfigError(f"{self.path_of(name)}: expected a non-empty string, got {got}")
        return v

    def bool(self, name: str, default: bool) -> bool:
        v = self.data.get(name, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.path_of(name)}: expected true or false, got {_show(v)}")
        return v

    def number(
        self,
        name: str,
        default: float | None,
        *,
        minimum: float = 0.0,
        maximum: float | None = None,
        positive: bool = False,
        integer: bool = False,
        what: str = "",
    ) -> Any:
        v = self.data.get(name, default)
        if v is None:
            return None
        kind = "integer" if integer else "number"
        expected = what or (f"a positive {kind}" if positive else f"a {kind} >= {minimum:g}")
        if maximum is not None and not what:
            expected = f"{'an' if integer else 'a'} {kind} between {minimum:g} and {maximum:g}"
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok and integer and not float(v).is_integer():
            ok = False
        if ok and (v <= 0 if positive else v < minimum):
            ok = False
        if ok and maximum is not None and v > maximum:
            ok = False
        if not ok:
            raise ConfigError(f"{self.path_of(name)}: expected {expected}, got {_show(v)}")
        return int(v) if integer else float(v)

    def str_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = self.data.get(name)
        if v is None:
            return default
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{self.path_of(name)}: expected a string or a list of strings, got {_show(v)}")
        return tuple(str(x) for x in v)

    def section(self, name: str, known: set[str]) -> _Section:
        return _Section(self.data.get(name), self.path_of(name), known)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


# --- the sections -----------------------------------------------------------------


_ROBOFLOW_KEYS = {
    "api_key",
    "api_key_file",
    "model",
    "api_url",
    "platform_url",
    "confidence",
    "multi_label_threshold",
    "active_learning",
    "max_size",
    "jpeg_quality",
    "timeout",
    "connect_timeout",
    "retries",
}


def _roboflow(sec: _Section, resolve: Any) -> RoboflowConfig:
    api_key = sec.str("api_key", secret=True)
    key_file = sec.str("api_key_file")
    problem = None
    if api_key is None and key_file is not None:
        # Only classifying needs the key: status, retry and history must work for a user who may
        # read the journal but not the key (the service's key file is root's).
        path = resolve(key_file)
        try:
            api_key = path.read_text(encoding="utf-8").strip() or None
            if api_key is None:
                problem = f"{sec.path_of('api_key_file')}: {path} is empty"
        except OSError as exc:
            problem = f"{sec.path_of('api_key_file')}: cannot read {path}: {exc.strerror or exc}"
    elif api_key is None:
        api_key = os.environ.get("ROBOFLOW_API_KEY") or None
    # Like the key and the platform: the environment when the config does not say ($ROBOFLOW_MODEL,
    # $ROBOFLOW_API_URL), so `rfwatch classify` and `rfwatch model` without -c go where the README's exports say.
    model, model_key = _or_environment(sec, "model", "ROBOFLOW_MODEL")
    if model is not None:
        try:
            ModelId.parse(model)
        except ValueError as exc:
            raise ConfigError(f"{model_key}: {exc}") from None
    api_url, api_url_key = _or_environment(sec, "api_url", "ROBOFLOW_API_URL")
    api_url = api_url or DEFAULT_API_URL
    if not api_url.startswith(("http://", "https://")):
        raise ConfigError(f"{api_url_key}: expected an http:// or https:// URL, got {_show(api_url)}")
    # Like the key: the environment when the config does not say ($ROBOFLOW_PLATFORM_URL).
    platform_url = sec.str("platform_url") or os.environ.get("ROBOFLOW_PLATFORM_URL") or DEFAULT_PLATFORM_URL
    if not platform_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{sec.path_of('platform_url')}: expected an http:// or https:// URL, got {_show(platform_url)}"
        )
    return RoboflowConfig(
        api_key=api_key,
        api_key_problem=problem,
        model=model,
        api_url=api_url,
        platform_url=platform_url,
        confidence=_fraction(sec, "confidence", 0.01, "the server reads 1 or more as a percentage"),
        multi_label_threshold=_fraction(sec, "multi_label_threshold", 0.5, "", upper_inclusive=True),
        active_learning=sec.bool("active_learning", False),
        max_size=sec.number("max_size", 1024, positive=True, integer=True),
        max_size_set=sec.has("max_size"),
        jpeg_quality=sec.number("jpeg_quality", 90, minimum=30, maximum=95, integer=True),
        timeout=sec.number("timeout", 60.0, positive=True),
        connect_timeout=sec.number("connect_timeout", 10.0, positive=True),
        retries=sec.number("retries", 5, minimum=1, integer=True, what="an integer >= 1"),
    )


def _or_environment(sec: _Section, name: str, variable: str) -> tuple[str | None, str]:
    """The key's value, else the environment variable's (empty counts as unset), and how to name where it came
    from in an error."""
    value = sec.str(name)
    if value is not None:
        return value, sec.path_of(name)
    return os.environ.get(variable) or None, f"{sec.path_of(name)} (from ${variable})"


def _fraction(sec: _Section, name: str, default: float, why: str, upper_inclusive: bool = False) -> float:
    """A number in (0, 1) (or (0, 1]): Roboflow's confidences are fractions, never percentages."""
    value = sec.data.get(name, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value
    ok = ok and (value <= 1 if upper_inclusive else value < 1)
    if not ok:
        interval = "0 < x <= 1" if upper_inclusive else "0 < x < 1"
        raise ConfigError(
            f"{sec.path_of(name)}: expected a fraction ({interval}) such as 0.5, got {_show(value)}"
            + (f" ({why})" if why else "")
        )
    return float(value)


_WATCH_KEYS = {"path", "name", "recursive", "include", "exclude", "settle", "polling", "model", "sequence"}
_SEQUENCE_KEYS = {"key", "gap", "label", "empty"}


def _sequence(data: Any, key: str, base: SequenceConfig | None) -> SequenceConfig | None:
    """``sequence: {key, gap, label, empty}``; per watch, unset keys come from the top level's, and ``false``
    turns sequences off for that folder."""
    if data is None:
        return base
    if data is False:
        return None
    sec = _Section(data, key, _SEQUENCE_KEYS)
    start = base or SequenceConfig()
    label = sec.str("label", start.label)
    if label not in set(SequenceLabel):
        raise ConfigError(f"{sec.path_of('label')}: expected max, mean or majority, got {_show(label)}")
    return SequenceConfig(
        key=sec.str("key", start.key) or start.key,
        gap=sec.number("gap", start.gap, positive=True, what="a positive number of seconds"),
        label=SequenceLabel(label),
        empty=sec.str_list("empty", start.empty),
        where=key,
    )


_ROOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _root_name(name: str, key: str) -> str:
    if not _ROOT_NAME.match(name):
        raise ConfigError(
            f"{key}: expected a name of letters, digits, '.', '_' or '-' (at most 64, starting with a letter or "
            f"digit), got {_show(name)}"
        )
    return name


def _derived_name(path: Path, taken: set[str]) -> str:
    """A watch root's default name: its folder's name (made valid), numbered when two folders share one."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.name).strip("-.") or "root"
    if not base[0].isalnum():
        base = "root" + base
    name, n = base[:64], 2
    while name in taken:
        name, n = f"{base[:60]}-{n}", n + 1
    return name


def _watch(items: Any, resolve: Any, sequence: SequenceConfig | None = None) -> tuple[WatchConfig, ...]:
    if items is None:
        return ()
    if isinstance(items, (str, dict)):
        items = [items]
    if not isinstance(items, list):
        raise ConfigError(f"watch: expected a list of folders, got {_show(items)}")
    out = []
    for i, item in enumerate(items):
        key = f"watch[{i}]"
        if isinstance(item, str):
            item = {"path": item}
        sec = _Section(item, key, _WATCH_KEYS)
        path = sec.str("path")
        if path is None:
            raise ConfigError(f"{key}.path: expected the folder to watch")
        model = sec.str("model")
        if model is not None:
            try:
                ModelId.parse(model)
            except ValueError as exc:
                raise ConfigError(f"{key}.model: {exc}") from None
        name = sec.str("name")
        if name is not None:
            _root_name(name, sec.path_of("name"))
            if name in {w.name for w in out}:
                raise ConfigError(f"{sec.path_of('name')}: another watched folder is named {_show(name)}")
        out.append(
            WatchConfig(
                path=resolve(path),
                name=name or "",
                recursive=sec.bool("recursive", True),
                include=tuple(p.lower() for p in sec.str_list("include", DEFAULT_INCLUDE)),
                exclude=sec.str_list("exclude", DEFAULT_EXCLUDE),
                settle=sec.number("settle", 1.0, minimum=0.0),
                polling=_polling(sec),
                model=model,
                sequence=_sequence(sec.data.get("sequence"), sec.path_of("sequence"), sequence),
            )
        )
    taken = {w.name for w in out if w.name}
    named = []
    for w in out:
        if not w.name:
            w = replace(w, name=_derived_name(w.path, taken))
            taken.add(w.name)
        named.append(w)
    return tuple(named)


def _roots(data: Any, resolve: Any, watches: tuple[WatchConfig, ...]) -> tuple[tuple[str, Path], ...]:
    """``roots:`` (name: folder), checked with the watched folders: unique names, and no folder inside another
    (a path must have one name, the same on every host)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"roots: expected a mapping of names to folders, got {_show(data)}")
    roots: list[tuple[str, Path, str]] = [(w.name, w.path, f"watch[{i}]") for i, w in enumerate(watches)]
    for name, folder in data.items():
        key = f"roots.{name}"
        _root_name(str(name), key)
        if not isinstance(folder, str) or not folder.strip():
            raise ConfigError(f"{key}: expected a folder, got {_show(folder)}")
        if any(n == name for n, _, _ in roots):
            raise ConfigError(f"{key}: {_show(name)} names a watched folder already")
        roots.append((str(name), resolve(folder), key))
    for i, (_, a, akey) in enumerate(roots):
        for _, b, bkey in roots[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise ConfigError(
                    f"{bkey}: {b} and {akey}'s {a} are one inside the other: a file must have one root in the "
                    "journal (watch one folder, or name trees side by side)"
                )
    return tuple((n, p) for n, p, k in roots if k.startswith("roots."))


def _polling(sec: _Section) -> bool | str:
    value = sec.data.get("polling", "auto")
    if isinstance(value, bool) or value == "auto":
        return value
    raise ConfigError(f"{sec.path_of('polling')}: expected auto, true or false, got {_show(value)}")


_RULE_KEYS = {"name", "when", "then", "continue"}
_WHEN_KEYS = {"class", "min_confidence", "max_confidence", "path", "exif"}


def _exif_when(when: _Section) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``exif: {Model: "*D70*", MakerNotes:Sequence: ["1 *", "2 *"]}``: tag names checked, globs as strings."""
    data = when.data.get("exif")
    key = when.path_of("exif")
    if data is None:
        return ()
    from rfwatch.images.exif import TagRef  # only for a rule that names EXIF tags: `status` needs no EXIF tables

    if not isinstance(data, dict) or not data:
        raise ConfigError(f'{key}: expected EXIF tags and globs such as {{Model: "*D70*"}}, got {_show(data)}')
    # A number is a glob too (ISO: 100): the tag's value is compared as text.
    numbers = {k: [v] for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    sec = _Section({**data, **numbers}, key, set(data))
    out = []
    for tag in data:
        try:
            TagRef.parse(tag)
        except ValueError as exc:
            raise ConfigError(f"{sec.path_of(str(tag))}: {exc}") from None
        globs = sec.str_list(tag)
        if not globs:
            raise ConfigError(f'{sec.path_of(tag)}: expected a glob such as "*D70*" (or a list of them)')
        out.append((tag, globs))
    return tuple(out)


def _rules(items: Any) -> tuple[RuleConfig, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError(f"rules: expected a list of rules, got {_show(items)}")
    out = []
    for i, item in enumerate(items):
        key = f"rules[{i}]"
        sec = _Section(item, key, _RULE_KEYS)
        when_sec = sec.section("when", _WHEN_KEYS)
        lo = when_sec.number("min_confidence", None, minimum=0.0, maximum=1.0)
        hi = when_sec.number("max_confidence", None, minimum=0.0, maximum=1.0)
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{key}.when: min_confidence {lo:g} is above max_confidence {hi:g}")
        then = sec.data.get("then")
        if then is None:
            raise ConfigError(f"{key}.then: expected a list of actions")
        if isinstance(then, dict):
            then = [then]
        if not isinstance(then, list) or not then:
            raise ConfigError(f"{key}.then: expected a list of actions, got {_show(then)}")
        actions = []
        for j, act in enumerate(then):
            akey = f"{key}.then[{j}]"
            if isinstance(act, str):
                act = {act: None}
            if not isinstance(act, dict) or len(act) != 1:
                raise ConfigError(
                    f"{akey}: expected one action such as 'move: \"sorted/{{class}}/{{name}}\"', got {_show(act)}"
                )
            ((name, options),) = act.items()
            actions.append(ActionSpec(str(name), options, f"{akey}.{name}"))
        out.append(
            RuleConfig(
                name=sec.str("name", f"rule {i + 1}") or f"rule {i + 1}",
                when=When(
                    classes=when_sec.str_list("class"),
                    min_confidence=lo,
                    max_confidence=hi,
                    path=when_sec.str("path"),
                    exif=_exif_when(when_sec),
                ),
                then=tuple(actions),
                continue_=sec.bool("continue", False),
                key=key,
            )
        )
    return tuple(out)


_TOP_KEYS = {
    "sequence",
    "roboflow",
    "state",
    "concurrency",
    "rate_limit",
    "watch",
    "failed",
    "rules",
    "plugins",
    "rescan_interval",
    "metrics",
    "log_format",
    "review",
    "host",
    "lease",
    "roots",
    "export",  # read by rfwatch/exports/settings.py when `rfwatch export` runs
}


def config_from_dict(data: Any, base_dir: Path, source: Path | None = None, *, journal_only: bool = False) -> Config:
    """The config from parsed YAML; ``journal_only``: see :func:`load_config`."""
    unset: list[str] | None = [] if journal_only else None
    data = _expand(data if data is not None else {}, "", unset)

    def resolve(p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else base_dir / q

    _secret_files(data, resolve, unset)
    top = _Section(data, "", _TOP_KEYS)

    state = top.str("state")
    state_url = None
    if state is not None and state.startswith(("postgresql://", "postgres://")):
        state, state_url = None, _postgres_url(state)
    elif state is not None and "://" in state:
        raise ConfigError(
            f"state: expected a file for SQLite or a postgresql:// URL, got {_show(state.split('@')[-1])}"
        )
    host = top.str("host")
    if host is not None and (len(host) > 128 or any(c.isspace() or c == "/" for c in host)):
        raise ConfigError(f"host: expected a host id without spaces or '/' (at most 128 characters), got {_show(host)}")
    failed = top.str("failed")
    metrics = top.section("metrics", {"listen"})
    log_format = top.str("log_format", "text") or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format: expected text or json, got {_show(log_format)}")
    plugins = top.str_list("plugins")
    sequence = _sequence(data.get("sequence"), "sequence", None)
    watches = _watch(data.get("watch"), resolve, sequence)
    return Config(
        base_dir=base_dir,
        source=source,
        roboflow=_roboflow(top.section("roboflow", _ROBOFLOW_KEYS), resolve),
        state=resolve(state) if state else None,
        concurrency=top.number("concurrency", 8, minimum=1, maximum=64, integer=True),
        rate_limit=top.number("rate_limit", 0.0, minimum=0.0),
        watch=watches,
        failed=resolve(failed) if failed else None,
        rules=_rules(data.get("rules")),
        plugins=tuple(str(resolve(p)) if p.endswith(".py") else p for p in plugins),
        rescan_interval=top.number("rescan_interval", 0.0, minimum=0.0),
        metrics_listen=metrics.str("listen"),
        log_format=log_format,
        review=_review(top.section("review", _REVIEW_KEYS), resolve, unset or []),
        state_url=state_url,
        host=host,
        lease=top.number("lease", 60.0, minimum=1.0, what="a number of seconds >= 1"),
        roots=_roots(data.get("roots"), resolve, watches),
        export=data.get("export"),
        unavailable=tuple(unset or ()),
        sequence=sequence,
    )


def _secret_files(data: Any, resolve: Any, unset: list[str] | None) -> None:
    """``review.token_file`` and the ``*_file`` options of actions, read now (rfwatch/secret_files.py)."""
    from rfwatch.secret_files import SecretFileError, materialise

    if not isinstance(data, dict):
        return
    try:
        if isinstance(data.get("review"), dict):
            materialise(data["review"], "review", resolve, unset)
        for i, rule in enumerate(data.get("rules") or []):
            then = rule.get("then") if isinstance(rule, dict) else None
            for j, act in enumerate(then if isinstance(then, list) else []):
                if isinstance(act, dict) and len(act) == 1:
                    ((name, options),) = act.items()
                    if isinstance(options, dict):
                        materialise(options, f"rules[{i}].then[{j}].{name}", resolve, unset)
    except SecretFileError as exc:
        raise ConfigError(str(exc)) from None


def _postgres_url(url: str) -> str:
    """A PostgreSQL URL as given; its password (better kept in ~/.pgpass or PGPASSWORD) is masked everywhere."""
    from urllib.parse import urlsplit

    from rfwatch.redact import register_secret

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"state: not a valid postgresql:// URL ({exc})") from None
    if parts.password:
        register_secret(parts.password)
    return url


def load_config(path: str | os.PathLike[str], *, journal_only: bool = False) -> Config:
    """The config file, checked. ``journal_only`` (commands that only read the journal: status, history,
    undo --dry-run, export): a value naming an unset ``${VAR}`` or an unreadable secret file is left out and
    listed in ``Config.unavailable`` instead of failing; see :func:`unavailable_actions`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    try:
        # libyaml's parser when PyYAML has it (Debian's and PyPI's wheels do): the pure-Python one was a few ms
        # of every command's start (issue 23).
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return config_from_dict(data, p.resolve().parent, p.resolve(), journal_only=journal_only)


def unavailable_actions(config: Config) -> list[str]:
    """One line per value left out of a config loaded for the journal only, saying what would not run."""
    out = []
    for reason in config.unavailable:
        key = reason.split(":", 1)[0]
        m = re.match(r"rules\[(\d+)\]\.then\[(\d+)\]\.([^.\[]+)", key)
        if m and int(m.group(1)) < len(config.rules):
            rule = config.rules[int(m.group(1))]
            what = f"the {m.group(3)} action of rule {rule.name!r} would not run"
        elif key.startswith("review."):
            what = "the review page would not start"
        elif key.startswith("roboflow."):
            what = "no file would be classified"
        else:
            what = f"{key} is left out"
        out.append(f"{reason}: {what} (this command does not need it)")
    return out


_REVIEW_KEYS = {"listen", "token", "token_file", "upload"}
_UPLOAD_KEYS = {"project", "split", "batch", "tags"}


def check_review(review: ReviewConfig) -> ReviewConfig:
    """A token is required off loopback, and must be worth the name."""
    if review.listen is not None and not review.loopback and not review.token:
        raise ConfigError(
            f"review.token: required when review.listen is not a loopback address ({review.listen}): "
            "anyone who can reach it could label and reject files"
        )
    if review.token is not None:
        if len(review.token) < 16:
            raise ConfigError("review.token: use at least 16 random characters (e.g. openssl rand -hex 16)")
        from rfwatch.redact import register_secret

        register_secret(review.token)
    return review


def _review(sec: _Section, resolve: Any, unset: list[str]) -> ReviewConfig:
    listen = sec.str("listen")
    if listen is not None:
        host, colon, port = listen.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"{sec.path_of('listen')}: expected host:port such as 127.0.0.1:8765, got {_show(listen)}"
            )
    token = sec.str("token", secret=True)
    if not any(u.startswith("review.token") for u in unset):  # left out: this command serves no page
        check_review(ReviewConfig(listen=listen, token=token))
    upload = None
    if sec.has("upload"):
        up = sec.section("upload", _UPLOAD_KEYS)
        split = up.str("split", "train") or "train"
        if split not in ("train", "valid", "test"):
            raise ConfigError(f"{up.path_of('split')}: expected train, valid or test, got {_show(split)}")
        upload = UploadConfig(
            project=up.str("project"),
            split=split,
            batch=up.str("batch", UploadConfig.batch) or UploadConfig.batch,
            tags=up.str_list("tags", UploadConfig.tags),
        )
    elif "upload" in sec.data:  # `upload:` with nothing under it: the defaults
        upload = UploadConfig()
    return ReviewConfig(listen=listen, token=token, upload=upload)

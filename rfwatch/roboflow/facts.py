"""What rfwatch knows about a model: its project's type and classes, and the version's preprocessing.

Asked of Roboflow's platform API (see :mod:`rfwatch.roboflow.platform`) and cached in the journal per model id,
refreshed after a day and on SIGHUP. Used to size uploads to the model's input (:mod:`rfwatch.images.sizing`),
to check the classes named in rules, to offer the classes on the review page, and to tell a refused key
from an unknown model when inference answers 401, 403 or 404. Nothing depends on it: a platform that
cannot be reached (an air-gapped self-hosted site, a firewall) costs one warning, and rfwatch works as
without it.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rfwatch.images.sizing import LETTERBOX_FORMATS, UploadSize
from rfwatch.record import record
from rfwatch.roboflow.ids import ModelId
from rfwatch.roboflow.platform import KeyRefused, NotFound, PlatformClient, PlatformError, PlatformUnavailable

__all__ = [
    "ModelFacts",
    "Resize",
    "fetch_facts",
    "version_document",
    "FactsCache",
    "ModelFactsService",
    "diagnose",
    "unknown_classes",
    "check_rules",
    "models_in_use",
]

log = logging.getLogger(__name__)

#: Facts older than this are fetched again (in the background; the old ones are used meanwhile).
MAX_AGE = 24 * 3600.0


@record
class Resize:
    width: int
    height: int
    format: str


@record
class ModelFacts:
    model: str
    workspace: str
    #: The platform's project type: "classification", "object-detection", ... (multi-label projects are
    #: "classification" too: see ``multi_label``).
    project_type: str
    classes: tuple[str, ...]
    resize: Resize | None
    #: (x_min, y_min, x_max, y_max) in percent, when the version crops before resizing.
    static_crop: tuple[float, float, float, float] | None
    fetched: float
    source: str
    #: The project's ``multilabel`` flag, read as roboflow-python reads it (core/project.py:
    #: ``a_project.get("multilabel", False)``) beside ``"type": "classification"``.
    multi_label: bool = False

    @property
    def kind(self) -> str:
        """The project type as people say it: "classification (multi-label)" for a multi-label project."""
        return f"{self.project_type} (multi-label)" if self.multi_label else self.project_type

    def upload_size(self, max_size: int) -> UploadSize:
        if self.resize is None:
            return UploadSize(max_size=max_size)
        return UploadSize(
            max_size=max_size,
            model_input=(self.resize.width, self.resize.height),
            letterbox=self.resize.format in LETTERBOX_FORMATS,
            crop=self.static_crop,
        )

    def json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelFacts:
        resize = Resize(**doc["resize"]) if doc.get("resize") else None
        crop = tuple(doc["static_crop"]) if doc.get("static_crop") else None
        return cls(
            doc["model"],
            doc["workspace"],
            doc["project_type"],
            tuple(doc["classes"]),
            resize,
            crop,  # type: ignore[arg-type]
            doc["fetched"],
            doc["source"],
            # Facts cached before the flag was read: the project type was then taken to say it.
            bool(doc.get("multi_label", "multi" in str(doc.get("project_type", "")))),
        )


def _number(value: Any) -> float | None:
    try:
        return float(value)  # the platform gives "224" as often as 224
    except (TypeError, ValueError):
        return None


def parse_facts(model: str, workspace: str, doc: dict[str, Any], source: str) -> ModelFacts:
    """Facts from ``GET /{workspace}/{project}/{version}`` (or the project document and its versions)."""
    mid = ModelId.parse(model)
    project = doc.get("project") or {}
    version = doc.get("version")
    if not isinstance(version, dict):
        wanted = f"/{mid.project}/{mid.version}"
        version = next((v for v in doc.get("versions") or [] if str(v.get("id", "")).endswith(wanted)), {})
    pre = version.get("preprocessing") or {}
    resize = None
    rz = pre.get("resize") or {}
    width, height = _number(rz.get("width")), _number(rz.get("height"))
    if rz.get("enabled", True) and width and height:
        resize = Resize(int(width), int(height), str(rz.get("format") or "Stretch to"))
    crop = None
    sc = pre.get("static-crop") or {}
    corners = [_number(sc.get(k)) for k in ("x_min", "y_min", "x_max", "y_max")]
    if sc.get("enabled", True) and all(c is not None for c in corners):
        x0, y0, x1, y1 = corners  # type: ignore[misc]
        if 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 100:
            crop = (x0, y0, x1, y1)
    classes = project.get("classes") or {}
    project_type = str(project.get("type") or "unknown")
    return ModelFacts(
        model=model,
        workspace=workspace,
        project_type=project_type,
        classes=tuple(str(c) for c in (classes if isinstance(classes, (dict, list)) else [])),
        resize=resize,
        static_crop=crop,
        fetched=time.time(),
        source=source,
        # The flag, as roboflow-python reads it; a type that names it ("multi-label-classification", the type a
        # project is created with by roboflow-python's CLI) is taken to say so too, should the platform answer that.
        multi_label=project.get("multilabel") is True or "multi-label" in project_type,
    )


def fetch_facts(platform: PlatformClient, model: str) -> ModelFacts:
    """Ask the platform; KeyRefused, NotFound or PlatformUnavailable say why not."""
    mid = ModelId.parse(model)
    workspace = mid.workspace or platform.workspace()
    doc = version_document(platform, workspace, mid.project, mid.version)
    return parse_facts(model, workspace, doc, platform.url)


def version_document(platform: PlatformClient, workspace: str, project: str, version: str) -> dict[str, Any]:
    """``GET /{workspace}/{project}/{version}``, with the platform's 500 for an unknown version told apart.

    The platform answers an unknown version of a project that exists with HTTP 500, not 404 (roboflow/inference
    inference/core/roboflow_api.py maps that 500 to "not found": "empirically checked that backend API responds
    HTTP 500 on incorrect version"). Its authors warn that the mapping "may overshadow existing backend problems",
    so a 500 is taken for "no such version" only when the project route confirms it: the project exists and does
    not list the version (NotFound). A 500 for a version the project lists, or a project route that cannot answer
    either, is the platform's own trouble: the 500 is raised as it came (PlatformUnavailable).
    """
    try:
        return platform.version(workspace, project, version)
    except PlatformUnavailable as exc:
        if exc.status != 500:
            raise
        try:
            doc = platform.project(workspace, project)
        except NotFound:
            raise  # no such project (the diagnosis asks again and says so)
        except PlatformError:
            raise exc from None
        listed = {str(v.get("id", "")).rsplit("/", 1)[-1] for v in doc.get("versions") or [] if isinstance(v, dict)}
        if str(version) in listed:
            raise exc from None
        raise NotFound(
            f"{platform.url}/{workspace}/{project}/{version}: project {project!r} has no version {version} (the "
            "platform answered HTTP 500, as it does for an unknown version)",
            404,
        ) from None


class FactsStore(Protocol):
    """Where facts are kept between runs (the journal's ``model_facts``: rfwatch.journal.facts)."""

    def get(self, model: str) -> dict[str, Any] | None: ...

    def put(self, model: str, facts: dict[str, Any], fetched: float) -> None: ...


class FactsCache:
    """Facts per model id, kept in the journal (shared by every host on it)."""

    def __init__(self, store: FactsStore):
        self.store = store

    def get(self, model: str) -> ModelFacts | None:
        doc = self.store.get(model)
        return ModelFacts.from_json(doc) if doc else None

    def put(self, facts: ModelFacts) -> None:
        self.store.put(facts.model, facts.json(), facts.fetched)


@dataclass
class ModelFactsService:
    """Keeps facts for the models in use: cached ones at once, fresh ones fetched on a background thread.

    Made before the journal is open (a first run asks the platform while the daemon is still being loaded:
    rfwatch.service.early), it keeps what it fetched in memory until ``attach`` gives it the journal's cache.
    """

    cache: FactsCache | None
    platform: PlatformClient | None
    max_age: float = MAX_AGE
    _facts: dict[str, ModelFacts] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _warned: bool = False
    _thread: threading.Thread | None = None
    #: Models a fetch was started for by this process (a second refresh without ``force`` does not ask again).
    _asked: set[str] = field(default_factory=set)
    #: Called with each model's facts once fetched (the daemon checks the rules against the classes).
    on_fetched: Callable[[ModelFacts], None] | None = None

    def attach(self, cache: FactsCache) -> None:
        """Keep facts in ``cache`` from now on, and put there those fetched before it was given."""
        with self._lock:
            self.cache = cache
            fetched = list(self._facts.values())
        for facts in fetched:
            cache.put(facts)

    def get(self, model: str) -> ModelFacts | None:
        with self._lock:
            facts, cache = self._facts.get(model), self.cache
        if facts is None and cache is not None:
            facts = cache.get(model)
            if facts is not None:
                with self._lock:
                    self._facts[model] = facts
        return facts

    def refresh(self, models: Iterable[str], force: bool = False, wait: float = 0.0) -> None:
        """Fetch stale (or, with ``force``, all) facts on a background thread; wait up to ``wait`` seconds.

        Without ``force``, a model this service already asked about is not asked again: an early fetch under way
        (or one that found the platform unreachable) stands for the daemon's first one.
        """

        def stale(model: str) -> bool:
            facts = self.get(model)
            return facts is None or time.time() - facts.fetched > self.max_age

        candidates = [m for m in models if force or stale(m)]
        with self._lock:  # checked and marked at once: two threads refreshing together start one fetch
            wanted = [m for m in candidates if force or m not in self._asked] if self.platform is not None else []
            self._asked.update(wanted)
        if wanted:
            thread = threading.Thread(target=self._fetch_all, args=(wanted,), name="rfwatch-model-facts", daemon=True)
            self._thread = thread
            thread.start()
        if wait:
            self.wait(wait)

    def wait(self, timeout: float) -> None:
        """Up to ``timeout`` seconds for the fetch under way, if any, to end (facts fetched, or found unreachable)."""
        thread = self._thread
        if thread is not None and timeout > 0:
            thread.join(timeout)

    def fetching(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _fetch_all(self, models: list[str]) -> None:
        assert self.platform is not None
        for model in models:
            try:
                facts = fetch_facts(self.platform, model)
            except PlatformError as exc:
                if not self._warned:  # one warning: the platform may be unreachable on purpose (air-gapped)
                    self._warned = True
                    log.warning(
                        "model %s: could not ask the platform API about it (%s); uploads use max_size and rule "
                        "classes are not checked",
                        model,
                        exc,
                    )
                continue
            with self._lock:
                self._facts[model] = facts
                cache = self.cache
            if cache is not None:  # None: attach() puts it there
                cache.put(facts)
            log.info("model %s: %s", model, describe(facts))
            if self.on_fetched is not None:
                self.on_fetched(facts)


def describe(facts: ModelFacts) -> str:
    size = (
        f"input {facts.resize.width}x{facts.resize.height} ({facts.resize.format})"
        if facts.resize
        else "input size unknown"
    )
    crop = f", static crop {facts.static_crop}" if facts.static_crop else ""
    return f"{facts.kind}, {len(facts.classes)} classes, {size}{crop}"


def unknown_classes(rule_classes: dict[str, tuple[str, ...]], facts: list[ModelFacts]) -> list[str]:
    """One message per class a rule names that no model in use has, with the closest real class.

    Rules apply to files of every model in use, so a class is known if any of them has it.
    """
    names = sorted({c for f in facts for c in f.classes})
    known = set(names)
    models = " or ".join(f.model for f in facts)
    problems = []
    for rule, classes in rule_classes.items():
        for cls in classes:
            if cls in known:
                continue
            close = difflib.get_close_matches(cls, names, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (its classes: {', '.join(names)})"
            problems.append(f"rule {rule!r}: class {cls!r} is not a class of {models}{hint}")
    return problems


def check_rules(config: Any, facts_of: Callable[[str], ModelFacts | None]) -> tuple[list[str], list[str]]:
    """(problems, models whose classes are unknown) for the classes the config's rules name."""
    rule_classes = {r.name: r.when.classes for r in config.rules if r.when.classes}
    models = models_in_use(config)
    known = [f for m in models if (f := facts_of(m)) is not None]
    missing = [m for m in models if facts_of(m) is None]
    if not rule_classes or missing:
        return [], missing if rule_classes else []
    return unknown_classes(rule_classes, known), []


def facts_wanted(config: Any) -> bool:
    """Whether a start is worth waiting a little for facts: rules name classes to check, or uploads are sized to the
    model (no ``max_size`` set)."""
    return any(r.when.classes for r in config.rules) or not config.roboflow.max_size_set


def models_in_use(config: Any) -> list[str]:
    """Every model the config uses (the default and each folder's own), as configured (facts are kept so)."""
    named = [config.roboflow.model, *(w.model for w in config.watch)]
    return sorted({ModelId.parse(m).key for m in named if m})


def diagnose(platform: PlatformClient | None, model: str, status: int | None) -> str | None:
    """After inference answered 401, 403 or 404: is it the key, or the model? One plain sentence, or None.

    classify.roboflow.com and self-hosted servers answer 403 for a refused key and for an unknown model alike;
    the platform tells them apart: ``GET /?api_key`` checks the key and names its workspace, and
    ``GET /{workspace}/{project}/{version}`` says whether the model exists there.
    """
    if platform is None or status not in (401, 403, 404):
        return None
    mid = ModelId.parse(model)
    try:
        workspace = platform.workspace()
    except KeyRefused:
        return f"the API key is not valid: the platform ({platform.url}) refuses it"
    except PlatformError:
        return None
    target = mid.workspace or workspace
    try:
        version_document(platform, target, mid.project, mid.version)  # a 500 for an unknown version is NotFound
    except NotFound:
        try:
            doc = platform.project(target, mid.project)
        except NotFound:
            where = f"workspace {target!r}" + (" (the key's workspace)" if target == workspace else "")
            return f"the key is valid (workspace {workspace!r}) but {where} has no project {mid.project!r}"
        except PlatformError:
            return None
        versions = sorted(str(v.get("id", "")).rsplit("/", 1)[-1] for v in doc.get("versions") or [])
        return (
            f"the key is valid (workspace {workspace!r}) but project {mid.project!r} has no version {mid.version}"
            + (f" (its versions: {', '.join(versions)})" if versions else "")
        )
    except KeyRefused:
        return f"the key is valid (workspace {workspace!r}) but may not use workspace {target!r}"
    except PlatformError:
        return None
    return (
        f"the key is valid (workspace {workspace!r}) and model {model} exists; the inference server refused it "
        "(is the model trained and deployed, and does the key have the scope?)"
    )

"""Rules: which actions run for a classified file.

Rules are tried in order; the first whose ``when`` matches runs its ``then``
list, and ``continue: true`` lets later rules be tried as well.

``when: exif: {TAG: GLOB}`` conditions read the file's EXIF (rfwatch.images.exif) only once the rule's
other conditions hold, and through :func:`camera_facts`, so the actions' ``{exif:...}`` placeholders
use the same read.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rfwatch.config import ActionSpec, Config, ConfigError, RuleConfig, When
from rfwatch.host.templates import Template, TemplateError
from rfwatch.images.exif import CameraFacts, TagRef, camera_facts
from rfwatch.record import record
from rfwatch.roboflow.result import Prediction

__all__ = ["Rule", "BoundAction", "compile_rules", "matching_rules", "exif_uses"]


@record
class BoundAction:
    name: str
    run: Callable[..., Any]
    spec: ActionSpec
    #: The plugin that registered the action (its deliveries are counted under this name).
    owner: str = ""

    def undo(self) -> Callable[..., Any] | None:
        """The action's ``undo(ctx, result)``, if it offers one (see docs/plugins.md, "Undo")."""
        return getattr(self.run, "undo", None)

    def describe(self, ctx: Any) -> str:
        describe = getattr(self.run, "describe", None)
        if describe is not None:
            return f"{self.name} {describe(ctx)}"
        return f"{self.name} {self.spec.options!r}" if self.spec.options is not None else self.name


@record
class Rule:
    """A rule from the config with its actions built."""

    spec: RuleConfig
    actions: tuple[BoundAction, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def when(self) -> When:
        return self.spec.when

    @property
    def continue_(self) -> bool:
        return self.spec.continue_

    def match(self, prediction: Prediction, source: Path, facts: CameraFacts | None = None) -> str | None:
        """The class this rule matched (the top class when it names none), or None for no match.

        ``facts``: the file's EXIF tags, for ``exif`` conditions (default: read from ``source``).
        """
        when = self.when
        if when.classes:
            candidates = prediction.predicted_classes if prediction.multi_label else (prediction.top,)
            matched = next((c for c in candidates if c in when.classes), None)
            if matched is None:
                return None
        else:
            matched = prediction.top
        confidence = prediction.confidence_of(matched) if prediction.multi_label else prediction.confidence
        if when.min_confidence is not None and confidence < when.min_confidence:
            return None
        if when.max_confidence is not None and confidence > when.max_confidence:
            return None
        if when.path is not None and not fnmatch.fnmatchcase(str(source), when.path):
            return None
        if when.exif:
            facts = facts or camera_facts(source)
            for tag, globs in when.exif:
                value = facts.text(tag)  # a tag the file lacks matches nothing, not even "*"
                if value is None or not any(fnmatch.fnmatchcase(value, g) for g in globs):
                    return None
        return matched

    def describe_when(self) -> str:
        w = self.when
        parts = []
        if w.classes:
            parts.append("class in " + "/".join(w.classes))
        if w.min_confidence is not None:
            parts.append(f"confidence >= {w.min_confidence:g}")
        if w.max_confidence is not None:
            parts.append(f"confidence <= {w.max_confidence:g}")
        if w.path:
            parts.append(f"path matches {w.path}")
        for tag, globs in w.exif:
            parts.append(f"exif {tag} matches {'/'.join(globs)}")
        return " and ".join(parts) or "always"


def compile_rules(config: Config, actions: dict[str, tuple[Callable[[Any], Any], str]]) -> tuple[Rule, ...]:
    """Build every rule's actions now, so bad options fail at load time with their key path."""
    rules = []
    for rc in config.rules:
        rules.append(Rule(rc, tuple(_bind(spec, actions) for spec in rc.then)))
    return tuple(rules)


def _bind(spec: ActionSpec, actions: dict[str, tuple[Callable[[Any], Any], str]]) -> BoundAction:
    if spec.name not in actions:
        known = ", ".join(sorted(actions)) or "none"
        raise ConfigError(f"{spec.key}: unknown action {spec.name!r} (known: {known})")
    factory, owner = actions[spec.name]
    try:
        run = factory(spec.options)
    except ConfigError as exc:
        raise ConfigError(f"{spec.key}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{spec.key}: {exc}") from None
    if not callable(run):
        raise ConfigError(f"{spec.key}: plugin {owner} returned {run!r} instead of a callable action")
    return BoundAction(spec.name, run, spec, owner)


def matching_rules(
    rules: tuple[Rule, ...], prediction: Prediction, source: Path, facts: CameraFacts | None = None
) -> list[tuple[Rule, str]]:
    """The rules that run for a file, with the class each matched. ``facts``: its EXIF (default: from ``source``)."""
    out = []
    for rule in rules:
        if facts is None and rule.when.exif:
            facts = camera_facts(source)  # one object for every rule: the file is read once, if at all
        matched = rule.match(prediction, source, facts)
        if matched is None:
            continue
        out.append((rule, matched))
        if not rule.continue_:
            break
    return out


def exif_uses(config: Config) -> list[tuple[str, TagRef, bool]]:
    """Every EXIF tag the rules name: (key path, tag, True for a condition / False for a template).

    Templates are found in any string of an action's options that parses as one (the actions read their own
    options; a string that is no template is skipped here).
    """
    out: list[tuple[str, TagRef, bool]] = []
    for rc in config.rules:
        for tag, _ in rc.when.exif:
            out.append((f"{rc.key}.when.exif.{tag}", TagRef.parse(tag), True))
        for spec in rc.then:
            for text in _strings(spec.options):
                if "{exif" not in text:
                    continue
                try:
                    tags = Template(text).exif_tags()
                except TemplateError:
                    continue
                out += [(spec.key, tag, False) for tag in tags]
    return out


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []

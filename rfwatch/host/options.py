"""Checking an action's options from the YAML, with errors that say what was expected.

An action's factory receives whatever the YAML holds under its name: ``move: "sorted/{name}"``,
``tag: {mode: embed}``, ``command: [...]`` or nothing at all. :class:`Options` turns that into a mapping
(the shorthand value goes under ``short``), rejects unknown keys, and reads each option with its type
checked. Every problem raises ``ValueError("size: expected an integer >= 16, got 2")``; rfwatch adds the
key path (``rules[0].then[1].thumbnail: size: ...``) when the config loads.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, TypeVar

from rfwatch.files.place import ConflictMode
from rfwatch.host.templates import Template, TemplateError
from rfwatch.redact import redact

__all__ = ["Options"]

_MISSING = object()
E = TypeVar("E", bound=enum.Enum)


class Options:
    """The options of one use of an action.

    ``Options(value, short="to", known={"to", "on_conflict"}, example='"sorted/{class}/{name}"')``:
    ``value`` as the YAML gave it; a string or list stands for ``{short: value}``; None for ``{}``.
    """

    def __init__(self, value: Any, *, known: Iterable[str], short: str | None = None, example: str = ""):
        self.known = frozenset(known)
        if value is None:
            value = {}
        elif isinstance(value, (str, list)) and short is not None:
            value = {short: value}
        if not isinstance(value, dict):
            raise ValueError(f"expected {example or 'a mapping of options'}, got {value!r}")
        unknown = sorted(str(k) for k in value if k not in self.known)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} (expected: {', '.join(sorted(self.known))})")
        self.values: dict[str, Any] = value

    def __contains__(self, name: str) -> bool:
        return self.values.get(name) is not None

    def _get(self, name: str, default: Any, what: str) -> Any:
        assert name in self.known, f"option {name!r} is not among the known ones"
        value = self.values.get(name)
        if value is None:
            if default is _MISSING:
                raise ValueError(f"{name}: expected {what}")
            return default
        return value

    def raw(self, name: str, default: Any = None) -> Any:
        """The value as the YAML gave it."""
        return self._get(name, default, "a value")

    def string(self, name: str, default: Any = _MISSING, *, secret: bool = False) -> str:
        """``secret``: a signing secret, a password: an error names its type, never the value."""
        value = self._get(name, default, "a non-empty string")
        if value is default:
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}: expected a non-empty string, got {_shown(value, secret)}")
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default, "true or false")
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
        unit: str = "",
    ) -> float:
        """A number; ``unit`` ("seconds") is named in the error."""
        what = "a positive number" if positive else f"a number >= {minimum:g}" if minimum is not None else "a number"
        what += f" of {unit}" if unit else ""
        what += f", at most {maximum:g}" if maximum is not None else ""
        value = self._get(name, default, what)
        if value is default:
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and not (positive and value <= 0) and not (minimum is not None and value < minimum)
        ok = ok and not (maximum is not None and value > maximum)
        if not ok:
            raise ValueError(f"{name}: expected {what}, got {value!r}")
        return float(value)

    def integer(
        self, name: str, default: Any = _MISSING, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        if minimum is not None and maximum is not None:
            what = f"an integer between {minimum} and {maximum}"
        else:
            what = f"an integer >= {minimum}" if minimum is not None else "an integer"
        value = self._get(name, default, what)
        if value is default:
            return value
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and not (minimum is not None and value < minimum) and not (maximum is not None and value > maximum)
        if not ok:
            raise ValueError(f"{name}: expected {what}, got {value!r}")
        return value

    def choice(self, name: str, choices: type[E] | Iterable[str], default: Any = _MISSING, *, what: str = "") -> Any:
        """One of ``choices`` (strings, or the values of an enum, which is then returned).

        ``what`` describes them in the error, when their names alone say too little.
        """
        values = [c.value for c in choices] if isinstance(choices, type) else list(choices)
        what = what or "one of " + ", ".join(map(str, values))
        value = self._get(name, default, what)
        if value is default and default is not None:
            value = default.value if isinstance(default, enum.Enum) else default
        if value not in values:
            raise ValueError(f"{name}: expected {what}, got {value!r}")
        return choices(value) if isinstance(choices, type) else value

    def template(self, name: str, default: Any = _MISSING) -> Template:
        """A template such as ``"thumbs/{class}/{stem}.webp"``, its placeholders checked now."""
        value = self._get(name, default, 'a template such as "sorted/{class}/{name}"')
        if isinstance(value, Template):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'{name}: expected a template such as "sorted/{{class}}/{{name}}", got {value!r}')
        try:
            return Template(value)
        except TemplateError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def templates(self, name: str, default: Any = _MISSING) -> list[Template]:
        """A template or a list of them."""
        value = self._get(name, default, "a list of templates")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, Template)) for v in value):
            raise ValueError(f"{name}: expected a list of templates, got {value!r}")
        try:
            return [v if isinstance(v, Template) else Template(v) for v in value]
        except TemplateError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def string_list(self, name: str, default: Any = _MISSING) -> list[str]:
        value = self._get(name, default, "a list of strings")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ValueError(f"{name}: expected a list of strings, got {value!r}")
        return [str(v) for v in value]

    def mapping(self, name: str, default: Any = _MISSING, *, secret: bool = False) -> dict[str, str]:
        """A mapping of names to strings (HTTP headers, say; ``secret``: errors never show the values)."""
        value = self._get(name, default, "a mapping of names to strings")
        if not isinstance(value, dict) or not all(isinstance(v, (str, int)) for v in value.values()):
            raise ValueError(f"{name}: expected a mapping of names to strings, got {_shown(value, secret)}")
        return {str(k): str(v) for k, v in value.items()}

    def url(self, name: str, default: Any = _MISSING) -> str:
        value = self._get(name, default, "an http:// or https:// URL")
        if value is default:
            return value
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise ValueError(f"{name}: expected an http:// or https:// URL, got {_shown(value, False)}")
        return value

    def destination(self, default_conflict: ConflictMode = ConflictMode.RENAME) -> tuple[Template, ConflictMode]:
        """``to`` (a path template) and ``on_conflict`` (rename, skip, overwrite or dedupe)."""
        return self.template("to"), self.choice("on_conflict", ConflictMode, default_conflict)


def _shown(value: Any, secret: bool) -> str:
    """A value as an error message may show it: a secret only by its type; a URL's tokens masked."""
    if secret:
        if isinstance(value, dict):
            return "a mapping of " + ", ".join(f"{k!s}: <{type(v).__name__}>" for k, v in value.items())
        return f"a value of type {type(value).__name__}"
    return redact(repr(value))

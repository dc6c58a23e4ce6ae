"""Option parsing shared by the built-in actions."""

from __future__ import annotations

from typing import Any

from ..templates import Template, TemplateError

__all__ = ["destination_options", "mapping_options"]


def mapping_options(options: Any, short_key: str, known: set[str], what: str) -> dict[str, Any]:
    """Accept ``action: VALUE`` as shorthand for ``action: {short_key: VALUE}``; reject unknown keys."""
    if isinstance(options, (str, list)):
        options = {short_key: options}
    if not isinstance(options, dict):
        raise ValueError(f"expected {what}, got {options!r}")
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (expected: {', '.join(sorted(known))})")
    return options


def destination_options(options: Any, extra: set[str] = frozenset()) -> tuple[Template, dict[str, Any]]:
    opts = mapping_options(
        options,
        "to",
        {"to", "on_conflict"} | set(extra),
        'a destination such as "sorted/{class}/{name}" or {to: ..., on_conflict: rename}',
    )
    to = opts.get("to")
    if not isinstance(to, str) or not to.strip():
        raise ValueError(f"to: expected a destination path template, got {to!r}")
    try:
        template = Template(to)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return template, opts

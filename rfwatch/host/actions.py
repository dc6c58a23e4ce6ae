"""The action protocol, written down: what ``register_actions`` registers and what rfwatch calls.

A plugin registers ``factory`` under a name; rfwatch calls ``factory(options)`` once per use in the rules (the
YAML value under the action's name) and gets an :class:`Action`: ``action(ctx)`` runs for each file. An action
may also offer ``undo(ctx, result)`` (:class:`Undoable`), and ``describe(ctx)`` for ``run --dry-run`` and undo's
lines (:class:`Describable`). These are ``typing.Protocol`` classes: a plugin needs no base class, and a plain
function is an action. Nothing here imports the rest of rfwatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rfwatch.host.context import FileContext

__all__ = ["Action", "Undoable", "Describable", "ActionFactory"]


@runtime_checkable
class Action(Protocol):
    """``action(ctx)``: do the action to one file; return a dict or string (journaled), raise to fail the file."""

    def __call__(self, ctx: FileContext, /) -> Any: ...


@runtime_checkable
class Undoable(Protocol):
    """An action that can be reversed by ``rfwatch undo``: ``undo(ctx, result)`` gets what ``action(ctx)`` returned.

    Make it a ``@staticmethod`` relying on ``result`` only (see docs/plugins.md, "Undo"). It returns
    ``{"outcome": "undone" | "partial" | "nothing" | "kept", "detail": ...}``, or None for "undone".
    """

    def __call__(self, ctx: FileContext, /) -> Any: ...

    def undo(self, ctx: FileContext, result: Any, /) -> Any: ...


@runtime_checkable
class Describable(Protocol):
    """An action that says what it would do (``run --dry-run``, undo's lines): ``describe(ctx)`` -> text."""

    def describe(self, ctx: FileContext, /) -> str: ...


class ActionFactory(Protocol):
    """``factory(options) -> Action``: raise ``ValueError`` to reject the options (shown with the key path)."""

    def __call__(self, options: Any, /) -> Action: ...

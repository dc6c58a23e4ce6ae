"""Every hook rfwatch calls. Plugins implement them with ``@rfwatch.hookimpl``.

pluggy calls hooks with keyword arguments, and an implementation may accept
fewer arguments than the spec lists, so arguments can be added later without
breaking plugins. rfwatch isolates failures: a hook implementation that
raises is logged with its plugin's name and affects neither the daemon nor
other files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from .config import Config
    from .context import FileContext

hookspec = pluggy.HookspecMarker("rfwatch")

# --- registries ---------------------------------------------------------------


@hookspec
def register_actions(register: Callable[[str, Callable[[Any], Callable[[FileContext], Any]]], None]) -> None:
    """Add actions usable in a rule's ``then:`` list; called once each time a config loads.

    Call ``register(name, factory)``. ``factory(options)`` is called once per use in
    the config with the YAML value under the action's name (a string, mapping,
    list or None) and returns ``action(ctx)``; raise ``ValueError`` there to reject
    bad options (the message is shown with the key path). ``action(ctx)`` runs for
    each file; what it returns (a dict or string) is recorded in the journal, and
    an exception marks the file failed with that message. An action that moves the
    file must set ``ctx.path``. Return value of the hook: ignored.
    """


# --- lifecycle ------------------------------------------------------------------


@hookspec
def startup(config: Config) -> None:
    """Called when the daemon (or ``run --once``) starts and after each reload, before any file is taken.

    ``config`` is the loaded :class:`rfwatch.config.Config`. Return value: ignored.
    """


@hookspec
def shutdown() -> None:
    """Called once when the daemon stops, after in-flight files finished. Return value: ignored."""


# --- per file ------------------------------------------------------------------------


@hookspec(firstresult=True)
def ignore_file(path: Path) -> bool | None:
    """Called for every candidate file before it is taken (after include/exclude patterns).

    Return True to skip the file (it stays where it is and is not journaled).
    The first non-None result wins.
    """


@hookspec
def file_classified(ctx: FileContext) -> None:
    """Called after a file has a prediction and before any rule runs.

    ``ctx.prediction`` is set; ``ctx.rule`` is still None. Return value: ignored.
    """


@hookspec
def file_processed(ctx: FileContext) -> None:
    """Called after a file's rules ran (or no rule matched: ``ctx.rule`` is None).

    ``ctx.path`` is where the file is now; ``ctx.results`` lists each action's
    outcome. Return value: ignored.
    """


@hookspec
def file_failed(path: Path, error: str) -> None:
    """Called when a file cannot be processed: unreadable, rejected by the API, or an action failed.

    ``path`` is where the file is now (inside ``failed:`` when that is set);
    ``error`` says why. Return value: ignored.
    """

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

    from rfwatch.config import Config
    from rfwatch.host.context import FileContext
    from rfwatch.host.delivery import Delivery
    from rfwatch.host.delivery import DeliveryStatus as Deliveries

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
    file must set ``ctx.path``. The action may offer ``undo(ctx, result)`` for
    ``rfwatch undo``. Return value of the hook: ignored.
    """


@hookspec
def register_deliverers(register: Callable[[str, Callable[[Delivery], Any]], None], config: Config) -> None:
    """Add deliverers for ``ctx.deliver(kind, ...)``; called once each time a config loads.

    Call ``register(kind, deliver)``. ``deliver(delivery)`` runs on rfwatch's delivery threads for each
    due :class:`rfwatch.plugin.Delivery` of that ``kind`` and returns ``Delivered(...)``, ``Retry(...)``
    (also what an exception counts as), ``Gone(...)`` or ``Failed(...)``. ``config`` is the loaded config,
    for the settings the deliverer needs (secrets are read from it, never stored with the delivery).
    Two plugins registering the same kind is a config error. Return value: ignored.
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

    Return True to skip the file: it stays where it is and is not journaled, so it is offered again
    whenever it changes and at each scan of its folder (at start, every ``rescan_interval``, after lost
    events): decide the same way each time. The first non-None result wins.
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


# --- reporting ----------------------------------------------------------------------


@hookspec
def status_lines(config: Config, deliveries: Deliveries) -> list[str] | None:
    """Lines this plugin adds to ``rfwatch status --plugins`` (``status --plugins --json``: ``plugins_status``).

    Called in the ``status --plugins`` command's process, not the daemon's; plain ``status`` loads no plugin (it
    must answer at once), and says itself what the outbox holds: targets gone, failing or failed for good.
    ``deliveries`` reads what waits for delivery: ``pending_by_plugin()``, ``failed_by_plugin()``,
    ``gone_targets(kind)``, ``failing(kind)``, ``failed(kind)``.
    Return a list of strings, or None.
    """


@hookspec
def file_reviewed(ctx: FileContext, decision: dict[str, Any]) -> None:
    """Called once when a person's decision on a file that waited for review is applied.

    ``decision`` is ``{"kind": "label" | "reject", "classes": [...], "decided": <unix time>, "by": ...}``;
    for a label, ``ctx.prediction`` is the person's (their class at confidence 1.0) and
    ``ctx.model_prediction`` the model's. It runs inside a journaled step: ``ctx.deliver(...)`` here is
    written with it, so a delivery (an upload of the labelled image) is queued exactly once whatever
    crashes. Return value: ignored.
    """

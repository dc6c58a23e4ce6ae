"""The plugin manager: built-ins, ``rfwatch`` entry points and ``plugins:`` from the config.

Load order is fixed (as in pluggy's eggsample host and tox): the hook specs, the built-in plugins
(``rfwatch/default_plugins/``, registered with the same ``pm.register()`` as everyone else's), installed
``rfwatch`` entry points, then the config's ``plugins:`` list, then ``check_pending()`` so that a plugin
implementing a misspelt hook is an error. pluggy calls the most recently registered first, so a user's
plugin runs before the built-ins.

Every hook is called through pluggy (``host.hook.NAME(...)``), so ``tryfirst``/``trylast``, hook
wrappers, ``firstresult`` and ``pm.add_hookcall_monitoring`` behave as pluggy documents. pluggy stops a
call at the first exception; rfwatch promises that a failing plugin affects no other plugin or file, so
each plain implementation is wrapped, once it is registered, in a guard that logs the exception with the
plugin's name and returns None (pluggy then goes on to the next implementation). Set
``RFWATCH_TRACE_PLUGINS=1`` to print every hook call, its implementations and its result on stderr.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from rfwatch import crashpoints
from rfwatch.errors import ConfigError
from rfwatch.host import hookspecs
from rfwatch.host.actions import ActionFactory
from rfwatch.host.delivery import Deliverer
from rfwatch.redact import redact

__all__ = ["DEFAULT_PLUGINS", "PluginHost", "ActionFactory", "TRACE_ENV"]

log = logging.getLogger(__name__)

DEFAULT_PLUGINS = (
    "rfwatch.default_plugins.move_copy",
    "rfwatch.default_plugins.tag",
    "rfwatch.default_plugins.webhook",
    "rfwatch.default_plugins.annotate",
    "rfwatch.default_plugins.log",
    "rfwatch.default_plugins.command",
    "rfwatch.default_plugins.review",
)
#: ``RFWATCH_TRACE_PLUGINS=1`` prints every hook call (datasette's DATASETTE_TRACE_PLUGINS, for rfwatch).
TRACE_ENV = "RFWATCH_TRACE_PLUGINS"

_GUARDED = "_rfwatch_guarded"

#: Whether a plugin other than the built-ins was loaded in this process (an installed one, or one the config names).
#: The CLI then ends ``run --once`` the usual way: files such a plugin left open are flushed by the interpreter's
#: teardown, which the quick exit skips (rfwatch/cli.py console).
_others_loaded = False


def others_loaded() -> bool:
    """Whether a plugin other than rfwatch's built-ins was loaded in this process."""
    return _others_loaded


@dataclass
class PluginHost:
    """A loaded set of plugins and the actions they registered."""

    pm: pluggy.PluginManager
    actions: dict[str, tuple[ActionFactory, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, extra: Iterable[str] = (), entry_points: bool = True) -> PluginHost:
        pm = pluggy.PluginManager("rfwatch")
        pm.add_hookspecs(hookspecs)
        for name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        if entry_points:
            pm.load_setuptools_entrypoints("rfwatch")
        for spec in extra:
            module = _import_plugin(spec)
            if pm.is_registered(module):
                continue
            pm.register(module, name=spec)
        if any(name not in DEFAULT_PLUGINS for name, _ in pm.list_name_plugin()):
            global _others_loaded
            _others_loaded = True
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugins: {exc}") from None
        crashpoints.check_target()  # the plugins declared their crash points by now
        _guard_implementations(pm)
        if os.environ.get(TRACE_ENV, "") not in ("", "0"):
            pm.add_hookcall_monitoring(_trace_before, _trace_after)
        host = cls(pm)
        host._collect_actions()
        return host

    @property
    def hook(self) -> Hooks:
        """``host.hook.NAME(**kwargs)``: a hook call through pluggy, each implementation isolated.

        A name that is not a hook of rfwatch/host/hookspecs.py raises AttributeError at once: a misspelt hook in
        rfwatch's own code fails loudly (and in tests), never as a logged failure of some plugin.
        """
        return Hooks(self.pm)

    def call(self, hook: str, **kwargs: Any) -> Any:
        """``call("NAME", **kwargs)`` is ``host.hook.NAME(**kwargs)`` (kept for callers that name the hook in a string)."""
        return getattr(self.hook, hook)(**kwargs)

    def deliverers(self, config: Any) -> dict[str, tuple[str, Deliverer]]:
        """kind -> (plugin name, deliver), from each plugin's ``register_deliverers``; two owners of a kind is an error."""
        deliverers: dict[str, tuple[str, Deliverer]] = {}
        for owner, call in self.per_plugin("register_deliverers"):

            def register(kind: str, deliver: Deliverer, _owner: str = owner) -> None:
                if kind in deliverers and deliverers[kind][0] != _owner:
                    raise ConfigError(
                        f"plugins: delivery kind {kind!r} is registered by both {deliverers[kind][0]} and {_owner}"
                    )
                deliverers[kind] = (_owner, deliver)

            call(register=register, config=config)
        return deliverers

    def per_plugin(self, hook: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        """``(plugin name, caller)`` for each plugin implementing ``hook``: ``caller(**kwargs)`` calls only it.

        For the ``register_*`` hooks, so that each ``register()`` knows whose registration it records.
        ``subset_hook_caller`` still goes through pluggy: the plugin's own ordering and wrappers apply.
        """
        plugins = self.pm.get_plugins()
        for plugin in plugins:
            if any(c.name == hook for c in self.pm.get_hookcallers(plugin) or []):
                others = [p for p in plugins if p is not plugin]
                yield self.pm.get_name(plugin), self.pm.subset_hook_caller(hook, remove_plugins=others)

    def _collect_actions(self) -> None:
        for owner, call in self.per_plugin("register_actions"):

            def register(name: str, factory: ActionFactory, _owner: str = owner) -> None:
                if not isinstance(name, str) or not name.isidentifier():
                    raise ConfigError(f"plugins: {_owner} registered an action with a bad name {name!r}")
                if name in self.actions and self.actions[name][1] != _owner:
                    raise ConfigError(
                        f"plugins: action {name!r} is registered by both {self.actions[name][1]} and {_owner}"
                    )
                self.actions[name] = (factory, _owner)

            call(register=register)

    def names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def describe(self) -> list[dict[str, Any]]:
        """Each plugin with the hooks it implements and the actions it registered (``rfwatch plugins``)."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            actions = sorted(a for a, (_, owner) in self.actions.items() if owner == name)
            dist = next(
                (d.project_name + " " + d.version for p, d in self.pm.list_plugin_distinfo() if p is plugin), None
            )
            out.append({"name": name, "hooks": hooks, "actions": actions, "distribution": dist})
        return out


class Hooks:
    """``host.hook``: pluggy's hook relay, with each call guarded against a failing hook wrapper.

    Plain implementations are guarded one by one (see :func:`_guard_implementations`); what only a wrapper
    (``wrapper=True``/``hookwrapper=True``) can raise is logged here with the hook's name, and the call returns
    None. Looking up a hook that has no spec raises AttributeError: that is a bug in the caller, not a plugin's.
    """

    __slots__ = ("_pm",)

    def __init__(self, pm: pluggy.PluginManager):
        self._pm = pm

    def __getattr__(self, name: str) -> Callable[..., Any]:
        caller = getattr(self._pm.hook, name, None)
        if caller is None or caller.spec is None:
            known = ", ".join(sorted(n for n in vars(self._pm.hook) if not n.startswith("_")))
            raise AttributeError(f"rfwatch has no hook {name!r} (hooks: {known})")

        def call(**kwargs: Any) -> Any:
            try:
                return caller(**kwargs)
            except ConfigError:
                raise
            except Exception:
                log.exception("a hook wrapper failed in %s; the call's results are lost", name)
                return None

        call.__name__ = name
        return call


def _guard_implementations(pm: pluggy.PluginManager) -> None:
    """Wrap each plain hook implementation so that an exception is logged and skipped, not propagated.

    pluggy calls ``impl.function(*args)`` with the arguments named in ``impl.argnames`` (computed from the
    original function), so a ``*args`` guard keeps the calling convention. Wrappers are left alone: they
    must see the real outcome of the implementations they wrap.
    """
    for plugin in pm.get_plugins():
        for caller in pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin or impl.hookwrapper or impl.wrapper:
                    continue
                if getattr(impl.function, _GUARDED, False):
                    continue
                impl.function = _guarded(impl.function, impl.plugin_name, caller.name)


def _guarded(function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def guard(*args: Any) -> Any:
        try:
            return function(*args)
        except ConfigError:  # a bad action name or options at load time: the config is refused, as it should be
            raise
        except Exception:
            log.exception("plugin %s failed in %s", plugin_name, hook_name)
            return None

    setattr(guard, _GUARDED, True)
    return guard


def _trace_before(hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
    args = ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items())
    names = ", ".join(i.plugin_name for i in reversed(hook_impls))
    sys.stderr.write(redact(f"rfwatch plugins: {hook_name}({args}) -> [{names}]") + "\n")


def _trace_after(outcome: Any, hook_name: str, hook_impls: list[Any], kwargs: dict[str, Any]) -> None:
    try:
        result = _short(outcome.get_result())
    except BaseException as exc:  # noqa: BLE001 - tracing reports whatever the call raised
        result = f"raised {type(exc).__name__}: {exc}"
    sys.stderr.write(redact(f"rfwatch plugins: {hook_name} returned {result}") + "\n")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _import_plugin(spec: str):
    """A plugin named in the config: a module name, or a path to a .py file."""
    if spec.endswith(".py") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"plugins: {spec}: no such file")
        mod_name = f"rfwatch_plugin_{path.stem}_{abs(hash(str(path.resolve()))):x}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"plugins: {spec}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise ConfigError(f"plugins: {spec}: failed to load: {exc!r}") from None
        return module
    try:
        return importlib.import_module(spec)
    except Exception as exc:
        raise ConfigError(f"plugins: {spec}: cannot import: {exc!r}") from None

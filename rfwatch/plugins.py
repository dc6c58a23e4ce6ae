"""The plugin manager: built-ins, ``rfwatch`` entry points and ``plugins:`` from the config.

Built-in plugins are ordinary plugin modules registered with the same
``pm.register()`` call as everyone else's. Load order is fixed: built-ins,
then entry points, then the config's list; pluggy calls the most recently
registered first, so a user's plugin runs before the built-ins.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .config import ConfigError

__all__ = ["DEFAULT_PLUGINS", "PluginHost", "ActionFactory"]

log = logging.getLogger(__name__)

DEFAULT_PLUGINS = (
    "rfwatch.default_plugins.move_copy",
    "rfwatch.default_plugins.tag",
    "rfwatch.default_plugins.webhook",
    "rfwatch.default_plugins.annotate",
    "rfwatch.default_plugins.log",
    "rfwatch.default_plugins.command",
)

ActionFactory = Callable[[Any], Callable[..., Any]]


@dataclass
class PluginHost:
    """A loaded set of plugins, the actions they registered, and failure-isolated hook calls."""

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
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugins: {exc}") from None
        host = cls(pm)
        host._collect_actions()
        return host

    def _collect_actions(self) -> None:
        for impl in self.pm.hook.register_actions.get_hookimpls():
            owner = impl.plugin_name

            def register(name: str, factory: ActionFactory, _owner: str = owner) -> None:
                if not isinstance(name, str) or not name.isidentifier():
                    raise ConfigError(f"plugins: {_owner} registered an action with a bad name {name!r}")
                if name in self.actions and self.actions[name][1] != _owner:
                    raise ConfigError(
                        f"plugins: action {name!r} is registered by both {self.actions[name][1]} and {_owner}"
                    )
                self.actions[name] = (factory, _owner)

            self._call_impl(impl, {"register": register}, reraise=(ConfigError,))

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

    # failure-isolated calls

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``hook``; one that raises is logged and skipped."""
        results = []
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            ok, value = self._call_impl(impl, kwargs)
            if ok and value is not None:
                results.append(value)
        return results

    def first(self, hook: str, **kwargs: Any) -> Any:
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            ok, value = self._call_impl(impl, kwargs)
            if ok and value is not None:
                return value
        return None

    def _call_impl(self, impl: Any, kwargs: dict[str, Any], reraise: tuple[type, ...] = ()) -> tuple[bool, Any]:
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        try:
            return True, impl.function(**args)
        except reraise:
            raise
        except Exception:
            log.exception("plugin %s failed in %s", impl.plugin_name, impl.function.__name__)
            return False, None


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

"""What one plugin sees of the loaded config: the options of its actions in the rules, and a folder of its own.

``plugin_config(config, name)`` (exported by ``rfwatch.plugin``) is the stable way for a plugin to read its own
settings; the whole ``Config`` is rfwatch's business and may change. Built on demand from the config passed to a
hook (``startup``, ``register_deliverers``, ``status_lines``) or from ``ctx.config``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rfwatch.record import record

if TYPE_CHECKING:
    from rfwatch.config import Config

__all__ = ["ActionUse", "PluginConfig", "plugin_config", "state_folder"]

_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@record
class ActionUse:
    """One use of an action in the rules: the rule's name, the YAML value under the action, its key path."""

    rule: str
    options: Any
    key: str


@record
class PluginConfig:
    """One plugin's view of the loaded config (read-only)."""

    name: str
    #: The config file's folder: relative paths in options are relative to it (see :meth:`resolve`).
    base_dir: Path
    _uses: tuple[tuple[str, ActionUse], ...]
    _state_root: Path

    def uses(self, action: str) -> list[ActionUse]:
        """Every use of ``action`` in the rules, in rule order (the options each was given)."""
        return [use for name, use in self._uses if name == action]

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """``path`` made absolute against the config's folder (``~`` expanded)."""
        p = Path(os.path.expanduser(os.fspath(path)))
        return p if p.is_absolute() else self.base_dir / p

    @property
    def state_dir(self) -> Path:
        """A folder of the plugin's own next to rfwatch's journal (``<state>/plugins/<name>/``), created."""
        return state_folder(self._state_root, self.name)


def state_folder(state_root: Path, plugin: str) -> Path:
    name = _NAME.sub("_", plugin).strip("._") or "plugin"
    folder = state_root / "plugins" / name
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    return folder


def plugin_config(config: Config, name: str) -> PluginConfig:
    """The settings of plugin ``name`` in ``config``: see :class:`PluginConfig`."""
    uses = tuple(
        (spec.name, ActionUse(rule.name, spec.options, spec.key)) for rule in config.rules for spec in rule.then
    )
    return PluginConfig(name=name, base_dir=config.base_dir, _uses=uses, _state_root=config.state_dir)

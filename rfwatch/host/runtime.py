"""Everything a loaded config turns into: plugins, compiled rules and the API client.

Built as one unit so that a reload (SIGHUP) can swap it atomically, and a
broken new config leaves the old one running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rfwatch.config import Config, ConfigError
from rfwatch.host.delivery import Deliverer
from rfwatch.host.manager import PluginHost
from rfwatch.host.rules import Rule, compile_rules
from rfwatch.host.sequence import check_sequence_keys
from rfwatch.images.sizing import UploadSize

if TYPE_CHECKING:  # the HTTP clients (requests) are imported by what makes one: undo and check need none
    from rfwatch.roboflow.client import ModelId, RoboflowClient
    from rfwatch.roboflow.facts import ModelFacts
    from rfwatch.roboflow.platform import PlatformClient

__all__ = ["Runtime", "Extensions", "build_runtime", "load_extensions", "make_client", "platform_client"]


FactsLookup = Callable[[str], "ModelFacts | None"]


def platform_client(config: Config) -> PlatformClient | None:
    """A client for the platform API with the configured key; None without a key."""
    from rfwatch.roboflow.platform import platform_client as make  # loaded only by what asks the platform

    return make(config)


def make_client(
    config: Config, pool_size: int | None = None, facts: FactsLookup | None = None, **overrides
) -> RoboflowClient:
    from rfwatch.roboflow.client import RetryPolicy, RoboflowClient

    r = config.roboflow
    settings = {
        "api_key": r.api_key,
        "model": r.model,
        "api_url": r.api_url,
        "confidence": r.confidence,
        "multi_label_threshold": r.multi_label_threshold,
        "active_learning": r.active_learning,
        "max_size": r.max_size,
        "jpeg_quality": r.jpeg_quality,
        "timeout": r.timeout,
        "connect_timeout": r.connect_timeout,
        "retry": RetryPolicy(attempts=r.retries),
        "pool_size": pool_size or config.concurrency,
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if not settings["api_key"]:
        raise ConfigError(
            r.api_key_problem
            or "roboflow.api_key: no Roboflow API key: set ROBOFLOW_API_KEY, roboflow.api_key or roboflow.api_key_file"
        )
    if not settings["model"]:
        raise ConfigError("roboflow.model: expected a model such as my-project/3 (or --model)")
    try:
        client = RoboflowClient(**settings)
    except ValueError as exc:
        raise ConfigError(f"roboflow.model: {exc}") from None
    if facts is not None and not config.roboflow.max_size_set and overrides.get("max_size") is None:
        # Sized to each model's input once its facts are known; an explicit max_size decides alone.
        max_size = client.max_size

        def sizes(model: ModelId) -> UploadSize:
            known = facts(model.key)
            return known.upload_size(max_size) if known is not None else UploadSize(max_size=max_size)

        client.upload_sizes = sizes
    return client


@dataclass
class Extensions:
    """What the plugins contribute to a loaded config: the actions bound into rules, and the deliverers."""

    plugins: PluginHost
    rules: tuple[Rule, ...]
    #: kind -> (plugin name, deliver): see rfwatch.processing.delivery.
    deliverers: dict[str, tuple[str, Deliverer]]


def load_extensions(config: Config) -> Extensions:
    """Load the plugins, build every rule's actions and the deliverers; a ConfigError names the key."""
    check_sequence_keys(config)
    plugins = PluginHost.load(config.plugins)
    rules = compile_rules(config, plugins.actions)
    deliverers = plugins.deliverers(config)
    return Extensions(plugins, rules, deliverers)


@dataclass
class Runtime:
    """A loaded config with everything built from it, swapped as a whole by a reload (SIGHUP)."""

    config: Config
    extensions: Extensions
    client: RoboflowClient

    @property
    def plugins(self) -> PluginHost:
        return self.extensions.plugins

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.extensions.rules

    def close(self) -> None:
        self.client.close()


def build_runtime(config: Config, facts: FactsLookup | None = None, **client_overrides) -> Runtime:
    if config.roboflow.model is None and not all(w.model for w in config.watch):
        raise ConfigError(
            "roboflow.model: expected a model such as my-project/3 (every watch without its own model uses it)"
        )
    extensions = load_extensions(config)
    client = make_client(config, facts=facts, **client_overrides)
    return Runtime(config, extensions, client)

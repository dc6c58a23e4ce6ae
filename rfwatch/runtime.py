"""Everything a loaded config turns into: plugins, compiled rules and the API client.

Built as one unit so that a reload (SIGHUP) can swap it atomically, and a
broken new config leaves the old one running.
"""

from __future__ import annotations

from dataclasses import dataclass

from .client import RetryPolicy, RoboflowClient
from .config import Config, ConfigError
from .plugins import PluginHost
from .rules import Rule, compile_rules

__all__ = ["Runtime", "build_runtime", "build_runtime_parts", "make_client"]


def make_client(config: Config, pool_size: int | None = None, **overrides) -> RoboflowClient:
    r = config.roboflow
    settings = {
        "api_key": r.api_key,
        "model": r.model,
        "api_url": r.api_url,
        "confidence": r.confidence,
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
        return RoboflowClient(**settings)
    except ValueError as exc:
        raise ConfigError(f"roboflow.model: {exc}") from None


def build_runtime_parts(config: Config) -> tuple[PluginHost, tuple[Rule, ...]]:
    plugins = PluginHost.load(config.plugins)
    return plugins, compile_rules(config, plugins.actions)


@dataclass
class Runtime:
    config: Config
    plugins: PluginHost
    rules: tuple[Rule, ...]
    client: RoboflowClient

    def close(self) -> None:
        self.client.close()


def build_runtime(config: Config, **client_overrides) -> Runtime:
    if config.roboflow.model is None and not all(w.model for w in config.watch):
        raise ConfigError(
            "roboflow.model: expected a model such as my-project/3 (every watch without its own model uses it)"
        )
    plugins, rules = build_runtime_parts(config)
    client = make_client(config, **client_overrides)
    return Runtime(config, plugins, rules, client)

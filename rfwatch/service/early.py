"""A first run asks the platform about its models while the rest of rfwatch is still being loaded (issue 23, item 2).

Without the model's input size no upload can be sized, and on a first run nothing is known yet: the two platform
round trips (the key's workspace, then the version) used to start only once the daemon's modules were imported,
its plugins loaded and its journal created, about 0.2 s after the process started. ``cmd_run`` calls
``ask_early`` right after reading the config, before importing the daemon; the daemon then takes the fetch over
(``Daemon(facts=...)``) and the journal keeps what it brought (``ModelFactsService.attach``).

Only when the journal does not exist yet (a first run: nothing can be cached) and the facts would be waited for
(rfwatch.roboflow.facts.facts_wanted); on a journal that exists, the daemon reads the cached facts as before and
asks only for what is missing or stale. A PostgreSQL journal is never judged from here (it may hold the facts).

The ask comes before the daemon builds the rules, so a config it then refuses (a rule naming an unknown action)
has cost one request to the platform, which the key is for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rfwatch.config import Config
    from rfwatch.roboflow.facts import ModelFactsService


def ask_early(config: Config) -> ModelFactsService | None:
    """A facts service already asking the platform about the config's models, or None (see the module)."""
    # config.state_url, not rfwatch.journal's is_postgres_url: importing the journal's package (about 20 ms) would
    # delay the request; the daemon imports it while the answer is on its way.
    if config.state_url is not None or config.state_path.exists() or not config.roboflow.api_key:
        return None
    from rfwatch.roboflow.facts import ModelFactsService, facts_wanted, models_in_use

    if not config.watch or not facts_wanted(config):
        return None
    # From the platform's module, not rfwatch.host.runtime: what is loaded before the first request delays it.
    from rfwatch.roboflow.platform import platform_client

    service = ModelFactsService(None, platform_client(config))
    service.refresh(models_in_use(config))
    return service

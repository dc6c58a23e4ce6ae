"""What the outbox holds, read without the delivery machinery: ``rfwatch status`` (which must answer at once, and
loads no plugin) and the ``status_lines`` hook (through Deliveries, which adds the threads that deliver)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rfwatch.journal import Journal, JournalUnavailable
from rfwatch.redact import redact
from rfwatch.states import DeliveryState

if TYPE_CHECKING:
    from rfwatch.host.delivery import Deliverer

__all__ = ["DeliveryView", "UPLOAD_KIND"]

log = logging.getLogger(__name__)

#: The kind of a delivery that uploads an image to Roboflow (the review plugin's; rfwatch.plugin exports it): what
#: ``rfwatch retry --uploads`` queues again, ``status`` names, and a review decision taken back cancels. Defined
#: here, in core, so that ``status`` and ``retry`` need not load the plugin.
UPLOAD_KIND = "roboflow-upload"


@dataclass
class DeliveryView:
    """The outbox as status reads it: what waits, what failed, per plugin and per target."""

    journal: Journal
    #: kind -> (plugin name, deliverer); replaced as a whole when the config is reloaded.
    deliverers: dict[str, tuple[str, Deliverer]] = field(default_factory=dict)
    #: What the journal recorded, read once (a view without deliverers is made for one report: status).
    _recorded: dict[str, str] | None = field(default=None, init=False, repr=False)

    def remember(self) -> None:
        """Record in the journal which plugin delivers each kind, so that `rfwatch status`, which loads no plugin,
        names each delivery's plugin and lists every plugin that delivers. Called by the processes that deliver
        (the daemon at its start and at each reload), never by one that only reads or plans
        (status --plugins, undo --dry-run): those write nothing. A journal away now is no reason not to start: the
        next start records it."""
        try:
            self.journal.outbox.record_deliverers({kind: plugin for kind, (plugin, _) in self.deliverers.items()})
        except JournalUnavailable as exc:
            log.debug("the deliverers were not recorded: %s", exc)

    # --- what status and plugins read (the ``status_lines`` hook gets this object) ------------

    def _plugins(self) -> dict[str, str]:
        """kind -> plugin: this process's deliverers when it loaded them, else what the journal recorded."""
        if self.deliverers:
            return {kind: plugin for kind, (plugin, _) in self.deliverers.items()}
        if self._recorded is None:
            self._recorded = self.journal.outbox.deliverers()
        return self._recorded

    def pending_by_plugin(self) -> dict[str, int]:
        """Deliveries not yet delivered, per plugin (see _per_plugin)."""
        return {plugin: n for plugin, n in self._per_plugin(DeliveryState.PENDING, self._plugins()).items() if n}

    def pending_per_plugin(self) -> dict[str, int]:
        """Like pending_by_plugin, with every plugin that delivers at 0 when none waits (metrics' series)."""
        plugins = self._plugins()
        counts = dict.fromkeys(sorted(plugins.values()), 0)
        counts.update(self._per_plugin(DeliveryState.PENDING, plugins))
        return counts

    def failed_by_plugin(self) -> dict[str, int]:
        """Deliveries that failed for good, per plugin: every plugin that queued any, or that delivers (loaded
        here, or recorded by the last daemon to start), is there, at 0 when none failed, so
        metrics have the series."""
        plugins = self._plugins()
        counts = dict.fromkeys(sorted(plugins.values()), 0)
        counts.update(self._per_plugin(DeliveryState.FAILED, plugins))
        return counts

    def _per_plugin(self, state: str, plugins: dict[str, str]) -> dict[str, int]:
        """Rows in ``state`` per plugin. A row counts for the plugin that delivers its kind when that is known:
        the row names the step that queued it, which for a review upload is rfwatch's decision step."""
        counts: dict[str, int] = {}
        for kind, queued_by, n in self.journal.outbox.counts(state):
            plugin = plugins.get(kind, queued_by)
            counts[plugin] = counts.get(plugin, 0) + n
        return counts

    def failed(self, kind: str) -> list[dict[str, Any]]:
        """Deliveries of ``kind`` that failed for good, per target (the ``status_lines`` hook reads it)."""
        return self.journal.outbox.failed_targets(kind)

    def gone_targets(self, kind: str) -> list[str]:
        return self.journal.outbox.gone_targets(kind)

    def failing(self, kind: str) -> list[dict[str, Any]]:
        return self.journal.outbox.failing(kind)

    def problems(self) -> list[str]:
        """What ``rfwatch status`` says of targets that need a person, from the outbox alone (no plugin code): a
        target that said 410, one whose deliveries keep failing, deliveries that failed for good. Each query
        reads the few rows pending or failed (an index range), never the delivered ones."""
        outbox = self.journal.outbox
        lines = [f"{redact(url)} is gone (410), nothing more is sent" for url in outbox.gone_targets()]
        for f in outbox.failing():
            lines.append(
                f"{f['kind']}: {redact(f['url'])} failing: {f['n']} waiting, {f['attempts']} attempt(s),"
                f" last error {redact(f['last_error'] or '')}"
            )
        for f in outbox.failed_targets():
            again = "; `rfwatch retry --uploads` sends them again" if f["kind"] == UPLOAD_KIND else ""
            error = redact(f["last_error"] or "")
            lines.append(f"{f['kind']}: {redact(f['url'])} failed for good: {f['n']} (last: {error}){again}")
        return lines

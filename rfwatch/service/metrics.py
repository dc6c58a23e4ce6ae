"""Optional Prometheus metrics (``metrics: {listen: "127.0.0.1:9464"}``, needs prometheus-client)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rfwatch.config import ConfigError

__all__ = ["Metrics", "start_metrics", "OUTCOMES"]

#: The outcomes ``rfwatch_files_total`` counts.
OUTCOMES = ("done", "unmatched", "failed")


class Metrics:
    """No-op unless started; the daemon calls it from its workers."""

    def file_done(self, outcome: str) -> None: ...
    def classified(self, seconds: float) -> None: ...
    def retried(self, *_: Any) -> None: ...
    def stop(self) -> None: ...


class _Deliveries:
    """A gauge per plugin read from the outbox when scraped: ``rfwatch_deliveries_pending{plugin}`` (queued
    webhooks, uploads ... not yet delivered), ``rfwatch_deliveries_failed{plugin}`` (failed for good)."""

    def __init__(self, name: str, documentation: str, counts: Callable[[], dict[str, int]]):
        self.name, self.documentation, self.counts = name, documentation, counts

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, self.documentation, labels=["plugin"])
        for plugin, n in sorted(self.counts().items()):
            family.add_metric([plugin], n)
        yield family


class _Sequences:
    """``rfwatch_sequences_open`` and ``rfwatch_frames_waiting``, read together from the journal when scraped."""

    def __init__(self, read: Callable[[], tuple[int, int]]):
        self.read = read

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        open_, waiting = self.read()
        yield GaugeMetricFamily(
            "rfwatch_sequences_open", "Sequences (bursts) open, their frames waiting to be decided together", open_
        )
        yield GaugeMetricFamily("rfwatch_frames_waiting", "Frames waiting for their sequence to close", waiting)


class _Prometheus(Metrics):
    def __init__(
        self,
        listen: str,
        queue_depth: Callable[[], int],
        pending_deliveries: Callable[[], dict[str, int]],
        failed_deliveries: Callable[[], dict[str, int]],
        review_backlog: Callable[[], int],
        sequences: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ):
        super().__init__()
        import prometheus_client as pc

        host, _, port = listen.rpartition(":")
        self.registry = pc.CollectorRegistry()
        self.files = pc.Counter("rfwatch_files", "Files processed, by outcome", ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:  # every series exists from the start, at 0, so rate() and alerts work at once
            self.files.labels(outcome)
        self.latency = pc.Histogram(
            "rfwatch_classify_seconds",
            "Time to classify one file (API call included)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.retries = pc.Counter(
            "rfwatch_api_retries", "Requests to the API that were retried", registry=self.registry
        )
        self.last_success = pc.Gauge(
            "rfwatch_last_success_timestamp_seconds", "When a file was last done", registry=self.registry
        )
        pc.Gauge("rfwatch_queue_depth", "Files waiting to be processed", registry=self.registry).set_function(
            queue_depth
        )
        pc.Gauge(
            "rfwatch_review_backlog", "Files waiting for a person on the review page", registry=self.registry
        ).set_function(review_backlog)
        # Open sequences and the frames waiting in them (0 with no `sequence:`): a sequence that never closes (a
        # key whose frames keep coming) shows as a number that only grows. One journal read per scrape for both.
        self.registry.register(_Sequences(sequences))
        # Pending and failed: every plugin that delivers (uploads: the review plugin) has its series, at 0.
        self.registry.register(
            _Deliveries(
                "rfwatch_deliveries_pending", "Deliveries (webhooks, uploads) not yet delivered", pending_deliveries
            )
        )
        # Every plugin that delivers has its series from the start, at 0 (Deliveries.failed_by_plugin).
        self.registry.register(
            _Deliveries(
                "rfwatch_deliveries_failed",
                "Deliveries (webhooks, uploads) that failed for good; rfwatch retry --uploads sends uploads again",
                failed_deliveries,
            )
        )
        self.server, self.thread = pc.start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
        )

    def file_done(self, outcome: str) -> None:
        self.files.labels(outcome).inc()
        if outcome == "done":
            self.last_success.set(time.time())

    def classified(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def retried(self, *_: Any) -> None:
        self.retries.inc()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_metrics(
    listen: str | None,
    queue_depth: Callable[[], int],
    pending_deliveries: Callable[[], dict[str, int]],
    failed_deliveries: Callable[[], dict[str, int]] = dict,
    review_backlog: Callable[[], int] = lambda: 0,
    sequences: Callable[[], tuple[int, int]] = lambda: (0, 0),
) -> Metrics:
    if not listen:
        return Metrics()
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f'metrics.listen: expected "host:port" such as "127.0.0.1:9464", got "{listen}"')
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("metrics.listen: needs prometheus-client: pip install 'rfwatch[metrics]'") from None
    try:
        return _Prometheus(listen, queue_depth, pending_deliveries, failed_deliveries, review_backlog, sequences)
    except OSError as exc:
        raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc.strerror or exc}") from None

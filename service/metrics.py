"""Prometheus metrics of one process (API or worker), in its own registry.

A registry per app instance, not the global one, so that several apps (tests, API + in-process
worker) never collide on metric names.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rsir_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rsir_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "rsir_batch_size",
            "Items per forward pass of a batcher.",
            ["batcher"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "rsir_batch_duration_seconds",
            "Time of one batched forward pass (and FAISS search for queries).",
            ["batcher"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "rsir_queue_depth",
            "Requests waiting for a batch.",
            ["batcher"],
            registry=self.registry,
        )
        self.index_size = Gauge(
            "rsir_index_size", "Vectors in the loaded index.", registry=self.registry
        )
        self.jobs = Gauge(
            "rsir_jobs", "Jobs in the DB by status.", ["status"], registry=self.registry
        )

    def batch_observer(self, name: str) -> Callable[[int, float], None]:
        """Callback for `Batcher(on_batch=...)`."""
        size = self.batch_size.labels(name)
        seconds = self.batch_seconds.labels(name)

        def observe(n: int, duration: float) -> None:
            size.observe(n)
            seconds.observe(duration)

        return observe

    def track_queue(self, name: str, depth: Callable[[], int]) -> None:
        """Read a batcher's queue depth at scrape time."""
        self.queue_depth.labels(name).set_function(lambda: float(depth()))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

"""Prometheus metrics, computed at scrape time from the job store in Redis.

The workers and the gateway run in separate processes, so the numbers live in Redis and
every gateway replica reports the same values.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.store import STAGE_BUCKETS, JobStore


class StoreCollector(Collector):
    """Collect ``sats_jobs``, ``sats_queue_depth``, ``sats_workers_alive`` and ``sats_stage_duration_seconds``."""

    def __init__(self, store: JobStore, queue: str) -> None:
        self.store = store
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        jobs = GaugeMetricFamily("sats_jobs", "Jobs in the store by state.", labels=["state"])
        for state, count in self.store.count_by_state().items():
            jobs.add_metric([state], count)
        yield jobs

        depth = int(self.store.redis.llen(self.queue))  # type: ignore[arg-type]
        yield GaugeMetricFamily("sats_queue_depth", "Job messages waiting in the Celery queue.", value=depth)
        yield GaugeMetricFamily(
            "sats_workers_alive", "Workers with a current heartbeat.", value=len(self.store.live_workers())
        )

        histogram = HistogramMetricFamily(
            "sats_stage_duration_seconds", "Duration of each pipeline stage of completed jobs.", labels=["stage"]
        )
        for stage, values in sorted(self.store.stage_seconds().items()):
            buckets = [(str(bound), values.get(str(bound), 0.0)) for bound in STAGE_BUCKETS]
            buckets.append(("+Inf", values.get("count", 0.0)))
            histogram.add_metric([stage], buckets, sum_value=values.get("sum", 0.0))
        yield histogram


def registry_for(store: JobStore, queue: str) -> CollectorRegistry:
    """Return a registry with the store's metrics (a fresh one per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, queue))
    return registry

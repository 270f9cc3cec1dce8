"""Prometheus metrics, one registry per running instance (so tests can run several)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class LatencyReservoir:
    """A bounded uniform sample of latencies, for p50/p99 in a summary table."""

    capacity: int = 50_000
    seen: int = 0
    samples: list[float] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, value: float, count: int = 1) -> None:
        for _ in range(count):
            self.seen += 1
            if len(self.samples) < self.capacity:
                self.samples.append(value)
            else:
                j = self._rng.randrange(self.seen)
                if j < self.capacity:
                    self.samples[j] = value

    def quantile(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "fieldtrack_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.records = Counter(
            "fieldtrack_records",
            "Records received by the gateway by kind and outcome "
            "(accepted, rejected, outside_hours)",
            ["kind", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "fieldtrack_request_seconds",
            "Gateway request handling time (incl. durable write)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_latency = Histogram(
            "fieldtrack_gateway_to_store_seconds",
            "From gateway receive to the derived track points being written to the store",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_rows = Counter(
            "fieldtrack_store_rows",
            "Rows inserted into the store by table",
            ["table"],
            registry=r,
        )
        self.store_errors = Counter(
            "fieldtrack_store_errors", "Failed store inserts by table", ["table"], registry=r
        )
        self.queue_depth = Gauge(
            "fieldtrack_queue_batches", "Device batches waiting for the topology", registry=r
        )
        self.devices = Gauge(
            "fieldtrack_active_devices", "Devices with processor state", registry=r
        )
        self.facts = Counter(
            "fieldtrack_facts", "Facts derived by the topology by kind", ["kind"], registry=r
        )
        self.topology_counters = Counter(
            "fieldtrack_topology_events",
            "Topology counters (duplicate, late, outlier, ...)",
            ["name"],
            registry=r,
        )
        self.latency_sample = LatencyReservoir()

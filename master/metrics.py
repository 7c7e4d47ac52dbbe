"""Prometheus metrics of one master, and the counters its summary reports.

The coordinator, the servicer and the trainer all count into one `Metrics`; it imports nothing of theirs,
so each can hold it typed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    """The metrics of one master, in their own registry (several masters may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.iteration_latency = Histogram("flexgc_iteration_latency_seconds", "task sent -> gradient decoded",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.result_latency = Histogram("flexgc_result_latency_seconds", "task sent -> result arrival",
                                        ["slot", "level"], buckets=_LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("flexgc_decode_seconds", "weighted sum of the decode",
                                        buckets=(1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1), registry=r)
        self.level_used = Counter("flexgc_level_used_total", "decodes by highest level used", ["level"],
                                  registry=r)
        self.iterations = Counter("flexgc_iterations_total", "iterations by outcome", ["outcome"], registry=r)
        self.cancelled_partitions = Counter("flexgc_cancelled_partitions_total",
                                            "partitions assigned but not computed thanks to cancel", registry=r)
        self.bytes = Counter("flexgc_bytes_total", "payload bytes", ["direction"], registry=r)
        self.rejected = Counter("flexgc_rejected_messages_total", "messages rejected with a gRPC status",
                                ["kind"], registry=r)
        self.discarded = Counter("flexgc_discarded_results_total", "stale or duplicate results dropped",
                                 ["kind"], registry=r)
        self.connected = Gauge("flexgc_connected_workers", "workers with a live Work stream", registry=r)
        self.loss = Gauge("flexgc_loss", "mean loss at the current parameters", registry=r)
        self.worker_speed = Gauge("flexgc_worker_chronic_seconds", "--adapt: a worker's chronic per-unit time "
                                  "(seconds it needs for the whole dataset; median of its last 8 iterations)",
                                  ["slot", "worker_id"], registry=r)
        self.plan = Gauge("flexgc_plan", "--adapt: id of the plan (code) in use", registry=r)
        self.plan_switches = Counter("flexgc_plan_switches_total", "--adapt: plan switches", registry=r)
        self.worker_info = Gauge("flexgc_worker_info", "1 for the worker (and its host) that holds a slot now",
                                 ["slot", "worker_id", "host"], registry=r)
        self.straggler_score = Gauge("flexgc_worker_straggler_score", "a worker's straggler score (master/stragglers"
                                     ".py): relative = its median time over the last 50 iterations / the median "
                                     "worker's; individual = its recent time / its own best", ["worker_id", "host",
                                                                                               "score"], registry=r)
        self.worker_straggles = Counter("flexgc_worker_straggles_total", "iterations whose decode did without the "
                                        "worker", ["worker_id", "host"], registry=r)
        self.rejected_by_kind: dict[str, int] = {}  # for summary.json

    def reject(self, kind: str) -> None:
        """Count a message refused with a gRPC status (`kind`: the error class or a short reason)."""
        self.rejected_by_kind[kind] = self.rejected_by_kind.get(kind, 0) + 1
        self.rejected.labels(kind=kind).inc()

    def discard(self, kind: str) -> None:
        """Count a message dropped without a status (stale after a cancel, duplicate after a reconnect)."""
        self.discarded.labels(kind=kind).inc()

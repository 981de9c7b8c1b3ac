"""The server's Prometheus metrics (prometheus-client, text exposition format).

With ``--workers N`` each worker is its own process, so the metrics use prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before the workers start):
``GET /metrics`` on any worker then reports the sum over all of them.
"""

from __future__ import annotations

import os

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # metrics live in a registry of their own, never the library's global one: tests and
        # embedding programs may build several servers in one process
        reg = None if self.multiprocess else CollectorRegistry()
        self.registry = reg
        kw = {"registry": reg}
        self.requests = Counter("hpctrain_requests", "HTTP requests answered, by path and status code",
                                ["path", "code"], **kw)
        self.errors = Counter("hpctrain_request_errors", "HTTP requests answered with a 4xx or 5xx, by status code",
                              ["code"], **kw)
        self.latency = Histogram("hpctrain_predict_latency_seconds", "time from receiving a /predict request to "
                                 "answering it", buckets=LATENCY_BUCKETS, **kw)
        self.batch = Histogram("hpctrain_batch_size", "rows per forward pass (dynamic micro-batching)",
                               buckets=BATCH_BUCKETS, **kw)
        gauge_kw = dict(kw, multiprocess_mode="livesum") if self.multiprocess else kw
        self.queue = Gauge("hpctrain_queue_depth", "rows waiting for a forward pass", **gauge_kw)
        self.reloads = Counter("hpctrain_model_reloads", "new artifacts swapped in by --watch", ["result"], **kw)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Service metrics (Prometheus): definitions, the gauges read from the serving set, and rendering."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REQUESTS = Counter("m5_http_requests", "HTTP requests by route, method and status.", ["route", "method", "status"])
REQUESTS_BY_KEY = Counter("m5_http_requests_by_key", "HTTP requests by API key name (never the key) and status.", ["key", "status"])
DURATION = Histogram("m5_http_request_duration_seconds", "Server-side handling time per route.", ["route", "method"], buckets=BUCKETS)
IN_FLIGHT = Gauge("m5_http_requests_in_flight", "Requests in progress.", multiprocess_mode="livesum")
CACHE_HITS = Counter("m5_query_cache_hits", "Query embeddings served from the LRU cache.")
CACHE_MISSES = Counter("m5_query_cache_misses", "Query embeddings computed by the query tower.")
INDEX_SIZE = Gauge("m5_index_size", "Vectors in the ANN index.", multiprocess_mode="max")
FEED_LAG = Gauge("m5_feed_lag_messages", "Feed messages the index has not applied yet.", multiprocess_mode="max")
BUNDLE_INFO = Gauge("m5_bundle_info", "Bundle of the query tower.", ["version"], multiprocess_mode="max")
INDEX_INFO = Gauge("m5_index_info", "ANN index kind and the bundle of its vectors.", ["version", "kind"], multiprocess_mode="max")
QUEUE_WAIT = Histogram(
    "m5_http_queue_wait_seconds", "Time from a request's first bytes being parsed to its handling starting (event-loop queueing).", buckets=BUCKETS
)
STAGE = Histogram("m5_stage_duration_seconds", "Time per stage: tokenize+encode, search, store.", ["stage"], buckets=BUCKETS)


def render_metrics() -> bytes:
    """One worker's registry, or every worker's when running under PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return generate_latest(reg)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


def observe_serving(g) -> None:
    """Gauges read from a serving set (`service.serving.Serving`) at scrape time."""
    INDEX_SIZE.set(len(g.index))
    FEED_LAG.set(g.follower.last_lag)
    INDEX_INFO.labels(g.index.version, g.index.kind).set(1)

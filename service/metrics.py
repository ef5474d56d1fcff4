"""Service metrics and the one ASGI middleware that measures, limits and authenticates every request.

A pure ASGI middleware (not BaseHTTPMiddleware) costs a few microseconds per request.
"""

from __future__ import annotations

import os
import secrets
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REQUESTS = Counter("m5_http_requests", "HTTP requests by route, method and status.", ["route", "method", "status"])
DURATION = Histogram("m5_http_request_duration_seconds", "Server-side handling time per route.", ["route", "method"], buckets=BUCKETS)
IN_FLIGHT = Gauge("m5_http_requests_in_flight", "Requests in progress.", multiprocess_mode="livesum")
CACHE_HITS = Counter("m5_query_cache_hits", "Query embeddings served from the LRU cache.")
CACHE_MISSES = Counter("m5_query_cache_misses", "Query embeddings computed by the query tower.")
INDEX_SIZE = Gauge("m5_index_size", "Vectors in the ANN index.", multiprocess_mode="max")
FEED_LAG = Gauge("m5_feed_lag_messages", "Feed messages the index has not applied yet.", multiprocess_mode="max")
BUNDLE_INFO = Gauge("m5_bundle_info", "Bundle of the query tower.", ["version"], multiprocess_mode="max")
INDEX_INFO = Gauge("m5_index_info", "ANN index kind and the bundle of its vectors.", ["version", "kind"], multiprocess_mode="max")
STAGE = Histogram("m5_stage_duration_seconds", "Time per stage: tokenize+encode, search, store.", ["stage"], buckets=BUCKETS)

OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


def render_metrics() -> bytes:
    """One worker's registry, or every worker's when running under PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return generate_latest(reg)
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY)


async def _send_json(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class ServiceMiddleware:
    def __init__(self, app, max_in_flight: int, max_body_bytes: int, api_key: str | None):
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body = max_body_bytes
        self.api_key = api_key.encode() if api_key else None
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        method = scope["method"]
        status = [500]

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        if self.in_flight >= self.max_in_flight:
            REQUESTS.labels("overload", method, "503").inc()
            return await _send_json(send, 503, b'{"detail":"over capacity, retry shortly"}', [(b"retry-after", b"1")])
        if self.api_key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            REQUESTS.labels("unauthorized", method, "401").inc()
            return await _send_json(send, 401, b'{"detail":"missing or wrong API key (X-API-Key or Authorization: Bearer)"}',
                                    [(b"www-authenticate", b"Bearer")])
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            REQUESTS.labels("too_large", method, "413").inc()
            return await _send_json(send, 413, b'{"detail":"request body over the size limit"}')
        receive = self._limited(receive)
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except _TooLarge:
            status[0] = 413
            await _send_json(send, 413, b'{"detail":"request body over the size limit"}')
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            DURATION.labels(name, method).observe(time.perf_counter() - t0)
            REQUESTS.labels(name, method, str(status[0])).inc()

    def _authorized(self, scope) -> bool:
        for k, v in scope["headers"]:
            if k == b"x-api-key" and secrets.compare_digest(v, self.api_key):
                return True
            if k == b"authorization" and v.startswith(b"Bearer ") and secrets.compare_digest(v[7:], self.api_key):
                return True
        return False

    def _limited(self, receive):
        """Chunked bodies have no content-length: count as they arrive."""
        seen = [0]

        async def wrapped():
            msg = await receive()
            if msg["type"] == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > self.max_body:
                    raise _TooLarge()
            return msg

        return wrapped


class _TooLarge(Exception):
    pass

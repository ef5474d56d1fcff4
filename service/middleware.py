"""The one ASGI middleware around every request: in-flight limit, API key, body size limit, and its metrics.

A pure ASGI middleware (not BaseHTTPMiddleware) costs a few microseconds per request.
"""

from __future__ import annotations

import secrets
import time

from service.metrics import DURATION, IN_FLIGHT, REQUESTS

OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


async def _send_json(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
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
            return await _send_json(
                send, 401, b'{"detail":"missing or wrong API key (X-API-Key or Authorization: Bearer)"}', [(b"www-authenticate", b"Bearer")]
            )
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

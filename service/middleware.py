"""The one ASGI middleware around every request: in-flight limit, API key and its scope and rate limit, body size and
read-time limits, and its metrics.

A pure ASGI middleware (not BaseHTTPMiddleware) costs a few microseconds per request.
"""

from __future__ import annotations

import asyncio
import math
import time

from service.arrival import RECEIVED
from service.auth import KeyRing, scope_of
from service.metrics import DURATION, IN_FLIGHT, QUEUE_WAIT, REQUESTS, REQUESTS_BY_KEY
from service.settings import ServiceSettings

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


RETRY_1 = [(b"retry-after", b"1")]
UNAUTHORIZED = b'{"detail":"missing or wrong API key (X-API-Key or Authorization: Bearer)"}'


def _presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for k, v in headers:
        if k == b"x-api-key":
            return v
        if k == b"authorization" and v.startswith(b"Bearer "):
            return v[7:]
    return None


class ServiceMiddleware:
    def __init__(self, app, settings: ServiceSettings, keys: KeyRing):
        self.app = app
        self.shed_wait_s = settings.shed_wait_ms / 1000.0
        self.body_timeout_s = settings.body_timeout_s
        self.max_in_flight = settings.max_in_flight
        self.max_body = settings.max_body_bytes
        self.keys = keys
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        method = scope["method"]
        status = [500]
        verdict: list = [None]  # set by the body reader: (status, body) to answer instead of whatever the app makes of it

        async def send_wrapper(msg):
            if verdict[0] is not None:  # the app saw a broken body (FastAPI turns any read error into a 4xx of its own)
                if msg["type"] == "http.response.start":
                    status[0] = verdict[0][0]
                    await _send_json(send, *verdict[0])
                return
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        received = scope.get(RECEIVED)
        if received is not None:
            waited = t0 - received
            QUEUE_WAIT.observe(waited)
            if self.shed_wait_s and waited > self.shed_wait_s and scope["path"] not in OPEN_PATHS:
                REQUESTS.labels("shed", method, "503").inc()
                return await _send_json(send, 503, b'{"detail":"overloaded: request queued past its budget, retry shortly"}', RETRY_1)
        if self.in_flight >= self.max_in_flight:
            REQUESTS.labels("overload", method, "503").inc()
            return await _send_json(send, 503, b'{"detail":"over capacity, retry shortly"}', RETRY_1)
        key_name = None
        if self.keys.enabled and scope["path"] not in OPEN_PATHS:
            refused = self._admit(scope)
            if isinstance(refused, tuple):
                return await self._refuse(send, method, *refused)
            key_name = refused
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            REQUESTS.labels("too_large", method, "413").inc()
            return await _send_json(send, 413, b'{"detail":"request body over the size limit"}')
        receive = self._limited(receive, t0, verdict)
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except _BodyRefused:  # raised past the app: answer here
            status[0] = verdict[0][0]
            await _send_json(send, *verdict[0])
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            DURATION.labels(name, method).observe(time.perf_counter() - t0)
            REQUESTS.labels(name, method, str(status[0])).inc()
            if key_name is not None:
                REQUESTS_BY_KEY.labels(key_name, str(status[0])).inc()

    def _admit(self, scope) -> str | tuple:
        """The key's name when the request may go on, else (status, reason, key name or None, body, headers)."""
        now = time.monotonic()
        self.keys.refresh(now)
        presented = _presented_key(scope["headers"])
        key = self.keys.lookup(presented) if presented else None
        if key is None:
            return 401, "unauthorized", None, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")]
        needed = scope_of(scope["path"])
        if needed not in key.scopes:
            return 403, "forbidden", key.name, f'{{"detail":"key {key.name} lacks the {needed} scope"}}'.encode(), []
        wait = self.keys.buckets[key.name].take(now)
        if wait > 0:
            body = f'{{"detail":"rate limit of key {key.name} reached, retry in {wait:.3f} s"}}'.encode()
            return 429, "rate_limited", key.name, body, [(b"retry-after", str(max(1, math.ceil(wait))).encode())]
        return key.name

    async def _refuse(self, send, method: str, status: int, reason: str, key_name: str | None, body: bytes, headers: list) -> None:
        REQUESTS.labels(reason, method, str(status)).inc()
        if key_name is not None:
            REQUESTS_BY_KEY.labels(key_name, str(status)).inc()
        await _send_json(send, status, body, headers)

    def _limited(self, receive, t0: float, verdict: list):
        """Chunked bodies have no content-length: count as they arrive. A body must arrive whole within
        `body_timeout_s` of the request's start: a slow client (or a slowloris) gets 408 instead of holding a
        connection and an in-flight slot. After the body, receive() is the app's wait for a disconnect: untimed."""
        seen, done = [0], [False]

        async def wrapped():
            if done[0]:
                return await receive()
            try:
                async with asyncio.timeout(max(0.0, t0 + self.body_timeout_s - time.perf_counter())):
                    msg = await receive()
            except TimeoutError:
                verdict[0] = (408, b'{"detail":"request body not received in time"}', [(b"connection", b"close")])
                raise _BodyRefused() from None
            if msg["type"] == "http.request":
                seen[0] += len(msg.get("body", b""))
                if seen[0] > self.max_body:
                    verdict[0] = (413, b'{"detail":"request body over the size limit"}')
                    raise _BodyRefused()
                done[0] = not msg.get("more_body", False)
            return msg

        return wrapped


class _BodyRefused(Exception):
    """The body broke a limit; `verdict` says how to answer."""

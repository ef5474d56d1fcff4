"""uvicorn's httptools protocol, stamping each request with the moment its first bytes were parsed.

A request's queueing delay (parsed, then waiting for the event loop to reach its task) is invisible to
the app: an overloaded worker serves every request late without knowing it. With the stamp,
`ServiceMiddleware` measures the wait and sheds a request that waited past `shed_wait_ms` with an
immediate 503, so the requests it does serve stay fast and the backlog drains in seconds. `m5 serve`
runs uvicorn with this protocol; under another server no stamp arrives and nothing is shed.
"""

from __future__ import annotations

import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVED = "m5.received"
"""Scope key: time.perf_counter() when the request's first bytes were parsed."""


class StampedHttpToolsProtocol(HttpToolsProtocol):
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[RECEIVED] = time.perf_counter()  # type: ignore[typeddict-unknown-key]

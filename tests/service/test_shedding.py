"""Shedding by queueing delay: a request that waited past `shed_wait_ms` for the event loop gets 503 at once;
uvicorn under `m5 serve` stamps each request's arrival so the wait can be measured."""

import asyncio
import socket
import threading
import time

import httpx
import uvicorn

from service.arrival import RECEIVED, StampedHttpToolsProtocol


def queued_for(app, seconds: float):
    """The app as a server would call it after the request sat `seconds` in the event loop's queue."""

    async def shim(scope, receive, send):
        if scope["type"] == "http":
            scope[RECEIVED] = time.perf_counter() - seconds
        await app(scope, receive, send)

    return shim


async def test_a_request_queued_past_the_budget_is_shed(api):
    h = await api(shed_wait_ms=5.0)
    late = httpx.AsyncClient(transport=httpx.ASGITransport(app=queued_for(h.app, 0.020)), base_url="http://t")
    on_time = httpx.AsyncClient(transport=httpx.ASGITransport(app=queued_for(h.app, 0.001)), base_url="http://t")
    try:
        r = await late.post("/search", json={"query": "running shoes", "k": 2})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "queued past its budget" in r.json()["detail"]
        assert (await late.get("/healthz")).status_code == 200  # probes are never shed
        assert (await on_time.post("/search", json={"query": "running shoes", "k": 2})).status_code == 200
        text = (await on_time.get("/metrics")).text
        assert 'm5_http_requests_total{method="POST",route="shed",status="503"} 1.0' in text
        assert "m5_http_queue_wait_seconds_count" in text
    finally:
        await late.aclose()
        await on_time.aclose()


async def test_without_a_budget_nothing_is_shed(api):
    h = await api()
    late = httpx.AsyncClient(transport=httpx.ASGITransport(app=queued_for(h.app, 1.0)), base_url="http://t")
    try:
        assert (await late.post("/search", json={"query": "running shoes", "k": 2})).status_code == 200
    finally:
        await late.aclose()


def test_uvicorn_with_the_stamped_protocol_gives_each_request_its_arrival():
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(time.perf_counter() - scope[RECEIVED])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=StampedHttpToolsProtocol, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not server.started and time.time() < deadline:
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            assert [c.get("/").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert len(seen) == 3
    assert all(0 <= w < 1.0 for w in seen)

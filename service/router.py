"""`m5 router`: one address in front of service shards (docs/service.md, "Shards").

A shard (`m5 serve --shard-partitions 0-3`) indexes the products of some `catalog.embeddings` partitions. The router
sends each search to one replica of every shard at once, waits until its deadline, merges the hits by score and
says which shards did not answer: a partial result, not a failure. A product's GET goes to the shard of its
partition; the other routes go to any shard. Hits are merged, not re-ranked: the shards score with one bundle, so
their scores compare (a shard on another bundle, mid-switch, is left out of the merge and named).

A plain ASGI app: it parses only what it merges and passes bodies and credentials through as they came, and talks
to the shards over pooled keep-alive HTTP/1.1 connections (asyncio streams, httptools parsing the answers: aiohttp's
client cost 0.26 ms a request more than that, most of the hop), so the hop costs little more than one round trip.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import httptools
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PCounter
from pydantic import Field, field_validator

from m5core.settings import M5Settings
from m5core.shards import format_partitions, parse_partitions, partition_of

FORWARDED = (b"content-type", b"x-api-key", b"authorization", b"accept")
"""Request headers passed to a shard (credentials included: the shards check keys, the router holds none)."""

FANOUT = {
    ("POST", "/search"): ("hits", False),
    ("POST", "/search/batch"): ("hits", True),
    ("POST", "/duplicates"): ("duplicates", True),
}
"""Routes every shard answers for its part: the hits list each answer carries, and whether it is a batch."""
_DUPLICATES = re.compile(r"^/asin/([^/]+)/duplicates$")
_PRODUCT = re.compile(r"^/asin/([^/]+)(/.*)?$")


class RouterSettings(M5Settings):
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(default=8080, ge=0, le=65_535)
    """HTTP port."""
    workers: int = Field(default=1, ge=1, le=64)
    """uvicorn worker processes."""
    shards: str = ""
    """The shards, space-separated, each `PARTITIONS=URL[,URL...]` (its feed partitions and its replicas), e.g.
    `0-2=http://10.0.0.1:8000,http://10.0.0.2:8000 3-5=http://10.0.0.3:8000`. Every partition of the feed must
    belong to exactly one shard."""
    deadline_ms: float = Field(default=50.0, gt=0)
    """How long a request waits for the shards; those that have not answered by then are named in a partial result."""
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Larger request bodies get 413."""

    @field_validator("shards")
    @classmethod
    def _shards_shape(cls, v: str) -> str:
        if v.strip():
            parse_shards(v)
        return v.strip()


@dataclass
class Shard:
    partitions: frozenset[int]
    replicas: list[str]
    _turn: itertools.cycle = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(range(len(self.replicas)))

    @property
    def name(self) -> str:
        return format_partitions(self.partitions)

    def order(self) -> list[str]:
        """Its replicas, starting with the next one in turn (round robin; the rest are the fall-backs)."""
        i = next(self._turn)
        return self.replicas[i:] + self.replicas[:i]


def parse_shards(spec: str) -> list[Shard]:
    """`0-2=http://a,http://b 3-5=http://c` -> shards; a ValueError naming what is wrong (a partition served twice or
    by no shard, a replica that is not an http(s) URL)."""
    shards, seen = [], {}
    for item in spec.replace(";", " ").split():
        parts, sep, urls = item.partition("=")
        if not sep or not urls:
            raise ValueError(f"shards: {item!r} is not PARTITIONS=URL[,URL...], e.g. 0-2=http://127.0.0.1:8001")
        ps = parse_partitions(parts, "shards")
        replicas = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        for u in replicas:
            if not re.match(r"^https?://[^/\s]+$", u):
                raise ValueError(f"shards: replica {u!r} is not an http(s)://host:port URL")
        for p in ps:
            if p in seen:
                raise ValueError(f"shards: partition {p} belongs to two shards ({seen[p]} and {parts})")
            seen[p] = parts
        shards.append(Shard(ps, replicas))
    if not shards:
        raise ValueError("shards: no shard given (PARTITIONS=URL[,URL...], space-separated)")
    if missing := sorted(set(range(max(seen) + 1)) - set(seen)):
        raise ValueError(f"shards: partitions {format_partitions(set(missing))} belong to no shard (every feed partition needs one)")
    return shards


class UpstreamClosed(ConnectionError):
    """The replica closed the connection before answering (a pooled connection it had timed out)."""


class _Response:
    """httptools callbacks: one HTTP response's headers and body."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done = self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # read here: the parser starts afresh once the message completes

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").title()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class Upstream:
    """Keep-alive HTTP/1.1 connections to one replica: idle ones are reused, one per request in flight."""

    def __init__(self, url: str):
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.idle = host, int(port or 80), []

    async def request(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        raw = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1") + body
        while self.idle:  # a pooled connection the replica closed meanwhile fails before any answer: try the next
            try:
                return await self._exchange(self.idle.pop(), raw)
            except UpstreamClosed:
                continue
        return await self._exchange(await asyncio.open_connection(self.host, self.port), raw)

    async def _exchange(self, conn, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = conn
        res = _Response()
        parser = res.parser
        try:
            writer.write(raw)
            first = True
            while not res.done:
                data = await reader.read(65536)
                if not data:
                    raise UpstreamClosed("closed before answering") if first else ConnectionError("closed mid-answer")
                first = False
                parser.feed_data(data)
        except BaseException:  # a cancelled (deadline) or failed exchange leaves the connection in an unknown state
            writer.close()
            raise
        if res.keep_alive:
            self.idle.append(conn)
        else:
            writer.close()
        return parser.get_status_code(), res.headers, b"".join(res.body)

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Answer:
    """One shard's part of a request: `status` is the HTTP status, or None when it did not answer (`outcome` says why)."""

    shard: Shard
    status: int | None = None
    body: bytes = b""
    replica: str | None = None
    outcome: str = "timeout"
    took_ms: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


def top_hits(docs: list[dict], key: str, k: int) -> list[dict]:
    """The k best-scored hits of all the shards' lists (each already in score order)."""
    return heapq.nlargest(k, itertools.chain.from_iterable(d.get(key) or [] for d in docs), key=lambda h: h["score"])


def merge_one(docs: list[dict], key: str) -> dict:
    """Shards' answers to one search (or one product's duplicates) -> one answer over the whole catalog."""
    out = dict(docs[0])
    out[key] = top_hits(docs, key, int(out.get("k") or 10))
    if "index_size" in out:
        out["index_size"] = sum(int(d.get("index_size") or 0) for d in docs)
    return out


def merge_batch(docs: list[dict], key: str) -> dict:
    """Shards' answers to a batch: each item merged from the shards that found a result for it; an item no shard
    answered keeps the first shard's error (the shards read one store, so they agree on an unknown ASIN)."""
    out = dict(docs[0])
    items = []
    for per_shard in zip(*(d["results"] for d in docs)):
        found = [it["result"] for it in per_shard if it.get("result") is not None]
        items.append({**per_shard[0], "result": merge_one(found, key), "error": None} if found else per_shard[0])
    out["results"] = items
    return out


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        buckets = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
        self.latency = Histogram(
            "m5_router_request_seconds", "Router requests by route and status", ["route", "status"], buckets=buckets, registry=self.registry
        )
        self.shard = PCounter(
            "m5_router_shard_answers_total", "Shards' parts of fanned-out requests by outcome", ["shard", "outcome"], registry=self.registry
        )
        self.partial = PCounter("m5_router_partial_total", "Merged answers that lacked at least one shard", ["route"], registry=self.registry)


class Router:
    """The ASGI app. `shards` from `RouterSettings.shards`; each worker keeps its own pooled connections to every replica."""

    def __init__(self, s: RouterSettings):
        self.settings = s
        self.shards = parse_shards(s.shards)
        self.partitions = 1 + max(p for sh in self.shards for p in sh.partitions)
        self.owner = {p: sh for sh in self.shards for p in sh.partitions}
        self.any_shard = itertools.cycle(self.shards)
        self.metrics = Metrics()
        self.upstreams = {u: Upstream(u) for sh in self.shards for u in sh.replicas}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            t0 = time.perf_counter()
            route, status = await self._http(scope, receive, send)
            self.metrics.latency.labels(route, str(status)).observe(time.perf_counter() - t0)

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                for up in self.upstreams.values():
                    up.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, receive, send) -> tuple[str, int]:
        t0 = time.perf_counter()
        method, path, query = scope["method"], scope["path"], scope.get("query_string", b"")
        body = await read_body(receive, self.settings.max_body_bytes)
        if body is None:
            return "other", await respond(send, 413, {"detail": f"request body over {self.settings.max_body_bytes} bytes"})
        if method == "GET" and path == "/healthz":
            return "/healthz", await respond(send, 200, {"status": "ok"})
        if method == "GET" and path == "/readyz":
            return "/readyz", await self._readyz(send)
        if method == "GET" and path == "/metrics":
            return "/metrics", await respond(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in FORWARDED}
        target = path + ("?" + query.decode() if query else "")
        if (method, path) in FANOUT:
            key, batch = FANOUT[(method, path)]
            return path, await self._fanout(send, path, method, target, body, headers, key, batch, t0)
        if method == "GET" and _DUPLICATES.match(path):
            route = "/asin/{asin}/duplicates"
            return route, await self._fanout(send, route, method, target, body, headers, "duplicates", False, t0)
        m = _PRODUCT.match(path)
        shard = self.owner[partition_of(m[1], self.partitions)] if method == "GET" and m else next(self.any_shard)
        ans = await self._ask(shard, method, target, body, headers)
        if ans.status is None:
            return "proxy", await respond(send, 503, {"detail": f"shard {shard.name} did not answer ({ans.outcome})"}, retry_after=True)
        return "proxy", await respond(send, ans.status, ans.body, ans.headers.get("Content-Type", "application/json"), ans.headers)

    async def _ask(self, shard: Shard, method: str, target: str, body: bytes, headers: dict) -> Answer:
        """One shard's answer from the first replica that answers (an unreachable one passes to the next)."""
        ans = Answer(shard)
        for url in shard.order():
            t0 = time.perf_counter()
            try:
                status, got, ans.body = await self.upstreams[url].request(method, target, body, headers)
            except OSError as exc:
                ans.outcome = f"unreachable ({type(exc).__name__})"
                continue
            ans.status, ans.replica, ans.outcome = status, url, "ok" if status < 400 else f"http {status}"
            ans.headers = {h: got[h] for h in ("Content-Type", "X-M5-Bundle-Version", "Retry-After") if h in got}
            ans.took_ms = round((time.perf_counter() - t0) * 1000, 3)
            return ans
        return ans

    async def _fanout(self, send, route: str, method: str, target: str, body: bytes, headers: dict, key: str, batch: bool, t0: float) -> int:
        tasks = {asyncio.create_task(self._ask(sh, method, target, body, headers)): sh for sh in self.shards}
        done, pending = await asyncio.wait(tasks, timeout=self.settings.deadline_ms / 1000)
        for t in pending:
            t.cancel()
        answers = [t.result() if t in done else Answer(tasks[t]) for t in tasks]
        for a in answers:
            self.metrics.shard.labels(a.shard.name, a.outcome.split(" ")[0]).inc()
        client_error = next((a for a in answers if a.status is not None and 400 <= a.status < 500), None)
        if client_error is not None:  # the request itself is wrong: every shard would say so
            ctype = client_error.headers.get("Content-Type", "application/json")
            return await respond(send, client_error.status, client_error.body, ctype, client_error.headers)  # a 429's Retry-After too
        ok = [a for a in answers if a.status == 200]
        docs = [orjson.loads(a.body) for a in ok]
        # Mid-switch, shards may answer from two bundles whose scores do not compare: merge the larger group.
        versions = Counter(d.get("bundle_version") for d in docs)
        keep = versions.most_common(1)[0][0] if docs else None
        for a, d in zip(ok, docs):
            if d.get("bundle_version") != keep:
                a.outcome = f"other bundle ({d.get('bundle_version')})"
        merged = [d for d in docs if d.get("bundle_version") == keep]
        report = [{"partitions": a.shard.name, "replica": a.replica, "outcome": a.outcome, "took_ms": a.took_ms} for a in answers]
        if not merged:
            why = "no shard answered within the deadline" if all(a.status is None for a in answers) else "no shard could answer"
            return await respond(send, 503, {"detail": f"{why} ({self.settings.deadline_ms:g} ms)", "shards": report}, retry_after=True)
        out = merge_batch(merged, key) if batch else merge_one(merged, key)
        out["partial"] = len(merged) < len(self.shards)
        out["shards"] = report
        out["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)  # the router's, the shards' own in `shards`
        if out["partial"]:
            self.metrics.partial.labels(route).inc()
        return await respond(send, 200, out, extra={"X-M5-Bundle-Version": keep or ""})

    async def _readyz(self, send) -> int:
        """Ready when every shard has a ready replica (each replica's /readyz, within the deadline) and the shards follow
        a feed of as many partitions as `--shards` covers (more would leave products to no shard, and a GET's
        partition would be computed wrong)."""

        async def ready(url: str) -> dict | None:
            wait = max(1.0, self.settings.deadline_ms / 1000)
            try:
                status, _, body = await asyncio.wait_for(self.upstreams[url].request("GET", "/readyz", b"", {}), wait)
                return orjson.loads(body) if status == 200 else None
            except (OSError, TimeoutError, orjson.JSONDecodeError):
                return None

        urls = [(sh, u) for sh in self.shards for u in sh.replicas]
        docs = await asyncio.gather(*(ready(u) for _, u in urls))
        shards = {sh.name: [u for (s2, u), d in zip(urls, docs) if s2 is sh and d is not None] for sh in self.shards}
        reasons = [f"shard {name}: no ready replica" for name, up in shards.items() if not up]
        feeds = sorted({d["feed_partitions"] for d in docs if d is not None and d.get("feed_partitions")})
        if feeds and feeds != [self.partitions]:
            reasons.append(f"the shards follow a feed of {', '.join(map(str, feeds))} partitions; --shards covers {self.partitions}")
        doc = {"ready": not reasons, "reasons": reasons, "shards": shards, "partitions": self.partitions}
        return await respond(send, 200 if not reasons else 503, doc)


async def read_body(receive, limit: int) -> bytes | None:
    """The request body, or None when it is over `limit` bytes."""
    chunks, size = [], 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


async def respond(send, status: int, body, content_type: str = "application/json", extra: dict | None = None, retry_after: bool = False) -> int:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]
    for k, v in (extra or {}).items():
        if k.lower() not in ("content-type", "content-length"):
            headers.append((k.lower().encode(), str(v).encode()))
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
    return status


def app_factory() -> Router:
    """uvicorn's factory: each worker builds its router from the M5_* environment (`m5 router` exports its flags)."""
    return Router(RouterSettings())

"""The HTTP API: embeddings by ASIN, query embeddings, kNN search, health and metrics.

Handlers return pre-serialised orjson bytes: FastAPI's default encoder costs ~270 us for a list of
256 floats, orjson ~10 us. Store lookups are one Redis round trip on the event loop (no
thread-pool hop); the ANN index lives in process and follows the indexer's feed.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Literal

import numpy as np
import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from m5core.bundle import load_manifest
from m5core.encoder import Encoder, OnnxEncoder
from m5core.events import open_source
from m5core.feed import FeedFollower
from m5core.index import AnnIndex
from m5core.schema import ASIN_PATTERN
from m5core.stores import active_namespace, active_pointer, open_store
from m5core.stores.base import EmbeddingStore, quantize_int8
from service import metrics as M
from service.schemas import (
    AsinBatchRequest,
    AsinBatchResponse,
    EmbeddingResponse,
    Problem,
    QueryEmbedRequest,
    QueryEmbedResponse,
    SearchRequest,
    SearchResponse,
)
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
JSON = "application/json"
OCTET = "application/octet-stream"


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers or {}


@dataclass
class Serving:
    """What one bundle serves: its query tower, its namespace's store, the index of its vectors and the
    feed follower that keeps that index current. A model switch builds a new one beside it and swaps
    one reference, so a request sees either the old set or the new one, never a mix."""

    namespace: str
    encoder: Encoder
    store: EmbeddingStore
    index: AnnIndex
    follower: FeedFollower | None = None
    source: object = None
    owns_store: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    cache: OrderedDict = field(default_factory=OrderedDict)
    lookup: object = None  # asin -> record, set from the store in __post_init__

    def __post_init__(self) -> None:
        self.lookup = _point_lookup(self.store)

    def mismatch(self, encoder: Encoder | None = None) -> str | None:
        """A query tower from another bundle than the indexed vectors gives meaningless neighbours."""
        enc = encoder or self.encoder
        held = set(self.follower.bundle_versions) if self.follower else set()
        if self.index.version:
            held.add(self.index.version)
        other = sorted(v for v in held if v != enc.version)
        if other:
            return f"indexed vectors come from bundle(s) {other}, the query tower is {enc.version}"
        return None

    def start(self) -> None:
        if self.source is not None and self.follower is not None:
            self.thread = threading.Thread(target=self.follower.run, args=(self.stop,), name="feed-follower", daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=5)
        if self.source is not None:
            self.source.close()
        if self.owns_store:
            self.store.close()


def build_serving(s: ServiceSettings, namespace: str, encoder: Encoder, *, store: EmbeddingStore | None = None,
                  index: AnnIndex | None = None, feed_source=None, follow_feed: bool = True) -> Serving:
    """Load a serving set: the index starts from the newest snapshot of this bundle, else a store scan,
    and then follows the feed (records of other bundles on the feed are skipped)."""
    st = store or open_store(s, namespace)
    idx = index if index is not None else AnnIndex(encoder.dim, s.index_kind, encoder.version)
    source = feed_source if feed_source is not None else (open_source(s, [s.embeddings_topic], None) if follow_feed else None)
    follower = FeedFollower(source if source is not None else _NoFeed(), idx, st, log, snapshot_dir=s.snapshot_dir,
                            bundle_version=encoder.version)
    if index is None:
        follower.bootstrap()
        idx = follower.index  # the snapshot's index when one was loaded
    return Serving(namespace, encoder, st, idx, follower, source, owns_store=store is None)


def bundle_dir_for(bundles_dir: FsPath, version: str) -> FsPath:
    """The bundle directory holding `version` (bundles are `<bundles_dir>/<version>/`, as export writes them)."""
    for cand in [bundles_dir / version, *sorted(p for p in bundles_dir.iterdir() if p.is_dir())]:
        try:
            if orjson.loads((cand / "manifest.json").read_bytes()).get("version") == version:
                return cand
        except (OSError, ValueError):
            continue
    raise FileNotFoundError(f"no bundle {version} under {bundles_dir}")


def namespace_bundle(store: EmbeddingStore) -> str | None:
    """The bundle version of a namespace's vectors: a re-embed fills one namespace per bundle.
    (Batches of 1,000: a Redis SCAN with COUNT 1 would walk a large keyspace one bucket per round trip.)"""
    return next((rec.bundle_version for rec in store.scan(1000)), None)


@dataclass
class State:
    settings: ServiceSettings
    serving: Serving
    started: float = field(default_factory=time.time)
    load_tower: object = None  # bundle version -> query tower, for model switches

    # The current serving set's parts; a request that uses several reads `state.serving` once instead.
    encoder = property(lambda self: self.serving.encoder)
    store = property(lambda self: self.serving.store)
    index = property(lambda self: self.serving.index)
    follower = property(lambda self: self.serving.follower)
    lookup = property(lambda self: self.serving.lookup)

    def swap_encoder(self, encoder: Encoder) -> None:
        """New query tower of the same namespace: one reference assignment, so in-flight requests keep the old one."""
        self.serving.cache = OrderedDict()
        self.serving.encoder = encoder
        M.BUNDLE_INFO.labels(encoder.version).set(1)

    def swap_index(self, index: AnnIndex) -> None:
        """New index (rebuild, new snapshot): the follower applies the feed to it from now on."""
        if self.serving.follower is not None:
            self.serving.follower.index = index
        self.serving.index = index

    def mismatch(self, encoder: Encoder | None = None) -> str | None:
        return self.serving.mismatch(encoder)

    def follow_model(self, namespace: str) -> bool:
        """Switch to `namespace` if the active-namespace pointer moved there (`m5 index reembed` / `rollback`).

        The new set (its bundle's query tower, store, index from a scan, feed follower) is built while
        the old one serves; then one reference swap, and the old one is closed. -> switched.
        """
        if namespace == self.serving.namespace:
            return False
        s = self.settings
        probe = open_store(s, namespace)
        try:
            version = namespace_bundle(probe)
        finally:
            probe.close()
        if version is None:
            log.warning("active namespace %s holds no vectors yet; still serving %s", namespace, self.serving.namespace)
            return False
        encoder = self.load_tower(version)
        new = build_serving(s, namespace, encoder)
        if (msg := new.mismatch()) is not None:
            new.close()
            raise RuntimeError(f"namespace {namespace}: {msg}")
        new.start()
        old, self.serving = self.serving, new
        M.BUNDLE_INFO.labels(old.encoder.version).set(0)
        M.BUNDLE_INFO.labels(encoder.version).set(1)
        log.info("model switch: %s (%s) -> %s (%s), %d vectors", old.namespace, old.encoder.version, namespace,
                 encoder.version, len(new.index))
        old.close()
        gc.unfreeze()  # the startup freeze (lifespan) holds the old set too: let the collector free it, then freeze again
        gc.collect()
        gc.freeze()
        return True

    def watch_model(self, stop: threading.Event) -> None:
        """Thread body: poll the active-namespace pointer (one store read) every `model_poll_s`."""
        pointer = active_pointer(self.settings)[0]
        while not stop.wait(self.settings.model_poll_s):
            try:  # the pointer lives outside any namespace: read it over the current store's connection
                self.follow_model(self.serving.store.get_pointer(pointer) or self.settings.namespace)
            except Exception:  # noqa: BLE001 - keep serving the current model; retry on the next tick
                log.exception("model switch failed; still serving %s", self.serving.namespace)


def _from_store(fn, *args):
    """A store call on the event loop (one round trip, no thread hop); an outage is a 503, not a 500."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - redis/sqlite errors alike
        raise ApiError(503, f"store unavailable: {type(exc).__name__}", {"retry-after": "1"}) from exc


def _point_lookup(store: EmbeddingStore):
    """asin -> VectorRecord | None in one round trip, without the product document where the store can skip it."""
    raw = getattr(store, "get_raw", None)
    if raw is None:
        return store.get
    decode = store.decode
    return lambda asin: decode(asin, raw(asin))


def embedding_reply(state: State, asin: str, dtype: str, octet: bool) -> tuple[int, bytes, dict, str]:
    """GET /asin/{asin}/embedding -> (status, body, headers, media type): one implementation for the routed
    handler and the hot path, so both answer byte for byte the same."""
    try:
        rec = state.lookup(asin)
    except Exception as exc:  # noqa: BLE001 - redis/sqlite errors alike: an outage is a 503, not a 500
        return 503, orjson.dumps({"detail": f"store unavailable: {type(exc).__name__}"}), {"retry-after": "1"}, JSON
    if rec is None:
        return 404, orjson.dumps({"detail": f"asin {asin} is not in the catalog"}), {}, JSON
    headers = {"x-m5-bundle-version": rec.bundle_version, "x-m5-product-version": str(rec.product_version)}
    q, scale = quantize_int8(rec.vector) if dtype == "int8" else (None, None)
    if scale is not None:
        headers["x-m5-scale"] = repr(scale)
    if octet:
        return 200, (q.tobytes() if q is not None else np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()), headers, OCTET
    doc = {"asin": asin, "dim": int(rec.vector.shape[0]), "dtype": dtype, "vector": q if q is not None else rec.vector,
           "scale": scale, "bundle_version": rec.bundle_version, "product_version": rec.product_version}
    return 200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), headers, JSON


class HotPath:
    """`GET /asin/{asin}/embedding` and `POST /search` straight from ASGI, skipping FastAPI's routing and
    dependency solving (133 -> 54 us for a GET in process; ~200 us of a search's 290 us were framework).

    They are most of the traffic and their handlers are one store read or one index search: the
    framework's per-request work was the larger part of their cost. Anything it does not recognise exactly (other routes, a malformed ASIN,
    an unknown query parameter) goes on to FastAPI, which validates and answers as before; metrics,
    limits and auth stay in ServiceMiddleware around both.
    """

    route = type("Route", (), {"path": "/asin/{asin}/embedding"})()  # the labels ServiceMiddleware reads
    search_route = type("Route", (), {"path": "/search"})()
    _PATH = re.compile(r"/asin/(" + ASIN_PATTERN.strip("^$") + r")/embedding")
    _DTYPE = {b"": "float32", b"dtype=float32": "float32", b"dtype=int8": "int8"}

    def __init__(self, app, search=None):
        self.app, self.search = app, search

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/search" and self.search is not None:
            return await self._search(scope, receive, send)
        hit = self._match(scope)
        if hit is None:
            return await self.app(scope, receive, send)
        state, asin, dtype = hit
        octet = any(k == b"accept" and OCTET.encode() in v for k, v in scope["headers"])
        status, body, headers, media = embedding_reply(state, asin, dtype, octet)
        scope["route"] = self.route
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", media.encode()), (b"content-length", str(len(body)).encode()),
            *((k.encode(), v.encode()) for k, v in headers.items())]})
        await send({"type": "http.response.body", "body": body})

    async def _search(self, scope, receive, send):
        """POST /search: the body validated by pydantic-core in one call; anything it rejects goes on to
        FastAPI (with the body replayed), whose 422 names the field as before."""
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        raw = b"".join(chunks)
        state = getattr(scope["app"].state, "m5", None)
        json_body = any(k == b"content-type" and v.startswith(b"application/json") for k, v in scope["headers"])
        try:
            body = SearchRequest.model_validate_json(raw) if state is not None and json_body else None
        except ValueError:
            body = None
        if body is None:
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}

            return await self.app(scope, replay, send)
        try:
            response = self.search(state.serving, body)
        except ApiError as exc:
            response = _json({"detail": exc.detail}, exc.status, exc.headers)
        scope["route"] = self.search_route
        await response(scope, receive, send)

    def _match(self, scope) -> tuple[State, str, str] | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        m, dtype = self._PATH.fullmatch(scope["path"]), self._DTYPE.get(scope["query_string"])
        state = getattr(scope["app"].state, "m5", None) if m and dtype else None
        return (state, m.group(1), dtype) if state is not None else None


def _json(doc, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON)


def create_app(settings: ServiceSettings | None = None, *, encoder: Encoder | None = None, store: EmbeddingStore | None = None,
               index: AnnIndex | None = None, feed_source=None, follow_feed: bool = True, load_tower=None) -> FastAPI:
    """Build the app; injected parts (encoder, store, index, feed source) make tests fast and hermetic.

    An injected index is used as is (no store scan); otherwise the index starts from the newest
    snapshot in `settings.snapshot_dir`, else from a store scan, and then follows the feed. Unless a
    store is injected (or `load_tower` is, for tests), a watcher follows the active-namespace pointer
    and switches model without a restart.
    """
    s = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import faiss

        faiss.omp_set_num_threads(s.search_threads)
        enc = encoder or OnnxEncoder(s.bundle, "query", threads=1, manifest=load_manifest(s.bundle))
        namespace = active_namespace(s) if store is None else s.namespace  # follows a re-embed's namespace switch
        serving = build_serving(s, namespace, enc, store=store, index=index, feed_source=feed_source, follow_feed=follow_feed)
        bundles_dir = s.bundles_dir or FsPath(s.bundle).parent
        state = State(s, serving, load_tower=load_tower or (
            lambda version: OnnxEncoder(bundle_dir_for(bundles_dir, version), "query", threads=1)))
        serving.start()
        watch_stop, watcher = threading.Event(), None
        if s.model_poll_s > 0 and (store is None or load_tower is not None):
            watcher = threading.Thread(target=state.watch_model, args=(watch_stop,), name="model-watch", daemon=True)
            watcher.start()
        log.info("service up: %d vectors (%s index), query tower %s, namespace %s", len(serving.index), serving.index.kind,
                 enc.version, namespace)
        M.BUNDLE_INFO.labels(enc.version).set(1)
        app.state.m5 = state
        # The index's million ASIN strings and dicts live as long as the worker: move them out of the
        # collector's generations, or each full collection walks them all inside some request.
        gc.collect()
        gc.freeze()
        yield
        watch_stop.set()
        if watcher:
            watcher.join(timeout=5)
        state.serving.close()

    app = FastAPI(title="M5", version="0.1.0", lifespan=lifespan,
                  description="Product and query embeddings and kNN search. Errors are `{\"detail\": message}`.")
    def run_search(g: Serving, body: SearchRequest) -> Response:
        """POST /search on one serving set (the caller reads it once: a model switch cannot split a request)."""
        index = g.index
        t0 = time.perf_counter()
        if body.k > s.max_k:
            raise ApiError(422, f"k: at most {s.max_k}")
        exclude = None
        if body.query is not None:
            q, _ = embed_queries(g, [body.query])
        elif body.vector is not None:
            if len(body.vector) != index.dim:
                raise ApiError(422, f"vector: has {len(body.vector)} dimensions, the index has {index.dim}")
            q64 = np.asarray(body.vector, dtype=np.float64)[None]
            norm = float(np.linalg.norm(q64 / max(1.0, float(np.abs(q64).max()))))  # scaled: no overflow
            if norm == 0:
                raise ApiError(422, "vector: must not be all zeros")
            q = (q64 / max(1.0, float(np.abs(q64).max())) / norm).astype(np.float32)
        else:
            rec = _from_store(g.store.get, body.asin)
            if rec is None:
                raise ApiError(404, f"asin {body.asin} is not in the catalog")
            if rec.vector.shape[0] != index.dim:
                raise ApiError(409, f"asin {body.asin} has a {rec.vector.shape[0]}-d vector, the index is {index.dim}-d (bundle mismatch)")
            q, exclude = rec.vector[None], body.asin
        if q.shape[1] != index.dim:
            raise ApiError(409, f"the query tower gives {q.shape[1]}-d vectors, the index is {index.dim}-d (bundle mismatch)")
        f = body.filters or None
        t1 = time.perf_counter()
        hits = index.search(q, body.k, locale=f.locale if f else None, product_line=f.product_line if f else None,
                                  exclude=exclude, effort=body.effort or s.effort)[0]
        M.STAGE.labels("search").observe(time.perf_counter() - t1)
        return _json({
            "hits": [{"asin": a, "score": sc, "product_version": index.version_of(a) or 0} for a, sc in hits],
            "k": body.k, "index_size": len(index), "index_kind": index.kind,
            "bundle_version": g.encoder.version, "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        })


    app.add_middleware(HotPath, search=run_search)  # inside ServiceMiddleware: metrics, limits and auth cover it too
    app.add_middleware(M.ServiceMiddleware, max_in_flight=s.max_in_flight, max_body_bytes=s.max_body_bytes,
                       api_key=s.api_key.get_secret_value() if s.api_key else None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return _json({"detail": exc.detail}, exc.status, exc.headers)

    def openapi_with_dim() -> dict:
        """The vector length is the bundle's dim, known once the lifespan loaded it: say it in the schema."""
        doc = FastAPI.openapi(app)
        state = getattr(app.state, "m5", None)
        if state is not None:
            vec = doc["components"]["schemas"]["SearchRequest"]["properties"]["vector"]
            vec["minItems"] = vec["maxItems"] = state.index.dim
        return doc

    app.openapi = openapi_with_dim  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI's "error parsing the body": bad JSON is bad input like any other
            return _json({"detail": "body: not valid JSON"}, 422)
        return _json({"detail": exc.detail}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        msgs = []
        for e in exc.errors()[:5]:
            if e.get("type") == "json_invalid":
                msgs.append("body: not valid JSON")
                continue
            parts = list(e["loc"])
            if parts and parts[0] in ("body", "path", "query", "header"):
                parts = parts[1:]  # where it came from; the field name follows
            loc = ".".join(str(x) for x in parts)
            msgs.append(f"{loc or 'body'}: {e['msg']}")
        return _json({"detail": "; ".join(msgs)}, 422)

    errors = {code: {"model": Problem} for code in (401, 404, 413, 422, 503)}

    # ------------------------------------------------------------------ embeddings by ASIN
    @app.get("/asin/{asin}/embedding", response_model=EmbeddingResponse, responses={**errors, 200: {"content": {OCTET: {}}}},
             summary="The stored embedding of a product")
    async def asin_embedding(request: Request, asin: str = Path(pattern=ASIN_PATTERN, examples=["B0000009IX"]),
                             dtype: Literal["float32", "int8"] = Query("float32", description="int8: vector ~= values * scale")) -> Response:
        status, body, headers, media = embedding_reply(request.app.state.m5, asin, dtype, OCTET in request.headers.get("accept", ""))
        return Response(body, status, headers, media_type=media)

    @app.post("/asin/embeddings", response_model=AsinBatchResponse, responses=errors, summary="Embeddings of up to 1,000 products")
    async def asin_embeddings(request: Request, body: AsinBatchRequest) -> Response:
        state: State = request.app.state.m5
        if len(body.asins) > s.max_batch_asins:
            raise ApiError(422, f"asins: at most {s.max_batch_asins}")
        recs = _from_store(state.store.get_many, body.asins)
        found = [{"asin": a, "dim": int(r.vector.shape[0]), "dtype": "float32", "vector": r.vector, "scale": None,
                  "bundle_version": r.bundle_version, "product_version": r.product_version} for a, r in zip(body.asins, recs) if r]
        return _json({"embeddings": found, "missing": [a for a, r in zip(body.asins, recs) if r is None]})

    # ------------------------------------------------------------------ queries
    def embed_queries(g: Serving, texts: list[str]) -> tuple[np.ndarray, Encoder]:
        """-> ((n, dim) float32, the encoder used). Cache keys carry the bundle version, so a swap cannot mix towers."""
        enc = g.encoder
        if (msg := g.mismatch(enc)) is not None:
            raise ApiError(409, f"bundle mismatch: {msg}; deploy the matching bundle or re-embed the catalog")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(422, f"queries.{i}: empty query")
            if len(t) > s.max_query_chars:
                raise ApiError(422, f"queries.{i}: longer than {s.max_query_chars} characters")
        cache = g.cache
        out = np.empty((len(texts), enc.dim), dtype=np.float32)  # (n, dim)
        todo = []
        for i, t in enumerate(texts):
            hit = cache.get((enc.version, t))
            if hit is None:
                todo.append(i)
            else:
                cache.move_to_end((enc.version, t))
                out[i] = hit
        M.CACHE_HITS.inc(len(texts) - len(todo))
        if todo:
            M.CACHE_MISSES.inc(len(todo))
            t0 = time.perf_counter()
            vecs = enc.embed([texts[i] for i in todo])
            M.STAGE.labels("encode").observe(time.perf_counter() - t0)
            for i, v in zip(todo, vecs):
                out[i] = v
                if s.query_cache_size:
                    cache[(enc.version, texts[i])] = v
                    if len(cache) > s.query_cache_size:
                        cache.popitem(last=False)
        return out, enc

    @app.post("/query/embed", response_model=QueryEmbedResponse, responses={**errors, 409: {"model": Problem}},
              summary="Embed search queries with the query tower")
    async def query_embed(request: Request, body: QueryEmbedRequest) -> Response:
        state: State = request.app.state.m5
        if len(body.queries) > s.max_queries:
            raise ApiError(422, f"queries: at most {s.max_queries}")
        vecs, enc = embed_queries(state.serving, body.queries)
        return _json({"dim": enc.dim, "bundle_version": enc.version, "vectors": vecs})

    # ------------------------------------------------------------------ search
    @app.post("/search", response_model=SearchResponse, responses={**errors, 409: {"model": Problem}},
              summary="k nearest products by query text, vector or ASIN")
    async def search(request: Request, body: SearchRequest) -> Response:
        return run_search(request.app.state.m5.serving, body)

    # ------------------------------------------------------------------ operations
    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness, with the reasons when not ready", responses={503: {"model": Problem}})
    async def readyz(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is None:
            return _json({"ready": False, "reasons": ["starting"]}, 503)
        g: Serving = state.serving
        reasons = []
        if not g.store.ping():
            reasons.append(f"store ({s.store}) unreachable")
        lag = g.follower.lag() if g.follower else 0
        if lag > s.feed_lag_ready_bound:
            reasons.append(f"index is {lag} feed messages behind (bound {s.feed_lag_ready_bound})")
        if (msg := g.mismatch()) is not None:
            reasons.append(f"bundle mismatch: {msg}")
        doc = {"ready": not reasons, "reasons": reasons, "index_size": len(g.index), "index_kind": g.index.kind,
               "feed_lag": lag, "bundle_version": g.encoder.version, "namespace": g.namespace}
        return _json(doc, 200 if not reasons else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is not None:
            g: Serving = state.serving
            M.INDEX_SIZE.set(len(g.index))
            M.FEED_LAG.set(g.follower.last_lag if g.follower else 0)
            M.INDEX_INFO.labels(g.index.version, g.index.kind).set(1)
        return Response(M.render_metrics(), media_type="text/plain; version=0.0.4")

    return app


class _NoFeed:
    """Stands in for a feed when following is off (bootstrap from the store only)."""

    def end_offsets(self):
        return {}

    def seek(self, offsets):
        pass

    def poll(self, max_records=0, timeout_s=0.0):
        return []

    def lag(self):
        return {}


def app_factory() -> FastAPI:
    """uvicorn --factory entry: settings from M5_* environment variables (set by `m5 serve`)."""
    return create_app(ServiceSettings())

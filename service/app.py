"""The HTTP API: embeddings by ASIN, query embeddings, kNN search, health and metrics.

Handlers return pre-serialised orjson bytes: FastAPI's default encoder costs ~270 us for a list of
256 floats, orjson ~10 us. Store lookups are one Redis round trip on the event loop (no
thread-pool hop); the ANN index lives in process and follows the indexer's feed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from m5core.bundle import load_manifest
from m5core.encoder import Encoder, OnnxEncoder
from m5core.events import open_source
from m5core.feed import FeedFollower
from m5core.index import AnnIndex
from m5core.schema import ASIN_PATTERN
from m5core.stores import open_store
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
class State:
    settings: ServiceSettings
    encoder: Encoder
    store: EmbeddingStore
    index: AnnIndex
    follower: FeedFollower | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    cache: OrderedDict = field(default_factory=OrderedDict)
    started: float = field(default_factory=time.time)

    def mismatch(self) -> str | None:
        """A query tower from another bundle than the indexed vectors gives meaningless neighbours."""
        held = self.follower.bundle_versions if self.follower else set()
        other = sorted(v for v in held if v != self.encoder.version)
        if other:
            return f"indexed vectors come from bundle(s) {other}, the query tower is {self.encoder.version}"
        return None


def _json(doc, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON)


def create_app(settings: ServiceSettings | None = None, *, encoder: Encoder | None = None, store: EmbeddingStore | None = None,
               feed_source=None, follow_feed: bool = True) -> FastAPI:
    """Build the app; injected parts (encoder, store, feed source) make tests fast and hermetic."""
    s = settings or ServiceSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        enc = encoder or OnnxEncoder(s.bundle, "query", threads=1, manifest=load_manifest(s.bundle))
        st = store or open_store(s)
        index = AnnIndex(enc.dim, s.index_kind, enc.version)
        source = feed_source if feed_source is not None else (open_source(s, [s.embeddings_topic], None) if follow_feed else None)
        state = State(s, enc, st, index)
        if source is not None:
            state.follower = FeedFollower(source, index, st, log)
            n = state.follower.bootstrap()
            state.thread = threading.Thread(target=state.follower.run, args=(state.stop,), name="feed-follower", daemon=True)
            state.thread.start()
        else:
            n = FeedFollower(_NoFeed(), index, st, log).bootstrap()
        log.info("service up: %d vectors (%s index), query tower %s", n, index.kind, enc.version)
        M.BUNDLE_INFO.labels(enc.version).set(1)
        app.state.m5 = state
        yield
        state.stop.set()
        if state.thread:
            state.thread.join(timeout=5)
        if source is not None:
            source.close()
        if store is None:
            st.close()

    app = FastAPI(title="M5", version="0.1.0", lifespan=lifespan,
                  description="Product and query embeddings and kNN search. Errors are `{\"detail\": message}`.")
    app.add_middleware(M.ServiceMiddleware, max_in_flight=s.max_in_flight, max_body_bytes=s.max_body_bytes,
                       api_key=s.api_key.get_secret_value() if s.api_key else None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return _json({"detail": exc.detail}, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        msgs = []
        for e in exc.errors()[:5]:
            parts = list(e["loc"])
            if parts and parts[0] in ("body", "path", "query", "header"):
                parts = parts[1:]  # where it came from; the field name follows
            loc = ".".join(str(x) for x in parts)
            msgs.append(f"{loc or 'body'}: {e['msg']}")
        return _json({"detail": "; ".join(msgs)}, 422)

    errors = {404: {"model": Problem}, 422: {"model": Problem}}

    # ------------------------------------------------------------------ embeddings by ASIN
    @app.get("/asin/{asin}/embedding", response_model=EmbeddingResponse, responses={**errors, 200: {"content": {OCTET: {}}}},
             summary="The stored embedding of a product")
    async def asin_embedding(request: Request, asin: str = Path(pattern=ASIN_PATTERN, examples=["B0000009IX"]),
                             dtype: str = "float32") -> Response:
        if dtype not in ("float32", "int8"):
            raise ApiError(422, "dtype: must be float32 or int8")
        state: State = request.app.state.m5
        rec = state.store.get(asin)
        if rec is None:
            raise ApiError(404, f"asin {asin} is not in the catalog")
        headers = {"x-m5-bundle-version": rec.bundle_version, "x-m5-product-version": str(rec.product_version)}
        if dtype == "int8":
            q, scale = quantize_int8(rec.vector)
            headers["x-m5-scale"] = repr(scale)
        if OCTET in request.headers.get("accept", ""):
            body = q.tobytes() if dtype == "int8" else np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()
            return Response(body, 200, headers, media_type=OCTET)
        doc = {"asin": asin, "dim": int(rec.vector.shape[0]), "dtype": dtype, "vector": q if dtype == "int8" else rec.vector,
               "scale": scale if dtype == "int8" else None, "bundle_version": rec.bundle_version, "product_version": rec.product_version}
        return _json(doc, headers=headers)

    @app.post("/asin/embeddings", response_model=AsinBatchResponse, responses=errors, summary="Embeddings of up to 1,000 products")
    async def asin_embeddings(request: Request, body: AsinBatchRequest) -> Response:
        state: State = request.app.state.m5
        if len(body.asins) > s.max_batch_asins:
            raise ApiError(422, f"asins: at most {s.max_batch_asins}")
        recs = state.store.get_many(body.asins)
        found = [{"asin": a, "dim": int(r.vector.shape[0]), "dtype": "float32", "vector": r.vector, "scale": None,
                  "bundle_version": r.bundle_version, "product_version": r.product_version} for a, r in zip(body.asins, recs) if r]
        return _json({"embeddings": found, "missing": [a for a, r in zip(body.asins, recs) if r is None]})

    # ------------------------------------------------------------------ queries
    def embed_queries(state: State, texts: list[str]) -> np.ndarray:
        if (msg := state.mismatch()) is not None:
            raise ApiError(409, f"bundle mismatch: {msg}; deploy the matching bundle or re-embed the catalog")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(422, f"queries.{i}: empty query")
            if len(t) > s.max_query_chars:
                raise ApiError(422, f"queries.{i}: longer than {s.max_query_chars} characters")
        out = np.empty((len(texts), state.encoder.dim), dtype=np.float32)
        todo = []
        for i, t in enumerate(texts):
            hit = state.cache.get(t)
            if hit is None:
                todo.append(i)
            else:
                state.cache.move_to_end(t)
                out[i] = hit
        M.CACHE_HITS.inc(len(texts) - len(todo))
        if todo:
            M.CACHE_MISSES.inc(len(todo))
            t0 = time.perf_counter()
            vecs = state.encoder.embed([texts[i] for i in todo])
            M.STAGE.labels("encode").observe(time.perf_counter() - t0)
            for i, v in zip(todo, vecs):
                out[i] = v
                if s.query_cache_size:
                    state.cache[texts[i]] = v
                    if len(state.cache) > s.query_cache_size:
                        state.cache.popitem(last=False)
        return out

    @app.post("/query/embed", response_model=QueryEmbedResponse, responses={**errors, 409: {"model": Problem}},
              summary="Embed search queries with the query tower")
    async def query_embed(request: Request, body: QueryEmbedRequest) -> Response:
        state: State = request.app.state.m5
        if len(body.queries) > s.max_queries:
            raise ApiError(422, f"queries: at most {s.max_queries}")
        vecs = embed_queries(state, body.queries)
        return _json({"dim": state.encoder.dim, "bundle_version": state.encoder.version, "vectors": vecs})

    # ------------------------------------------------------------------ search
    @app.post("/search", response_model=SearchResponse, responses={**errors, 409: {"model": Problem}},
              summary="k nearest products by query text, vector or ASIN")
    async def search(request: Request, body: SearchRequest) -> Response:
        state: State = request.app.state.m5
        t0 = time.perf_counter()
        if body.k > s.max_k:
            raise ApiError(422, f"k: at most {s.max_k}")
        exclude = None
        if body.query is not None:
            q = embed_queries(state, [body.query])
        elif body.vector is not None:
            if len(body.vector) != state.index.dim:
                raise ApiError(422, f"vector: has {len(body.vector)} dimensions, the index has {state.index.dim}")
            q = np.asarray(body.vector, dtype=np.float32)[None]
            norm = float(np.linalg.norm(q))
            if norm == 0:
                raise ApiError(422, "vector: must not be all zeros")
            q /= norm
        else:
            rec = state.store.get(body.asin)
            if rec is None:
                raise ApiError(404, f"asin {body.asin} is not in the catalog")
            q, exclude = rec.vector[None], body.asin
        f = body.filters or None
        t1 = time.perf_counter()
        hits = state.index.search(q, body.k, locale=f.locale if f else None, product_line=f.product_line if f else None,
                                  exclude=exclude, effort=body.effort or s.effort)[0]
        M.STAGE.labels("search").observe(time.perf_counter() - t1)
        return _json({
            "hits": [{"asin": a, "score": sc, "product_version": state.index.version_of(a) or 0} for a, sc in hits],
            "k": body.k, "index_size": len(state.index), "index_kind": state.index.kind,
            "bundle_version": state.encoder.version, "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        })

    # ------------------------------------------------------------------ operations
    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", summary="Readiness, with the reasons when not ready", responses={503: {"model": Problem}})
    async def readyz(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is None:
            return _json({"ready": False, "reasons": ["starting"]}, 503)
        reasons = []
        if not state.store.ping():
            reasons.append(f"store ({s.store}) unreachable")
        lag = state.follower.lag() if state.follower else 0
        if lag > s.feed_lag_ready_bound:
            reasons.append(f"index is {lag} feed messages behind (bound {s.feed_lag_ready_bound})")
        if (msg := state.mismatch()) is not None:
            reasons.append(f"bundle mismatch: {msg}")
        doc = {"ready": not reasons, "reasons": reasons, "index_size": len(state.index), "index_kind": state.index.kind,
               "feed_lag": lag, "bundle_version": state.encoder.version}
        return _json(doc, 200 if not reasons else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is not None:
            M.INDEX_SIZE.set(len(state.index))
            M.FEED_LAG.set(state.follower.last_lag if state.follower else 0)
            M.INDEX_INFO.labels(state.index.version, state.index.kind).set(1)
        return Response(M.render_metrics(), media_type="text/plain; version=0.0.4")

    return app


class _NoFeed:
    """Stands in for a feed when following is off (bootstrap from the store only)."""

    def end_offsets(self):
        return {}

    def seek(self, offsets):
        pass


def app_factory() -> FastAPI:
    """uvicorn --factory entry: settings from M5_* environment variables (set by `m5 serve`)."""
    return create_app(ServiceSettings())

"""The HTTP API: wiring and routes. Embeddings by ASIN, query embeddings, kNN search, health and metrics.

The logic lives in plain modules: `serving` (what is served, model switches), `search`, `queries`
(query tower + cache), `hotpath` (the two hottest routes straight from ASGI), `errors`, and
`metrics` (the middleware). Store lookups are one Redis round trip on the event loop; the ANN index
lives in process and follows the indexer's feed.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from m5core.bundle import load_manifest
from m5core.encoder import Encoder, OnnxEncoder
from m5core.index import AnnIndex
from m5core.schema import ASIN_PATTERN
from m5core.stores import active_namespace
from m5core.stores.base import EmbeddingStore
from service import metrics as M
from service.errors import OCTET, ApiError, from_store, install_error_handlers, json_response
from service.hotpath import HotPath, embedding_reply
from service.middleware import ServiceMiddleware
from service.schemas import (
    AsinBatchRequest,
    AsinBatchResponse,
    EmbeddingResponse,
    Problem,
    QueryEmbedRequest,
    QueryEmbedResponse,
    SearchRequest,
    SearchResponse,
    openapi_limits,
)
from service.search import query_vectors, search
from service.serving import Serving, State, build_serving, bundle_dir_for
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def create_app(
    settings: ServiceSettings | None = None,
    *,
    encoder: Encoder | None = None,
    store: EmbeddingStore | None = None,
    index: AnnIndex | None = None,
    feed_source=None,
    follow_feed: bool = True,
    load_tower=None,
) -> FastAPI:
    """Build the app; injected parts (encoder, store, index, feed source) make tests fast and hermetic.

    Unless a store is injected (or `load_tower` is, for tests), a watcher follows the active-namespace
    pointer and switches model without a restart (`service.serving`).
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
        state = State(s, serving, load_tower or (lambda version: OnnxEncoder(bundle_dir_for(bundles_dir, version), "query", threads=1)))
        serving.start()
        watch_stop, watcher = threading.Event(), None
        if s.model_poll_s > 0 and (store is None or load_tower is not None):
            watcher = threading.Thread(target=state.watch_model, args=(watch_stop,), name="model-watch", daemon=True)
            watcher.start()
        log.info("service up: %d vectors (%s index), query tower %s, namespace %s", len(serving.index), serving.index.kind, enc.version, namespace)
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

    app = FastAPI(
        title="M5", version="0.1.0", lifespan=lifespan, description='Product and query embeddings and kNN search. Errors are `{"detail": message}`.'
    )
    app.add_middleware(HotPath)  # inside ServiceMiddleware: metrics, limits and auth cover it too
    app.add_middleware(
        ServiceMiddleware,
        max_in_flight=s.max_in_flight,
        max_body_bytes=s.max_body_bytes,
        api_key=s.api_key.get_secret_value() if s.api_key else None,
        body_timeout_s=s.body_timeout_s,
    )
    install_error_handlers(app)

    def openapi() -> dict:
        """The schema states the limits of these settings and, once the bundle is loaded, the vector length."""
        state: State | None = getattr(app.state, "m5", None)
        return openapi_limits(FastAPI.openapi(app), s, state.serving.index.dim if state is not None else None)

    app.openapi = openapi  # type: ignore[method-assign]
    errors = {code: {"model": Problem} for code in (401, 404, 413, 422, 503)}

    @app.get(
        "/asin/{asin}/embedding",
        response_model=EmbeddingResponse,
        responses={**errors, 200: {"content": {OCTET: {}}}},
        summary="The stored embedding of a product",
    )
    async def asin_embedding(
        request: Request,
        asin: str = Path(pattern=ASIN_PATTERN, examples=["B0000009IX"]),
        dtype: Literal["float32", "int8"] = Query("float32", description="int8: vector ~= values * scale"),
    ) -> Response:
        status, body, headers, media = embedding_reply(request.app.state.m5, asin, dtype, OCTET in request.headers.get("accept", ""))
        return Response(body, status, headers, media_type=media)

    @app.post("/asin/embeddings", response_model=AsinBatchResponse, responses=errors, summary="Embeddings of many products")
    async def asin_embeddings(request: Request, body: AsinBatchRequest) -> Response:
        if len(body.asins) > s.max_batch_asins:
            raise ApiError(422, f"asins: at most {s.max_batch_asins}")
        recs = from_store(request.app.state.m5.serving.store.get_many, body.asins)
        found = [
            {
                "asin": a,
                "dim": int(r.vector.shape[0]),
                "dtype": "float32",
                "vector": r.vector,
                "scale": None,
                "bundle_version": r.bundle_version,
                "product_version": r.product_version,
            }
            for a, r in zip(body.asins, recs)
            if r
        ]
        return json_response({"embeddings": found, "missing": [a for a, r in zip(body.asins, recs) if r is None]})

    @app.post(
        "/query/embed",
        response_model=QueryEmbedResponse,
        responses={**errors, 409: {"model": Problem}},
        summary="Embed search queries with the query tower",
    )
    async def query_embed(request: Request, body: QueryEmbedRequest) -> Response:
        g: Serving = request.app.state.m5.serving
        vecs = query_vectors(g, body.queries, s, field="queries")
        return json_response({"dim": g.encoder.dim, "bundle_version": g.encoder.version, "vectors": vecs})

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={**errors, 409: {"model": Problem}},
        summary="k nearest products by query text, vector or ASIN",
    )
    async def search_route(request: Request, body: SearchRequest) -> Response:
        return json_response(search(request.app.state.m5.serving, body, s))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="Readiness, with the reasons when not ready", responses={503: {"model": Problem}})
    async def readyz(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is None:
            return json_response({"ready": False, "reasons": ["starting"]}, 503)
        g = state.serving
        reasons = []
        if not await run_in_threadpool(g.store.ping):  # bounded by the store's timeout, off the event loop
            reasons.append(f"store ({s.store}) unreachable")
        lag = g.follower.last_lag  # read by the follower's own thread (FeedFollower.run)
        if lag > s.feed_lag_ready_bound:
            reasons.append(f"index is {lag} feed messages behind (bound {s.feed_lag_ready_bound})")
        if (msg := g.mismatch()) is not None:
            reasons.append(f"bundle mismatch: {msg}")
        doc = {
            "ready": not reasons,
            "reasons": reasons,
            "index_size": len(g.index),
            "index_kind": g.index.kind,
            "feed_lag": lag,
            "feed_lag_age_s": None if g.follower.lag_at is None else round(time.monotonic() - g.follower.lag_at, 1),
            "bundle_version": g.encoder.version,
            "namespace": g.namespace,
        }
        return json_response(doc, 200 if not reasons else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is not None:
            M.observe_serving(state.serving)
        return Response(M.render_metrics(), media_type="text/plain; version=0.0.4")

    return app


def app_factory() -> FastAPI:
    """uvicorn --factory entry: settings from M5_* environment variables (set by `m5 serve`)."""
    return create_app(ServiceSettings())

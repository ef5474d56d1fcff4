"""The HTTP API: wiring and routes. Embeddings by ASIN, query embeddings, kNN search, health and metrics.

The logic lives in plain modules: `serving` (what is served, model switches), `search`, `queries`
(query tower + cache), `hotpath` (the two hottest routes straight from ASGI), `errors`, and
`metrics` (the middleware). Store lookups are one Redis round trip on the event loop; the ANN index
lives in process and follows the indexer's feed.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from m5core.encoder import Encoder
from m5core.index import AnnIndex
from m5core.schema import ASIN_PATTERN
from m5core.stores.base import EmbeddingStore
from service import metrics as M
from service.admin import admin_routes
from service.auth import KeyRing
from service.duplicates import duplicates, duplicates_batch
from service.errors import OCTET, install_error_handlers, json_response
from service.hotpath import HotPath, embedding_reply, embeddings_doc
from service.middleware import ServiceMiddleware
from service.schemas import (
    AsinBatchRequest,
    AsinBatchResponse,
    DuplicatesBatchResponse,
    DuplicatesRequest,
    DuplicatesResponse,
    EmbeddingResponse,
    HitField,
    Problem,
    QueryEmbedRequest,
    QueryEmbedResponse,
    SearchBatchRequest,
    SearchBatchResponse,
    SearchRequest,
    SearchResponse,
    openapi_limits,
)
from service.search import query_vectors, search, search_batch
from service.serving import Serving, State, start_state
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
        app.state.m5 = start_state(
            s, encoder=encoder, store=store, index=index, feed_source=feed_source, follow_feed=follow_feed, load_tower=load_tower
        )
        yield
        app.state.m5.close()

    app = FastAPI(
        title="M5", version="0.1.0", lifespan=lifespan, description='Product and query embeddings and kNN search. Errors are `{"detail": message}`.'
    )
    app.add_middleware(HotPath)  # inside ServiceMiddleware: metrics, limits and auth cover it too
    keys = KeyRing(s.api_keys_file, s.api_key.get_secret_value() if s.api_key else None, s.key_rate_per_s, s.key_burst, log)
    app.add_middleware(ServiceMiddleware, settings=s, keys=keys)
    install_error_handlers(app)

    def openapi() -> dict:
        """The schema states the limits of these settings and, once the bundle is loaded, the vector length."""
        state: State | None = getattr(app.state, "m5", None)
        return openapi_limits(FastAPI.openapi(app), s, state.serving.index.dim if state is not None else None)

    app.openapi = openapi  # type: ignore[method-assign]
    errors = {code: {"model": Problem} for code in (401, 404, 413, 422, 503)}
    needs_model = {**errors, 409: {"model": Problem}}  # 409: the query tower and the indexed vectors disagree

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
        return json_response(embeddings_doc(request.app.state.m5, body.asins))

    @app.post("/query/embed", response_model=QueryEmbedResponse, responses=needs_model, summary="Embed search queries with the query tower")
    async def query_embed(request: Request, body: QueryEmbedRequest) -> Response:
        g: Serving = request.app.state.m5.serving
        vecs = query_vectors(g, body.queries, s, field="queries")
        return json_response({"dim": g.encoder.dim, "bundle_version": g.encoder.version, "vectors": vecs})

    @app.post("/search", response_model=SearchResponse, responses=needs_model, summary="k nearest products by query text, vector or ASIN")
    async def search_route(request: Request, body: SearchRequest) -> Response:
        return json_response(search(request.app.state.m5.serving, body, s))

    @app.post("/search/batch", response_model=SearchBatchResponse, responses=needs_model, summary="Many searches in one call")
    async def search_batch_route(request: Request, body: SearchBatchRequest) -> Response:
        serving = request.app.state.m5.serving  # one serving set for the whole batch, even across a model switch
        return json_response(await run_in_threadpool(search_batch, serving, body.searches, s))

    @app.get(
        "/asin/{asin}/duplicates",
        response_model=DuplicatesResponse,
        responses=needs_model,
        summary="A product's duplicates: its neighbours at or above the bundle's calibrated threshold",
    )
    async def asin_duplicates(
        request: Request,
        asin: str = Path(pattern=ASIN_PATTERN, examples=["B0000009IX"]),
        k: int = Query(10, ge=1, description="neighbours looked at"),
        threshold: float | None = Query(None, ge=-1, le=1, description="cosine; default: the bundle's calibrated one"),
        scope: Literal["marketplace", "all"] = Query("marketplace", description="marketplace: same locale only"),
        fields: Annotated[list[HitField] | None, Query(description="product fields to return with each duplicate")] = None,
    ) -> Response:
        fields = list(dict.fromkeys(fields)) if fields else None  # `?fields=brand&fields=brand` asks for brand once
        body = DuplicatesRequest(asins=[asin], k=k, threshold=threshold, scope=scope, fields=fields)
        return json_response(duplicates(request.app.state.m5.serving, asin, body, s))

    @app.post("/duplicates", response_model=DuplicatesBatchResponse, responses=needs_model, summary="Duplicates of many products")
    async def duplicates_route(request: Request, body: DuplicatesRequest) -> Response:
        return json_response(await run_in_threadpool(duplicates_batch, request.app.state.m5.serving, body, s))

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", summary="Readiness, with the reasons when not ready", responses={503: {"model": Problem}})
    async def readyz(request: Request) -> Response:
        state: State | None = getattr(request.app.state, "m5", None)
        if state is None:
            return json_response({"ready": False, "reasons": ["starting"]}, 503)
        doc = await run_in_threadpool(state.readiness)  # the store ping waits up to its timeout: off the event loop
        return json_response(doc, 200 if doc["ready"] else 503)

    app.include_router(admin_routes(keys, responses=errors))

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

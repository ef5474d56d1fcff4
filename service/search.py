"""POST /search on one serving set: a query vector from text, a raw vector or a stored product, then the index."""

from __future__ import annotations

import time

import numpy as np
import orjson

from service import metrics as M
from service.errors import ApiError, from_store
from service.queries import check_queries, embed_queries
from service.schemas import SearchRequest
from service.serving import Serving
from service.settings import ServiceSettings


def unit_vector(values: list[float]) -> np.ndarray:
    """(1, dim) float32 of a caller's raw vector, L2-normalised (scaled first, so huge components cannot overflow)."""
    q64 = np.asarray(values, dtype=np.float64)[None]
    q64 = q64 / max(1.0, float(np.abs(q64).max()))
    norm = float(np.linalg.norm(q64))
    if norm == 0:
        raise ApiError(422, "vector: must not be all zeros")
    return (q64 / norm).astype(np.float32)


def query_vectors(g: Serving, texts: list[str], s: ServiceSettings, field: str = "query") -> np.ndarray:
    """Texts -> (n, dim) through the cache; 409 when the query tower is not the indexed vectors' bundle.
    `field`: the request field the texts came from, named in a 422."""
    if len(texts) > s.max_queries:
        raise ApiError(422, f"{field}: at most {s.max_queries}")
    if (msg := g.mismatch()) is not None:
        raise ApiError(409, f"bundle mismatch: {msg}; deploy the matching bundle or re-embed the catalog")
    check_queries(texts, s.max_query_chars, field)
    return embed_queries(g.encoder, g.cache, texts)


def hit_docs(g: Serving, hits: list[tuple[str, float]], fields: list[str] | None) -> list[dict]:
    """(asin, score) -> response hits with the product version, and the requested product fields (one store round
    trip for all hits; a product deleted since the index saw it has empty fields)."""
    out = [{"asin": a, "score": sc, "product_version": g.index.version_of(a) or 0} for a, sc in hits]
    if fields and out:
        for h, doc in zip(out, from_store(g.store.get_docs, [h["asin"] for h in out])):
            product = orjson.loads(doc) if doc is not None else {}
            h["product"] = {f: product.get(f) for f in fields}
    return out


def rescored(g: Serving, hits: list[tuple[str, float]], q: np.ndarray, text: str, depth: int) -> list[tuple[str, float]]:
    """The first `depth` hits re-ordered by `LexicalBlock.rescore` (exact lexical cosine in place of the hashed one),
    their terms read from the store in one round trip; the rest follow as the index ranked them. A candidate the
    store no longer holds, or holds without terms, keeps the index's score."""
    head = hits[:depth]
    blobs = from_store(g.store.get_terms, [a for a, _ in head])
    if not any(blobs):
        return hits
    scores = g.encoder.lexical.rescore(q, text, np.array([sc for _, sc in head], np.float32), blobs)
    order = np.argsort(-scores, kind="stable")
    return [(head[i][0], float(scores[i])) for i in order] + hits[depth:]


def search(g: Serving, body: SearchRequest, s: ServiceSettings, text_vector: np.ndarray | None = None) -> dict:
    """The response document (the caller reads `state.serving` once: a model switch cannot split a request).
    text_vector: the (1, dim) embedding of `body.query` when the caller embedded it already (a batch)."""
    index = g.index
    t0 = time.perf_counter()
    if body.k > s.max_k:
        raise ApiError(422, f"k: at most {s.max_k}")
    exclude = None
    if body.query is not None:
        q = text_vector if text_vector is not None else query_vectors(g, [body.query], s)
    elif body.vector is not None:
        if len(body.vector) != index.dim:
            raise ApiError(422, f"vector: has {len(body.vector)} dimensions, the index has {index.dim}")
        q = unit_vector(body.vector)
    else:
        rec = from_store(g.store.get, body.asin)
        if rec is None:
            raise ApiError(404, f"asin {body.asin} is not in the catalog")
        if rec.vector.shape[0] != index.dim:
            raise ApiError(409, f"asin {body.asin} has a {rec.vector.shape[0]}-d vector, the index is {index.dim}-d (bundle mismatch)")
        q, exclude = rec.vector[None], body.asin
    if q.shape[1] != index.dim:
        raise ApiError(409, f"the query tower gives {q.shape[1]}-d vectors, the index is {index.dim}-d (bundle mismatch)")
    f = body.filters
    block = getattr(g.encoder, "lexical", None)
    depth = s.rerank_depth if body.query is not None and block is not None and block.exact else 0
    t1 = time.perf_counter()
    hits = index.search(
        q,
        max(body.k, depth),
        locale=f.locale if f else None,
        product_line=f.product_line if f else None,
        exclude=exclude,
        effort=body.effort or s.effort,
    )[0]
    M.STAGE.labels("search").observe(time.perf_counter() - t1)
    if depth and hits:
        t2 = time.perf_counter()
        hits = rescored(g, hits, q[0], body.query, depth)
        M.STAGE.labels("rescore").observe(time.perf_counter() - t2)
    hits = hits[: body.k]
    out = hit_docs(g, hits, body.fields)
    return {
        "hits": out,
        "k": body.k,
        "index_size": len(index),
        "index_kind": index.kind,
        "bundle_version": g.encoder.version,
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
    }


ITEM_ERRORS = (404,)
"""What one search of a batch may fail with alone (an ASIN not in the catalog). What the schema states (k, the query's
length, the vector's) fails the whole batch with 422 as it would a lone search; an outage (503) or a bundle mismatch
(409) fails it too."""


def check_batch(searches: list[SearchRequest], s: ServiceSettings, dim: int) -> None:
    """The bounds the OpenAPI document states for each search, checked before any work, naming the search."""
    if len(searches) > s.max_batch_searches:
        raise ApiError(422, f"searches: at most {s.max_batch_searches}")
    for i, b in enumerate(searches):
        if b.k > s.max_k:
            raise ApiError(422, f"searches[{i}].k: at most {s.max_k}")
        if b.vector is not None and len(b.vector) != dim:
            raise ApiError(422, f"searches[{i}].vector: has {len(b.vector)} dimensions, the index has {dim}")
        if b.query is not None:
            check_queries([b.query], s.max_query_chars, f"searches[{i}].query")


def search_batch(g: Serving, searches: list[SearchRequest], s: ServiceSettings) -> dict:
    """POST /search/batch: every search as /search would run it, their texts embedded in one call to the query tower."""
    t0 = time.perf_counter()
    check_batch(searches, s, g.index.dim)
    texts = [b.query for b in searches if b.query is not None]
    vectors = iter(query_vectors(g, texts, s, field="searches[].query")) if texts else iter(())
    results = []
    for body in searches:
        vec = next(vectors)[None] if body.query is not None else None
        try:
            results.append({"result": search(g, body, s, text_vector=vec), "error": None})
        except ApiError as exc:
            if exc.status not in ITEM_ERRORS:
                raise
            results.append({"result": None, "error": {"status": exc.status, "detail": exc.detail}})
    return {"results": results, "bundle_version": g.encoder.version, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

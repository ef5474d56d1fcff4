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


def rescored(
    g: Serving, hits: list[list[tuple[str, float]]], queries: np.ndarray, texts: list[str], depth: int, terms: dict[str, bytes | None] | None = None
) -> list[list[tuple[str, float]]]:
    """Each text search's first `depth` hits re-ordered by `LexicalBlock.rescore_many` (exact lexical cosine in place of
    the hashed one), all searches in one pass, their terms read from the store in one round trip (or taken from
    `terms`); the rest follow as the index ranked them. A candidate the store no longer holds, or holds without terms,
    keeps the index's score."""
    heads = [h[:depth] for h in hits]
    if terms is None:
        asins = sorted({a for h in heads for a, _ in h})
        terms = dict(zip(asins, from_store(g.store.get_terms, asins))) if asins else {}
    blobs = [[terms.get(a) for a, _ in h] for h in heads]
    if not any(b for bs in blobs for b in bs):
        return hits
    t0 = time.perf_counter()
    scores = g.encoder.lexical.rescore_many(queries, texts, [np.array([sc for _, sc in h], np.float32) for h in heads], blobs)
    out = []
    for h, head, sc in zip(hits, heads, scores):
        order = np.argsort(-sc, kind="stable")
        out.append([(head[i][0], float(sc[i])) for i in order] + h[depth:])
    M.STAGE.labels("rescore").observe(time.perf_counter() - t0)
    return out


def query_of(g: Serving, body: SearchRequest, s: ServiceSettings, text_vector: np.ndarray | None = None) -> tuple[np.ndarray, str | None]:
    """One search's (1, dim) query vector and the ASIN to leave out of its hits; 404 / 409 / 422 as /search answers.
    text_vector: the embedding of `body.query` when the caller embedded it already (a batch)."""
    if body.k > s.max_k:
        raise ApiError(422, f"k: at most {s.max_k}")
    exclude = None
    if body.query is not None:
        q = text_vector if text_vector is not None else query_vectors(g, [body.query], s)
    elif body.vector is not None:
        if len(body.vector) != g.index.dim:
            raise ApiError(422, f"vector: has {len(body.vector)} dimensions, the index has {g.index.dim}")
        q = unit_vector(body.vector)
    else:
        rec = from_store(g.store.get, body.asin)
        if rec is None:
            raise ApiError(404, f"asin {body.asin} is not in the catalog")
        if rec.vector.shape[0] != g.index.dim:
            raise ApiError(409, f"asin {body.asin} has a {rec.vector.shape[0]}-d vector, the index is {g.index.dim}-d (bundle mismatch)")
        q, exclude = rec.vector[None], body.asin
    if q.shape[1] != g.index.dim:
        raise ApiError(409, f"the query tower gives {q.shape[1]}-d vectors, the index is {g.index.dim}-d (bundle mismatch)")
    return q, exclude


def rerank_depth(g: Serving, body: SearchRequest, s: ServiceSettings) -> int:
    block = getattr(g.encoder, "lexical", None)
    return s.rerank_depth if body.query is not None and block is not None and block.exact else 0


def index_key(body: SearchRequest, s: ServiceSettings, exclude: str | None, depth: int) -> tuple:
    """What one index call must share: searches with equal keys are answered by one call with all their rows."""
    f = body.filters
    return (f.locale if f else None, f.product_line if f else None, exclude, body.effort or s.effort, max(body.k, depth))


def index_search(g: Serving, q: np.ndarray, key: tuple) -> list[list[tuple[str, float]]]:
    locale, product_line, exclude, effort, k = key
    t1 = time.perf_counter()
    hits = g.index.search(q, k, locale=locale, product_line=product_line, exclude=exclude, effort=effort)
    M.STAGE.labels("search").observe(time.perf_counter() - t1)
    return hits


def answer(g: Serving, body: SearchRequest, hits: list, t0: float) -> dict:
    """Ranked hits -> the response document: the cut to k, the fields."""
    return {
        "hits": hit_docs(g, hits[: body.k], body.fields),
        "k": body.k,
        "index_size": len(g.index),
        "index_kind": g.index.kind,
        "bundle_version": g.encoder.version,
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
    }


def search(g: Serving, body: SearchRequest, s: ServiceSettings) -> dict:
    """The response document (the caller reads `state.serving` once: a model switch cannot split a request)."""
    t0 = time.perf_counter()
    q, exclude = query_of(g, body, s)
    depth = rerank_depth(g, body, s)
    hits = index_search(g, q, index_key(body, s, exclude, depth))
    if depth:
        hits = rescored(g, hits, q, [body.query], depth)
    return answer(g, body, hits[0], t0)


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
    """POST /search/batch: every search as /search would answer it, at a fraction of the cost: the texts embedded in one
    call to the query tower, one index call for each group of searches with the same filters, effort and k (FAISS
    scans the lists once for all their rows), and one store read for the terms every text search re-scores."""
    t0 = time.perf_counter()
    check_batch(searches, s, g.index.dim)
    texts = [b.query for b in searches if b.query is not None]
    vectors = iter(query_vectors(g, texts, s, field="searches[].query")) if texts else iter(())
    prepared: list[tuple[np.ndarray, int, tuple] | ApiError] = []
    for body in searches:
        vec = next(vectors)[None] if body.query is not None else None
        try:
            q, exclude = query_of(g, body, s, vec)
        except ApiError as exc:
            if exc.status not in ITEM_ERRORS:
                raise
            prepared.append(exc)
            continue
        depth = rerank_depth(g, body, s)
        prepared.append((q, depth, index_key(body, s, exclude, depth)))
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prepared):
        if not isinstance(p, ApiError):
            groups.setdefault(p[2], []).append(i)
    hits: dict[int, list] = {}
    for key, rows in groups.items():
        hits.update(zip(rows, index_search(g, np.vstack([prepared[i][0] for i in rows]), key)))
    # Every text search re-scored in one pass (they share the service's one rerank depth).
    texts_at = [i for i in hits if prepared[i][1]]
    if texts_at:
        depth = prepared[texts_at[0]][1]
        again = rescored(g, [hits[i] for i in texts_at], np.vstack([prepared[i][0] for i in texts_at]), [searches[i].query for i in texts_at], depth)
        hits.update(zip(texts_at, again))
    results = []
    for body, p, i in zip(searches, prepared, range(len(searches))):
        if isinstance(p, ApiError):
            results.append({"result": None, "error": {"status": p.status, "detail": p.detail}})
        else:
            results.append({"result": answer(g, body, hits[i], t0), "error": None})
    return {"results": results, "bundle_version": g.encoder.version, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

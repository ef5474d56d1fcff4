"""Duplicate detection: a product's nearest neighbours at or above a cosine threshold.

The threshold is the bundle's own (`Manifest.duplicates`, calibrated at export on the validation split's labelled
pairs to a target precision) unless the request gives one; the neighbours are those of the index, among products of
the same locale by default (two listings of one product in two marketplaces are not duplicates to a catalog team).
"""

from __future__ import annotations

import time

import numpy as np

from m5core.schema import Product, render_product
from service.errors import ApiError, from_store
from service.schemas import DuplicatesRequest
from service.search import ITEM_ERRORS, hit_docs
from service.serving import Serving
from service.settings import ServiceSettings


def threshold_of(g: Serving, requested: float | None) -> tuple[float, str, float | None]:
    """(threshold, its source, the bundle's precision there); 409 when neither the request nor the bundle has one."""
    if requested is not None:
        return requested, "request", None
    calibrated = getattr(getattr(g.encoder, "manifest", None), "duplicates", None)
    if calibrated is None:
        raise ApiError(
            409,
            f"bundle {g.encoder.version} has no calibrated duplicate threshold: pass threshold, or export the bundle from a "
            "catalog with labelled duplicate pairs in its validation split (`m5 train export`)",
        )
    return calibrated.threshold, "bundle", calibrated.precision


def _checked(g: Serving, body: DuplicatesRequest, s: ServiceSettings) -> tuple[float, str, float | None]:
    if body.k > s.max_k:
        raise ApiError(422, f"k: at most {s.max_k}")
    if (msg := g.mismatch()) is not None:
        raise ApiError(409, f"bundle mismatch: {msg}; the threshold belongs to the bundle that made the vectors")
    return threshold_of(g, body.threshold)


def duplicates(g: Serving, asin: str, body: DuplicatesRequest, s: ServiceSettings) -> dict:
    """One product's duplicates (`GET /asin/{asin}/duplicates`; the batch calls it per ASIN)."""
    t0 = time.perf_counter()
    threshold = _checked(g, body, s)
    # The index follows the store within milliseconds and holds the vector its neighbours are scored against: no store
    # round trip (a fifth of the request at 1M). A product it does not hold yet is read from the store.
    held = g.index.held(asin)
    if held is not None and held[1] is not None:
        return _answer(g, asin, held[0], held[1], body, s, threshold, t0)
    rec = from_store(g.store.get, asin)
    if rec is None:
        raise ApiError(404, f"asin {asin} is not in the catalog")
    if rec.vector.shape[0] != g.index.dim:
        raise ApiError(409, f"asin {asin} has a {rec.vector.shape[0]}-d vector, the index is {g.index.dim}-d (bundle mismatch)")
    return _answer(g, asin, rec.vector, rec.locale, body, s, threshold, t0)


def _answer(g: Serving, asin: str, vector: np.ndarray, locale: str, body: DuplicatesRequest, s: ServiceSettings, threshold: tuple, t0: float) -> dict:
    threshold, source, precision = threshold
    scope = locale if body.scope == "marketplace" else None
    hits = g.index.search(vector[None], body.k, locale=scope, exclude=asin, effort=s.duplicate_effort, near=True)[0]
    return {
        "asin": asin,
        "duplicates": hit_docs(g, [(a, sc) for a, sc in hits if sc >= threshold], body.fields),
        "threshold": threshold,
        "threshold_source": source,
        "calibrated_precision": precision,
        "scope": body.scope,
        "k": body.k,
        "bundle_version": g.encoder.version,
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
    }


def document_duplicates(g: Serving, docs: list[Product], body: DuplicatesRequest, s: ServiceSettings) -> list[dict]:
    """Product documents' duplicates: embedded in one call of the bundle's product tower, as the indexer would (so the
    calibrated threshold holds), then searched like a catalog product (the document's own ASIN excluded)."""
    t0 = time.perf_counter()
    threshold = _checked(g, body, s)
    tower = g.product_tower()
    scheme = getattr(getattr(tower, "manifest", None), "render_scheme", "fields")
    vectors = tower.embed([render_product(d.model_dump(), scheme) for d in docs])  # (n, dim)
    if vectors.shape[1] != g.index.dim:
        raise ApiError(409, f"the product tower gives {vectors.shape[1]}-d vectors, the index is {g.index.dim}-d (bundle mismatch)")
    return [_answer(g, d.asin, v, d.locale, body, s, threshold, t0) for d, v in zip(docs, vectors)]


def duplicates_batch(g: Serving, body: DuplicatesRequest, s: ServiceSettings) -> dict:
    """POST /duplicates: every ASIN as the GET answers it (an unknown one fails alone, 404, anything else the batch),
    or every product document."""
    t0 = time.perf_counter()
    if body.products is not None:
        if len(body.products) > s.max_duplicate_documents:
            raise ApiError(422, f"products: at most {s.max_duplicate_documents}")
        results = [{"asin": r["asin"], "result": r, "error": None} for r in document_duplicates(g, body.products, body, s)]
        return {"results": results, "bundle_version": g.encoder.version, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}
    if len(body.asins) > s.max_batch_asins:
        raise ApiError(422, f"asins: at most {s.max_batch_asins}")
    results = []
    for asin in body.asins:
        try:
            results.append({"asin": asin, "result": duplicates(g, asin, body, s), "error": None})
        except ApiError as exc:
            if exc.status not in ITEM_ERRORS:
                raise
            results.append({"asin": asin, "result": None, "error": {"status": exc.status, "detail": exc.detail}})
    return {"results": results, "bundle_version": g.encoder.version, "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

"""Duplicate detection: a product's nearest neighbours at or above a cosine threshold.

The threshold is the bundle's own (`Manifest.duplicates`, calibrated at export on the validation split's labelled
pairs to a target precision) unless the request gives one; the neighbours are those of the index, among products of
the same locale by default (two listings of one product in two marketplaces are not duplicates to a catalog team).
"""

from __future__ import annotations

import time

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


def duplicates(g: Serving, asin: str, body: DuplicatesRequest, s: ServiceSettings) -> dict:
    """One product's duplicates (`GET /asin/{asin}/duplicates`; the batch calls it per ASIN)."""
    t0 = time.perf_counter()
    if body.k > s.max_k:
        raise ApiError(422, f"k: at most {s.max_k}")
    if (msg := g.mismatch()) is not None:
        raise ApiError(409, f"bundle mismatch: {msg}; the threshold belongs to the bundle that made the vectors")
    threshold, source, precision = threshold_of(g, body.threshold)
    rec = from_store(g.store.get, asin)
    if rec is None:
        raise ApiError(404, f"asin {asin} is not in the catalog")
    if rec.vector.shape[0] != g.index.dim:
        raise ApiError(409, f"asin {asin} has a {rec.vector.shape[0]}-d vector, the index is {g.index.dim}-d (bundle mismatch)")
    locale = rec.locale if body.scope == "marketplace" else None
    hits = g.index.search(rec.vector[None], body.k, locale=locale, exclude=asin, effort=s.effort)[0]
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


def duplicates_batch(g: Serving, body: DuplicatesRequest, s: ServiceSettings) -> dict:
    """POST /duplicates: every ASIN as the GET answers it; an unknown one fails alone (404), anything else the batch."""
    t0 = time.perf_counter()
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

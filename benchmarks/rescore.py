"""What the exact re-score adds to a text search: the index's top 50 re-ranked with the stored exact terms.

    M5_REDIS_URL=$(deploy/local/services.sh url redis) .venv/bin/python benchmarks/rescore.py \
        --bundle BUNDLE --catalog DIR [--iters 3000] [--depth 50]

Loads the catalog's products through the indexer's own write path (`records_of`: vectors and exact terms) into
a throwaway Redis namespace and a flat index, then times, per judged query of the catalog (cycled), in process on
one thread: the index search at k=10 (what a text search cost before), the index search at the re-score depth,
`service.search.rescored` (one Redis call for the candidates' terms, then the arithmetic), and the query tower on a
cache miss for scale. Prints one JSON line; the namespace is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def main() -> None:
    from catalog.io import load_catalog
    from indexer.write import records_of
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.index import AnnIndex
    from m5core.lexical import RERANK_DEPTH
    from m5core.schema import Product, render_product
    from m5core.stores.redis import RedisStore
    from service.search import rescored

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--depth", type=int, default=RERANK_DEPTH)
    args = ap.parse_args()
    url = os.environ.get("M5_REDIS_URL", "redis://localhost:6379/0")

    m = load_manifest(args.bundle)
    product, query = OnnxEncoder(args.bundle, "product", threads=2, manifest=m), OnnxEncoder(args.bundle, "query", threads=1, manifest=m)
    if product.lexical is None or not product.lexical.exact:
        raise SystemExit(f"bundle {m.version} has no exact lexical terms: nothing to re-score")
    cat = load_catalog(args.catalog)
    docs = [Product.model_validate(p).model_dump() for p in cat.products()]
    texts = [render_product(d, m.render_scheme) for d in docs]
    t0 = time.perf_counter()
    vectors = product.embed(texts)
    records = records_of(docs, vectors, product, m.render_scheme)
    print(f"embedded {len(docs)} products in {time.perf_counter() - t0:.1f} s", flush=True)
    blob_bytes = [len(r.lex or b"") for r in records]

    ns = f"bench-rescore-{uuid.uuid4().hex[:8]}"
    store = RedisStore(url, ns)
    try:
        for s in range(0, len(records), 1000):
            store.put(records[s : s + 1000])
        asins, locales, lines = ([d[f] for d in docs] for f in ("asin", "locale", "product_line"))
        index = AnnIndex.build(m.dim, asins, vectors, locales, lines, [1] * len(docs), "flat", m.version)
        g = SimpleNamespace(store=store, encoder=query)
        qtexts = [q["text"] for q in cat.queries("test")] or [q["text"] for q in cat.queries()]
        qvecs = query.embed(qtexts)
        plain, deep, rescore, with_rescore, tower = [], [], [], [], []
        for i in range(args.iters):
            qi = i % len(qtexts)
            q = qvecs[qi : qi + 1]
            t0 = time.perf_counter()
            index.search(q, 10)
            t1 = time.perf_counter()
            hits = index.search(q, args.depth)[0]
            t2 = time.perf_counter()
            rescored(g, [hits], q, [qtexts[qi]], args.depth)[0][:10]
            t3 = time.perf_counter()
            plain.append(t1 - t0)
            deep.append(t2 - t1)
            rescore.append(t3 - t2)
            with_rescore.append(t3 - t1)
            if i < 1000:
                t3 = time.perf_counter()
                query.embed([f"{qtexts[qi]} {i}"])  # a cache miss
                tower.append(time.perf_counter() - t3)

        def pct(xs: list[float]) -> dict:
            ms = np.array(xs) * 1000
            return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}

        print(
            json.dumps(
                {
                    "bundle": m.version,
                    "products": len(docs),
                    "terms_bytes_mean": round(float(np.mean(blob_bytes)), 1),
                    "depth": args.depth,
                    "iters": args.iters,
                    "search_k10": pct(plain),
                    "search_depth": pct(deep),
                    "rescore": pct(rescore),
                    "search_depth_plus_rescore": pct(with_rescore),
                    "query_tower_miss": pct(tower),
                }
            )
        )
    finally:
        keys = list(store.client.scan_iter(match=f"{ns}:*", count=5000))
        for s in range(0, len(keys), 5000):
            store.client.unlink(*keys[s : s + 5000])
        store.close()


if __name__ == "__main__":
    main()

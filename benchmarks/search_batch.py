"""What a batch of searches costs against one: `POST /search/batch` of 32 text searches vs `POST /search` of one.

    M5_REDIS_URL=... python benchmarks/search_batch.py --bundle BUNDLE --catalog DIR [--batch 32 --rounds 40]

Loads the catalog's products into a throwaway Redis namespace through the indexer's backfill (the bundle's vectors
and exact terms), serves it in process (query cache off, so every text is a tower call), and times the catalog's
queries as single searches and as batches of `--batch` distinct texts: the service's own `took_ms` (server side)
and the client's wall time through the ASGI transport. Prints one JSON line; deletes the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import httpx
import numpy as np


async def measure(app, queries: list[str], batch: int, rounds: int) -> dict:
    single_srv, single_wall, batch_srv, batch_wall = [], [], [], []
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b", timeout=60) as c:
            for q in queries[:50]:  # warm-up: sessions, allocator, Redis connections
                await c.post("/search", json={"query": q, "k": 10})
            for r in range(rounds):
                texts = queries[(r * batch) % len(queries) :][:batch]
                for q in texts:
                    t0 = time.perf_counter()
                    res = (await c.post("/search", json={"query": q, "k": 10})).json()
                    single_wall.append(time.perf_counter() - t0)
                    single_srv.append(res["took_ms"])
                t0 = time.perf_counter()
                res = (await c.post("/search/batch", json={"searches": [{"query": q, "k": 10} for q in texts]})).json()
                batch_wall.append(time.perf_counter() - t0)
                batch_srv.append(res["took_ms"])
    p50 = lambda xs: float(np.percentile(xs, 50))  # noqa: E731
    return {
        "batch": batch,
        "rounds": rounds,
        "single_server_p50_ms": round(p50(single_srv), 3),
        "batch_server_p50_ms": round(p50(batch_srv), 3),
        "server_ratio": round(p50(batch_srv) / p50(single_srv), 2),
        "single_wall_p50_ms": round(p50(single_wall) * 1e3, 3),
        "batch_wall_p50_ms": round(p50(batch_wall) * 1e3, 3),
        "wall_ratio": round(p50(batch_wall) / p50(single_wall), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--catalog", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--redis-url", default=os.environ.get("M5_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args()

    from indexer.backfill import backfill
    from indexer.settings import IndexerSettings
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.events.local import LocalSink
    from m5core.stores.redis import RedisStore
    from service.app import create_app
    from service.settings import ServiceSettings

    ns = f"bench-batch-{uuid.uuid4().hex[:8]}"
    tmp = Path(f"/tmp/{ns}")
    manifest = load_manifest(args.bundle)
    s = IndexerSettings(store="redis", redis_url=args.redis_url, namespace=ns, events="local", local_events_dir=tmp, bundle=args.bundle)
    store = RedisStore(args.redis_url, ns)
    try:
        enc = OnnxEncoder(args.bundle, "product", threads=2, manifest=manifest)
        backfill(args.catalog / "products.jsonl", store, LocalSink(tmp), enc, s, manifest.render_scheme, 512)
        queries = list(dict.fromkeys(json.loads(line)["text"] for line in (args.catalog / "queries.jsonl").open()))
        settings = ServiceSettings(
            store="redis", redis_url=args.redis_url, namespace=ns, events="local", local_events_dir=tmp, bundle=args.bundle, query_cache_size=0
        )
        out = asyncio.run(measure(create_app(settings, follow_feed=False), queries, args.batch, args.rounds))
        print(json.dumps({"bundle": manifest.version, "products": store.count(), **out}))
    finally:
        for keys in iter(lambda: list(store.client.scan_iter(match=f"{ns}:*", count=1000))[:1000], []):
            store.client.unlink(*keys)
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

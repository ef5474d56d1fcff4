"""Bulk-load a catalog file: large encode batches and pipelined writes, published to the feed."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import orjson
from tqdm import tqdm

from catalog.io import read_jsonl
from indexer.settings import IndexerSettings
from m5core.events.base import EventSink
from m5core.feed import encode_feed_value
from m5core.schema import Product, content_hash, render_product
from m5core.stores.base import EmbeddingStore, VectorRecord

log = logging.getLogger(__name__)


def backfill(products_file: Path, store: EmbeddingStore, sink: EventSink, encoder, settings: IndexerSettings,
             scheme: str = "fields", batch: int = 512) -> dict:
    t0 = time.perf_counter()
    n_written = n_bad = 0
    bar = tqdm(desc="backfill", unit="p", mininterval=1.0)
    buf: list[dict] = []

    def flush() -> None:
        nonlocal n_written
        vecs = encoder.embed([render_product(d, scheme) for d in buf])
        recs = [VectorRecord(d["asin"], v, d["version"], encoder.version, content_hash(d), d["locale"], d["product_line"],
                             d["updated_at"], orjson.dumps(d)) for d, v in zip(buf, vecs)]
        for r, ok in zip(recs, store.put(recs)):
            if ok:
                sink.send(settings.embeddings_topic, r.asin.encode(), encode_feed_value(r))
                n_written += 1
        bar.update(len(buf))
        buf.clear()

    for doc in read_jsonl(products_file):
        try:
            buf.append(Product.model_validate(doc).model_dump())
        except ValueError as exc:
            n_bad += 1
            log.warning("skipping invalid product %s: %s", doc.get("asin"), str(exc)[:200])
            continue
        if len(buf) >= batch:
            flush()
    if buf:
        flush()
    sink.flush()
    bar.close()
    secs = time.perf_counter() - t0
    return {"written": n_written, "invalid": n_bad, "seconds": round(secs, 2), "products_per_s": round(n_written / max(secs, 1e-9), 1)}

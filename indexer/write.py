"""The write path every indexer job shares: product documents and their vectors -> versioned store records
-> the `catalog.embeddings` feed (the event loop, backfill and re-embed alike)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from m5core.events.base import EventSink
from m5core.feed import encode_feed_value
from m5core.schema import content_hash, render_product
from m5core.stores.base import EmbeddingStore, VectorRecord


def records_of(docs: Sequence[dict], vectors: np.ndarray, encoder, scheme: str) -> list[VectorRecord]:
    """Validated product documents (`Product.model_dump()`) and the (n, dim) vectors `encoder` gave them -> store
    records, with each product's exact lexical terms when the bundle has them (text search re-scores with them)."""
    block = getattr(encoder, "lexical", None)
    terms = block.product_terms([render_product(d, scheme) for d in docs]) if block is not None and block.exact else [None] * len(docs)
    return [
        VectorRecord(
            d["asin"],
            v,
            d["version"],
            encoder.version,
            content_hash(d),
            d["locale"],
            d["product_line"],
            float(d["updated_at"]),
            orjson.dumps(d),
            lex,
        )
        for d, v, lex in zip(docs, vectors, terms)
    ]


def write_records(store: EmbeddingStore, sink: EventSink | None, topic: str, records: list[VectorRecord]) -> list[bool]:
    """Version-checked put, then the feed gets each record the store took (not flushed: the caller flushes
    before it commits). -> written, per record."""
    written = store.put(records)
    if sink is not None:
        for r, ok in zip(records, written):
            if ok:
                sink.send(topic, r.asin.encode(), encode_feed_value(r))
    return written

"""Bulk-load a catalog file: large encode batches and pipelined writes, published to the feed.

With `snapshot_root`, the same pass also builds the FAISS index and saves it as a snapshot that
includes the feed up to its end offsets after the final flush, so the service starts from the file
instead of replaying the feed. Run it while no event indexer writes the same feed: anything another
writer published before the flush would be counted as included without being in the index.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from indexer.settings import IndexerSettings
from indexer.write import records_of, write_records
from m5core.events.base import EventSink
from m5core.jsonl import read_jsonl
from m5core.schema import Product, render_product
from m5core.stores.base import EmbeddingStore

log = logging.getLogger(__name__)


def backfill(
    products_file: Path,
    store: EmbeddingStore,
    sink: EventSink,
    encoder,
    settings: IndexerSettings,
    scheme: str = "fields",
    batch: int = 512,
    snapshot_root: Path | None = None,
    feed_source=None,
) -> dict:
    """products.jsonl -> store + feed (+ one FAISS snapshot). -> counts, seconds and products/s.

    feed_source: an EventSource on the embeddings topic, used only for its end offsets (snapshot meta).
    """
    t0 = time.perf_counter()
    kept: list[tuple[list, np.ndarray, list, list, list]] = []  # per batch: (asins, vectors, locales, lines, versions)
    n_written = n_bad = 0
    bar = tqdm(desc="backfill", unit="p", mininterval=1.0)

    def write(docs: list[dict], vecs: np.ndarray) -> None:
        nonlocal n_written
        recs = records_of(docs, vecs, encoder, scheme)
        written = [i for i, ok in enumerate(write_records(store, sink, settings.embeddings_topic, recs)) if ok]
        n_written += len(written)
        if snapshot_root is not None and written:  # a few arrays per batch, not objects per product
            kept.append(
                (
                    [recs[i].asin for i in written],
                    vecs[written],
                    [recs[i].locale for i in written],
                    [recs[i].product_line for i in written],
                    [recs[i].product_version for i in written],
                )
            )
        bar.update(len(docs))

    def batches():
        nonlocal n_bad
        buf: list[dict] = []
        for doc in read_jsonl(products_file):
            try:
                buf.append(Product.model_validate(doc).model_dump())
            except ValueError as exc:
                n_bad += 1
                log.warning("skipping invalid product %s: %s", doc.get("asin"), str(exc)[:200])
                continue
            if len(buf) >= batch:
                yield buf
                buf = []
        if buf:
            yield buf

    # Encode batch k+1 on a worker thread (ONNX Runtime releases the GIL) while this thread parses and
    # writes batch k: parsing, Redis and Kafka otherwise idle the encoder for ~40% of the run.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
        pending = None
        for docs in batches():
            job = (docs, pool.submit(encoder.embed, [render_product(d, scheme) for d in docs]))
            if pending is not None:
                write(pending[0], pending[1].result())
            pending = job
        if pending is not None:
            write(pending[0], pending[1].result())
    sink.flush()
    bar.close()
    out = {"written": n_written, "invalid": n_bad}
    if snapshot_root is not None:
        out["snapshot"] = str(_snapshot(kept, encoder, settings, snapshot_root, feed_source, store.namespace))
    secs = time.perf_counter() - t0
    return {**out, "seconds": round(secs, 2), "products_per_s": round(n_written / max(secs, 1e-9), 1)}


def _snapshot(kept: list[tuple], encoder, settings: IndexerSettings, root: Path, feed_source, namespace: str) -> Path:
    from m5core.index import AnnIndex
    from m5core.snapshots import save_snapshot

    asins, locales, lines, versions = ([x for part in kept for x in part[i]] for i in (0, 2, 3, 4))
    vectors = np.concatenate([part[1] for part in kept]) if kept else np.zeros((0, encoder.dim), np.float32)  # (n, dim)
    index = AnnIndex.build(encoder.dim, asins, vectors, locales, lines, versions, kind=settings.index_kind, version=encoder.version)
    offsets = feed_source.end_offsets() if feed_source is not None else {}
    path = save_snapshot(index, root, offsets, settings.snapshots_keep, {"bundle_versions": [encoder.version], "namespace": namespace})
    log.info("backfill snapshot %s: %d vectors", path, len(index))
    return path

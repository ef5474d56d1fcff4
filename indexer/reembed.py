"""Re-embed the catalog with a new bundle into a fresh namespace while the old one serves, gate, switch.

Steps: (1) read every live product document of the active namespace and write its new vector into
`{namespace}.{bundle version}`; (2) catch up with changes the event indexer made meanwhile (newer
versions re-embedded, deletes tombstoned); (3) gate: coverage, product-to-product top-k overlap
between the two namespaces on a sample, and (with a golden query set) recall@k of the new bundle's
query tower; (4) move the `{namespace}:active` pointer in one atomic write; (5) publish the namespace
to the feed, so a partner following `catalog.embeddings` gets every product in the new bundle, not only
those changed since. `rollback` moves the pointer back and publishes the old namespace the same way.
Readers (service, indexer) resolve the pointer at start-up with m5core.stores.active_namespace, so
after a switch the indexer is restarted with `--bundle NEW`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from indexer.write import records_of
from m5core.batching import batched
from m5core.events.base import EventSink, offsets_to_meta
from m5core.feed import encode_feed_value
from m5core.index import AnnIndex
from m5core.schema import render_product
from m5core.settings import StoreConfig
from m5core.stores import active_namespace, open_store, previous_namespace, switch_namespace
from m5core.stores.base import EmbeddingStore, VectorRecord

log = logging.getLogger(__name__)

CATCH_UP_PASSES = 5


class ReembedRefused(RuntimeError):
    """The new namespace failed a gate; the pointer was not moved."""


@dataclass(frozen=True)
class Gates:
    min_coverage: float = 0.999
    """Share of the old namespace's live products that must be in the new one."""
    min_overlap: float = 0.0
    """Mean top-k neighbour overlap old vs new on the sample (0 = report only: a better model may differ)."""
    min_recall: float = 0.0
    """recall@k of the golden queries on the new namespace (needs golden queries)."""
    sample: int = 200
    k: int = 10


def namespace_for(base: str, bundle_version: str) -> str:
    """`m5` + `2026-11-27-abc` -> `m5.2026-11-27-abc` (safe in Redis keys and sqlite)."""
    return f"{base}.{re.sub(r'[^A-Za-z0-9_.-]', '-', bundle_version)}"


def embed_docs(docs: list[dict], encoder, scheme: str) -> list[VectorRecord]:
    return records_of(docs, encoder.embed([render_product(d, scheme) for d in docs]), encoder, scheme)


def copy_namespace(old: EmbeddingStore, new: EmbeddingStore, encoder, scheme: str, batch: int = 512) -> int:
    """Pass 1: every live document of `old`, embedded with the new encoder into `new`. -> records written."""
    n = 0
    bar = tqdm(desc="reembed", unit="p", total=old.count(), mininterval=1.0)
    for chunk in batched(old.iter_docs(batch), batch):
        n += sum(new.put(embed_docs([orjson.loads(d) for _, d in chunk], encoder, scheme)))
        bar.update(len(chunk))
    bar.close()
    return n


def catch_up(old: EmbeddingStore, new: EmbeddingStore, encoder, scheme: str, batch: int = 512) -> dict:
    """Pass 2: apply what changed in `old` during pass 1 (newer versions, deletes) to `new`, and every tombstone. What changes during
    this pass the indexer restarted on `new` replays from the offsets `reembed` saves."""
    embedded = deleted = 0
    for chunk in batched(old.iter_docs(batch), batch):
        held = new.versions_of([a for a, _ in chunk])
        stale = [orjson.loads(d) for (a, d), (pv, _, _) in zip(chunk, held) if pv is None or pv < orjson.loads(d)["version"]]
        if stale:
            embedded += sum(new.put(embed_docs(stale, encoder, scheme)))
    for asin, pv in old.iter_tombstones(batch):  # tombstones too: a late older upsert must not bring a deleted product back
        deleted += new.delete(asin, pv)  # version-checked: a newer record in `new` stays
    return {"embedded": embedded, "deleted": deleted}


def deletes_ahead(old: EmbeddingStore, new: EmbeddingStore, batch: int = 1000) -> int:
    """Products `new` holds a newer tombstone of than `old`'s live record. A namespace switched back to after a
    rollback replays what the other one saw while it was active: until then such a product is covered, not missing."""
    ahead, tombs = 0, list(new.iter_tombstones(batch))
    for at in range(0, len(tombs), batch):
        chunk = tombs[at : at + batch]
        held = old.versions_of([a for a, _ in chunk])
        ahead += sum(1 for (_, deleted), (pv, _, tomb) in zip(chunk, held) if pv is not None and not tomb and deleted > pv)
    return ahead


def _sample_index(store: EmbeddingStore, asins: list[str]) -> tuple[AnnIndex | None, dict[str, np.ndarray]]:
    """-> a flat index of the products of `asins` the store holds, and their vectors (one read: the catalog changes
    while a re-embed runs, so a product may be gone by a second one)."""
    recs = [r for r in store.get_many(asins) if r is not None]
    if not recs:
        return None, {}
    vecs = np.stack([r.vector for r in recs]).astype(np.float32)  # (n, dim)
    idx = AnnIndex.build(
        vecs.shape[1],
        [r.asin for r in recs],
        vecs,
        [r.locale for r in recs],
        [r.product_line for r in recs],
        [r.product_version for r in recs],
        kind="flat",
    )
    return idx, {r.asin: v for r, v in zip(recs, vecs)}


def neighbour_overlap(old: EmbeddingStore, new: EmbeddingStore, sample: int = 200, k: int = 10, pool: int = 20_000, seed: int = 0) -> float:
    """Mean |top-k(old) & top-k(new)| / k for `sample` products, searched among a `pool` of shared products."""
    asins = sorted(a for a, _ in new.iter_docs())
    if len(asins) < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    pool_asins = [asins[i] for i in sorted(rng.choice(len(asins), min(pool, len(asins)), replace=False))]
    old_idx, old_vecs = _sample_index(old, pool_asins)
    new_idx, new_vecs = _sample_index(new, pool_asins)
    shared = [a for a in pool_asins if a in old_vecs and a in new_vecs][:sample]
    kk = min(k, len(pool_asins) - 1)
    if not shared or kk < 1 or old_idx is None or new_idx is None:
        return 1.0
    q_old = np.stack([old_vecs[a] for a in shared])  # (s, dim_old)
    q_new = np.stack([new_vecs[a] for a in shared])  # (s, dim_new)
    hits_old = old_idx.search(q_old, kk + 1)
    hits_new = new_idx.search(q_new, kk + 1)
    scores = []
    for a, ho, hn in zip(shared, hits_old, hits_new):
        so = {x for x, _ in ho if x != a}
        sn = {x for x, _ in hn if x != a}
        scores.append(len(so & sn) / kk)
    return float(np.mean(scores))


def golden_recall(store: EmbeddingStore, query_encoder, queries: list[dict], relevant: dict[str, set[str]], k: int = 10) -> float:
    """Mean recall@k of the golden queries against every live vector of `store` (query tower -> product tower)."""
    from m5core.metrics import recall_at_k

    recs = list(store.scan())
    idx = AnnIndex.build(
        recs[0].vector.shape[0],
        [r.asin for r in recs],
        np.stack([r.vector for r in recs]),
        [r.locale for r in recs],
        [r.product_line for r in recs],
        [r.product_version for r in recs],
        kind="flat",
    )
    qs = [q for q in queries if relevant.get(q["query_id"])]
    if not qs:
        raise ReembedRefused("golden queries: none has a relevant product in the store")
    qv = query_encoder.embed([q["text"] for q in qs])  # (q, dim)
    hits = idx.search(qv, k)
    return float(np.mean([recall_at_k([a for a, _ in h], relevant[q["query_id"]], k) for q, h in zip(qs, hits)]))


def load_golden(catalog_dir: Path, split: str = "test", limit: int = 200) -> tuple[list[dict], dict[str, set[str]]]:
    """Golden queries from a catalog directory: `split` queries and their exact ("E") matches."""
    from m5core.jsonl import read_jsonl

    queries = [q for q in read_jsonl(catalog_dir / "queries.jsonl") if q.get("split") == split][:limit]
    ids = {q["query_id"] for q in queries}
    relevant: dict[str, set[str]] = {}
    for j in read_jsonl(catalog_dir / "judgements.jsonl"):
        if j["query_id"] in ids and j["label"] == "E":
            relevant.setdefault(j["query_id"], set()).add(j["asin"])
    return queries, relevant


def reembed(
    settings: StoreConfig,
    encoder,
    scheme: str = "fields",
    query_encoder=None,
    golden: Path | None = None,
    gates: Gates = Gates(),
    batch: int = 512,
    switch: bool = True,
    sink: EventSink | None = None,
    topic: str = "catalog.embeddings",
) -> dict:
    """Fill the new namespace, gate it, switch the active pointer, publish it to `topic` through `sink` (if given).
    Raises ReembedRefused on a failed gate."""
    t0 = time.perf_counter()
    old_ns = active_namespace(settings)
    new_ns = namespace_for(settings.namespace, encoder.version)
    if new_ns == old_ns:
        raise ReembedRefused(f"bundle {encoder.version} is already the active namespace {old_ns}")
    old, new = open_store(settings, old_ns), open_store(settings, new_ns)
    try:
        # Where the event indexer stood before the copy: the new namespace starts there, so the indexer restarted
        # on it (`Indexer.start_offsets`) replays every change since, including those it wrote to the old namespace
        # after the catch-up below; versions make the overlap a no-op. The old store's offsets are read again after
        # each pass: a store that lost acknowledged writes meanwhile (a host crash) is behind, and what it lost was not
        # copied, so the replay starts at the earliest of them.
        group = getattr(settings, "group_id", None)
        seen = [old.load_offsets(group)] if group else []
        written = copy_namespace(old, new, encoder, scheme, batch)
        caught = {"embedded": 0, "deleted": 0}
        for _ in range(CATCH_UP_PASSES):  # under a busy stream a pass leaves a few changes; the gate counts after the last
            more = catch_up(old, new, encoder, scheme, batch)
            caught = {k: caught[k] + more[k] for k in caught}
            if group:
                seen.append(old.load_offsets(group))
            if not any(more.values()):
                break
        start = earliest(seen)
        report: dict = {"from": old_ns, "to": new_ns, "written": written, "catch_up": caught, "old_count": old.count(), "new_count": new.count()}
        report["deleted_ahead"] = deletes_ahead(old, new)
        report["coverage"] = (report["new_count"] + report["deleted_ahead"]) / max(report["old_count"], 1)
        report["overlap_at_k"] = neighbour_overlap(old, new, gates.sample, gates.k)
        if golden is not None and query_encoder is not None:
            queries, relevant = load_golden(golden, limit=gates.sample)
            report["recall_at_k"] = golden_recall(new, query_encoder, queries, relevant, gates.k)
        failed = []
        if report["coverage"] < gates.min_coverage:
            failed.append(f"coverage {report['coverage']:.4f} < {gates.min_coverage}")
        if report["overlap_at_k"] < gates.min_overlap:
            failed.append(f"overlap@{gates.k} {report['overlap_at_k']:.3f} < {gates.min_overlap}")
        if "recall_at_k" in report and report["recall_at_k"] < gates.min_recall:
            failed.append(f"recall@{gates.k} {report['recall_at_k']:.3f} < {gates.min_recall}")
        report["seconds"] = round(time.perf_counter() - t0, 2)
        if group and start:
            new.save_offsets(group, start)
            report["replay_from"] = offsets_to_meta(start)
        if failed:
            raise ReembedRefused(f"{new_ns} not activated: " + "; ".join(failed) + f" (report {report})")
        if switch:
            switch_namespace(settings, new_ns)
            report["switched"] = True
            log.info("active namespace %s -> %s", old_ns, new_ns)
            if sink is not None:
                report["published"] = publish_namespace(new, sink, topic)
        return report
    finally:
        old.close()
        new.close()


def earliest(reads: list[dict]) -> dict:
    """Offsets per partition, the lowest of several reads; a read without a partition (a store that lost all of it)
    makes it 0: replay the partition from its start."""
    parts = {tp for r in reads for tp in r}
    return {tp: min(r.get(tp, 0) for r in reads) for tp in parts}


def publish_namespace(store: EmbeddingStore, sink: EventSink, topic: str, batch: int = 1000) -> int:
    """Every live record of `store` onto the feed, flushed. Followers take a record only if it is not older than
    what they hold, so a product the running indexer changes meanwhile ends at its newest version. -> records sent."""
    n = 0
    bar = tqdm(desc="publish", unit="p", total=store.count(), mininterval=1.0)
    for rec in store.scan(batch):
        sink.send(topic, rec.asin.encode(), encode_feed_value(rec))
        n += 1
        bar.update(1)
    sink.flush()
    bar.close()
    return n


def rollback(settings: StoreConfig, sink: EventSink | None = None, topic: str = "catalog.embeddings") -> tuple[str, str]:
    """Point readers back at the namespace active before the last switch, and publish it (see `publish_namespace`;
    what changed since the switch reaches it when the indexer restarted on it replays from its stored offsets). -> (from, to)."""
    prev = previous_namespace(settings)
    if prev is None:
        raise ReembedRefused(f"no previous namespace recorded under {settings.namespace}:active:prev")
    cur = switch_namespace(settings, prev)
    if sink is not None:
        store = open_store(settings, prev)
        try:
            publish_namespace(store, sink, topic)
        finally:
            store.close()
    return cur, prev

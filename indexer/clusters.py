"""`m5 duplicates clusters`: the catalog's duplicate clusters, for catalog teams that merge listings.

Every live product's nearest neighbours (the index's k, within its locale by default) at or above the duplicate
threshold are links; clusters are their connected components, joined strongest link first, and a join that would
grow a cluster past `max_size` is refused and counted on both sides: near-duplicate chains ("red shoe 42", "red
shoe 43", ...) would otherwise chain a whole product type into one cluster. Written as JSONL, largest cluster first.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from m5core.index import AnnIndex
from m5core.stores.base import EmbeddingStore

log = logging.getLogger(__name__)


class Clusters:
    """Union-find over row numbers with a size cap (`join` refuses what would exceed it). Plain lists: 9.7M joins of a
    1M catalog ran in Python, and a list element costs a third of a numpy scalar's access."""

    def __init__(self, n: int, max_size: int):
        self.parent = list(range(n))
        self.size = [1] * n
        self.cut = [0] * n  # links refused by the cap, per root
        self.max_size = max_size

    def root(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(self, a: int, b: int) -> bool:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return True
        if self.size[ra] + self.size[rb] > self.max_size:
            self.cut[ra] += 1
            self.cut[rb] += 1
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.cut[ra] += self.cut[rb]
        return True


def links(
    index: AnnIndex,
    asins: list[str],
    vectors: np.ndarray,
    locales: list[str],
    k: int,
    threshold: float,
    same_locale: bool,
    batch: int,
    effort: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, score) arrays of every neighbour pair at or above the threshold, i < j, each once, strongest first,
    with a progress bar."""
    row = {a: i for i, a in enumerate(asins)}
    groups: dict[str | None, list[int]] = {}
    for i, loc in enumerate(locales):
        groups.setdefault(loc if same_locale else None, []).append(i)
    parts_i, parts_j, parts_s = [], [], []
    with tqdm(total=len(asins), desc="neighbours", unit="p", mininterval=2.0) as bar:
        for loc, rows in groups.items():
            for lo in range(0, len(rows), batch):
                part = rows[lo : lo + batch]
                for i, hits in zip(part, index.search(vectors[part], k + 1, locale=loc, effort=effort, near=True)):
                    js = [(row[a], score) for a, score in hits if score >= threshold]
                    parts_i.append(np.full(len(js), i, np.int64))
                    parts_j.append(np.fromiter((j for j, _ in js), np.int64, len(js)))
                    parts_s.append(np.fromiter((sc for _, sc in js), np.float32, len(js)))
                bar.update(len(part))
    if not parts_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, score = np.concatenate(parts_i), np.concatenate(parts_j), np.concatenate(parts_s)
    keep = i != j
    lo, hi, score = np.minimum(i, j)[keep], np.maximum(i, j)[keep], score[keep]
    _, first = np.unique(lo * len(asins) + hi, return_index=True)  # each pair once (found from both ends)
    order = first[np.argsort(-score[first], kind="stable")]  # strongest first: the cap keeps a cluster's closest members
    return lo[order], hi[order], score[order]


def duplicate_clusters(
    store: EmbeddingStore,
    out_path: Path,
    threshold: float,
    k: int = 20,
    max_size: int = 50,
    same_locale: bool = True,
    index_kind: str = "auto",
    batch: int = 1024,
    effort: int | None = None,
) -> dict:
    """Clusters of the store's live products -> JSONL at out_path (written whole, then renamed). -> counts and seconds."""
    t0 = time.perf_counter()
    asins, vecs, locales, lines, versions = [], [], [], [], []
    for rec in tqdm(store.scan(5000), total=store.count(), desc="read", unit="p", mininterval=2.0):
        asins.append(rec.asin)
        vecs.append(rec.vector)
        locales.append(rec.locale)
        lines.append(rec.product_line)
        versions.append(rec.product_version)
    if not asins:
        raise ValueError(f"namespace {store.namespace} holds no products: nothing to cluster")
    vectors = np.stack(vecs).astype(np.float32, copy=False)  # (n, dim)
    del vecs
    read_s = time.perf_counter() - t0
    index = AnnIndex.build(vectors.shape[1], asins, vectors, locales, lines, versions, index_kind)  # type: ignore[arg-type]
    lo, hi, scores = links(index, asins, vectors, locales, k, threshold, same_locale, batch, effort)
    uf = Clusters(len(asins), max_size)
    min_link: dict[int, float] = {}
    for i, j, score in zip(lo.tolist(), hi.tolist(), scores.tolist()):
        if uf.join(i, j):
            r = uf.root(i)
            min_link[r] = min(min_link.get(r, score), score)
    members: dict[int, list[int]] = {}
    for row in np.unique(np.concatenate([lo, hi])).tolist():
        members.setdefault(uf.root(row), []).append(row)
    clusters = sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), min(asins[i] for i in m)))
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        for n, m in enumerate(clusters):
            r = uf.root(m[0])
            doc = {"cluster": n, "size": len(m), "asins": sorted(asins[i] for i in m), "min_link": round(min_link.get(r, threshold), 6)}
            if uf.cut[r]:
                doc["cut"] = {"links": int(uf.cut[r]), "reason": f"size cap {max_size}: links above the threshold to other clusters not followed"}
            f.write(orjson.dumps(doc) + b"\n")
    os.replace(tmp, out_path)
    secs = time.perf_counter() - t0
    return {
        "products": len(asins),
        "links": len(lo),
        "clusters": len(clusters),
        "clustered_products": sum(len(m) for m in clusters),
        "largest": max((len(m) for m in clusters), default=0),
        "capped": sum(1 for m in clusters if uf.cut[uf.root(m[0])]),
        "threshold": threshold,
        "read_seconds": round(read_s, 1),
        "seconds": round(secs, 1),
        "index_kind": index.kind,
    }

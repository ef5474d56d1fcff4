"""USearch (HNSW, in-process) as the peer vector index, configured for cosine on normalised vectors."""

from __future__ import annotations

import numpy as np
from usearch.index import Index


class USearchPeer:
    name = "usearch HNSW (M=16, f32)"

    def __init__(self, dim: int, threads: int = 2):
        self.index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=128)
        self.threads = threads

    def build(self, vectors: np.ndarray) -> None:  # (n, dim) float32
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=self.threads)

    def upsert(self, key: int, vector: np.ndarray) -> None:
        self.index.add(key, vector)

    def search(self, queries: np.ndarray, k: int, effort: int) -> np.ndarray:  # (n, dim) -> (n, k) int keys
        self.index.expansion_search = effort
        out = self.index.search(queries, k, threads=1)
        return np.asarray(out.keys).reshape(len(queries), -1)

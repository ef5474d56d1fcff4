"""Chroma (PyPI `chromadb`) in local mode as a peer vector database: PersistentClient, HNSW collection.

Local mode runs Chroma's Rust core inside the client process (no server): writes go to its log and are
applied to the HNSW segment in batches; reads see them at once. ids are strings in Chroma, so our int
keys travel as decimal strings. The search knob is the collection's ef_search, changed with modify();
chromadb 1.5.9 keeps using the ef_search the HNSW segment was loaded with until the client is reopened,
so a change of effort reopens it (tuning only; the timed loop runs at one effort).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

COLLECTION = "peer"


class ChromaPeer:
    knob = "ef_search"
    efforts = [16, 32, 64, 128, 256, 512, 1024, 2048]

    def __init__(self, dim: int, m: int = 16, ef_construction: int = 128, path: Path | None = None, threads: int = 2):
        self.dim = dim
        self.name = f"Chroma HNSW (M={m}, local PersistentClient)"
        self._tmp = None if path else tempfile.TemporaryDirectory(prefix="m5-chroma-")
        self.path = Path(path or self._tmp.name)
        self.client = self._open()
        self.col = self.client.create_collection(
            COLLECTION,
            embedding_function=None,
            configuration={"hnsw": {"space": "ip", "max_neighbors": m, "ef_construction": ef_construction, "ef_search": 64, "num_threads": threads}},
        )
        self._ef = 64

    def _open(self):
        import chromadb
        from chromadb.config import Settings

        return chromadb.PersistentClient(path=str(self.path), settings=Settings(anonymized_telemetry=False))

    def build(self, ids: np.ndarray, vectors: np.ndarray, batch: int = 5000) -> None:
        """Add (n,) int ids with (n, dim) float32 vectors; build time is until the last add returns."""
        batch = min(batch, self.client.get_max_batch_size())
        for i in range(0, len(ids), batch):
            self.col.add(ids=[str(int(k)) for k in ids[i : i + batch]], embeddings=vectors[i : i + batch])

    def upsert(self, key: int, vector: np.ndarray) -> None:
        self.col.upsert(ids=[str(int(key))], embeddings=vector[None])

    def _set_ef(self, effort: int) -> None:
        if effort != self._ef:
            self.col.modify(configuration={"hnsw": {"ef_search": int(effort)}})
            self.client.clear_system_cache()
            self.client = self._open()
            self.col = self.client.get_collection(COLLECTION, embedding_function=None)
            self._ef = effort

    def search(self, queries: np.ndarray, k: int, effort: int) -> np.ndarray:  # (n, dim) -> (n, k) int keys, -1 padded
        self._set_ef(max(effort, k))
        res = self.col.query(query_embeddings=queries, n_results=k, include=[])
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for row, found in enumerate(res["ids"]):
            out[row, : len(found)] = [int(s) for s in found[:k]]
        return out

    def close(self) -> None:
        if self.client is not None:
            self.client.clear_system_cache()
            self.client = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ChromaPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

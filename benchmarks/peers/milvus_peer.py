"""Milvus Lite as a peer vector database: its own gRPC server process, driven through pymilvus.

Milvus Lite (PyPI `milvus-lite`) is the embedded edition of Milvus: a WAL + memtable, Parquet
segments each with a FAISS index built in the background, and Milvus's gRPC API. It runs here as a
separate process (`python -m milvus_lite server`) so that, like the M5 service, the database does
not share the client's interpreter; the client is the ordinary `pymilvus.MilvusClient`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COLLECTION = "peer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusLitePeer:
    """One collection (int64 primary key + float vector, inner product) with an HNSW index."""

    knob = "ef"
    efforts = [16, 32, 64, 128, 256, 512, 1024, 2048]

    def __init__(self, dim: int, m: int = 16, ef_construction: int = 128, data_dir: Path | None = None, start_timeout_s: float = 60.0):
        from pymilvus import DataType, MilvusClient

        self.dim, self.m, self.ef_construction = dim, m, ef_construction
        self.name = f"Milvus Lite HNSW (M={m}, gRPC, own process)"
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="m5-milvus-")
        data_dir = data_dir or Path(self._tmp.name) / "milvus"
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_listening(start_timeout_s)
            self.client = MilvusClient(uri=f"http://127.0.0.1:{self.port}")
            schema = self.client.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=dim)
            index = self.client.prepare_index_params()
            index.add_index(field_name="v", index_type="HNSW", metric_type="IP", params={"M": m, "efConstruction": ef_construction})
            self.client.create_collection(COLLECTION, schema=schema, index_params=index)
        except BaseException:
            self.close()
            raise

    def _wait_listening(self, timeout_s: float) -> None:
        t = time.time()
        while time.time() - t < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus_lite server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"milvus_lite server not listening on {self.port} after {timeout_s:.0f} s")

    def build(self, ids: np.ndarray, vectors: np.ndarray, batch: int = 5000, index_timeout_s: float = 3600.0) -> None:
        """Insert (n,) int64 ids with (n, dim) float32 vectors, flush, and wait until every row is indexed."""
        for i in range(0, len(ids), batch):
            self.client.insert(COLLECTION, [{"id": int(k), "v": v} for k, v in zip(ids[i : i + batch], vectors[i : i + batch])])
        self.client.flush(COLLECTION)
        t = time.time()
        while True:  # segment indexes are built by a background worker after the flush
            info = self.client.describe_index(COLLECTION, "v")
            if info.get("indexed_rows", 0) >= len(ids) and not info.get("pending_index_rows", 0):
                break
            if time.time() - t > index_timeout_s:
                raise TimeoutError(f"milvus_lite indexed {info.get('indexed_rows')} of {len(ids)} rows in {index_timeout_s:.0f} s")
            time.sleep(0.05)
        # milvus-lite 3.2.2 keeps searching the flushed segments by brute force until the collection is
        # reloaded (the background-built HNSW is not attached to the live segments): reload, as a user would.
        self.client.release_collection(COLLECTION)
        self.client.load_collection(COLLECTION)

    def upsert(self, key: int, vector: np.ndarray) -> None:
        self.client.upsert(COLLECTION, [{"id": int(key), "v": vector}])

    def search(self, queries: np.ndarray, k: int, effort: int) -> np.ndarray:  # (n, dim) -> (n, k) int keys, -1 padded
        hits = self.client.search(
            COLLECTION,
            data=list(queries),
            limit=k,
            anns_field="v",
            output_fields=[],
            search_params={"metric_type": "IP", "params": {"ef": max(effort, k)}},
        )
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for row, found in enumerate(hits):
            keys = [h["id"] for h in found][:k]
            out[row, : len(keys)] = keys
        return out

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
            self.client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # its graceful path: drain, close the db
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MilvusLitePeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

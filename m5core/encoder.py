"""Encoders: texts -> L2-normalised float32 vectors. No torch here.

`OnnxEncoder` runs one tower of a bundle with ONNX Runtime; `HashEncoder` is a deterministic
stand-in with the same interface for fast tests (its vectors follow token overlap).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from m5core.bundle import BundleError, Manifest, load_manifest
from m5core.lexical import LexicalBlock, words

Tower = Literal["product", "query"]


@runtime_checkable
class Encoder(Protocol):
    version: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Encode texts.

        Returns:
            (len(texts), dim) float32, each row L2-normalised.
        """
        ...


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def embed_in_batches(encoder: Encoder, texts: list[str], batch: int, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(len(texts), dim) float32, one `embed` call per `batch` texts (bounded memory; `on_batch(done)` after each)."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)  # (n, dim)
    for i in range(0, len(texts), batch):
        out[i : i + batch] = encoder.embed(texts[i : i + batch])
        if on_batch is not None:
            on_batch(min(i + batch, len(texts)))
    return out


SUB_BATCH = 16  # rows per ONNX Runtime call in a large batch (intra-op: 16 1,165/s, 32 1,092/s, 64 906/s; side by side 8/16/32 within noise)


def known_share(tokenizer, text: str) -> float:
    """The share of a text's words (digits aside: model numbers are nobody's vocabulary) that the tokenizer
    cuts into pieces of two or more characters on average: 1.0 for "cordless drill", 0.0 for Arabic spelt
    letter by letter by an English vocabulary; 1.0 for a text with no such words."""
    ws = [w for w in words(text) if not any(c.isdigit() for c in w)]
    if not ws:
        return 1.0
    known = sum(len(w) >= 2 * len(tokenizer.model.tokenize(w)) for w in ws)
    return known / len(ws)


class OnnxEncoder:
    """One tower of a bundle, run by ONNX Runtime on CPU, with the bundle's lexical block appended.

    `lexical`: which side of the lexical block to append, the tower's own by default ("product" weights
    words by BM25, "query" by presence); "off" returns the towers' dense vectors alone (the int8 gate,
    and reports that show what the block adds).

    `threads` runs that many sub-batches at once, each single-threaded (data parallel), instead of
    splitting every operator across threads (intra-op). A 2-thread intra-op pool meets at a barrier
    after each operator, so whenever anything else takes a core (the indexer's own Python, Redis, the
    broker) both cores wait; independent sub-batches lose only the time actually taken. 4x256 int8
    tower, batch 512, 2 cores: 949-1,185 products/s intra-op, 1,299-1,344 side by side; beside a
    process busy 20% of one core, 802-985 against 892-1,186 (benchmarks/encoder_threads.py).
    """

    def __init__(
        self,
        bundle_dir: Path | str,
        tower: Tower = "product",
        threads: int = 1,
        manifest: Manifest | None = None,
        lexical: Tower | Literal["off"] | None = None,
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or load_manifest(self.bundle_dir)
        if tower not in self.manifest.towers:
            raise BundleError(f"bundle {self.manifest.version} has no {tower} tower")
        spec = self.manifest.towers[tower]
        self.version = self.manifest.version
        self.tower = tower
        self.lexical: LexicalBlock | None = None
        self._lexical_side = lexical or tower
        if self.manifest.lexical and self._lexical_side != "off":
            try:
                self.lexical = LexicalBlock.load(self.bundle_dir / self.manifest.lexical.file)
            except ValueError as exc:
                raise BundleError(f"bundle {self.version}: {exc}") from exc
            if self.lexical.dims != self.manifest.lexical.dims:
                raise BundleError(
                    f"bundle {self.version}: {self.manifest.lexical.file} has {self.lexical.dims} dims, "
                    f"the manifest says {self.manifest.lexical.dims}"
                )
        self.dense_dim = self.manifest.dense_dim
        self.dim = self.manifest.dim if self.lexical else self.dense_dim
        self.max_length = spec.max_length
        self.tokenizer = Tokenizer.from_file(str(self.bundle_dir / self.manifest.tokenizer))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.bundle_dir / spec.onnx), opts, providers=["CPUExecutionProvider"])
        self._pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"onnx-{tower}") if self.threads > 1 else None  # starts threads on first use

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (input_ids, attention_mask), both (batch, seq) int64, padded to the longest."""
        return self._pad(self.tokenizer.encode_batch(texts) if len(texts) > 1 else [self.tokenizer.encode(texts[0])])

    def _pad(self, encs: list) -> tuple[np.ndarray, np.ndarray]:
        seq = max(1, max(len(e.ids) for e in encs))
        ids = np.full((len(encs), seq), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), seq), dtype=np.int64)
        for i, e in enumerate(encs):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
        return ids, mask

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return out.astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        dense = self.embed_dense(texts)
        if self.lexical is None:
            return dense
        if self._lexical_side == "product":
            return self.lexical.append(dense, self.lexical.products(texts))
        shares = [self.lexical.query_share(known_share(self.tokenizer, t)) for t in texts] if self.lexical.adaptive else None
        return self.lexical.append(dense, self.lexical.queries(texts), shares)

    def embed_dense(self, texts: list[str]) -> np.ndarray:
        """The tower's own (n, dense_dim) output."""
        if len(texts) == 1 or (self.threads == 1 and len(texts) <= SUB_BATCH):
            return self.run(*self.tokenize(texts))
        # Length-sorted sub-batches: padding a whole batch to its longest text wastes ~25% of the
        # product tower's work on catalog text (4x256 int8 tower, 2 threads, batch 256: 650 products/s padded whole, 1,165 sorted).
        encs = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        size = min(SUB_BATCH, -(-len(texts) // self.threads))  # a small batch still uses every thread
        parts = [order[lo : lo + size] for lo in range(0, len(order), size)]
        out = np.empty((len(texts), self.dense_dim), dtype=np.float32)  # (n, dense_dim)

        def one(rows: list[int]) -> None:
            out[rows] = self.run(*self._pad([encs[i] for i in rows]))

        if self._pool is None:
            for rows in parts:
                one(rows)
        else:
            for fut in [self._pool.submit(one, rows) for rows in parts]:
                fut.result()
        return out


class HashEncoder:
    """Feature-hashing bag of words: deterministic, instant, lexical. For tests and smoke runs only."""

    def __init__(self, dim: int = 64, version: str = "hash-v1"):
        self.dim = dim
        self.version = version

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for tok in words(text):
            h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
            v[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        if not v.any():
            v[0] = 1.0
        return v

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.stack([self._one(t) for t in texts]))

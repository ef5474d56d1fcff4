"""The lexical block: a hashed BM25 vector appended to every dense embedding.

A dense encoder that started from an English checkpoint ranks well on words it learned and poorly on
the rest: Arabic and German listings written by hand, brand names, model numbers. BM25 ranks those
by exact words. Appending a BM25 vector to each embedding puts both in one inner product, so FAISS,
the store, the feed and partners' own kNN keep working on one vector (the single-index sparse-dense
hybrid of Luan et al. 2021 and of the vector stores that offer it), with no second index to keep
in step. Each part is unit-normalised and the two are mixed with a fixed share s:

    product: [sqrt(1-s) * dense ; sqrt(s) * unit(bm25 weights of its words)]
    query:   [sqrt(1-s) * dense ; sqrt(s) * unit(its distinct words)]
    product . query = (1-s) * cosine(dense) + s * cosine(bm25, words)      (unit length, a cosine again)

so a product's score is not bent by how many words it has, and product . product (duplicates, search
by ASIN) is the same mix. Words are hashed (crc32, signed) into `dims` buckets, so the block is
fixed-size and any word of any language has a place; the idf of each bucket is fitted on the training
catalog when the bundle is exported and frozen in it, so a product's vector depends only on its text
and the bundle.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORD_RE = re.compile(r"\w+", re.UNICODE)
FILE = "lexical.json"


def words(text: str) -> list[str]:
    """Lower-cased word characters runs: the unit BM25 counts, in every script."""
    return WORD_RE.findall(text.lower())


def _buckets(tokens: list[str], dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Words -> (bucket, sign) arrays. The sign halves the bias that colliding words add to a score."""
    crc = np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.uint64, count=len(tokens))
    return (crc % dims).astype(np.int64), np.where(crc >> 31 & 1, 1.0, -1.0).astype(np.float32)


@dataclass(frozen=True)
class LexicalBlock:
    dims: int
    share: float
    """s above: the lexical cosine's share of the score."""
    idf: np.ndarray
    """(dims,) float32 BM25 idf of each bucket, fitted on the training catalog."""
    avgdl: float
    k1: float = 1.2
    b: float = 0.75

    @classmethod
    def fit(cls, texts: list[str], dims: int, share: float, k1: float = 1.2, b: float = 0.75) -> LexicalBlock:
        """Bucket idf and mean length from a catalog's rendered products (the BM25 statistics, frozen)."""
        if dims <= 0 or not 0 < share < 1:
            raise ValueError(f"lexical block: dims ({dims}) must be positive and share ({share}) between 0 and 1")
        df = np.zeros(dims, np.float64)
        total = 0
        for text in texts:
            toks = words(text)
            total += len(toks)
            if toks:
                df[np.unique(_buckets(toks, dims)[0])] += 1
        n = len(texts)
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        return cls(dims, share, idf, avgdl=total / max(1, n), k1=k1, b=b)

    def products(self, texts: list[str]) -> np.ndarray:
        """(n, dims) BM25 term weights of each product (saturated term frequency x idf, length-normalised)."""
        out = np.zeros((len(texts), self.dims), np.float32)
        for row, text in enumerate(texts):
            toks = words(text)
            if not toks:
                continue
            uniq, tf = np.unique(np.array(toks), return_counts=True)
            bucket, sign = _buckets(uniq.tolist(), self.dims)
            norm = self.k1 * (1 - self.b + self.b * len(toks) / self.avgdl)
            np.add.at(out[row], bucket, sign * self.idf[bucket] * tf * (self.k1 + 1) / (tf + norm))
        return out

    def queries(self, texts: list[str]) -> np.ndarray:
        """(n, dims) each query's distinct words (their dot with `products` is BM25 up to a constant)."""
        out = np.zeros((len(texts), self.dims), np.float32)
        for row, text in enumerate(texts):
            toks = sorted(set(words(text)))
            if toks:
                idx, sign = _buckets(toks, self.dims)
                np.add.at(out[row], idx, sign)
        return out

    def append(self, dense: np.ndarray, lexical: np.ndarray) -> np.ndarray:
        """The served vectors: unit dense and unit lexical rows mixed by the share (a text with no words keeps its dense part alone)."""
        lex = lexical / np.maximum(np.linalg.norm(lexical, axis=1, keepdims=True), 1e-12)
        v = np.hstack([math.sqrt(1 - self.share) * dense, math.sqrt(self.share) * lex]).astype(np.float32, copy=False)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "dims": self.dims,
                    "share": self.share,
                    "k1": self.k1,
                    "b": self.b,
                    "avgdl": self.avgdl,
                    "idf": [round(float(x), 6) for x in self.idf],
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> LexicalBlock:
        """Raises ValueError naming the file when it is not a lexical block of consistent size."""
        try:
            d = json.loads(Path(path).read_text())
            idf = np.asarray(d["idf"], np.float32)
            block = cls(int(d["dims"]), float(d["share"]), idf, float(d["avgdl"]), float(d["k1"]), float(d["b"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a lexical block: {exc}") from exc
        if block.dims <= 0 or idf.shape != (block.dims,) or not 0 < block.share < 1 or block.avgdl <= 0:
            raise ValueError(f"{path}: lexical block has dims {block.dims}, {idf.shape[0]} idf values, share {block.share}")
        return block

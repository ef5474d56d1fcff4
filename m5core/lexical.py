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

The terms counted are the analyzer's. `char4` (the default since session 8) counts the character 4-grams of
each word with its boundaries ("<akku", "akku", ...), the n-gram indexing that multilingual retrieval uses for
compounding and inflecting languages (McNamee & Mayfield 2004): "Akkuschrauber" meets "Akku-Bohrschrauber",
"المثقاب" meets "مثقاب", "sunglases" meets "sunglasses", with no per-language stemmer. `words` (the bundles
exported before it) counts whole words, as the BM25 baseline does.

A query's own mix follows what the dense tower can read of it (`query_share`, `adaptive` bundles): the share of
its words that the tower's vocabulary holds in pieces of two or more characters (`m5core.encoder.known_share`).
A query the tower spells letter by letter (a script its starting checkpoint never learned) is ranked by the
block alone; one it reads keeps the trained share.
"""

from __future__ import annotations

import json
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


def char_ngrams(text: str, n: int = 4) -> list[str]:
    """Each word's character n-grams with "<" and ">" marking its ends; a word shorter than n - 1 is kept whole
    ("4", "xl"), and the grams of a word that starts and ends the same way stay distinct from a shorter word's."""
    out: list[str] = []
    for w in words(text):
        padded = f"<{w}>"
        if len(padded) <= n:
            out.append(padded)
        else:
            out.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return out


ANALYZERS = {"words": words, "char4": char_ngrams}
"""Name (saved in lexical.json, so a bundle keeps the terms it was fitted with) -> text to terms."""


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
    analyzer: str = "words"
    """A key of ANALYZERS: the terms hashed into buckets."""
    adaptive: bool = False
    """Queries the dense tower cannot read lean on the block (`query_share`); False: every query at `share`."""

    def __post_init__(self) -> None:
        if self.analyzer not in ANALYZERS:
            raise ValueError(f"lexical block: analyzer {self.analyzer!r} is not one of {', '.join(ANALYZERS)}")

    def query_share(self, known: float) -> float:
        """The lexical share of a query whose words the tower's vocabulary knows in proportion `known` (0..1).

        A starting checkpoint that never learned a script spells its words letter by letter, and the dense
        part of such a query is noise: all of the query's weight goes to the block then, and a query in words
        the tower knows keeps the trained share. Products keep the trained share, so only the query's mix moves."""
        return self.share if not self.adaptive else 1 - (1 - self.share) * min(1.0, max(0.0, known))

    def terms(self, text: str) -> list[str]:
        return ANALYZERS[self.analyzer](text)

    @classmethod
    def fit(
        cls, texts: list[str], dims: int, share: float, k1: float = 1.2, b: float = 0.75, analyzer: str = "char4", adaptive: bool = True
    ) -> LexicalBlock:
        """Bucket idf and mean length from a catalog's rendered products (the BM25 statistics, frozen)."""
        if dims <= 0 or not 0 < share < 1:
            raise ValueError(f"lexical block: dims ({dims}) must be positive and share ({share}) between 0 and 1")
        if analyzer not in ANALYZERS:
            raise ValueError(f"lexical block: analyzer {analyzer!r} is not one of {', '.join(ANALYZERS)}")
        terms = ANALYZERS[analyzer]
        df = np.zeros(dims, np.float64)
        total = 0
        for text in texts:
            toks = terms(text)
            total += len(toks)
            if toks:
                df[np.unique(_buckets(toks, dims)[0])] += 1
        n = len(texts)
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        return cls(dims, share, idf, avgdl=total / max(1, n), k1=k1, b=b, analyzer=analyzer, adaptive=adaptive)

    def products(self, texts: list[str]) -> np.ndarray:
        """(n, dims) BM25 term weights of each product (saturated term frequency x idf, length-normalised)."""
        out = np.zeros((len(texts), self.dims), np.float32)
        for row, text in enumerate(texts):
            toks = self.terms(text)
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
            toks = sorted(set(self.terms(text)))
            if toks:
                idx, sign = _buckets(toks, self.dims)
                np.add.at(out[row], idx, sign)
        return out

    def append(self, dense: np.ndarray, lexical: np.ndarray, shares: np.ndarray | None = None) -> np.ndarray:
        """The served vectors: unit dense and unit lexical rows mixed by the share, or by `shares` (n,) row by row
        (a text with no terms keeps its dense part alone)."""
        lex = lexical / np.maximum(np.linalg.norm(lexical, axis=1, keepdims=True), 1e-12)
        s = np.full((len(dense), 1), self.share, np.float32) if shares is None else np.asarray(shares, np.float32).reshape(-1, 1)
        s = np.where(lexical.any(axis=1, keepdims=True), s, 0.0)
        v = np.hstack([np.sqrt(1 - s) * dense, np.sqrt(s) * lex]).astype(np.float32, copy=False)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "dims": self.dims,
                    "share": self.share,
                    "k1": self.k1,
                    "b": self.b,
                    "analyzer": self.analyzer,
                    "adaptive": self.adaptive,
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
            # lexical.json of bundles exported before analyzers were named counted whole words
            block = cls(
                int(d["dims"]),
                float(d["share"]),
                idf,
                float(d["avgdl"]),
                float(d["k1"]),
                float(d["b"]),
                analyzer=str(d.get("analyzer", "words")),
                adaptive=bool(d.get("adaptive", False)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a lexical block: {exc}") from exc
        if block.dims <= 0 or idf.shape != (block.dims,) or not 0 < block.share < 1 or block.avgdl <= 0:
            raise ValueError(f"{path}: lexical block has dims {block.dims}, {idf.shape[0]} idf values, share {block.share}")
        return block

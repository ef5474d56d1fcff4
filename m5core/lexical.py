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

Hashing 4-grams into a few hundred buckets blurs them: on the development set the block alone ranks Arabic
0.859 at 256 buckets and 0.908 with (nearly) no collisions. So a bundle also freezes the exact idf of every term
of its training catalog (`term_ids`, `term_idf`), the indexer stores each product's terms beside its vector
(`pack_terms`), and text search re-scores the index's first candidates with the exact lexical cosine in
place of the hashed one (`rescore`): the served vector keeps its fixed size for FAISS and partners, and the
ranking a person sees counts every 4-gram exactly (development set 0.902 -> 0.935 nDCG@10).

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

RERANK_DEPTH = 50
"""How many of the index's candidates text search re-scores exactly (the service's `rerank_depth`, the eval's)."""
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


def term_ids(tokens: list[str]) -> np.ndarray:
    """Terms -> their crc32 (as int64): the exact identity of a term, collisions one in billions."""
    return np.fromiter((zlib.crc32(t.encode()) for t in tokens), dtype=np.int64, count=len(tokens))


TERM = np.dtype([("id", "<u4"), ("sat", "<f2")])
"""One stored term: its crc32 and its saturated term frequency (BM25's tf x (k1 + 1) / (tf + k1 x length norm))."""


def pack_terms(ids: np.ndarray, sat: np.ndarray, hashed_norm: float, exact_norm: float) -> bytes:
    """A product's terms as one blob for the store: the lengths of its hashed and its exact BM25 vectors (float32),
    then (id, sat) per term. With the bundle's idf they give the product's share of both the hashed and the exact
    lexical cosine, so the re-score needs nothing else of the product."""
    terms = np.empty(len(ids), TERM)
    terms["id"], terms["sat"] = ids, sat
    return np.array([hashed_norm, exact_norm], "<f4").tobytes() + terms.tobytes()


def unpack_terms(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobs -> (norms (n, 2), terms (m,) of TERM, owner (m,) the blob of each term), in a few array calls.
    Raises ValueError on a blob of the wrong length."""
    for b in blobs:
        if len(b) < 8 or (len(b) - 8) % TERM.itemsize:
            raise ValueError(f"lexical terms: {len(b)} bytes is not a header and whole (id, sat) entries")
    norms = np.frombuffer(b"".join(b[:8] for b in blobs), "<f4").reshape(-1, 2)
    terms = np.frombuffer(b"".join(b[8:] for b in blobs), TERM)
    owner = np.repeat(np.arange(len(blobs)), [(len(b) - 8) // TERM.itemsize for b in blobs])
    return norms, terms, owner


def _buckets(tokens: list[str], dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Words -> (bucket, sign) arrays. The sign halves the bias that colliding words add to a score."""
    crc = term_ids(tokens)
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
    exact_ids: np.ndarray | None = None
    """(m,) sorted int64 crc32 of every term of the training catalog, for the exact re-score; None in bundles
    exported before it (their searches rank by the hashed block alone)."""
    exact_idf: np.ndarray | None = None
    """(m,) float32 idf of each of exact_ids; a term the catalog never had gets that of a term seen nowhere."""
    n_docs: int = 0
    """Products the statistics were fitted on (the idf of an unseen term)."""

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
        seen: list[np.ndarray] = []  # each product's distinct exact terms
        for text in texts:
            toks = terms(text)
            total += len(toks)
            if toks:
                df[np.unique(_buckets(toks, dims)[0])] += 1
                seen.append(np.unique(term_ids(toks)))
        n = len(texts)
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        exact_ids, exact_df = np.unique(np.concatenate(seen) if seen else np.zeros(0, np.int64), return_counts=True)
        exact_idf = np.log1p((n - exact_df + 0.5) / (exact_df + 0.5)).astype(np.float32)
        return cls(dims, share, idf, total / max(1, n), k1, b, analyzer, adaptive, exact_ids, exact_idf, n)

    @property
    def exact(self) -> bool:
        """Whether the bundle carries exact term statistics (text search re-scores with them)."""
        return self.exact_ids is not None

    def _exact_idf_of(self, ids: np.ndarray) -> np.ndarray:
        assert self.exact_ids is not None and self.exact_idf is not None
        unseen = np.float32(np.log1p((self.n_docs + 0.5) / 0.5))
        if not len(self.exact_ids):
            return np.full(len(ids), unseen, np.float32)
        pos = np.minimum(np.searchsorted(self.exact_ids, ids), len(self.exact_ids) - 1)
        return np.where(self.exact_ids[pos] == ids, self.exact_idf[pos], unseen).astype(np.float32)

    def product_terms(self, texts: list[str]) -> list[bytes | None]:
        """Each product's terms packed for the store (`pack_terms`; None: no terms, or a bundle without exact
        statistics)."""
        if not self.exact:
            return [None] * len(texts)
        out: list[bytes | None] = []
        for text in texts:
            toks = self.terms(text)
            if not toks:
                out.append(None)
                continue
            ids, tf = np.unique(term_ids(toks), return_counts=True)
            norm = self.k1 * (1 - self.b + self.b * len(toks) / self.avgdl)
            sat = (tf * (self.k1 + 1) / (tf + norm)).astype(np.float16).astype(np.float32)  # as stored
            bucket = (ids % self.dims).astype(np.int64)
            hashed = np.bincount(bucket, weights=np.where(ids >> 31 & 1, 1.0, -1.0) * self.idf[bucket] * sat, minlength=self.dims)
            out.append(pack_terms(ids, sat, float(np.linalg.norm(hashed)), float(np.linalg.norm(self._exact_idf_of(ids) * sat))))
        return out

    def query_terms(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """A query's distinct exact terms (sorted ids) and their unit weights (each term counts once, as in `queries`)."""
        ids = np.unique(term_ids(self.terms(text)))
        return ids, np.full(len(ids), 1 / np.sqrt(max(1, len(ids))), np.float32)

    def rescore(self, query: np.ndarray, text: str, scores: np.ndarray, blobs: list[bytes | None]) -> np.ndarray:
        """(n,) the index's scores of a text query's candidates with the exact lexical cosine in place of the hashed
        one. A served score is dense part + sqrt(s_q s) x hashed cosine; the product's side of both cosines follows
        from its stored terms (`product_terms`) and this block's idf, so the index's score, the query vector and the
        terms are all it takes. A candidate without stored terms keeps its score.

        query: (dim,) the served vector of `text`; scores: (n,) query . product as the index gave them."""
        return self.rescore_many(query[None], [text], [scores], [blobs])[0]

    def rescore_many(self, queries: np.ndarray, texts: list[str], scores: list[np.ndarray], blobs: list[list[bytes | None]]) -> list[np.ndarray]:
        """`rescore` of m searches in one pass of array calls (a batch's cost is then one search's, not m of them).

        queries: (m, dim); texts, scores, blobs: one entry per search."""
        flat = np.concatenate([np.asarray(sc, np.float32) for sc in scores]) if scores else np.zeros(0, np.float32)
        lengths = [len(sc) for sc in scores]
        search_of = np.repeat(np.arange(len(scores)), lengths)  # candidate -> its search
        every = [b for bs in blobs for b in bs]
        idx = np.flatnonzero(np.fromiter(map(bool, every), bool, len(every)))
        out = flat.copy()
        if len(idx):
            norms, terms, owner = unpack_terms([every[i] for i in idx])  # type: ignore[misc]
            raw, sat, n = terms["id"], terms["sat"].astype(np.float32), len(idx)  # raw: uint32 crc32
            search = search_of[idx][owner]  # term -> its search
            bucket = (raw % self.dims).astype(np.intp)
            # One gather each: the signed idf (sign from the crc's top bit, as the served vector hashes it) and the
            # query's weight of the bucket in the term's own search.
            signed_idf = np.concatenate([-self.idf, self.idf]).astype(np.float32)[bucket + self.dims * (raw >> 31)]
            lex_q = np.ascontiguousarray(np.asarray(queries, np.float32)[:, queries.shape[1] - self.dims :])  # (m, dims)
            hashed_w = signed_idf * sat * lex_q.ravel()[search * self.dims + bucket]
            hashed = np.bincount(owner, weights=hashed_w, minlength=n) / np.maximum(norms[:, 0], 1e-12)  # product . query, lexical part
            cos = np.zeros(n)
            q_terms = [self.query_terms(t)[0] for t in texts]
            q_ids = np.concatenate(q_terms)
            if len(q_ids):
                # Each search's distinct query terms under one sorted key (search << 32 | crc32). A 64k-slot table
                # of their hashes passes on the few product terms that can match, so only those are looked up.
                q_keys = np.concatenate([(j << 32) | ids for j, ids in enumerate(q_terms)])
                q_weight = self._exact_idf_of(q_ids) * np.concatenate(
                    [np.full(len(ids), 1 / np.sqrt(max(1, len(ids))), np.float32) for ids in q_terms]
                )
                slot = lambda srch, ids: (srch.astype(np.uint32) * np.uint32(40503) ^ ids.astype(np.uint32)) & np.uint32(0xFFFF)  # noqa: E731
                table = np.zeros(1 << 16, bool)
                table[slot(q_keys >> 32, q_keys & 0xFFFFFFFF)] = True
                maybe = np.flatnonzero(table[slot(search, raw)])
                keys = (search[maybe].astype(np.int64) << 32) | raw[maybe].astype(np.int64)
                pos = np.minimum(np.searchsorted(q_keys, keys), len(q_keys) - 1)
                hit = q_keys[pos] == keys
                at, pos = maybe[hit], pos[hit]
                cos = np.bincount(owner[at], weights=sat[at] * q_weight[pos], minlength=n) / np.maximum(norms[:, 1], 1e-12)
            lex_norm = np.linalg.norm(lex_q, axis=1)[search_of[idx]]
            out[idx] = flat[idx] + np.sqrt(self.share) * (lex_norm * cos - hashed)
        return np.split(out, np.cumsum(lengths)[:-1]) if lengths else []

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
                    **(
                        {
                            "n_docs": self.n_docs,
                            "exact_ids": [int(x) for x in self.exact_ids],
                            "exact_idf": [round(float(x), 6) for x in self.exact_idf],
                        }
                        if self.exact_ids is not None and self.exact_idf is not None
                        else {}
                    ),
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
                exact_ids=np.asarray(d["exact_ids"], np.int64) if "exact_ids" in d else None,
                exact_idf=np.asarray(d["exact_idf"], np.float32) if "exact_ids" in d else None,
                n_docs=int(d.get("n_docs", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a lexical block: {exc}") from exc
        if block.dims <= 0 or idf.shape != (block.dims,) or not 0 < block.share < 1 or block.avgdl <= 0:
            raise ValueError(f"{path}: lexical block has dims {block.dims}, {idf.shape[0]} idf values, share {block.share}")
        if block.exact_ids is not None and (
            block.exact_idf is None or block.exact_ids.shape != block.exact_idf.shape or np.any(np.diff(block.exact_ids) <= 0)
        ):
            raise ValueError(f"{path}: exact_ids must be sorted, distinct and as many as exact_idf")
        return block

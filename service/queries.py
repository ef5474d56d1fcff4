"""Query embedding: the query tower behind an LRU cache keyed by (bundle version, text)."""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from m5core.encoder import Encoder
from service import metrics as M
from service.errors import ApiError


class QueryCache:
    """LRU of query vectors. The key carries the bundle version, so a model switch cannot serve another tower's vector."""

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def get(self, version: str, text: str) -> np.ndarray | None:
        hit = self._entries.get((version, text))
        if hit is not None:
            self._entries.move_to_end((version, text))
        return hit

    def put(self, version: str, text: str, vector: np.ndarray) -> None:
        if not self.size:
            return
        self._entries[(version, text)] = vector
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)


def check_queries(texts: list[str], max_chars: int, field: str) -> None:
    """Blank or too long query text (`ServiceSettings.max_query_chars`): 422 naming the item (`field.i` in a list)."""
    for i, t in enumerate(texts):
        where = f"{field}.{i}" if field == "queries" else field
        if not t.strip():
            raise ApiError(422, f"{where}: empty query")
        if len(t) > max_chars:
            raise ApiError(422, f"{where}: longer than {max_chars} characters")


def embed_queries(encoder: Encoder, cache: QueryCache, texts: list[str]) -> np.ndarray:
    """(n, dim) float32: cached rows copied, the rest embedded in one call."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)  # (n, dim)
    todo = []
    for i, t in enumerate(texts):
        hit = cache.get(encoder.version, t)
        if hit is None:
            todo.append(i)
        else:
            out[i] = hit
    M.CACHE_HITS.inc(len(texts) - len(todo))
    if todo:
        M.CACHE_MISSES.inc(len(todo))
        t0 = time.perf_counter()
        vecs = encoder.embed([texts[i] for i in todo])
        M.STAGE.labels("encode").observe(time.perf_counter() - t0)
        for i, v in zip(todo, vecs):
            out[i] = v
            cache.put(encoder.version, texts[i], v)
    return out

"""Embedding store interface: the store of record for vectors, one record per ASIN.

Writes are idempotent and order-safe: a record only replaces one with a lower product version,
and a delete leaves a versioned tombstone so a late, older upsert cannot resurrect the product.
Implementations: `redis.RedisStore` (production), `local.LocalStore` (embedded, for the demo).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from m5core.events.base import TopicPartition


@dataclass(frozen=True, slots=True)
class VectorRecord:
    asin: str
    vector: np.ndarray  # (dim,) float32, L2-normalised
    product_version: int
    bundle_version: str
    content_hash: str
    locale: str
    product_line: str
    updated_at: float  # event time of the change, unix seconds
    doc: bytes | None = None  # the product document (JSON), needed to apply later patches
    lex: bytes | None = None  # exact lexical term weights (`m5core.lexical.pack_terms`) for text search's re-score


def quantize_int8(v: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetric per-vector int8: v ~= q * scale."""
    m = float(np.max(np.abs(v))) if v.size else 0.0
    scale = m / 127.0 if m > 0 else 1.0
    return np.clip(np.rint(v / scale), -127, 127).astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: float) -> np.ndarray:
    return q.astype(np.float32) * np.float32(scale)


class EmbeddingStore(ABC):
    """Small on purpose: every backend passes the same contract tests (tests/m5core/test_store_contract.py)."""

    namespace: str
    """Key prefix of this store's records: one namespace per bundle's vectors (a re-embed fills a new one)."""

    @abstractmethod
    def put(self, records: Sequence[VectorRecord]) -> list[bool]:
        """Write records atomically per ASIN; True where written, False where a newer or equal version is held."""

    @abstractmethod
    def touch(self, asin: str, product_version: int, doc: bytes, updated_at: float) -> bool:
        """Metadata-only change (same content hash): bump version and doc, keep the vector."""

    @abstractmethod
    def delete(self, asin: str, product_version: int) -> bool:
        """Replace the record with a tombstone at product_version unless a newer version is held."""

    @abstractmethod
    def get(self, asin: str) -> VectorRecord | None:
        """The live record without its product document (most of a record's bytes; `get_doc` reads it),
        or None when missing or deleted."""

    @abstractmethod
    def get_many(self, asins: Sequence[str]) -> list[VectorRecord | None]: ...

    @abstractmethod
    def version_of(self, asin: str) -> int | None:
        """Highest product version seen for the ASIN, tombstones included."""

    @abstractmethod
    def versions_of(self, asins: Sequence[str]) -> list[tuple[int | None, str | None, bool]]:
        """(product version, content hash, is tombstone) per ASIN, in one round trip: plans a batch."""

    @abstractmethod
    def get_terms(self, asins: Sequence[str]) -> list[bytes | None]:
        """Each live product's stored lexical terms (`VectorRecord.lex`) in one round trip; None when it has none,
        is absent or deleted."""

    @abstractmethod
    def get_doc(self, asin: str) -> bytes | None:
        """The live product document (JSON), to merge a patch onto."""

    def get_docs(self, asins: Sequence[str]) -> list[bytes | None]:
        """Live product documents of many products (search hits with their fields); a store may do it in one round trip."""
        return [self.get_doc(a) for a in asins]

    @abstractmethod
    def scan(self, batch: int = 1000) -> Iterator[VectorRecord]:
        """Every live record, in no particular order."""

    @abstractmethod
    def count(self) -> int:
        """Number of live records."""

    @abstractmethod
    def iter_docs(self, batch: int = 1000) -> Iterator[tuple[str, bytes]]:
        """(asin, product JSON) of every live record: what a re-embed with a new bundle reads."""

    @abstractmethod
    def iter_tombstones(self, batch: int = 1000) -> Iterator[tuple[str, int]]:
        """(asin, deleted version) of every tombstone: a re-embed carries them over, or a late older upsert of a
        deleted product would bring it back in the new namespace."""

    # The active-namespace pointer (`m5core.stores.active_pointer`): a re-embed fills a new namespace and
    # then moves the pointer; readers follow it. Pointers live outside any namespace.
    @abstractmethod
    def get_pointer(self, name: str) -> str | None: ...

    @abstractmethod
    def swap_pointer(self, name: str, value: str, prev_name: str) -> str | None:
        """Set `name` to value and `prev_name` to its old value atomically; -> the old value."""

    @abstractmethod
    def instance(self) -> str:
        """Who is answering: a store process that restarted (and may have come back from an older AOF) answers
        with a new id. A client reconnects without a word, so this is how a writer learns that its batch's reads
        and writes did not all reach one process (`Indexer.process`)."""

    @abstractmethod
    def seal(self, group: str, member: str, token: str) -> str:
        """Mark, after a batch's writes, that they are all in; -> `instance()` as seen after the mark."""

    @abstractmethod
    def save_offsets(self, group: str, offsets: Mapping[TopicPartition, int], sealed: tuple[str, str] | None = None) -> bool:
        """Record that everything below `offsets` of the change topic is held here: written after the batch's
        records, so a store that comes back from a crash with less than it acknowledged comes back with
        older offsets too, and the indexer replays from them (`Indexer.start_offsets`).

        sealed=(member, token): only if that member's seal still reads token (the seal, and so every write
        before it, survived any restart since); -> whether the offsets were saved."""

    @abstractmethod
    def load_offsets(self, group: str) -> dict[TopicPartition, int]: ...

    @abstractmethod
    def ping(self) -> bool: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

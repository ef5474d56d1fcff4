"""The `catalog.embeddings` feed: one ASIN-keyed message per new vector, a null value per delete.

The indexer produces it; the service's index (and any partner team) follows it. Values are
JSON so any consumer can read them; the vector travels as base64 little-endian float32. A delete's
value must stay null (that is what compaction drops), so its product version travels in the
record's `pv` header: a follower then never lets an older upsert undo a newer delete, nor an older
delete remove a product relisted since.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from m5core.events.base import EventSource, TopicPartition
from m5core.snapshots import latest_snapshot, offsets_from_meta
from m5core.stores.base import EmbeddingStore, VectorRecord

if TYPE_CHECKING:  # faiss is an `index` extra; the codec functions must import without it
    from m5core.index import AnnIndex


def encode_feed_value(rec: VectorRecord) -> bytes:
    return orjson.dumps(
        {
            "asin": rec.asin,
            "pv": rec.product_version,
            "bv": rec.bundle_version,
            "loc": rec.locale,
            "pl": rec.product_line,
            "ts": rec.updated_at,
            "hash": rec.content_hash,
            "dim": int(rec.vector.shape[0]),
            "v": base64.b64encode(np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()).decode(),
        }
    )


TOMBSTONE_MEMORY_S = 3600.0
"""How long a follower remembers a deleted version (see `FeedFollower._remember_delete`)."""
TOMBSTONE_VERSION = "pv"
"""Header of a feed tombstone: the deleted product version, in ASCII decimal."""


def tombstone_headers(version: int) -> tuple[tuple[str, bytes], ...]:
    return ((TOMBSTONE_VERSION, str(int(version)).encode()),)


def tombstone_version(headers: tuple[tuple[str, bytes], ...]) -> int | None:
    """The version a tombstone deletes; None for one without it (written before versions were sent, or by hand)."""
    for k, v in headers:
        if k == TOMBSTONE_VERSION:
            try:
                return int(v)
            except ValueError:
                return None
    return None


def decode_feed_value(value: bytes) -> VectorRecord:
    """Raises ValueError on a malformed value."""
    try:
        d = orjson.loads(value)
        vec = np.frombuffer(base64.b64decode(d["v"]), dtype="<f4").astype(np.float32)
        if vec.shape[0] != d["dim"]:
            raise ValueError(f"vector has {vec.shape[0]} dims, header says {d['dim']}")
        return VectorRecord(
            asin=d["asin"],
            vector=vec,
            product_version=int(d["pv"]),
            bundle_version=d["bv"],
            content_hash=d["hash"],
            locale=d["loc"],
            product_line=d["pl"],
            updated_at=float(d["ts"]),
        )
    except (KeyError, TypeError, ValueError) as exc:  # JSON and base64 errors are ValueErrors
        raise ValueError(f"malformed feed value: {exc}") from exc


class FeedFollower:
    """Keeps an AnnIndex in step with the feed: bootstrap from a snapshot or the store, then apply the feed live.

    Bootstrap prefers the newest snapshot in `snapshot_dir` (its meta holds the feed offsets it
    includes, so only the tail of the feed is replayed). Otherwise it takes the feed's end offsets
    *before* scanning the store and replays from there, so a change that lands during the scan is
    applied twice at worst; versions make that harmless. With no store either, the compacted feed is
    replayed from its start. A tombstone carries the version it deletes (`pv` header) and removes the
    product only if the index holds no newer one; an unversioned tombstone (older writers) removes it
    only when the store no longer holds it. `offsets` is the next offset per partition the index
    includes, advanced only past batches applied whole (what a snapshot of it records); malformed values
    are counted and skipped, never fatal.
    """

    def __init__(
        self,
        source: EventSource,
        index: AnnIndex,
        store: EmbeddingStore | None = None,
        log=None,
        *,
        snapshot_dir: Path | str | None = None,
        bundle_version: str | None = None,
        max_snapshot_age_s: float | None = None,
        keep: Callable[[str], bool] | None = None,
    ):
        """`bundle_version`: apply only that bundle's feed records and snapshots. During a model switch the
        feed carries two bundles' vectors; each index keeps to its own, so neither becomes a mix.
        `max_snapshot_age_s`: an older snapshot is passed over (`IndexConfig.max_snapshot_age_s` says why).
        `keep`: a shard's test of an ASIN (its feed partition is the shard's): the store scan loads only those, and
        snapshots, which hold every partition, are passed over; the source reads only the shard's partitions."""
        import logging

        self.source, self.index, self.store = source, index, store
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.log = log or logging.getLogger(__name__)
        self.applied = 0
        self.malformed = 0
        self.bundle_versions: set[str] = set()
        self.last_lag = 0
        self.lag_at: float | None = None  # time.monotonic() of the last lag reading that reached the broker
        self.offsets: dict[TopicPartition, int] = {}
        self.snapshot_meta: dict | None = None  # meta of the snapshot bootstrapped from, if any
        self.bundle_version = bundle_version
        self.max_snapshot_age_s = max_snapshot_age_s
        self.deleted: dict[str, tuple[int, float]] = {}  # asin -> (deleted version, when), oldest first
        self.other_bundle = 0  # feed records of another bundle, skipped
        self.keep = keep

    def bootstrap(self, batch: int = 2000) -> int:
        """-> vectors loaded. May replace `self.index` with the snapshot's index (read it back after)."""
        if self._bootstrap_from_snapshot():
            return len(self.index)
        if self.store is None:
            return 0  # no snapshot, no store: the compacted feed itself is the full state
        end = self.source.end_offsets()
        n = 0
        buf: list[VectorRecord] = []
        for rec in self.store.scan(batch):
            if self.keep is not None and not self.keep(rec.asin):
                continue
            buf.append(rec)
            if len(buf) >= batch:
                n += self._upsert(buf)
                buf = []
        n += self._upsert(buf)
        if end:
            self.source.seek(end)
            self.offsets.update(end)
        return n

    def _bootstrap_from_snapshot(self) -> bool:
        snap = latest_snapshot(self.snapshot_dir)
        if snap is None:
            return False
        if self.keep is not None:
            self.log.info("snapshot %s holds every feed partition; a shard bootstraps its own from the store", snap.name)
            return False
        from m5core.index import AnnIndex

        try:
            index, meta = AnnIndex.load(snap)
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot falls back to the store
            self.log.warning("cannot load snapshot %s (%s); bootstrapping from the store", snap, exc)
            return False
        if index.dim != self.index.dim:
            self.log.warning("snapshot %s has dim %d, expected %d; bootstrapping from the store", snap, index.dim, self.index.dim)
            return False
        age = time.time() - float(meta.get("created_at") or (snap / "index.json").stat().st_mtime)
        if self.max_snapshot_age_s is not None and age > self.max_snapshot_age_s:
            self.log.warning(
                "snapshot %s is %.0f s old, over the %.0f s bound (the feed may have dropped tombstones since); bootstrapping from the %s",
                snap.name,
                age,
                self.max_snapshot_age_s,
                "store" if self.store is not None else "feed's start",
            )
            return False
        namespace = self.store.namespace if self.store is not None else None
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            self.log.info("snapshot %s is of namespace %s, not %s; bootstrapping from the store", snap.name, meta["namespace"], namespace)
            return False
        held = set(meta.get("bundle_versions") or ([index.version] if index.version else []))
        if self.bundle_version and held - {self.bundle_version}:
            self.log.info("snapshot %s holds bundle(s) %s, not %s; bootstrapping from the store", snap.name, sorted(held), self.bundle_version)
            return False
        offsets = offsets_from_meta(meta.get("offsets", {}))
        if offsets:
            self.source.seek(offsets)
            self.offsets.update(offsets)
        self.index, self.snapshot_meta = index, meta
        self.bundle_versions.update(meta.get("bundle_versions") or ([index.version] if index.version else []))
        self.log.info("bootstrapped %d vectors from snapshot %s at offsets %s", len(index), snap.name, meta.get("offsets"))
        return True

    def _upsert(self, recs: list[VectorRecord]) -> int:
        # An equal version replaces what the index holds: a store write lost and replayed is encoded again, in
        # another batch, and dynamic int8 quantisation makes that vector differ in the 4th digit; the feed's
        # later record is the one the store holds (and the one compaction keeps).
        recs = [
            r for r in recs if (self.index.version_of(r.asin) or -1) <= r.product_version and self.deleted.get(r.asin, (-1,))[0] < r.product_version
        ]
        if not recs:
            return 0
        self.bundle_versions.update(r.bundle_version for r in recs)
        self.index.upsert(
            [r.asin for r in recs],
            np.stack([r.vector for r in recs]),
            [r.locale for r in recs],
            [r.product_line for r in recs],
            [r.product_version for r in recs],
        )
        return len(recs)

    def _check(self, rec: VectorRecord) -> None:
        if rec.vector.shape != (self.index.dim,):
            raise ValueError(f"vector has {rec.vector.shape[0]} dims, the index has {self.index.dim}")
        if not np.isfinite(rec.vector).all():
            raise ValueError("vector has NaN or inf values")

    def poll_once(self, max_records: int = 1000, timeout_s: float = 0.2) -> int:
        """Apply one batch of feed messages. -> messages consumed (applied or skipped).

        All or nothing: when applying raises (the store's tombstone check meets a Redis blip), the source
        goes back to the batch's first offsets and `offsets` stays put, so the next poll reads the batch
        again (a re-applied upsert is a no-op by version) instead of losing its deletes and upserts from
        this index and from every snapshot taken of it later."""
        msgs = self.source.poll(max_records, timeout_s)
        try:
            n = self._apply(msgs)
        except Exception:
            first: dict[TopicPartition, int] = {}
            for m in msgs:
                first.setdefault((m.topic, m.partition), m.offset)
            if first:
                self.source.seek(first)
            raise
        self.applied += n
        for m in msgs:
            tp = (m.topic, m.partition)
            self.offsets[tp] = max(self.offsets.get(tp, 0), m.offset + 1)
        return len(msgs)

    def _apply(self, msgs: list) -> int:
        """-> vectors upserted or removed. Per ASIN the newest version wins, whatever the order of arrival: an
        upsert not newer than a versioned delete is stale, and so is a versioned delete older than an upsert."""
        ups: dict[str, VectorRecord] = {}
        dels: dict[str, int | None] = {}  # asin -> the version its tombstone deletes (None: an unversioned tombstone)
        for m in msgs:
            asin = (m.key or b"").decode("utf-8", "replace")
            if m.value is None:
                v = tombstone_version(m.headers)
                up = ups.get(asin)
                if v is not None and up is not None and up.product_version > v:
                    continue  # a delete older than the upsert before it: written late by a stale writer
                ups.pop(asin, None)
                held = dels.get(asin, -1)
                dels[asin] = None if v is None or held is None else max(held, v)
                continue
            try:
                rec = decode_feed_value(m.value)
                self._check(rec)
            except ValueError as exc:
                self.malformed += 1
                self.log.warning("skipping malformed feed record at %s:%d:%d: %s", m.topic, m.partition, m.offset, exc)
                continue
            if self.bundle_version and rec.bundle_version != self.bundle_version:
                self.other_bundle += 1
                continue
            if asin in dels:
                if dels[asin] is not None and rec.product_version <= dels[asin]:
                    continue
                del dels[asin]
            prev = ups.get(rec.asin)
            if prev is None or prev.product_version <= rec.product_version:
                ups[rec.asin] = rec
        # An unversioned tombstone removes the product only if the store no longer holds it (a replayed old one
        # must not remove a relisted product). May raise: nothing is applied yet.
        unversioned = [a for a, v in dels.items() if v is None]
        absent = {a for a in unversioned if self.store is None or self.store.get(a) is None}
        n = self._upsert(list(ups.values()))
        gone = []
        for asin, v in dels.items():
            if v is None:
                if asin in absent:
                    gone.append(asin)
            elif (self.index.version_of(asin) or -1) <= v:
                gone.append(asin)
                self._remember_delete(asin, v)
        return n + (self.index.remove(gone) if gone else 0)

    def _remember_delete(self, asin: str, version: int) -> None:
        """Deleted versions, kept `TOMBSTONE_MEMORY_S`: a stale writer's older upsert arrives seconds after, not hours."""
        now = time.monotonic()
        self.deleted.pop(asin, None)
        self.deleted[asin] = (version, now)
        while self.deleted:
            oldest = next(iter(self.deleted))
            if now - self.deleted[oldest][1] <= TOMBSTONE_MEMORY_S:
                break
            del self.deleted[oldest]

    def lag(self) -> int:
        """Feed messages not applied yet (all partitions); the last known value if the broker is unreachable."""
        try:
            self.last_lag = int(sum(self.source.lag().values()))
            self.lag_at = time.monotonic()
        except Exception:  # noqa: BLE001 - lag is advisory
            pass
        return self.last_lag

    def run(self, stop: threading.Event, lag_every_s: float = 1.0) -> None:
        """Thread body: poll until `stop` is set, and read the lag about once a second. Readers (readiness,
        metrics) take `last_lag` and `lag_at` instead of calling `lag()`: a Kafka consumer is not thread-safe,
        and a broker round trip does not belong on a request's path."""
        lag_due = 0.0
        while not stop.is_set():
            try:
                self.poll_once()
                if time.monotonic() >= lag_due:
                    lag_due = time.monotonic() + lag_every_s
                    self.lag()
            except Exception:  # noqa: BLE001 - a follower must outlive a broker hiccup
                self.log.exception("feed follower error; retrying")
                stop.wait(1.0)

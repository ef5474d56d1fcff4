"""The `catalog.embeddings` feed: one ASIN-keyed message per new vector, a null value per delete.

The indexer produces it; the service's index (and any partner team) follows it. Values are
JSON so any consumer can read them; the vector travels as base64 little-endian float32.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson

from m5core.stores.base import VectorRecord


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
    """Keeps an AnnIndex in step with the feed: bootstrap from the store, then apply the feed live.

    Bootstrap takes the feed's end offsets *before* scanning the store and replays from there, so a
    change that lands during the scan is applied twice at worst; versions make that harmless. A
    tombstone carries no version, so it removes a product only when the store no longer holds it.
    """

    def __init__(self, source, index, store, log=None):
        import logging

        self.source, self.index, self.store = source, index, store
        self.log = log or logging.getLogger(__name__)
        self.applied = 0
        self.malformed = 0
        self.bundle_versions: set[str] = set()
        self.last_lag = 0

    def bootstrap(self, batch: int = 2000) -> int:
        end = self.source.end_offsets()
        n = 0
        buf: list[VectorRecord] = []
        for rec in self.store.scan(batch):
            buf.append(rec)
            if len(buf) >= batch:
                n += self._upsert(buf)
                buf = []
        n += self._upsert(buf)
        if end:
            self.source.seek(end)
        return n

    def _upsert(self, recs: list[VectorRecord]) -> int:
        recs = [r for r in recs if (self.index.version_of(r.asin) or -1) < r.product_version]
        if not recs:
            return 0
        self.bundle_versions.update(r.bundle_version for r in recs)
        self.index.upsert([r.asin for r in recs], np.stack([r.vector for r in recs]), [r.locale for r in recs],
                          [r.product_line for r in recs], [r.product_version for r in recs])
        return len(recs)

    def poll_once(self, max_records: int = 1000, timeout_s: float = 0.2) -> int:
        msgs = self.source.poll(max_records, timeout_s)
        ups: dict[str, VectorRecord] = {}
        dels: list[str] = []
        for m in msgs:
            asin = (m.key or b"").decode("utf-8", "replace")
            if m.value is None:
                ups.pop(asin, None)
                dels.append(asin)
                continue
            try:
                rec = decode_feed_value(m.value)
            except ValueError as exc:
                self.malformed += 1
                self.log.warning("skipping malformed feed record at %s:%d:%d: %s", m.topic, m.partition, m.offset, exc)
                continue
            if rec.asin in dels:
                dels.remove(rec.asin)
            prev = ups.get(rec.asin)
            if prev is None or prev.product_version < rec.product_version:
                ups[rec.asin] = rec
        n = self._upsert(list(ups.values()))
        gone = [a for a in dels if self.store.get(a) is None]
        n += self.index.remove(gone) if gone else 0
        self.applied += n
        return len(msgs)

    def lag(self) -> int:
        try:
            self.last_lag = int(sum(self.source.lag().values()))
        except Exception:  # noqa: BLE001 - lag is advisory
            pass
        return self.last_lag

    def run(self, stop) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a follower must outlive a broker hiccup
                self.log.exception("feed follower error; retrying")
                stop.wait(1.0)

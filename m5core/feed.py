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

"""Change-event streams over a catalog: realistic upserts, patches and deletes, plus bad payloads."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator

import orjson

from catalog.vocab import CHOICES, format_value
from m5core.schema import ChangeEvent, language_of

# op mix: text edits re-embed, attribute edits re-embed, price/stock edits must not, deletes
MIX = (("upsert", 0.45), ("patch_attr", 0.2), ("patch_price", 0.25), ("delete", 0.1))


def iter_change_events(products: Iterable[dict], count: int, seed: int = 0, start_ts: float | None = None) -> Iterator[ChangeEvent]:
    """`count` events over the products, versions monotonic per ASIN, timestamps increasing."""
    rng = random.Random(seed)
    live = {p["asin"]: dict(p) for p in products}
    deleted: dict[str, dict] = {}
    asins = list(live)
    ts = start_ts if start_ts is not None else time.time()
    ops, weights = zip(*MIX)
    for _ in range(count):
        ts += rng.expovariate(100.0)
        op = rng.choices(ops, weights)[0]
        if op == "upsert" and deleted and rng.random() < 0.2:
            asin = rng.choice(list(deleted))  # a relisting after a delete
            doc = deleted.pop(asin)
            live[asin] = doc
        else:
            asin = rng.choice(asins)
            doc = live.get(asin)
            if doc is None:
                continue
        version = doc["version"] = doc["version"] + 1
        doc["updated_at"] = ts
        if op == "upsert":
            doc["title"] = doc["title"] + rng.choice([" - new", " (2025)", " NEW", ""])
            yield ChangeEvent(op="upsert", asin=asin, version=version, ts=ts, product=doc)
        elif op == "patch_attr":
            name = rng.choice(list(doc["attributes"]) or ["colour"])
            value = format_value(name, rng.choice(CHOICES.get(name, ["x"])), language_of(doc["locale"]))
            doc["attributes"] = {**doc["attributes"], name: value}
            yield ChangeEvent(op="patch", asin=asin, version=version, ts=ts, attributes={name: value})
        elif op == "patch_price":
            doc["price"] = round(rng.uniform(3, 200), 2)
            doc["stock"] = rng.randint(0, 500)
            yield ChangeEvent(op="patch", asin=asin, version=version, ts=ts, price=doc["price"], stock=doc["stock"])
        else:
            deleted[asin] = live.pop(asin)
            yield ChangeEvent(op="delete", asin=asin, version=version, ts=ts)


def bad_events(seed: int = 0) -> list[tuple[bytes, bytes, str]]:
    """(key, payload, expected dead-letter reason) for DLQ tests."""
    good = {"op": "delete", "asin": "B0BADBAD01", "version": 1, "ts": 1.0}
    return [
        (b"B0BADBAD01", b"{not json", "malformed_json"),
        (b"B0BADBAD02", orjson.dumps({**good, "asin": "bad-asin"}), "schema"),
        (b"B0BADBAD03", orjson.dumps({**good, "asin": "B0BADBAD03", "op": "explode"}), "schema"),
        (b"B0BADBAD04", orjson.dumps({"op": "upsert", "asin": "B0BADBAD04", "version": 1, "ts": 1.0}), "schema"),
        (b"B0BADBAD05", orjson.dumps({**good, "asin": "B0BADBAD06"}), "key_mismatch"),
        # a version past what the store compares exactly (Lua doubles) would freeze the product
        (b"B0BADBAD08", orjson.dumps({**good, "asin": "B0BADBAD08", "version": 2**63 + 5}), "schema"),
        # a 300 KB key: its dead letter must still fit a Kafka request, or the partition stalls for good
        (b"B0BADBAD09" * 30_000, orjson.dumps({**good, "asin": "B0BADBAD09"}), "oversize"),
        (b"B0BADBAD07", b'{"op":"delete","asin":"B0BADBAD07","version":1,"ts":1.0,"pad":"' + b"x" * 700_000 + b'"}', "oversize"),
    ]

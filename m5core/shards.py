"""Which service shard holds a product: the feed's own partitioning is the sharding.

The indexer keys every `catalog.embeddings` record by ASIN, so Kafka's default partitioner (murmur2 of the key)
already splits the catalog into partitions; a shard follows a set of them and the router sends a GET to the shard
whose set holds `partition_of(asin)`. No second hash to keep in step with the feed.
"""

from __future__ import annotations

import re

from kafka.partitioner.default import murmur2

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def partition_of(asin: str, partitions: int) -> int:
    """The feed partition of an ASIN's records (what kafka-python's and Java's default partitioners pick)."""
    return (murmur2(asin.encode()) & 0x7FFFFFFF) % partitions


def parse_partitions(spec: str, field: str = "partitions") -> frozenset[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}; a ValueError naming `field` and the expected shape otherwise."""
    out: set[int] = set()
    for part in spec.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise ValueError(f"{field}: {spec!r} is not a partition list such as '0-3,6'")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ValueError(f"{field}: range {part.strip()!r} runs backwards")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def format_partitions(parts: frozenset[int] | set[int]) -> str:
    """{0, 1, 2, 6} -> '0-2,6' (the shape `parse_partitions` reads)."""
    out, run = [], []
    for p in sorted(parts):
        if run and p != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(p)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)

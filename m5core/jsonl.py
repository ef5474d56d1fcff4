"""JSON lines: the file format of catalogs, events on disk and reports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson


def read_jsonl(path: Path | str) -> Iterator[dict]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


def write_jsonl(path: Path | str, docs: Iterable[dict]) -> int:
    """-> lines written."""
    n = 0
    with open(path, "wb") as f:
        for d in docs:
            f.write(orjson.dumps(d) + b"\n")
            n += 1
    return n

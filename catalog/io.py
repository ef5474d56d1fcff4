"""Reading catalog directories (format: docs/data_card.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from m5core.jsonl import read_jsonl


class CatalogError(FileNotFoundError):
    pass


@dataclass
class Catalog:
    dir: Path

    def _path(self, name: str) -> Path:
        p = self.dir / f"{name}.jsonl"
        if not p.is_file():
            raise CatalogError(f"catalog at {self.dir} has no {p.name}: generate it with `m5 catalog generate --out {self.dir}`")
        return p

    def products(self) -> Iterator[dict]:
        return read_jsonl(self._path("products"))

    def queries(self, split: str | None = None) -> list[dict]:
        return [q for q in read_jsonl(self._path("queries")) if split is None or q["split"] == split]

    def judgements(self) -> dict[str, dict[str, str]]:
        """query_id -> {asin: label}"""
        out: dict[str, dict[str, str]] = {}
        for j in read_jsonl(self._path("judgements")):
            out.setdefault(j["query_id"], {})[j["asin"]] = j["label"]
        return out

    def duplicate_pairs(self, split: str | None = None) -> list[dict]:
        return [p for p in read_jsonl(self._path("duplicate_pairs")) if split is None or p["split"] == split]

    def clusters(self) -> list[dict]:
        return list(read_jsonl(self._path("clusters")))

    def copurchase(self) -> list[dict]:
        return list(read_jsonl(self._path("copurchase")))

    def manifest(self) -> dict:
        p = self.dir / "manifest.json"
        if not p.is_file():
            raise CatalogError(f"catalog at {self.dir} has no manifest.json: generate it with `m5 catalog generate --out {self.dir}`")
        return orjson.loads(p.read_bytes())


def load_catalog(directory: Path | str) -> Catalog:
    d = Path(directory)
    if not d.is_dir():
        raise CatalogError(f"no catalog at {d}: generate one with `m5 catalog generate --out {d}`")
    return Catalog(d)

"""Bring your own catalog: the ESCI layout or any JSONL/CSV/Parquet table -> a catalog directory.

The centre is pure: a `TableMap` says which source column (or constant) fills each field, and
`map_product`, `map_query` and `map_judgement` turn one source row into a validated document or a
`RowError` that says why. Around it, `read_rows` streams a file (Parquet in pyarrow batches) and
`import_catalog` sequences the passes, building into a temporary directory beside the target and
renaming it into place, so a failed import leaves nothing behind. Format: docs/data_card.md.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from tqdm import tqdm

from catalog.generate import content_words, listing_words
from m5core.jsonl import write_jsonl
from m5core.schema import Product, asin_to_id, default_marketplace, id_to_asin, is_asin, shape_error

IMPORTER_VERSION = "m5-import/1"
UNKNOWN = "unknown"  # product_type / product_line / brand where the source has none (ESCI has no types)
ESCI_LOCALES = {"us": "en_US", "es": "es_ES", "jp": "ja_JP"}  # ESCI's product_locale codes
LABELS = {"e": "E", "exact": "E", "s": "S", "substitute": "S", "c": "C", "complement": "C", "i": "I", "irrelevant": "I"}
SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid", "test": "test"}
DEFAULT_VALID_SHARE = 0.05  # of the source's train queries, moved to valid by a hash of query_id

PRODUCT_FIELDS = (
    "asin",
    "title",
    "brand",
    "product_type",
    "product_line",
    "locale",
    "marketplace",
    "description",
    "bullet_points",
    "attributes",
    "price",
    "stock",
    "version",
    "updated_at",
    "group",
)
QUERY_FIELDS = ("query_id", "text", "locale", "split", "head", "form", "product_type")
JUDGEMENT_FIELDS = ("query_id", "asin", "label")
FIELDS = {"products": PRODUCT_FIELDS, "queries": QUERY_FIELDS, "judgements": JUDGEMENT_FIELDS}
# Fields every row needs that no rule fills (marketplace follows the locale, version is 1, updated_at the import time).
REQUIRED = {
    "products": ("asin", "title", "brand", "product_type", "product_line", "locale"),
    "queries": ("query_id", "text", "locale"),
    "judgements": ("query_id", "asin", "label"),
}
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class CatalogImportError(ValueError):
    """The import cannot start or finish (a missing column, a bad map, an existing output); nothing was written."""


class RowError(ValueError):
    """One source row cannot become a document; the message is the reason written to rejects.jsonl."""


# ---------------------------------------------------------------------------------------------- maps
@dataclass(frozen=True)
class TableMap:
    """How one source table fills one kind of document.

    columns: field -> source column (`attributes.colour` -> one attribute; `attributes` -> a JSON object column).
    constants: field -> value for every row (`--set locale=fr_FR`); replaces a column mapping of that field.
    defaults: field -> value where the row's cell is empty (`--default brand=unknown`).
    locale_codes: source locale codes rewritten to ll_CC tags (ESCI's us/es/jp).
    """

    kind: str
    columns: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    locale_codes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = FIELDS[self.kind]
        for name in [*self.columns, *self.constants, *self.defaults]:
            attribute = self.kind == "products" and name.startswith("attributes.") and len(name) > len("attributes.")
            if name not in allowed and not attribute:
                raise CatalogImportError(
                    f"{self.kind} map: unknown field {name!r}; the fields are {', '.join(allowed)}"
                    + (", attributes.NAME" if self.kind == "products" else "")
                )
        if "group" in self.constants or "group" in self.defaults:
            raise CatalogImportError("products map: group must be a column (one constant group would make the whole catalog one cluster)")

    def merged(
        self, columns: dict[str, str] | None = None, constants: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
    ) -> TableMap:
        """This map with later settings on top: a new column for a field drops its constant and vice versa."""
        cols, consts = dict(self.columns), dict(self.constants)
        for f, c in (columns or {}).items():
            cols[f] = c
            consts.pop(f, None)
        for f, v in (constants or {}).items():
            consts[f] = v
            cols.pop(f, None)
        return replace(self, columns=cols, constants=consts, defaults={**self.defaults, **(defaults or {})})

    def get(self, row: dict, name: str) -> Any:
        """The field's value in `row`: the constant, else the cell, else the default; None when empty."""
        if name in self.constants:
            return self.constants[name]
        value = _cell(row, self.columns[name]) if name in self.columns else None
        return self.defaults.get(name) if value is None else value

    def has(self, name: str) -> bool:
        return name in self.columns or name in self.constants or name in self.defaults

    def describe(self) -> dict:
        return {"map": self.columns, "set": self.constants, "default": self.defaults}


ESCI_PRODUCTS = TableMap(
    "products",
    columns={
        "asin": "product_id",
        "title": "product_title",
        "description": "product_description",
        "bullet_points": "product_bullet_point",
        "brand": "product_brand",
        "attributes.colour": "product_color",
        "locale": "product_locale",
    },
    constants={"product_type": UNKNOWN, "product_line": UNKNOWN},
    defaults={"brand": UNKNOWN},
    locale_codes=ESCI_LOCALES,
)
ESCI_QUERIES = TableMap(
    "queries",
    columns={"query_id": "query_id", "text": "query", "locale": "product_locale", "split": "split"},
    constants={"form": "esci", "head": False},
    locale_codes=ESCI_LOCALES,
)
ESCI_JUDGEMENTS = TableMap("judgements", columns={"query_id": "query_id", "asin": "product_id", "label": "esci_label"})
ESCI_SUBSETS = {"all": None, "small": "small_version", "large": "large_version"}  # column marking the subset's rows


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, str]:
    """`["title=name", "locale=fr_FR"]` -> {"title": "name", "locale": "fr_FR"}."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CatalogImportError(f"{flag}: {item!r} is not FIELD=VALUE")
        out[key.strip()] = value.strip()
    return out


def load_map_file(path: Path | str) -> dict[str, dict[str, dict]]:
    """A YAML (or JSON) map file -> {table: {"map"|"set"|"default": {field: value}}}.

    Raises:
        CatalogImportError: an unknown table or key, or a file that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise CatalogImportError(f"--map-file: no file at {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        doc = orjson.loads(text)
    else:
        try:
            import yaml
        except ImportError as exc:
            raise CatalogImportError(f"--map-file {p}: reading YAML needs pyyaml (pip install pyyaml), or give a .json file: {exc}") from exc
        doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise CatalogImportError(f"--map-file {p}: expected a mapping with products/queries/judgements sections")
    out: dict[str, dict[str, dict]] = {}
    for table, section in doc.items():
        if table not in FIELDS or not isinstance(section, dict):
            raise CatalogImportError(f"--map-file {p}: unknown section {table!r} (products, queries, judgements; each with map/set/default)")
        for key, value in section.items():
            if key not in ("map", "set", "default") or not isinstance(value, dict):
                raise CatalogImportError(f"--map-file {p}: {table}.{key} is not one of map, set, default (each a mapping)")
        out[table] = {k: {str(f): (str(v) if k == "map" else v) for f, v in section.get(k, {}).items()} for k in ("map", "set", "default")}
    return out


# ------------------------------------------------------------------------------------ value shapes
def _cell(row: dict, column: str) -> Any:
    """A cell, with empty strings, NaN and missing keys all read as None."""
    v = row.get(column)
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    return v


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def hash_asin(source_id: str) -> str:
    """Stable 10-char base-36 id of a source id: the same text gives the same ASIN on any machine."""
    n = int.from_bytes(hashlib.blake2b(source_id.encode(), digest_size=8).digest(), "big") % 36**10
    return id_to_asin(n)


def normalise_locale(value: Any, codes: dict[str, str] | None = None) -> str | None:
    """`us` (with ESCI's codes) or `en-us` -> `en_US`; a value of another shape is returned as it is, for the schema to refuse."""
    s = _text(value)
    if s is None:
        return None
    if codes and s.lower() in codes:
        return codes[s.lower()]
    lang, sep, region = s.replace("-", "_").partition("_")
    if sep and lang.isalpha() and region.isalnum() and "_" not in region:
        return f"{lang.lower()}_{region.upper()}"
    return s


def to_bullets(value: Any) -> list[str]:
    """A list (Parquet, JSON), a JSON array in a string, or one string with a bullet per line."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = orjson.loads(s)
            except orjson.JSONDecodeError:
                value = s.splitlines()
        else:
            value = s.splitlines()
    if not isinstance(value, (list, tuple)):
        raise RowError(f"bullet_points: expected a list or text, got {type(value).__name__}")
    return [t for t in (_text(b) for b in value) if t]


def to_attributes(value: Any) -> dict[str, str]:
    """A JSON object (string, dict, Parquet struct or map) -> {name: text}; empty values dropped."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RowError(f"attributes: not a JSON object ({exc})") from None
    if isinstance(value, list) and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in value):
        value = dict(value)  # a Parquet map reads as a list of (key, value)
    if not isinstance(value, dict):
        raise RowError(f"attributes: expected a JSON object, got {type(value).__name__}")
    out = {}
    for k, v in value.items():
        t = _text(v) if not isinstance(v, (list, dict)) else orjson.dumps(v).decode()
        if t:
            out[str(k)] = t
    return out


def _number(name: str, v: Any, kind: type) -> float | int | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise RowError(f"{name}: {v!r} is not a number") from None
    if kind is int:
        if not x.is_integer():
            raise RowError(f"{name}: {v!r} is not a whole number")
        return int(x)
    return x


def to_timestamp(v: Any) -> float | None:
    """Unix seconds from a number, a numeric string or an ISO 8601 date (a naive one is UTC)."""
    if v is None:
        return None
    if isinstance(v, datetime):
        d = v
    else:
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
        try:
            d = datetime.fromisoformat(str(v).strip())
        except ValueError:
            raise RowError(f"updated_at: {v!r} is neither unix seconds nor an ISO 8601 date") from None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def to_bool(name: str, v: Any) -> bool:
    if v is None or isinstance(v, bool):
        return bool(v)
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "y", "t"):
        return True
    if s in ("0", "false", "no", "n", "f"):
        return False
    raise RowError(f"{name}: {v!r} is not true/false")


def _limits() -> dict[str, int]:
    """The schema's size bounds, read from the model so they have one home (m5core.schema)."""
    props = Product.model_json_schema()["properties"]
    return {
        "title": props["title"]["maxLength"],
        "description": props["description"]["maxLength"],
        "bullets": props["bullet_points"]["maxItems"],
        "bullet": props["bullet_points"]["items"]["maxLength"],
        "attributes": props["attributes"]["maxProperties"],
    }


_LIMITS = _limits()


def reason_of(exc: ValidationError, quiet: set[str] = frozenset()) -> str:
    """A pydantic error as one line naming each field: `brand: String should have at least 1 character`."""
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc']) or 'product'}: {e['msg']}" for e in exc.errors() if not (e["loc"] and e["loc"][0] in quiet)
    )


# ----------------------------------------------------------------------------------- rows -> documents
@dataclass(frozen=True)
class MappedProduct:
    doc: dict  # Product.model_dump, ready to write
    source_id: str
    group: str | None
    truncated: bool


def map_product(row: dict, m: TableMap, ids: str = "asin", truncate: bool = False) -> MappedProduct:
    """One source row -> a validated Product document.

    ids: "asin" keeps the source id (it must be an ASIN); "hash" derives one with `hash_asin`.
    truncate: cut oversize title, description, bullets and attributes to the schema's bounds instead of rejecting.

    Raises:
        RowError: the reason, naming the field (the pydantic message for schema violations).
    """
    source_id = _text(m.get(row, "asin"))
    if not source_id:
        raise RowError("asin: missing (empty id)")
    asin = hash_asin(source_id) if ids == "hash" else source_id
    locale = normalise_locale(m.get(row, "locale"), m.locale_codes)
    attrs = to_attributes(m.get(row, "attributes"))
    for name in sorted(set(m.columns) | set(m.constants) | set(m.defaults)):
        if name.startswith("attributes."):
            v = m.get(row, name)
            if v is not None and _text(v):
                attrs[name.split(".", 1)[1]] = _text(v)
    marketplace = _text(m.get(row, "marketplace"))
    derived = marketplace is None and locale is not None and shape_error("locale", locale) is None
    doc: dict[str, Any] = {
        "asin": asin,
        "locale": locale,
        "marketplace": default_marketplace(locale) if derived else marketplace,
        "product_line": _text(m.get(row, "product_line")),
        "product_type": _text(m.get(row, "product_type")),
        "brand": _text(m.get(row, "brand")),
        "title": _text(m.get(row, "title")),
        "description": _text(m.get(row, "description")) or "",
        "bullet_points": to_bullets(m.get(row, "bullet_points")),
        "attributes": attrs,
        "version": _number("version", m.get(row, "version"), int),
        "updated_at": to_timestamp(m.get(row, "updated_at")),
        "price": _number("price", m.get(row, "price"), float),
        "stock": _number("stock", m.get(row, "stock"), int),
    }
    truncated = False
    if truncate:
        doc, truncated = _truncated(doc)
    doc = {k: v for k, v in doc.items() if v is not None}  # an absent required field reads "Field required"
    try:
        product = Product.model_validate(doc)
    except ValidationError as exc:
        # A marketplace left to follow a bad locale is missing only because of it: name the locale alone.
        quiet = {"marketplace"} if marketplace is None and not derived and locale is not None else set()
        raise RowError(reason_of(exc, quiet)) from None
    group = _text(m.get(row, "group"))
    return MappedProduct(product.model_dump(mode="json", exclude_none=True), source_id, group or None, truncated)


def _truncated(doc: dict) -> tuple[dict, bool]:
    lim = _LIMITS
    out = dict(doc)
    if out["title"] and len(out["title"]) > lim["title"]:
        out["title"] = out["title"][: lim["title"]]
    if len(out["description"]) > lim["description"]:
        out["description"] = out["description"][: lim["description"]]
    out["bullet_points"] = [b[: lim["bullet"]] for b in out["bullet_points"][: lim["bullets"]]]
    if len(out["attributes"]) > lim["attributes"]:
        out["attributes"] = dict(list(out["attributes"].items())[: lim["attributes"]])
    return out, out != doc


def _bucket(key: str, n: int) -> int:
    return zlib.crc32(key.encode()) % n


def split_of_query(source_split: Any, query_id: str, text: str, valid_share: float) -> str:
    """train/valid/test: the source's split (a `valid_share` of its train queries moved to valid by a hash of
    query_id), or 80/10/10 by a hash of the text when the source has none (a repeated text stays in one split)."""
    if source_split is None:
        h = _bucket(f"split:{text}", 10)
        return "test" if h == 0 else "valid" if h == 1 else "train"
    s = SPLITS.get(str(source_split).strip().lower())
    if s is None:
        raise RowError(f"split: {source_split!r} is not one of train, valid, test")
    if s == "train" and _bucket(f"valid:{query_id}", 10_000) < round(valid_share * 10_000):
        return "valid"
    return s


def _required(row: dict, m: TableMap, field: str) -> str:
    value = _text(m.get(row, field))
    if not value:
        raise RowError(f"{field}: missing")
    return value


def map_query(row: dict, m: TableMap, valid_share: float = DEFAULT_VALID_SHARE) -> dict:
    """One source row -> a query document (lexical_gap and a missing product_type are filled in later).

    Raises:
        RowError: the reason, naming the field.
    """
    qid = _required(row, m, "query_id")
    text = _required(row, m, "text")
    locale = normalise_locale(m.get(row, "locale"), m.locale_codes)
    if locale is None:
        raise RowError("locale: missing")
    err = shape_error("locale", locale)
    if err:
        raise RowError(f"locale: {err}")
    return {
        "query_id": qid,
        "text": text,
        "locale": locale,
        "split": split_of_query(m.get(row, "split"), qid, text, valid_share),
        "lexical_gap": False,
        "head": to_bool("head", m.get(row, "head")),
        "form": _text(m.get(row, "form")) or "generic",
        "attributes": {},
        "product_type": _text(m.get(row, "product_type")),
    }


def map_judgement(row: dict, m: TableMap, ids: str = "asin") -> dict:
    """One source row -> {query_id, asin, label E/S/C/I}; the product id goes through the same `ids` rule as products.

    Raises:
        RowError: the reason, naming the field.
    """
    qid = _required(row, m, "query_id")
    source_id = _required(row, m, "asin")
    asin = hash_asin(source_id) if ids == "hash" else source_id
    if not is_asin(asin):
        raise RowError(f"asin: {asin!r} is not 10 characters 0-9A-Z (use --ids hash for other ids)")
    raw = _text(m.get(row, "label"))
    label = LABELS.get((raw or "").lower())
    if label is None:
        raise RowError(f"label: {raw!r} is not one of E, S, C, I (or Exact, Substitute, Complement, Irrelevant)")
    return {"query_id": qid, "asin": asin, "label": label}


# ------------------------------------------------------------------------------------------- reading
class Unreadable:
    """A source line that is not a row (bad JSON): rejected with this reason."""

    def __init__(self, reason: str):
        self.reason = reason


def readable(row: dict | Unreadable) -> dict:
    """The row, or its reason as a RowError (a bad JSON line is rejected like an invalid row)."""
    if isinstance(row, Unreadable):
        raise RowError(row.reason)
    return row


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise CatalogImportError(f"{path}: unknown format; name it .parquet, .csv, .tsv or .jsonl (.csv.gz and .jsonl.gz too)")
    return fmt


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CatalogImportError(f"reading Parquet needs pyarrow (pip install pyarrow): {exc}") from exc
    return pq


def table_columns(path: Path) -> list[str]:
    """Column names: the Parquet schema, the CSV header, or the keys of the first JSONL row."""
    fmt = file_format(path)
    if fmt == "parquet":
        return list(_pyarrow_parquet().ParquetFile(path).schema_arrow.names)
    with _open_text(path) as f:
        if fmt in ("csv", "tsv"):
            return next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])
        for line in f:
            if line.strip():
                try:
                    first = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise CatalogImportError(f"{path}: the first line is not JSON ({exc})") from None
                return list(first) if isinstance(first, dict) else []
    return []


def count_rows(path: Path) -> int | None:
    """Rows in a Parquet file (from its footer); None for text formats (not worth a pass)."""
    return _pyarrow_parquet().ParquetFile(path).metadata.num_rows if file_format(path) == "parquet" else None


def read_rows(path: Path, columns: list[str] | None = None, batch_size: int = 8192) -> Iterator[dict | Unreadable]:
    """Stream rows as dicts: Parquet in record batches of only `columns`, CSV/TSV and JSONL line by line."""
    fmt = file_format(path)
    if fmt == "parquet":
        pf = _pyarrow_parquet().ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns or None):
            yield from batch.to_pylist()
        return
    with _open_text(path) as f:
        if fmt in ("csv", "tsv"):
            csv.field_size_limit(2**31 - 1)  # descriptions can exceed csv's 128 KiB default; the schema bounds them
            yield from csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
            return
        for line in f:
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield Unreadable(f"not a JSON line ({exc})")
                continue
            yield row if isinstance(row, dict) else Unreadable(f"not a JSON object ({type(row).__name__})")


# -------------------------------------------------------------------------------------------- import
@dataclass(frozen=True)
class Source:
    """One source table, what it fills, and (ESCI subsets) a column whose true rows are the only ones read."""

    path: Path
    map: TableMap
    where: str | None = None

    def needed_columns(self) -> list[str]:
        return sorted({*self.map.columns.values(), *([self.where] if self.where else [])})


@dataclass
class FileStats:
    table: str
    file: str
    read: int = 0
    imported: int = 0
    rejected: int = 0
    skipped: int = 0  # rows outside the chosen subset (ESCI --subset)


@dataclass
class _Run:
    """State shared by the passes of one import (internal)."""

    tmp: Path
    show_progress: bool
    rejects: Any = None
    stats: list[FileStats] = field(default_factory=list)
    reject_samples: list[str] = field(default_factory=list)

    def rows(self, src: Source, table: str, report: bool = True) -> Iterator[tuple[int, dict | Unreadable, FileStats]]:
        """(row number from 1, row, its file's counters), with a progress bar; `report=False` keeps no counters."""
        st = FileStats(table, str(src.path))
        if report:
            self.stats.append(st)
        bar = tqdm(
            total=count_rows(src.path),
            desc=f"{table} <- {src.path.name}",
            unit=" rows",
            mininterval=1.0,
            disable=not self.show_progress,
            file=sys.stderr,
        )
        try:
            for n, row in enumerate(read_rows(src.path, src.needed_columns()), start=1):
                bar.update()
                st.read += 1
                if src.where and not isinstance(row, Unreadable) and str(_cell(row, src.where)).strip().lower() not in ("1", "true"):
                    st.skipped += 1
                    continue
                yield n, row, st
        finally:
            bar.close()

    def reject(self, st: FileStats, row: int, reason: str, source_id: str | None = None) -> None:
        st.rejected += 1
        doc = {"table": st.table, "file": st.file, "row": row, "reason": reason}
        if source_id:
            doc["id"] = source_id
        self.rejects.write(orjson.dumps(doc) + b"\n")
        if len(self.reject_samples) < 5:
            self.reject_samples.append(f"{Path(st.file).name} row {row}: {reason}")


def _check_sources(sources: dict[str, Source | None]) -> None:
    """Every file exists and has every mapped column: fail before anything is written, naming column and file."""
    for table, src in sources.items():
        if src is None:
            continue
        if not src.path.is_file():
            raise CatalogImportError(f"--{table}: no file at {src.path}")
        cols = set(table_columns(src.path))
        fields_of = {c: f for f, c in src.map.columns.items()}
        for col in src.needed_columns():
            if col not in cols:
                what = f"mapped to {table} field {fields_of[col]!r}" if col in fields_of else "the subset column"
                raise CatalogImportError(f"{src.path}: no column {col!r} ({what}); its columns are {', '.join(sorted(cols)) or 'none'}")
        unset = [f for f in REQUIRED[table] if not src.map.has(f)]
        if unset:
            flag = "--map FIELD=COLUMN or --set FIELD=VALUE" if table == "products" else f"--{table[:-1]}-map FIELD=COLUMN"
            raise CatalogImportError(f"{table} map: nothing fills {', '.join(unset)} (give each a column or a value: {flag})")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CatalogImportError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CatalogImportError(f"--out {out} exists and is not empty; pass --force to replace it")


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished directory in place: a rename, or two when --force replaces an existing catalog."""
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "catalog")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)  # replaces an empty directory too


def import_catalog(
    out: Path | str,
    products: Source,
    queries: Source | None = None,
    judgements: Source | None = None,
    *,
    layout: str = "generic",
    ids: str = "asin",
    valid_share: float = DEFAULT_VALID_SHARE,
    truncate: bool = False,
    force: bool = False,
    show_progress: bool = True,
    negatives_per_cluster: int = 1,
) -> dict:
    """Write a catalog directory from source tables; returns its manifest.

    Passes: queries (kept in memory: one small record each), judgements once for the Exact pairs (two
    int arrays), products streamed to disk (an ASIN -> locale index is kept, ~100 bytes a product; with a
    `group` column also its clusters), judgements again to write those whose product was imported.

    Raises:
        CatalogImportError: a missing file or mapped column, an existing non-empty `out` without `force`,
            judgements without queries, or no product imported. Nothing is written then.
    """
    out = Path(out)
    if ids not in ("asin", "hash"):
        raise CatalogImportError(f"--ids: {ids!r} is not asin or hash")
    if judgements is not None and queries is None:
        raise CatalogImportError("--judgements: give the queries table too (--queries), judgements refer to its query ids")
    if not 0 <= valid_share <= 1:
        raise CatalogImportError("--valid-share: must be between 0 and 1")
    _check_sources({"products": products, "queries": queries, "judgements": judgements})
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.importing-"))
    t0 = time.perf_counter()
    try:
        products = replace(products, map=products.map if products.map.has("version") else products.map.merged(constants={"version": 1}))
        if not products.map.has("updated_at"):
            products = replace(products, map=products.map.merged(constants={"updated_at": float(int(time.time()))}))
        run = _Run(tmp, show_progress)
        with open(tmp / "rejects.jsonl", "wb") as run.rejects:
            manifest = _build(run, products, queries, judgements, ids, valid_share, truncate, negatives_per_cluster)
        manifest |= {
            "importer_version": IMPORTER_VERSION,
            "layout": layout,
            "ids": ids,
            "valid_share": valid_share,
            "truncate": truncate,
            "updated_at": products.map.constants.get("updated_at"),
            "sources": {
                t: {"file": str(s.path), **s.map.describe(), **({"where": s.where} if s.where else {})}
                for t, s in (("products", products), ("queries", queries), ("judgements", judgements))
                if s
            },
            "files": [vars(s) for s in run.stats],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if manifest["products"] == 0:
            raise CatalogImportError(
                f"no product imported ({manifest['counts']['rejected']} rows rejected; first reasons: " + "; ".join(run.reject_samples) + ")"
            )
        (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        _check_out(out, force)
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _build(
    run: _Run,
    products: Source,
    queries: Source | None,
    judgements: Source | None,
    ids: str,
    valid_share: float,
    truncate: bool,
    negatives_per_cluster: int,
) -> dict:
    counts: Counter = Counter()
    # 1. Queries: one per query_id; a repeated id (ESCI repeats it on every example) must agree with its first row.
    qdocs: list[dict] = []
    qindex: dict[str, int] = {}
    qfirst: list[int] = []
    if queries is not None:
        for n, row, st in run.rows(queries, "queries"):
            try:
                q = map_query(readable(row), queries.map, valid_share)
            except RowError as exc:
                run.reject(st, n, str(exc))
                continue
            i = qindex.get(q["query_id"])
            if i is None:
                qindex[q["query_id"]] = len(qdocs)
                qdocs.append(q)
                qfirst.append(n)
                st.imported += 1
            elif (qdocs[i]["text"], qdocs[i]["locale"]) != (q["text"], q["locale"]):
                run.reject(st, n, f"query_id: {q['query_id']!r} has another text or locale on row {qfirst[i]}", q["query_id"])
    qwords = [content_words(q["text"]) for q in qdocs]

    # 2. The Exact pairs, as sorted (asin id, query index) arrays: the product pass checks the lexical gap against them.
    e_asin, e_query = array("q"), array("q")
    if judgements is not None:
        for _, row, _ in run.rows(judgements, "exact pairs", report=False):
            try:
                j = map_judgement(readable(row), judgements.map, ids)
            except RowError:
                continue  # rejected, with its reason, by pass 4
            if j["label"] == "E" and j["query_id"] in qindex:
                e_asin.append(asin_to_id(j["asin"]))
                e_query.append(qindex[j["query_id"]])
    order = np.argsort(np.frombuffer(e_asin, np.int64), kind="stable")
    ekeys = np.frombuffer(e_asin, np.int64)[order]
    equeries = np.frombuffer(e_query, np.int64)[order]
    has_exact = np.zeros(len(qdocs), bool)
    overlaps = np.zeros(len(qdocs), bool)
    exact_types: dict[int, Counter] = {}

    # 3. Products, streamed to products.jsonl.
    locale_of: dict[int, str] = {}  # asin id -> locale of the imported product
    locales: Counter = Counter()
    clusters: dict[str, list[str]] = {}
    cluster_meta: dict[str, tuple[str, str]] = {}
    id_map = open(run.tmp / "id_map.jsonl", "wb") if ids == "hash" else None
    try:
        with open(run.tmp / "products.jsonl", "wb") as f:
            for n, row, st in run.rows(products, "products"):
                try:
                    mp = map_product(readable(row), products.map, ids, truncate)
                except RowError as exc:
                    run.reject(st, n, str(exc), _text(products.map.get(row, "asin")) if isinstance(row, dict) else None)
                    continue
                doc = mp.doc
                aid = asin_to_id(doc["asin"])
                if aid in locale_of:
                    why = "the hash of another source id, or a repeated id" if ids == "hash" else "a repeated id"
                    run.reject(
                        st, n, f"asin: {doc['asin']!r} was already imported ({why}; ids are one per catalog, the first row wins)", mp.source_id
                    )
                    continue
                locale = sys.intern(doc["locale"])
                locale_of[aid] = locale
                locales[locale] += 1
                f.write(orjson.dumps(doc) + b"\n")
                st.imported += 1
                counts["truncated"] += mp.truncated
                if id_map is not None:
                    id_map.write(orjson.dumps({"asin": doc["asin"], "source_id": mp.source_id}) + b"\n")
                if mp.group is not None:
                    clusters.setdefault(mp.group, []).append(doc["asin"])
                    cluster_meta.setdefault(mp.group, (doc["product_type"], doc["product_line"]))
                lo, hi = np.searchsorted(ekeys, aid, "left"), np.searchsorted(ekeys, aid, "right")
                if lo < hi:
                    words = listing_words(doc)
                    for qi in equeries[lo:hi].tolist():
                        if qdocs[qi]["locale"] == locale:
                            has_exact[qi] = True
                            overlaps[qi] |= bool(qwords[qi] & words)
                            exact_types.setdefault(qi, Counter())[doc["product_type"]] += 1
    finally:
        if id_map is not None:
            id_map.close()
    counts["products"] = sum(locales.values())

    # 4. Judgements whose query and product were imported, in the query's marketplace (the only one ranked for it).
    with open(run.tmp / "judgements.jsonl", "wb") as f:
        if judgements is not None:
            for n, row, st in run.rows(judgements, "judgements"):
                try:
                    j = map_judgement(readable(row), judgements.map, ids)
                    qi = qindex.get(j["query_id"])
                    if qi is None:
                        raise RowError(f"query_id: {j['query_id']!r} is not an imported query")
                    plocale = locale_of.get(asin_to_id(j["asin"]))
                    if plocale is None:
                        raise RowError(f"asin: {j['asin']!r} is not an imported product (rejected or not in the products table)")
                    if plocale != qdocs[qi]["locale"]:
                        raise RowError(
                            f"asin: {j['asin']!r} was imported in {plocale}, the query is in {qdocs[qi]['locale']} "
                            "(judgements stay within a marketplace)"
                        )
                except RowError as exc:
                    run.reject(st, n, str(exc), _text(judgements.map.get(row, "asin")) if isinstance(row, dict) else None)
                    continue
                f.write(orjson.dumps(j) + b"\n")
                st.imported += 1
    counts["judgements"] = sum(s.imported for s in run.stats if s.table == "judgements")

    # 5. Queries, with the lexical gap (no content word shared with any imported Exact) and the Exacts' product type.
    with open(run.tmp / "queries.jsonl", "wb") as f:
        for qi, q in enumerate(qdocs):
            q["lexical_gap"] = bool(has_exact[qi] and not overlaps[qi])
            if q["product_type"] is None and qi in exact_types:
                q["product_type"] = exact_types[qi].most_common(1)[0][0]
            f.write(orjson.dumps(q) + b"\n")
    counts["queries"] = len(qdocs)
    counts["queries_with_exact"] = int(has_exact.sum())
    for s in ("train", "valid", "test"):
        counts[f"queries_{s}"] = sum(q["split"] == s for q in qdocs)

    # 6. Clusters and duplicate pairs from the group column; copurchase is never in a source table.
    pairs = duplicate_pairs(clusters, cluster_meta, negatives_per_cluster)
    counts["clusters"] = write_jsonl(
        run.tmp / "clusters.jsonl", ({"cluster_id": g, "asins": a, "split": cluster_split(g)} for g, a in clusters.items())
    )
    counts["duplicate_pairs"] = write_jsonl(run.tmp / "duplicate_pairs.jsonl", pairs)
    counts["copurchase"] = write_jsonl(run.tmp / "copurchase.jsonl", [])
    counts["rejected"] = sum(s.rejected for s in run.stats)
    gap = int(sum(q["lexical_gap"] for q in qdocs))
    return {
        "products": counts["products"],
        "locales": sorted(locales),
        "products_by_locale": dict(sorted(locales.items())),
        "counts": dict(counts),
        "lexical_gap_share": round(gap / counts["queries_with_exact"], 4) if counts["queries_with_exact"] else 0.0,
    }


def cluster_split(group: str) -> str:
    """80/10/10 by a stable hash of the group, so a cluster and its pairs never straddle splits."""
    h = _bucket(f"cluster:{group}", 10)
    return "test" if h == 0 else "valid" if h == 1 else "train"


def duplicate_pairs(clusters: dict[str, list[str]], meta: dict[str, tuple[str, str]], negatives: int = 1) -> list[dict]:
    """Positives: each listing of a group against its first; negatives: `negatives` other groups of the same
    product_type and split per multi-listing group (deterministic), so both labels exist in every split."""
    by_key: dict[tuple[str, str], list[str]] = {}
    for g in clusters:
        by_key.setdefault((meta[g][0], cluster_split(g)), []).append(g)
    pos_of = {g: i for groups in by_key.values() for i, g in enumerate(groups)}
    out = []
    for g, asins in clusters.items():
        if len(asins) < 2:
            continue
        ptype, line = meta[g]
        split = cluster_split(g)
        for b in asins[1:]:
            out.append({"asin_a": asins[0], "asin_b": b, "label": 1, "product_line": line, "cluster_a": g, "cluster_b": g, "split": split})
        peers = by_key[(ptype, split)]
        if len(peers) < 2:
            continue
        start = _bucket(f"neg:{g}", len(peers) - 1)
        for k in range(min(negatives, len(peers) - 1)):
            other = peers[(pos_of[g] + 1 + (start + k) % (len(peers) - 1)) % len(peers)]
            out.append(
                {
                    "asin_a": asins[0],
                    "asin_b": clusters[other][0],
                    "label": 0,
                    "product_line": line,
                    "cluster_a": g,
                    "cluster_b": other,
                    "split": split,
                }
            )
    return out


# ---------------------------------------------------------------------------------------- front ends
def esci_sources(
    products: Path, examples: Path, subset: str = "all", product_constants: dict | None = None, product_defaults: dict | None = None
) -> tuple[Source, Source, Source]:
    """The Shopping Queries (ESCI) layout: products table + examples table (queries and judgements in one)."""
    if subset not in ESCI_SUBSETS:
        raise CatalogImportError(f"--subset: {subset!r} is not one of {', '.join(ESCI_SUBSETS)}")
    where = ESCI_SUBSETS[subset]
    pmap = ESCI_PRODUCTS.merged(constants=product_constants, defaults=product_defaults)
    return Source(Path(products), pmap), Source(Path(examples), ESCI_QUERIES, where), Source(Path(examples), ESCI_JUDGEMENTS, where)


def generic_map(kind: str, base: dict | None, columns: dict, constants: dict, defaults: dict | None = None) -> TableMap:
    """A TableMap from a map-file section (`base`) with command-line flags on top."""
    base = base or {}
    return TableMap(kind).merged(base.get("map"), base.get("set"), base.get("default")).merged(columns, constants, defaults)


def summary(manifest: dict) -> str:
    """Counts per file, for the command line."""
    lines = []
    for s in manifest["files"]:
        extra = f", skipped {s['skipped']} outside the subset" if s["skipped"] else ""
        lines.append(f"  {s['table']:<10} {s['file']}: read {s['read']} rows, imported {s['imported']}, rejected {s['rejected']}{extra}")
    c = manifest["counts"]
    queries = (
        (
            f"{c['queries']} queries ({c['queries_train']}/{c['queries_valid']}/{c['queries_test']} train/valid/test, "
            f"{c['queries_with_exact']} with an Exact, lexical-gap share {manifest['lexical_gap_share']:.1%}), "
            f"{c['judgements']} judgements"
        )
        if c["queries"]
        else "no queries"
    )
    lines.append(
        f"  catalog: {c['products']} products ({', '.join(f'{k} {v}' for k, v in manifest['products_by_locale'].items())}), "
        f"{queries}, {c['clusters']} clusters, {c['duplicate_pairs']} duplicate pairs"
        + (f", {c['truncated']} products truncated" if c.get("truncated") else "")
    )
    return "\n".join(lines)

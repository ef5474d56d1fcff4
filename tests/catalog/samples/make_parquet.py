"""Writes the committed Parquet samples from their hand-written CSV/JSONL sources (run once; a test keeps them equal).

.venv/bin/python tests/catalog/samples/make_parquet.py
"""

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ESCI_INT_COLUMNS = {"example_id", "query_id", "small_version", "large_version"}  # integer columns in the public files


def esci_table(name: str) -> pa.Table:
    with open(HERE / f"{name}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = {c: [(int(r[c]) if c in ESCI_INT_COLUMNS else r[c]) if r[c] != "" else None for r in rows] for c in rows[0]}
    return pa.table({c: pa.array(v, pa.int64() if c in ESCI_INT_COLUMNS else pa.string()) for c, v in cols.items()})


def generic_table() -> pa.Table:
    rows = []
    for line in (HERE / "generic_products.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the deliberately broken line has no Parquet form
    for r in rows:
        r["updated"] = str(r["updated"])  # one type per column; the JSONL mixes numbers and dates
    return pa.Table.from_pylist(rows)  # bullets -> list<string>, attrs -> struct (missing keys read as null)


def main() -> None:
    for name in ("esci_products", "esci_examples"):
        pq.write_table(esci_table(name), HERE / f"{name}.parquet")
    pq.write_table(generic_table(), HERE / "generic_products.parquet")


if __name__ == "__main__":
    main()

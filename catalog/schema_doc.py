"""docs/product.schema.json is generated from m5core.schema.Product; a test keeps the file current."""

from __future__ import annotations

from pathlib import Path

import orjson

from m5core.schema import Product

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "product.schema.json"


def product_json_schema() -> bytes:
    """The Product JSON schema, with a stable key order and a trailing newline."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "m5/product.schema.json", **Product.model_json_schema()}
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_product_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_bytes(product_json_schema())
    return path


if __name__ == "__main__":
    print(write_product_schema())

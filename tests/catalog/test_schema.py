"""The product schema rejects bad records naming the field, and docs/product.schema.json is current."""

import orjson
import pytest
from pydantic import ValidationError

from catalog.schema_doc import SCHEMA_PATH, product_json_schema
from m5core.schema import KEY_SHAPES, Product

GOOD = {
    "asin": "B000000001",
    "marketplace": "DE",
    "locale": "de_DE",
    "product_line": "softlines",
    "product_type": "socks",
    "brand": "Kalo",
    "title": "Kalo Socken schwarz",
    "attributes": {"colour": "schwarz"},
    "version": 1,
    "updated_at": 1.0,
}


def test_committed_schema_file_is_up_to_date():
    assert SCHEMA_PATH.read_bytes() == product_json_schema(), "run `python -m catalog.schema_doc` and commit docs/product.schema.json"


def test_good_record_validates():
    assert Product.model_validate(GOOD).asin == "B000000001"


@pytest.mark.parametrize(
    "field,value",
    [
        ("asin", "b0-lower"),
        ("asin", "B00000000"),
        ("locale", "french"),
        ("product_line", "Toys & Games"),
        ("marketplace", "de"),
        ("version", "one"),
        ("version", -1),
        ("version", 2**63 + 5),
        ("version", 2**53),
        ("attributes", ["colour"]),
        ("title", ""),
        ("updated_at", "yesterday"),
    ],
)
def test_bad_field_is_rejected_by_name(field, value):
    with pytest.raises(ValidationError) as exc:
        Product.model_validate({**GOOD, field: value})
    assert field in str(exc.value)


def test_the_largest_version_is_one_redis_lua_compares_exactly():
    """Versions are compared in Lua doubles: the largest one accepted is still distinct from the one below it."""
    from m5core.schema import MAX_VERSION, ChangeEvent

    assert Product.model_validate({**GOOD, "version": MAX_VERSION}).version == MAX_VERSION
    assert float(MAX_VERSION) != float(MAX_VERSION - 1)
    with pytest.raises(ValidationError, match="version"):
        ChangeEvent.model_validate({"op": "delete", "asin": "B000000001", "version": 2**63 + 5, "ts": 1.0})


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="colour_code"):
        Product.model_validate({**GOOD, "colour_code": "x"})


def test_new_locale_and_product_line_validate():
    doc = {**GOOD, "locale": "fr_FR", "marketplace": "FR", "product_line": "garden"}
    assert Product.model_validate(doc).model_dump()["product_line"] == "garden"


@pytest.mark.parametrize("field", sorted(KEY_SHAPES))
def test_schema_file_states_each_open_key_by_its_pattern(field):
    assert orjson.loads(product_json_schema())["properties"][field]["pattern"] == KEY_SHAPES[field][0]

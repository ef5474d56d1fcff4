import pytest
from pydantic import ValidationError

from m5core.schema import (
    ChangeEvent,
    Product,
    apply_patch,
    asin_to_id,
    content_hash,
    id_to_asin,
    is_asin,
    render_product,
)


def product(**over):
    doc = dict(
        asin="B000000001", marketplace="US", locale="en_US", product_line="softlines",
        product_type="running_shoes", brand="Acme", title="Acme running shoes, blue, size 42",
        description="Light shoes.", bullet_points=["breathable mesh"], attributes={"colour": "blue", "size": "42"},
        version=3, updated_at=1700000000.0, price=59.9, stock=4,
    )
    doc.update(over)
    return doc


def test_valid_product_round_trips():
    p = Product.model_validate(product())
    assert p.asin == "B000000001" and p.locale == "en_US"


@pytest.mark.parametrize(
    "field,value",
    [("asin", "b000000001"), ("asin", "B00000001"), ("locale", "fr_FR"), ("version", "three"),
     ("product_line", "toys"), ("attributes", {"colour": 3})],
)
def test_invalid_field_is_named(field, value):
    with pytest.raises(ValidationError) as err:
        Product.model_validate(product(**{field: value}))
    assert field in str(err.value)


def test_marketplace_must_match_locale():
    with pytest.raises(ValidationError, match="marketplace"):
        Product.model_validate(product(marketplace="DE"))


def test_unknown_field_rejected():
    with pytest.raises(ValidationError, match="colour_name"):
        Product.model_validate(product(colour_name="x"))


def test_asin_id_is_bijective():
    for a in ["B000000001", "ZZZZZZZZZZ", "0000000000", "B07XJ8C8F5"]:
        assert is_asin(a)
        assert id_to_asin(asin_to_id(a)) == a
    assert asin_to_id("ZZZZZZZZZZ") < 2**63


def test_content_hash_ignores_metadata_only():
    a = Product.model_validate(product())
    b = Product.model_validate(product(price=10.0, stock=0, version=9, updated_at=1.0))
    c = Product.model_validate(product(title="Acme running shoes, red"))
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(c)


def test_render_schemes():
    p = product()
    fields = render_product(p, "fields")
    plain = render_product(p, "plain")
    assert fields.startswith("[TITLE] Acme") and "[ATTR] colour [VAL] blue" in fields
    assert "[" not in plain and "colour blue" in plain


def test_event_payload_must_match_op():
    ChangeEvent.model_validate({"op": "upsert", "asin": "B000000001", "version": 3, "ts": 1.0, "product": product()})
    with pytest.raises(ValidationError, match="product"):
        ChangeEvent.model_validate({"op": "upsert", "asin": "B000000001", "version": 3, "ts": 1.0})
    with pytest.raises(ValidationError, match="asin"):
        ChangeEvent.model_validate({"op": "upsert", "asin": "B000000002", "version": 3, "ts": 1.0, "product": product()})
    with pytest.raises(ValidationError, match="product"):
        ChangeEvent.model_validate({"op": "delete", "asin": "B000000001", "version": 4, "ts": 1.0, "product": product()})


def test_apply_patch_merges_and_removes():
    ev = ChangeEvent.model_validate(
        {"op": "patch", "asin": "B000000001", "version": 4, "ts": 2.0, "attributes": {"colour": "red", "size": None}, "price": 1.5}
    )
    doc = apply_patch(product(), ev)
    assert doc["attributes"] == {"colour": "red"} and doc["price"] == 1.5 and doc["version"] == 4
    assert product()["attributes"]["size"] == "42"  # input untouched

import pytest
from pydantic import ValidationError

from m5core.schema import (
    KEY_SHAPES,
    ChangeEvent,
    Product,
    apply_patch,
    asin_to_id,
    content_hash,
    default_marketplace,
    id_to_asin,
    is_asin,
    language_of,
    render_product,
    shape_error,
)


def product(**over):
    doc = dict(
        asin="B000000001",
        marketplace="US",
        locale="en_US",
        product_line="softlines",
        product_type="running_shoes",
        brand="Acme",
        title="Acme running shoes, blue, size 42",
        description="Light shoes.",
        bullet_points=["breathable mesh"],
        attributes={"colour": "blue", "size": "42"},
        version=3,
        updated_at=1700000000.0,
        price=59.9,
        stock=4,
    )
    doc.update(over)
    return doc


def test_valid_product_round_trips():
    p = Product.model_validate(product())
    assert p.asin == "B000000001"
    assert p.locale == "en_US"


@pytest.mark.parametrize(
    "field,value",
    [
        ("asin", "b000000001"),
        ("asin", "B00000001"),
        ("locale", "english"),
        ("version", "three"),
        ("product_line", "Toys"),
        ("attributes", {"colour": 3}),
    ],
)
def test_invalid_field_is_named(field, value):
    with pytest.raises(ValidationError) as err:
        Product.model_validate(product(**{field: value}))
    assert field in str(err.value)


@pytest.mark.parametrize(
    "locale,marketplace,line",
    [
        ("fr_FR", "FR", "garden"),
        ("ja_JP", "JP", "hardlines"),
        ("es_419", "419", "pet_supplies"),
        ("fil_PH", "ATVPDKIKX0DER", "b2"),
    ],
)
def test_open_keys_accept_any_value_of_the_shape(locale, marketplace, line):
    p = Product.model_validate(product(locale=locale, marketplace=marketplace, product_line=line))
    assert (p.locale, p.marketplace, p.product_line) == (locale, marketplace, line)


def test_marketplace_need_not_be_the_locale_region():
    assert Product.model_validate(product(locale="en_US", marketplace="DE")).marketplace == "DE"


@pytest.mark.parametrize(
    "field,value",
    [
        ("locale", "english"),
        ("locale", "EN-us-x"),
        ("locale", "en-US"),
        ("locale", "en_us"),
        ("locale", "en_US\n"),
        ("locale", "e_US"),
        ("locale", "en_U5"),
        ("marketplace", "us"),
        ("marketplace", "U"),
        ("marketplace", "X" * 17),
        ("product_line", "Garden"),
        ("product_line", "g"),
        ("product_line", "1garden"),
        ("product_line", "garden-tools"),
        ("product_line", "g" * 33),
    ],
)
def test_malformed_key_is_rejected_with_its_shape(field, value):
    with pytest.raises(ValidationError) as err:
        Product.model_validate(product(**{field: value}))
    assert f"{field} {value!r} is not {KEY_SHAPES[field][1]}" in str(err.value)


def test_locale_error_shows_the_expected_shape():
    assert shape_error("locale", "english") == "locale 'english' is not an ll_CC tag such as en_US or fr_FR"
    assert shape_error("locale", "fr_FR") is None


def test_language_and_default_marketplace_come_from_the_tag():
    assert [language_of(loc) for loc in ("fr_FR", "ja_JP", "es_419", "fil_PH")] == ["fr", "ja", "es", "fil"]
    assert [default_marketplace(loc) for loc in ("fr_FR", "ar_AE", "es_419")] == ["FR", "AE", "419"]


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
    assert fields.startswith("[TITLE] Acme")
    assert "[ATTR] colour [VAL] blue" in fields
    assert "[" not in plain
    assert "colour blue" in plain


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
    assert doc["attributes"] == {"colour": "red"}
    assert doc["price"] == 1.5
    assert doc["version"] == 4
    assert product()["attributes"]["size"] == "42"  # input untouched

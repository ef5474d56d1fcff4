"""Product and change-event schema: the one definition every component validates against.

Pure functions only: ASIN <-> FAISS id, content hash, text rendering for the encoder.
"""

from __future__ import annotations

import hashlib
import re
from enum import Enum
from typing import Annotated, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

ASIN_PATTERN = r"^[0-9A-Z]{10}$"
_ASIN_RE = re.compile(ASIN_PATTERN)

Asin = Annotated[str, StringConstraints(pattern=ASIN_PATTERN)]

# Oversize fields are rejected, not truncated: a silent cut changes the embedding.
MAX_TITLE = 512
MAX_TEXT = 8_192
MAX_BULLETS = 16
MAX_ATTRIBUTES = 64


# The catalog's open keys: any value of the right shape is accepted, so a new locale, marketplace or
# product line needs no code change (the indexer, index filters and trainer key on the string).
# Each shape lives here once; its pattern, its JSON-schema bound and its error message come from it.
MARKETPLACE_CHARS = (2, 16)  # country codes (US, DE) up to Amazon marketplace ids (ATVPDKIKX0DER)
PRODUCT_LINE_CHARS = (2, 32)
KEY_SHAPES: dict[str, tuple[str, str]] = {  # field -> (pattern, what the error says a value should be)
    # language (ISO 639, 2-3 letters) _ region (ISO 3166 alpha-2 or UN M.49 digits: es_419). `en-US` is
    # refused, not rewritten: the tag is a filter key, and one spelling per locale keeps filters exact.
    "locale": (r"^[a-z]{2,3}_(?:[A-Z]{2}|[0-9]{3})$", "an ll_CC tag such as en_US or fr_FR"),
    "marketplace": (r"^[A-Z0-9]{%d,%d}$" % MARKETPLACE_CHARS, "%d-%d capital letters or digits such as US or FR" % MARKETPLACE_CHARS),
    "product_line": (
        r"^[a-z][a-z0-9_]{%d,%d}$" % (PRODUCT_LINE_CHARS[0] - 1, PRODUCT_LINE_CHARS[1] - 1),
        "%d-%d lowercase letters, digits or _ (a letter first) such as softlines or garden" % PRODUCT_LINE_CHARS,
    ),
}


def shape_error(field: str, value: str) -> str | None:
    """Why `value` is not a valid `field` (a key of KEY_SHAPES), or None when it is one."""
    pattern, shape = KEY_SHAPES[field]
    # fullmatch: `$` alone would let a trailing newline through
    return None if re.fullmatch(pattern, value) else f"{field} {value!r} is not {shape}"


def _open_key(field: str):
    """A str type checked against KEY_SHAPES[field]; its error names the expected shape."""
    pattern, shape = KEY_SHAPES[field]

    def check(value: str) -> str:
        err = shape_error(field, value)
        if err:
            raise PydanticCustomError("key_shape", "{error}", {"error": err})
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": pattern, "description": shape})]


Locale = _open_key("locale")
Marketplace = _open_key("marketplace")
ProductLine = _open_key("product_line")


def language_of(locale: str) -> str:
    """ISO 639 language of an `ll_CC` locale tag (`de_DE` -> `de`): per-language sampling and metrics."""
    return locale.split("_", 1)[0].lower()


def default_marketplace(locale: str) -> str:
    """The marketplace of a listing whose source names none: the locale's region (`fr_FR` -> `FR`)."""
    return locale.rsplit("_", 1)[-1]


MAX_VERSION = 2**53 - 1
"""The largest product version: the store compares versions in Redis Lua, whose numbers are doubles, exact only up to
2^53 (2^63 + 5 was accepted and then equal to every later version: the product froze)."""
Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]


class Product(BaseModel):
    """A catalog listing. Fields that feed the embedding are listed in EMBEDDED_FIELDS."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    asin: Asin
    marketplace: Marketplace
    locale: Locale
    product_line: ProductLine
    product_type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    brand: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    title: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE)]
    description: Annotated[str, StringConstraints(max_length=MAX_TEXT)] = ""
    bullet_points: list[Annotated[str, StringConstraints(max_length=1024)]] = Field(default_factory=list, max_length=MAX_BULLETS)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)
    version: Version
    updated_at: float = Field(ge=0, description="Unix seconds of the change.")
    # Metadata: stored and served, never embedded (an edit here is not re-embedded).
    price: float | None = Field(default=None, ge=0)
    stock: int | None = Field(default=None, ge=0)


EMBEDDED_FIELDS = ("locale", "product_type", "brand", "title", "description", "bullet_points", "attributes")
FILTER_FIELDS = ("locale", "product_line")
"""What the store record and every index keep beside the vector, for filtered search."""


class ChangeOp(str, Enum):
    upsert = "upsert"
    delete = "delete"
    patch = "patch"  # partial edit: attributes and/or metadata, merged onto the stored product


class ChangeEvent(BaseModel):
    """One message on `catalog.changes`, keyed by ASIN."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    op: ChangeOp
    asin: Asin
    version: Version
    ts: float = Field(ge=0, description="Unix seconds when the change happened (for freshness).")
    product: Product | None = None
    attributes: dict[str, str | None] | None = Field(default=None, max_length=MAX_ATTRIBUTES, description="patch: value None removes the attribute.")
    price: float | None = Field(default=None, ge=0)
    stock: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _payload_matches_op(self) -> ChangeEvent:
        if self.op == ChangeOp.upsert:
            if self.product is None:
                raise ValueError("product: required for op 'upsert'")
            if self.product.asin != self.asin:
                raise ValueError(f"product.asin: {self.product.asin!r} differs from event asin {self.asin!r}")
            if self.product.version != self.version:
                raise ValueError("product.version: differs from event version")
        elif self.product is not None:
            raise ValueError(f"product: not allowed for op {self.op!r}")
        return self


def is_asin(value: str) -> bool:
    return bool(_ASIN_RE.match(value))


def asin_to_id(asin: str) -> int:
    """Bijective ASIN -> int64: base-36 digits fit in 52 bits, so no mapping table is needed."""
    return int(asin, 36)


def id_to_asin(idx: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(10):
        idx, r = divmod(idx, 36)
        out.append(digits[r])
    return "".join(reversed(out))


def content_hash(product: Product | dict) -> str:
    """Hash of the fields that feed the embedding and of the filter fields: an equal hash means the stored record
    and every index stay as they are (a metadata touch); a product moved to another product line is rewritten
    and published like any change, so replicas' filters follow it."""
    doc = product.model_dump() if isinstance(product, Product) else product
    payload = {k: doc.get(k) for k in dict.fromkeys(EMBEDDED_FIELDS + FILTER_FIELDS)}
    return hashlib.blake2b(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()


# Field tokens for the "fields" rendering scheme; the trainer adds them to the tokenizer vocabulary.
FIELD_TOKENS = ("[TITLE]", "[BRAND]", "[TYPE]", "[DESC]", "[BULLET]", "[ATTR]", "[VAL]")


def render_product(product: Product | dict, scheme: Literal["plain", "fields"] = "fields") -> str:
    """Product -> the text the product tower reads.

    "plain" streams attributes as `name value` text; "fields" marks each part with a special
    token (the brief found field tokens gave better downstream results).
    """
    p = product.model_dump() if isinstance(product, Product) else product
    attrs = p.get("attributes") or {}
    bullets = p.get("bullet_points") or []
    if scheme == "plain":
        parts = [p["title"], p["brand"], p["product_type"].replace("_", " ")]
        parts += [f"{k.replace('_', ' ')} {v}" for k, v in sorted(attrs.items())]
        parts += bullets
        if p.get("description"):
            parts.append(p["description"])
        return " . ".join(x for x in parts if x)
    parts = [f"[TITLE] {p['title']}", f"[BRAND] {p['brand']}", f"[TYPE] {p['product_type'].replace('_', ' ')}"]
    parts += [f"[ATTR] {k.replace('_', ' ')} [VAL] {v}" for k, v in sorted(attrs.items())]
    parts += [f"[BULLET] {b}" for b in bullets]
    if p.get("description"):
        parts.append(f"[DESC] {p['description']}")
    return " ".join(parts)


def apply_patch(product: dict, event: ChangeEvent) -> dict:
    """Merge a patch event onto a stored product document (pure; returns a new, validated dict).

    Raises:
        ValueError: the merged product breaks the schema (too many attributes, say), naming the field.
    """
    doc = dict(product)
    attrs = dict(doc.get("attributes") or {})
    for name, value in (event.attributes or {}).items():
        if value is None:
            attrs.pop(name, None)
        else:
            attrs[name] = value
    doc["attributes"] = attrs
    if event.price is not None:
        doc["price"] = event.price
    if event.stock is not None:
        doc["stock"] = event.stock
    doc["version"] = event.version
    doc["updated_at"] = event.ts
    try:
        return Product.model_validate(doc).model_dump()
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'product'}: {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"patched product is invalid: {errs}") from None

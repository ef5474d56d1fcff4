"""Request and response models: the OpenAPI contract (with examples) and input validation.

Limits a deployment sets (`ServiceSettings.max_k`, `max_queries`, `max_query_chars`, `max_batch_asins`, `max_batch_searches`) are
checked by the handlers and written into the OpenAPI document by `openapi_limits`, never fixed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from m5core.schema import ASIN_PATTERN, Locale, Product, ProductLine

if TYPE_CHECKING:
    from service.settings import ServiceSettings

Asin = Annotated[str, StringConstraints(pattern=ASIN_PATTERN)]
QueryText = Annotated[str, StringConstraints(min_length=1)]
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # strict: true/false are not numbers
HIT_FIELDS = ("title", "brand", "locale", "marketplace", "product_line", "product_type", "price", "stock", "attributes")
HitField = Literal[HIT_FIELDS]  # type: ignore[valid-type]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingResponse(_Model):
    asin: str
    dim: int
    dtype: str = Field(description="float32 or int8 (then vector ~= values * scale)")
    vector: list[float]
    scale: float | None = None
    bundle_version: str
    product_version: int


class AsinBatchRequest(_Model):
    asins: list[Asin] = Field(min_length=1, examples=[["B0000009IX", "B0017WE19M"]])


class AsinBatchResponse(_Model):
    embeddings: list[EmbeddingResponse]
    missing: list[str]


class QueryEmbedRequest(_Model):
    queries: list[QueryText] = Field(min_length=1, examples=[["red running shoes", "Laufschuhe rot"]])


class QueryEmbedResponse(_Model):
    dim: int
    bundle_version: str
    vectors: list[list[float]]


class Filters(_Model):
    """Any locale or product_line of the catalog's shape (new ones need no release); one no product has matches nothing."""

    locale: Locale | None = None
    product_line: ProductLine | None = None


class SearchRequest(_Model):
    """Exactly one of query, vector or asin (the schema says so with oneOf; null is not a value for them)."""

    # Typed without None on purpose: "absent" is the only way to leave one out, so `oneOf: required` is exact.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["query"]}, {"required": ["vector"]}, {"required": ["asin"]}],
            "examples": [{"query": "scarlet jogging sneakers", "k": 10, "filters": {"locale": "en_US"}}, {"asin": "B0000009IX", "k": 5}],
        },
    )

    query: QueryText = Field(None, examples=["scarlet jogging sneakers"])  # type: ignore[assignment]
    vector: list[Finite] = Field(None, min_length=1, max_length=4096, description="raw query vector; normalised here")  # type: ignore[assignment]
    asin: Asin = Field(None, description="more like this product (it is excluded from the hits)")  # type: ignore[assignment]
    k: int = Field(10, ge=1)
    filters: Filters | None = None
    effort: int | None = Field(None, ge=1, le=4096, description="nprobe (IVF) or efSearch (HNSW): higher is slower and more exact")
    fields: list[HitField] | None = Field(
        None, max_length=len(HIT_FIELDS), description="product fields to return with each hit (one store round trip for all hits)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchRequest:
        given = [n for n in ("query", "vector", "asin") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of query, vector or asin (got {', '.join(given) or 'none'})")
        return self


class SearchHit(_Model):
    asin: str
    score: float
    product_version: int
    product: dict | None = Field(None, description="the requested `fields` of the product (absent without `fields`)")


class SearchResponse(_Model):
    hits: list[SearchHit]
    k: int
    index_size: int
    index_kind: str
    bundle_version: str
    took_ms: float


class SearchBatchRequest(_Model):
    searches: list[SearchRequest] = Field(min_length=1, examples=[[{"query": "scarlet jogging sneakers", "k": 5}, {"asin": "B0000009IX", "k": 5}]])


class SearchError(_Model):
    status: int = Field(description="what /search would have answered: 404 for an unknown ASIN")
    detail: str


class SearchBatchItem(_Model):
    """One search's result, or the error /search would have given it."""

    result: SearchResponse | None = None
    error: SearchError | None = None


class SearchBatchResponse(_Model):
    results: list[SearchBatchItem] = Field(description="one per search, in order")
    bundle_version: str
    took_ms: float


class DuplicatesRequest(_Model):
    asins: list[Asin] | None = Field(None, min_length=1, examples=[["B0000009IX", "B0017WE19M"]], description="products in the catalog")
    products: list[Product] | None = Field(
        None, min_length=1, description="product documents (the catalog schema), e.g. listings not yet in the catalog: embedded by the product tower"
    )
    k: int = Field(10, ge=1, description="candidates looked at per product (its nearest neighbours), at most this many returned")
    threshold: Finite | None = Field(None, ge=-1, le=1, description="cosine at or above which a neighbour is a duplicate; default: the bundle's")
    scope: Literal["marketplace", "all"] = Field("marketplace", description="marketplace: only products of the same locale")
    fields: list[HitField] | None = Field(None, max_length=len(HIT_FIELDS), description="product fields to return with each duplicate")

    @model_validator(mode="after")
    def _one_kind(self) -> DuplicatesRequest:
        if (self.asins is None) == (self.products is None):
            raise ValueError("give exactly one of asins (catalog products) or products (documents)")
        return self


class DuplicatesResponse(_Model):
    asin: str
    duplicates: list[SearchHit] = Field(description="neighbours at or above the threshold, best first")
    threshold: float
    threshold_source: Literal["bundle", "request"]
    calibrated_precision: float | None = Field(None, description="the bundle's precision at its threshold on validation pairs")
    scope: Literal["marketplace", "all"]
    k: int
    bundle_version: str
    took_ms: float


class DuplicatesBatchItem(_Model):
    """One ASIN's duplicates, or the error `GET /asin/{asin}/duplicates` would have given it (404)."""

    asin: str
    result: DuplicatesResponse | None = None
    error: SearchError | None = None


class DuplicatesBatchResponse(_Model):
    results: list[DuplicatesBatchItem] = Field(description="one per ASIN, in order")
    bundle_version: str
    took_ms: float


class Problem(_Model):
    detail: str


def openapi_limits(doc: dict, s: ServiceSettings, dim: int | None = None) -> dict:
    """Write the deployment's limits (and, once a bundle is loaded, the vector length) into the OpenAPI document."""
    schemas = doc["components"]["schemas"]
    search = schemas["SearchRequest"]["properties"]
    search["k"]["maximum"] = s.max_k
    search["query"]["maxLength"] = s.max_query_chars
    schemas["QueryEmbedRequest"]["properties"]["queries"].update(maxItems=s.max_queries)
    schemas["QueryEmbedRequest"]["properties"]["queries"]["items"]["maxLength"] = s.max_query_chars
    schemas["AsinBatchRequest"]["properties"]["asins"]["maxItems"] = s.max_batch_asins
    schemas["SearchBatchRequest"]["properties"]["searches"]["maxItems"] = s.max_batch_searches
    if dim is not None:
        search["vector"]["minItems"] = search["vector"]["maxItems"] = dim
    return doc

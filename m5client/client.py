"""The two clients share everything but the I/O: requests are built and responses read by plain functions."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

OCTET = "application/octet-stream"
RETRY_STATUSES = (429, 503)
SEARCH_ARGS = {"vector", "asin", "k", "filters", "fields"}


class M5Error(RuntimeError):
    """The service refused a request: `status` and its `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Hit:
    asin: str
    score: float
    product_version: int
    product: dict[str, Any] | None = None
    """The requested `fields` of the product."""


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    bundle_version: str
    index_size: int
    took_ms: float


@dataclass(frozen=True)
class Embedding:
    asin: str
    vector: np.ndarray
    """(dim,) float32."""
    bundle_version: str
    product_version: int


def search_body(query: str | None, vector: Any, asin: str | None, k: int, filters: dict | None, fields: list[str] | None) -> dict:
    given = [n for n, v in (("query", query), ("vector", vector), ("asin", asin)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of query, vector or asin (got {', '.join(given) or 'none'})")
    body: dict[str, Any] = {"k": k}
    if query is not None:
        body["query"] = query
    elif vector is not None:
        body["vector"] = np.asarray(vector, dtype=np.float64).ravel().tolist()
    else:
        body["asin"] = asin
    if filters:
        body["filters"] = filters
    if fields:
        body["fields"] = list(fields)
    return body


def duplicates_params(k: int, threshold: float | None, scope: str, fields: list[str] | None) -> dict:
    params: dict[str, Any] = {"k": k, "scope": scope}
    if threshold is not None:
        params["threshold"] = threshold
    if fields:
        params["fields"] = list(fields)
    return params


def read_hits(hits: list[dict]) -> list[Hit]:
    return [Hit(h["asin"], float(h["score"]), int(h["product_version"]), h.get("product")) for h in hits]


def read_search(doc: dict) -> SearchResult:
    return SearchResult(read_hits(doc["hits"]), doc["bundle_version"], int(doc["index_size"]), float(doc["took_ms"]))


def read_embedding(asin: str, r: httpx.Response) -> Embedding:
    vector = np.frombuffer(r.content, dtype="<f4").astype(np.float32)
    return Embedding(asin, vector, r.headers["x-m5-bundle-version"], int(r.headers["x-m5-product-version"]))


def checked(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise M5Error(r.status_code, str(detail))
    return r


def backoff(attempt: int, r: httpx.Response, base_s: float, cap_s: float) -> float:
    """Seconds before the next try: the service's Retry-After when it gives one, else exponential, both capped."""
    try:
        hinted = float(r.headers.get("retry-after", ""))
    except ValueError:
        hinted = None
    return min(cap_s, hinted if hinted is not None else base_s * 2**attempt)


def headers_for(api_key: str | None) -> dict[str, str]:
    return {"x-api-key": api_key} if api_key else {}


class _Client:
    """What both clients hold: the connection pool and the retry policy."""

    http_class: type = httpx.Client

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        **http_opts: Any,
    ):
        """http_opts go to the httpx client (a `transport`, limits)."""
        self.http = self.http_class(base_url=base_url, headers=headers_for(api_key), timeout=timeout_s, **http_opts)
        self.retries, self.backoff_s, self.backoff_cap_s = retries, backoff_s, backoff_cap_s


class M5Client(_Client):
    def __enter__(self) -> M5Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        for attempt in range(self.retries + 1):
            r = self.http.request(method, path, **kw)
            if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                return checked(r)
            time.sleep(backoff(attempt, r, self.backoff_s, self.backoff_cap_s))
        raise AssertionError("unreachable")

    def embedding(self, asin: str) -> Embedding:
        """A product's stored vector, as raw little-endian float32 bytes (no JSON of floats)."""
        return read_embedding(asin, self._request("GET", f"/asin/{asin}/embedding", headers={"accept": OCTET}))

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        """(n, dim) float32 query vectors from the service's query tower."""
        return np.asarray(self._request("POST", "/query/embed", json={"queries": list(queries)}).json()["vectors"], dtype=np.float32)

    def search_result(
        self,
        query: str | None = None,
        *,
        vector: Any = None,
        asin: str | None = None,
        k: int = 10,
        filters: dict | None = None,
        fields: list[str] | None = None,
    ) -> SearchResult:
        """The whole /search answer: hits, the bundle that made them, the index size and the server's time."""
        return read_search(self._request("POST", "/search", json=search_body(query, vector, asin, k, filters, fields)).json())

    def search(self, query: str | None = None, **kw: Any) -> list[Hit]:
        """The hits of `search_result` (same arguments)."""
        return self.search_result(query, **kw).hits

    def duplicates(
        self, asin: str, *, k: int = 10, threshold: float | None = None, scope: str = "marketplace", fields: list[str] | None = None
    ) -> list[Hit]:
        """A product's duplicates: its neighbours at or above `threshold` (default: the bundle's calibrated one)."""
        r = self._request("GET", f"/asin/{asin}/duplicates", params=duplicates_params(k, threshold, scope, fields))
        return read_hits(r.json()["duplicates"])

    def duplicates_of(
        self, products: list[dict], *, k: int = 10, threshold: float | None = None, scope: str = "marketplace", fields: list[str] | None = None
    ) -> list[list[Hit]]:
        """Duplicates of product documents (the catalog schema), e.g. listings not yet in the catalog: one list per document."""
        r = self._request("POST", "/duplicates", json={"products": products, **duplicates_params(k, threshold, scope, fields)})
        return [read_hits(item["result"]["duplicates"]) for item in r.json()["results"]]


class AsyncM5Client(_Client):
    """`M5Client` for asyncio code; one connection pool per client."""

    http_class = httpx.AsyncClient

    async def __aenter__(self) -> AsyncM5Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _request(self, method: str, path: str, **kw) -> httpx.Response:
        for attempt in range(self.retries + 1):
            r = await self.http.request(method, path, **kw)
            if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                return checked(r)
            await asyncio.sleep(backoff(attempt, r, self.backoff_s, self.backoff_cap_s))
        raise AssertionError("unreachable")

    async def embedding(self, asin: str) -> Embedding:
        return read_embedding(asin, await self._request("GET", f"/asin/{asin}/embedding", headers={"accept": OCTET}))

    async def embed_queries(self, queries: list[str]) -> np.ndarray:
        r = await self._request("POST", "/query/embed", json={"queries": list(queries)})
        return np.asarray(r.json()["vectors"], dtype=np.float32)

    async def search_result(self, query: str | None = None, **kw: Any) -> SearchResult:
        """As `M5Client.search_result`."""
        if unknown := set(kw) - SEARCH_ARGS:
            raise TypeError(f"search_result() got unexpected keyword arguments {sorted(unknown)}")
        body = search_body(query, kw.get("vector"), kw.get("asin"), kw.get("k", 10), kw.get("filters"), kw.get("fields"))
        return read_search((await self._request("POST", "/search", json=body)).json())

    async def search(self, query: str | None = None, **kw: Any) -> list[Hit]:
        return (await self.search_result(query, **kw)).hits

    async def duplicates(
        self, asin: str, *, k: int = 10, threshold: float | None = None, scope: str = "marketplace", fields: list[str] | None = None
    ) -> list[Hit]:
        """As `M5Client.duplicates`."""
        r = await self._request("GET", f"/asin/{asin}/duplicates", params=duplicates_params(k, threshold, scope, fields))
        return read_hits(r.json()["duplicates"])

    async def duplicates_of(
        self, products: list[dict], *, k: int = 10, threshold: float | None = None, scope: str = "marketplace", fields: list[str] | None = None
    ) -> list[list[Hit]]:
        """As `M5Client.duplicates_of`."""
        r = await self._request("POST", "/duplicates", json={"products": products, **duplicates_params(k, threshold, scope, fields)})
        return [read_hits(item["result"]["duplicates"]) for item in r.json()["results"]]

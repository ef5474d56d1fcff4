"""`GET /asin/{asin}/embedding`, `POST /search` and `GET /asin/{asin}/duplicates` straight from ASGI, skipping
FastAPI's routing.

They are most of the traffic and their handlers are one store read or one index search: FastAPI's
per-request routing and dependency solving was the larger part of their cost (docs/benchmarks.md).
Anything not recognised exactly (other routes, a malformed ASIN, an unknown query parameter, a body the
model rejects) goes on to FastAPI, which validates and answers as before; metrics, limits and auth stay in ServiceMiddleware around both.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import numpy as np
import orjson

from m5core.schema import ASIN_PATTERN
from m5core.stores.base import quantize_int8
from service.duplicates import duplicates
from service.errors import JSON, OCTET, ApiError, from_store, json_response, problem
from service.schemas import DuplicatesRequest, SearchRequest
from service.search import search
from service.serving import State


def embeddings_doc(state: State, asins: list[str]) -> dict:
    """POST /asin/embeddings: the stored vectors of many products in one store round trip, and which are missing."""
    if len(asins) > state.settings.max_batch_asins:
        raise ApiError(422, f"asins: at most {state.settings.max_batch_asins}")
    recs = from_store(state.serving.store.get_many, asins)
    found = [
        {
            "asin": a,
            "dim": int(r.vector.shape[0]),
            "dtype": "float32",
            "vector": r.vector,
            "scale": None,
            "bundle_version": r.bundle_version,
            "product_version": r.product_version,
        }
        for a, r in zip(asins, recs)
        if r
    ]
    return {"embeddings": found, "missing": [a for a, r in zip(asins, recs) if r is None]}


def embedding_reply(state: State, asin: str, dtype: str, octet: bool) -> tuple[int, bytes, dict, str]:
    """GET /asin/{asin}/embedding -> (status, body, headers, media type): one implementation for the routed
    handler and the hot path, so both answer byte for byte the same."""
    try:
        rec = from_store(state.serving.store.get, asin)
    except ApiError as exc:
        return exc.status, orjson.dumps({"detail": exc.detail}), exc.headers, JSON
    if rec is None:
        return 404, orjson.dumps({"detail": f"asin {asin} is not in the catalog"}), {}, JSON
    headers = {"x-m5-bundle-version": rec.bundle_version, "x-m5-product-version": str(rec.product_version)}
    q, scale = quantize_int8(rec.vector) if dtype == "int8" else (None, None)
    if scale is not None:
        headers["x-m5-scale"] = repr(scale)
    if octet:
        return 200, (q.tobytes() if q is not None else np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()), headers, OCTET
    doc = {
        "asin": asin,
        "dim": int(rec.vector.shape[0]),
        "dtype": dtype,
        "vector": q if q is not None else rec.vector,
        "scale": scale,
        "bundle_version": rec.bundle_version,
        "product_version": rec.product_version,
    }
    return 200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), headers, JSON


class HotPath:
    route = type("Route", (), {"path": "/asin/{asin}/embedding"})()  # the labels ServiceMiddleware reads
    search_route = type("Route", (), {"path": "/search"})()
    _PATH = re.compile(r"/asin/(" + ASIN_PATTERN.strip("^$") + r")/embedding")
    _DTYPE = {b"": "float32", b"dtype=float32": "float32", b"dtype=int8": "int8"}
    duplicates_route = type("Route", (), {"path": "/asin/{asin}/duplicates"})()
    _DUPLICATES = re.compile(r"/asin/(" + ASIN_PATTERN.strip("^$") + r")/duplicates")
    _DUPLICATES_PARAMS = frozenset({"k", "threshold", "scope", "fields"})

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/search":
            return await self._search(scope, receive, send)
        if (dup := self._match_duplicates(scope)) is not None:
            state, asin, body = dup
            try:
                response = json_response(duplicates(state.serving, asin, body, state.settings))
            except ApiError as exc:
                response = problem(exc)
            scope["route"] = self.duplicates_route
            return await response(scope, receive, send)
        hit = self._match(scope)
        if hit is None:
            return await self.app(scope, receive, send)
        state, asin, dtype = hit
        octet = any(k == b"accept" and OCTET.encode() in v for k, v in scope["headers"])
        status, body, headers, media = embedding_reply(state, asin, dtype, octet)
        scope["route"] = self.route
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", media.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _search(self, scope, receive, send):
        """The body validated by pydantic-core in one call; anything it rejects goes on to FastAPI (with the
        body replayed), whose 422 names the field as before."""
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        raw = b"".join(chunks)
        state: State | None = getattr(scope["app"].state, "m5", None)
        json_body = any(k == b"content-type" and v.startswith(b"application/json") for k, v in scope["headers"])
        try:
            body = SearchRequest.model_validate_json(raw) if state is not None and json_body else None
        except ValueError:
            body = None
        if body is None:
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}

            return await self.app(scope, replay, send)
        try:
            response = json_response(search(state.serving, body, state.settings))
        except ApiError as exc:
            response = problem(exc)
        scope["route"] = self.search_route
        await response(scope, receive, send)

    def _match(self, scope) -> tuple[State, str, str] | None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        m, dtype = self._PATH.fullmatch(scope["path"]), self._DTYPE.get(scope["query_string"])
        state = getattr(scope["app"].state, "m5", None) if m and dtype else None
        return (state, m.group(1), dtype) if state is not None else None

    def _match_duplicates(self, scope) -> tuple[State, str, DuplicatesRequest] | None:
        """GET /asin/{asin}/duplicates with known parameters that validate; None sends it on to FastAPI (its 422)."""
        if scope["type"] != "http" or scope["method"] != "GET" or (m := self._DUPLICATES.fullmatch(scope["path"])) is None:
            return None
        state = getattr(scope["app"].state, "m5", None)
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if state is None or any(k not in self._DUPLICATES_PARAMS for k, _ in params):
            return None
        doc: dict = {"asins": [m.group(1)]}
        for k, v in params:
            if k == "fields":
                doc.setdefault("fields", [])
                if v not in doc["fields"]:  # `?fields=brand&fields=brand` asks for brand once, as the routed handler does
                    doc["fields"].append(v)
            elif k in doc:
                return None  # a repeated single parameter: FastAPI's reading of it is the reference
            elif k == "threshold":  # the body's cosine is strict (no strings); a query string has nothing else
                try:
                    doc[k] = float(v)
                except ValueError:
                    return None
            else:
                doc[k] = v
        try:
            return state, m.group(1), DuplicatesRequest.model_validate(doc)
        except ValueError:
            return None

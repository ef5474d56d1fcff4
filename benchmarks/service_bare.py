"""Baseline for benchmarks/service_latency.py: a bare Starlette endpoint doing the same Redis lookup.

GET /asin/{asin}/embedding -> one HMGET of the vector and versions, orjson body. No validation,
metrics, limits or auth: the floor the M5 service is compared against (target within 1.3x).
Run: M5_REDIS_URL=... M5_NAMESPACE=... uvicorn benchmarks.service_bare:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os

import numpy as np
import orjson
import redis
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

_client = redis.Redis.from_url(os.environ.get("M5_REDIS_URL", "redis://127.0.0.1:6379/0"))
_ns = os.environ.get("M5_NAMESPACE", "m5")


async def embedding(request):
    asin = request.path_params["asin"]
    vec, pv, bv = _client.hmget(f"{_ns}:v:{asin}", ("vec", "pv", "bv"))
    if vec is None:
        return Response(b'{"detail":"not found"}', 404, media_type="application/json")
    body = orjson.dumps(
        {"asin": asin, "vector": np.frombuffer(vec, "<f4"), "product_version": int(pv), "bundle_version": bv.decode()},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return Response(body, media_type="application/json")


app = Starlette(routes=[Route("/asin/{asin}/embedding", embedding)])

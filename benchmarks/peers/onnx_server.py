"""Minimal query-embedding server: FastAPI + onnxruntime over the same bundle, no cache, no checks.

The floor our POST /query/embed is compared with (infinity-emb cannot load a local int8 ONNX bundle
offline). Run: M5_BUNDLE=DIR uvicorn benchmarks.peers.onnx_server:app
"""

import os

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from m5core.encoder import OnnxEncoder

encoder = OnnxEncoder(os.environ["M5_BUNDLE"], "query", threads=1)
app = FastAPI()


@app.post("/embed")
async def embed(request: Request) -> Response:
    texts = orjson.loads(await request.body())["queries"]
    vectors = encoder.embed(texts)  # (n, dim) float32
    return Response(orjson.dumps({"vectors": vectors.tolist()}), media_type="application/json")

"""The thinnest real path: event on Kafka -> indexer (subprocess, real bundle) -> Redis + feed ->
the service's index -> the three endpoints answer from them."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np

from catalog.io import load_catalog
from m5core.bundle import load_manifest
from m5core.encoder import OnnxEncoder
from m5core.events.kafka import KafkaSink
from m5core.schema import ChangeEvent, render_product
from service.app import create_app
from service.settings import ServiceSettings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_event_to_http_answer(real_servers, kafka_bootstrap, redis_url, unique_name, trained_bundle, test_catalog):
    s = ServiceSettings(**real_servers, bundle=trained_bundle)
    env = {
        **os.environ,
        **{
            f"M5_{k.upper()}": str(v)
            for k, v in s.model_dump(
                include={"store", "events", "redis_url", "kafka_bootstrap", "namespace", "changes_topic", "embeddings_topic", "dlq_topic", "bundle"}
            ).items()
        },
        "M5_GROUP_ID": unique_name("g"),
        "M5_METRICS_PORT": "0",
    }
    indexer = subprocess.Popen([sys.executable, "-m", "indexer", "run"], env=env, cwd=REPO)
    app = create_app(s)
    try:
        async with app.router.lifespan_context(app):
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            products = [p for _, p in zip(range(30), load_catalog(test_catalog).products())]
            sink = KafkaSink(kafka_bootstrap)
            t0 = time.time()
            for p in products:
                ev = ChangeEvent(op="upsert", asin=p["asin"], version=p["version"], ts=time.time(), product=p)
                sink.send(s.changes_topic, p["asin"].encode(), ev.model_dump_json().encode())
            sink.flush()
            target = products[-1]
            for _ in range(300):
                r = await client.post("/search", json={"asin": target["asin"], "k": 5})
                if r.status_code == 200 and len(r.json()["hits"]) == 5:
                    break
                await asyncio.sleep(0.1)
            print(f"event -> searchable in {time.time() - t0:.2f} s")
            assert r.status_code == 200, r.text

            # GET embedding = the product tower's embedding of the rendered product
            r = await client.get(f"/asin/{target['asin']}/embedding")
            assert r.status_code == 200
            manifest = load_manifest(trained_bundle)
            want = OnnxEncoder(trained_bundle, "product").embed([render_product(target, manifest.render_scheme)])[0]
            # int8 dynamic quantisation scales activations per batch, so batched and single encodes agree
            # to within quantisation noise rather than bit for bit.
            assert float(np.dot(r.json()["vector"], want)) > 0.995
            assert r.headers["x-m5-bundle-version"] == manifest.version

            # POST /query/embed with the query tower; search by text finds an indexed product
            r = await client.post("/query/embed", json={"queries": [target["title"]]})
            assert r.status_code == 200
            assert len(r.json()["vectors"][0]) == manifest.dim
            r = await client.post("/search", json={"vector": want.tolist(), "k": 1})
            assert r.json()["hits"][0]["asin"] == target["asin"]
            r = await client.post("/search", json={"query": target["title"], "k": 30})
            assert r.status_code == 200
            assert len(r.json()["hits"]) == 30

            # a delete flows through the same path and disappears from every endpoint
            ev = ChangeEvent(op="delete", asin=target["asin"], version=target["version"] + 1, ts=time.time())
            sink.send(s.changes_topic, target["asin"].encode(), ev.model_dump_json().encode())
            sink.flush()
            for _ in range(200):
                gone = (await client.get(f"/asin/{target['asin']}/embedding")).status_code == 404
                hits = (await client.post("/search", json={"vector": want.tolist(), "k": 1})).json()["hits"]
                if gone and hits[0]["asin"] != target["asin"]:
                    break
                await asyncio.sleep(0.1)
            assert gone
            assert hits[0]["asin"] != target["asin"]
            sink.close()
            await client.aclose()
    finally:
        indexer.send_signal(signal.SIGTERM)
        assert indexer.wait(timeout=30) == 0

"""A re-embed moves the active-namespace pointer; the running service follows it without a restart or a failed request."""

import asyncio

import httpx
import numpy as np

from m5core.encoder import HashEncoder
from m5core.events.local import LocalSource
from m5core.stores import open_store, switch_namespace
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import ENC, seed_records

NEW = HashEncoder(dim=16, version="hash-v2")  # another dimension too, so a mix could not go unnoticed
TOWERS = {ENC.version: ENC, NEW.version: NEW}


async def _until(pred, client, tries=100):
    for _ in range(tries):
        r = await client.get("/readyz")
        if pred(r.json()):
            return r.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"never reached: {r.json()}")


async def test_service_follows_reembed_switch_and_rollback(tmp_path):
    s = ServiceSettings(store="local", events="local", local_store_path=tmp_path / "s.sqlite", local_events_dir=tmp_path / "ev", model_poll_s=0.05)
    base = open_store(s, "m5")
    seed_records(base)
    new_ns = "m5.hash-v2"
    new = open_store(s, new_ns)
    seed_records(new, encoder=NEW)
    app = create_app(s, encoder=ENC, feed_source=LocalSource(s.local_events_dir, [s.embeddings_topic], "svc"), load_tower=TOWERS.__getitem__)
    failures, stop = [], asyncio.Event()

    async def traffic(client):
        """Requests all through the switch: every one must succeed, each consistent with one bundle."""
        while not stop.is_set():
            r = await client.post("/search", json={"query": "red running shoes", "k": 2})
            g = await client.get("/asin/B000000001/embedding")
            if r.status_code != 200 or g.status_code != 200:
                failures.append((r.status_code, r.text, g.status_code))
            elif len(g.json()["vector"]) != {ENC.version: 32, NEW.version: 16}[g.headers["x-m5-bundle-version"]]:
                failures.append(("mixed", g.headers["x-m5-bundle-version"], len(g.json()["vector"])))
            await asyncio.sleep(0)

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/readyz")).json()["bundle_version"] == ENC.version
            load = asyncio.create_task(traffic(client))
            switch_namespace(s, new_ns)
            doc = await _until(lambda d: d["bundle_version"] == NEW.version, client)
            assert doc["namespace"] == new_ns
            assert doc["ready"]
            assert doc["index_size"] == 5
            r = await client.get("/asin/B000000001/embedding")
            np.testing.assert_allclose(r.json()["vector"], NEW.embed(["red running shoes size 42"])[0], rtol=1e-6)
            hits = (await client.post("/search", json={"query": "red running shoes size 42", "k": 1})).json()
            assert hits["bundle_version"] == NEW.version
            assert hits["hits"][0]["asin"] == "B000000001"

            switch_namespace(s, "m5")  # what `m5 index rollback` does
            doc = await _until(lambda d: d["bundle_version"] == ENC.version, client)
            assert doc["namespace"] == "m5"
            assert doc["ready"]
            stop.set()
            await load
    assert not failures, failures[:3]
    base.close()
    new.close()


async def test_switch_to_an_empty_namespace_keeps_serving(tmp_path):
    s = ServiceSettings(store="local", events="local", local_store_path=tmp_path / "s.sqlite", local_events_dir=tmp_path / "ev", model_poll_s=0.05)
    base = open_store(s, "m5")
    seed_records(base)
    app = create_app(s, encoder=ENC, feed_source=LocalSource(s.local_events_dir, [s.embeddings_topic], "svc"), load_tower=TOWERS.__getitem__)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            switch_namespace(s, "m5.empty")
            await asyncio.sleep(0.3)
            doc = (await client.get("/readyz")).json()
            assert doc["namespace"] == "m5"
            assert doc["bundle_version"] == ENC.version
            assert doc["ready"]
    base.close()


async def test_a_service_started_after_a_switch_serves_the_active_namespaces_bundle(tmp_path):
    """Configured with the old bundle (as it was deployed), started after a re-embed moved the pointer: the query tower
    is the new namespace's, so it is ready, and a text search ranks by the vectors it searches. (Before, it loaded the
    configured tower beside the new vectors and stayed unready: "bundle mismatch", with nothing to switch to.)"""
    s = ServiceSettings(store="local", events="local", local_store_path=tmp_path / "s.sqlite", local_events_dir=tmp_path / "ev", model_poll_s=0.05)
    base, new = open_store(s, "m5"), open_store(s, "m5.hash-v2")
    seed_records(base)
    seed_records(new, encoder=NEW)
    switch_namespace(s, "m5.hash-v2")
    app = create_app(s, encoder=ENC, feed_source=LocalSource(s.local_events_dir, [s.embeddings_topic], "svc"), load_tower=TOWERS.__getitem__)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            doc = (await client.get("/readyz")).json()
            assert (doc["namespace"], doc["bundle_version"], doc["ready"]) == ("m5.hash-v2", NEW.version, True), doc
            hits = (await client.post("/search", json={"query": "red running shoes size 42", "k": 1})).json()
            assert hits["bundle_version"] == NEW.version and hits["hits"][0]["asin"] == "B000000001"
    base.close()
    new.close()

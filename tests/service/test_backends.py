"""The service over real parts: Redis store, the trained bundle's int8 query tower, snapshots, swaps, readiness."""

import asyncio
import dataclasses

import httpx
import numpy as np

from m5core.encoder import HashEncoder, OnnxEncoder
from m5core.events.base import EventSource
from m5core.index import AnnIndex
from m5core.stores.base import VectorRecord
from m5core.stores.local import LocalStore
from m5core.stores.redis import RedisStore
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import ENC, TEXTS, seed_records


async def _run(app, fn):
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await fn(client)


async def test_redis_store_path(redis_url, unique_name):
    ns = unique_name("svc")
    s = ServiceSettings(store="redis", redis_url=redis_url, namespace=ns, events="local")
    writer = RedisStore(redis_url, ns)
    recs = seed_records(writer)
    writer.close()
    app = create_app(s, encoder=ENC, follow_feed=False)  # the app opens the Redis store itself

    async def check(c):
        raw = await c.get("/asin/B000000004/embedding", headers={"accept": "application/octet-stream"})
        assert raw.status_code == 200
        assert raw.headers["content-type"] == "application/octet-stream"
        np.testing.assert_array_equal(np.frombuffer(raw.content, "<f4"), recs[3].vector)
        r = await c.post("/search", json={"asin": "B000000001", "k": 1})
        assert r.json()["hits"][0]["asin"] == "B000000002"
        assert r.json()["index_size"] == 5
        assert (await c.get("/asin/B00000000Z/embedding")).status_code == 404
        assert (await c.get("/readyz")).json()["ready"]

    await _run(app, check)


async def test_trained_bundle_query_tower(trained_bundle, tmp_path):
    product = OnnxEncoder(trained_bundle, "product")
    store = LocalStore(tmp_path / "s.sqlite")
    texts = [t for t, _, _ in TEXTS.values()]
    vecs = product.embed(texts)  # (5, dim)
    store.put([VectorRecord(a, v, 1, product.version, "h", loc, pl, 1.0) for (a, (_, loc, pl)), v in zip(TEXTS.items(), vecs)])
    s = ServiceSettings(store="local", bundle=trained_bundle, local_store_path=tmp_path / "s.sqlite")
    app = create_app(s, store=store, follow_feed=False)  # the app loads the int8 query tower itself

    async def check(c):
        r = await c.post("/query/embed", json={"queries": ["red running shoes"]})
        assert r.status_code == 200
        assert r.json()["bundle_version"] == product.version
        v = np.array(r.json()["vectors"][0])
        assert v.shape == (product.dim,)
        assert abs(np.linalg.norm(v) - 1) < 1e-3
        direct = OnnxEncoder(trained_bundle, "query").embed(["red running shoes"])[0]
        np.testing.assert_allclose(v, direct, atol=1e-5)
        r = await c.post("/search", json={"query": "red running shoes", "k": 5})
        assert r.status_code == 200
        assert len(r.json()["hits"]) == 5
        assert r.json()["hits"][0]["score"] >= r.json()["hits"][-1]["score"]

    await _run(app, check)


async def test_text_search_rescores_its_candidates_with_the_stored_exact_terms(trained_bundle, redis_url, unique_name):
    """Over real Redis: a text search's hits carry `LexicalBlock.rescore`'s scores (exact lexical cosine from the terms
    the indexer stored) in that order; a product stored without terms keeps its index score; rerank_depth 0 answers
    the index's own inner products."""
    product = OnnxEncoder(trained_bundle, "product")
    block = product.lexical
    assert block is not None and block.exact
    texts = [t for t, _, _ in TEXTS.values()]
    vecs = product.embed(texts)  # (5, dim)
    blobs = block.product_terms(texts)
    blobs[4] = None  # written by an indexer before exact terms
    ns = unique_name("rescore")
    store = RedisStore(redis_url, ns)
    recs = [VectorRecord(a, v, 1, product.version, "h", loc, pl, 1.0, None, lex) for (a, (_, loc, pl)), v, lex in zip(TEXTS.items(), vecs, blobs)]
    store.put(recs)
    store.close()
    query = OnnxEncoder(trained_bundle, "query")
    text = "running shoes 42"
    q = query.embed([text])[0]
    want = block.rescore(q, text, vecs @ q, blobs)
    np.testing.assert_allclose(want[4], vecs[4] @ q, rtol=1e-6)  # kept its index score
    for depth, expected in ((50, want), (0, vecs @ q)):
        s = ServiceSettings(store="redis", redis_url=redis_url, namespace=ns, events="local", bundle=trained_bundle, rerank_depth=depth)
        app = create_app(s, follow_feed=False)

        async def check(c, expected=expected):
            hits = (await c.post("/search", json={"query": text, "k": 5})).json()["hits"]
            order = np.argsort(-expected, kind="stable")
            assert [h["asin"] for h in hits] == [list(TEXTS)[i] for i in order]
            np.testing.assert_allclose([h["score"] for h in hits], expected[order], atol=1e-4)
            # A batch re-scores the same way, its terms read once for every text search in it.
            searches = [{"query": text, "k": 5}, {"query": "steel bottle", "k": 3}, {"query": text, "k": 2, "filters": {"locale": "en_US"}}]
            batch = (await c.post("/search/batch", json={"searches": searches})).json()["results"]
            for body, item in zip(searches, batch):
                alone = (await c.post("/search", json=body)).json()["hits"]
                assert [(h["asin"], round(h["score"], 4)) for h in item["result"]["hits"]] == [(h["asin"], round(h["score"], 4)) for h in alone]

        await _run(app, check)
    assert not np.allclose(want[:4], (vecs @ q)[:4], atol=1e-3)  # the exact idf is not the buckets' idf


async def test_starts_from_snapshot_and_swaps_without_failing_requests(tmp_path):
    idx = AnnIndex(ENC.dim, "flat", ENC.version)
    vecs = ENC.embed([t for t, _, _ in TEXTS.values()])
    idx.upsert(list(TEXTS), vecs, [v[1] for v in TEXTS.values()], [v[2] for v in TEXTS.values()], [1] * 5)
    idx.save(tmp_path / "snaps" / "snap-0000000000001", {"offsets": {"catalog.embeddings:0": 0}})
    s = ServiceSettings(
        store="local", local_store_path=tmp_path / "s.sqlite", events="local", local_events_dir=tmp_path / "ev", snapshot_dir=tmp_path / "snaps"
    )
    app = create_app(s, encoder=ENC, store=LocalStore(s.local_store_path))  # empty store: all from the snapshot

    async def check(c):
        r = await c.post("/search", json={"query": "steel water bottle", "k": 1})
        assert r.json()["hits"][0]["asin"] == "B000000004"
        assert r.json()["index_size"] == 5
        state = app.state.m5
        other = AnnIndex(ENC.dim, "flat", ENC.version)
        other.upsert(["B000000077"], ENC.embed(["steel water bottle"]), ["en_US"], ["hardlines"], [1])

        async def hammer():
            out = []
            for _ in range(40):
                out.append((await c.post("/search", json={"query": "steel water bottle", "k": 1})).status_code)
                await asyncio.sleep(0)
            return out

        async def swap():  # a new serving set with another index, swapped in by one assignment as a model switch does
            await asyncio.sleep(0.01)
            state.serving.follower.index = other
            state.serving = dataclasses.replace(state.serving, index=other)

        codes, _ = await asyncio.gather(hammer(), swap())
        assert set(codes) == {200}
        r = await c.post("/search", json={"query": "steel water bottle", "k": 1})
        assert r.json()["hits"][0]["asin"] == "B000000077"
        assert state.serving.follower.index is other
        state.serving = dataclasses.replace(state.serving, encoder=HashEncoder(dim=ENC.dim, version="hash-v2"))  # tower no longer matches the index
        r = await c.post("/query/embed", json={"queries": ["steel water bottle"]})
        assert r.status_code == 409
        assert "hash-v2" in r.json()["detail"]

    await _run(app, check)


class LaggingSource(EventSource):
    def poll(self, max_records=500, timeout_s=0.1):
        import time

        time.sleep(timeout_s)
        return []

    def commit(self, offsets):
        pass

    def lag(self):
        return {("catalog.embeddings", 0): 50}

    def end_offsets(self):
        return {("catalog.embeddings", 0): 50}


async def test_readiness_reasons_and_store_outage(tmp_path):
    s = ServiceSettings(store="redis", redis_url="redis://127.0.0.1:1/0", feed_lag_ready_bound=10)
    dead = RedisStore(s.redis_url, "m5", socket_connect_timeout=0.2)
    app = create_app(s, encoder=ENC, store=dead, index=AnnIndex(ENC.dim, "flat", ENC.version), feed_source=LaggingSource())

    async def check(c):
        r = await c.get("/readyz")
        reasons = r.json()["reasons"]
        assert r.status_code == 503
        assert any("store" in x for x in reasons)
        assert any("50 feed messages behind" in x for x in reasons)
        r = await c.get("/asin/B000000001/embedding")
        assert r.status_code == 503
        assert "store unavailable" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        assert (await c.get("/healthz")).status_code == 200

    await _run(app, check)

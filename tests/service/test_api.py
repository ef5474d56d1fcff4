"""The HTTP contract: happy paths, every bad-input status, live feed updates, metrics."""

import asyncio
import threading

import numpy as np
import pytest

from m5core.stores.base import VectorRecord
from tests.service.conftest import ENC, TEXTS


async def test_asin_embedding_json_and_octet(api):
    h = await api()
    r = await h.client.get("/asin/B000000001/embedding")
    assert r.status_code == 200
    body = r.json()
    want = ENC.embed([TEXTS["B000000001"][0]])[0]
    np.testing.assert_allclose(body["vector"], want, rtol=1e-6)
    assert r.headers["x-m5-bundle-version"] == ENC.version
    assert r.headers["x-m5-product-version"] == "1"
    raw = await h.client.get("/asin/B000000001/embedding", headers={"accept": "application/octet-stream"})
    np.testing.assert_array_equal(np.frombuffer(raw.content, "<f4"), want)
    q = (await h.client.get("/asin/B000000001/embedding?dtype=int8")).json()
    assert q["dtype"] == "int8"
    assert abs(np.dot(np.array(q["vector"]) * q["scale"], want) - 1) < 0.01


@pytest.mark.parametrize(
    "path,status,word",
    [
        ("/asin/B00000000Z/embedding", 404, "not in the catalog"),
        ("/asin/bad/embedding", 422, "asin"),
        ("/asin/B000000001/embedding?dtype=fp16", 422, "dtype"),
    ],
)
async def test_asin_errors(api, path, status, word):
    h = await api()
    r = await h.client.get(path)
    assert r.status_code == status
    assert word in r.json()["detail"]


async def test_batch_reports_missing(api):
    h = await api()
    r = await h.client.post("/asin/embeddings", json={"asins": ["B000000001", "B00000000Z"]})
    assert r.status_code == 200
    assert [e["asin"] for e in r.json()["embeddings"]] == ["B000000001"]
    assert r.json()["missing"] == ["B00000000Z"]


def metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_query_embed_and_cache(api):
    h = await api()
    before = (await h.client.get("/metrics")).text
    r = await h.client.post("/query/embed", json={"queries": ["red running shoes"]})
    r = await h.client.post("/query/embed", json={"queries": ["red running shoes", "blue socks"]})
    assert r.status_code == 200
    v = np.array(r.json()["vectors"])
    np.testing.assert_allclose(v[0], ENC.embed(["red running shoes"])[0], rtol=1e-6)
    assert v.shape == (2, ENC.dim)
    after = (await h.client.get("/metrics")).text
    assert metric(after, "m5_query_cache_hits_total") - metric(before, "m5_query_cache_hits_total") == 1
    assert metric(after, "m5_query_cache_misses_total") - metric(before, "m5_query_cache_misses_total") == 2


async def test_search_by_text_vector_and_asin(api):
    h = await api()
    r = await h.client.post("/search", json={"query": "red running shoes", "k": 2})
    assert r.status_code == 200
    assert r.json()["hits"][0]["asin"] == "B000000001"
    vec = ENC.embed(["steel water bottle 1 l"])[0].tolist()
    r = await h.client.post("/search", json={"vector": vec, "k": 1})
    assert r.json()["hits"][0]["asin"] == "B000000004"
    r = await h.client.post("/search", json={"asin": "B000000001", "k": 10})
    hits = [x["asin"] for x in r.json()["hits"]]
    assert "B000000001" not in hits
    assert len(hits) == 4
    r = await h.client.post("/search", json={"query": "running shoes", "k": 10, "filters": {"locale": "de_DE"}})
    assert {x["asin"] for x in r.json()["hits"]} == {"B000000003", "B000000005"}


@pytest.mark.parametrize(
    "body,word",
    [
        ({"query": "x", "vector": [0.1]}, "exactly one"),
        ({}, "exactly one"),
        ({"vector": [0.1, 0.2]}, "dimensions"),
        ({"vector": [0.0] * 32}, "zeros"),
        ({"vector": [True, False] * 16}, "vector"),  # JSON booleans are not numbers (schemathesis found them accepted)
        ({"query": "shoes", "k": 0}, "k"),
        ({"query": "shoes", "k": 1001}, "k"),
        ({"query": ""}, "query"),
        ({"query": "x" * 600}, "query"),
        ({"query": "x", "filters": {"locale": "english"}}, "filters.locale: locale 'english' is not an ll_CC tag"),
        ({"query": "x", "filters": {"locale": "en-US"}}, "filters.locale"),
        ({"query": "x", "filters": {"product_line": "Garden Tools"}}, "filters.product_line"),
        ({"vector": [0.1] * 32, "filters": {"product_line": "g" * 33}}, "filters.product_line"),
    ],
)
async def test_search_bad_input_is_422_naming_the_field(api, body, word):
    h = await api()
    r = await h.client.post("/search", json=body)
    assert r.status_code == 422
    assert word in r.json()["detail"]


async def test_nan_vector_is_rejected(api):
    h = await api()
    r = await h.client.post("/search", content=b'{"vector": [NaN' + b", 0.0" * 31 + b"]}", headers={"content-type": "application/json"})
    assert r.status_code == 422


async def test_body_limit_auth_and_overload(api):
    h = await api(max_body_bytes=1000, api_key="s3cret")
    r = await h.client.post("/search", json={"query": "x"})
    assert r.status_code == 401
    auth = {"x-api-key": "s3cret"}
    assert (await h.client.post("/search", json={"query": "x" * 2000}, headers=auth)).status_code == 413
    assert (await h.client.post("/search", json={"query": "shoes"}, headers={"authorization": "Bearer s3cret"})).status_code == 200
    assert (await h.client.get("/healthz")).status_code == 200  # open without a key
    h2 = await api(max_in_flight=0)
    r = await h2.client.get("/asin/B000000001/embedding")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"


async def test_filters_take_values_no_release_knew(api):
    """A locale and a product line first seen on the feed filter like the old ones; an unseen one matches nothing."""
    h = await api()
    v = ENC.embed(["tondeuse à gazon électrique"])[0]
    h.publish(VectorRecord("B00000000F", v, 1, ENC.version, "h", "fr_FR", "garden", 2.0))
    body = {"vector": v.tolist(), "k": 10, "filters": {"locale": "fr_FR", "product_line": "garden"}}
    for _ in range(50):
        r = await h.client.post("/search", json=body)
        if r.json()["hits"]:
            break
        await asyncio.sleep(0.05)
    assert [x["asin"] for x in r.json()["hits"]] == ["B00000000F"]
    r = await h.client.post("/search", json={**body, "filters": {"product_line": "garden"}})
    assert [x["asin"] for x in r.json()["hits"]] == ["B00000000F"]
    r = await h.client.post("/search", json={**body, "filters": {"locale": "fr_FR", "product_line": "softlines"}})
    assert r.status_code == 200
    assert r.json()["hits"] == []
    r = await h.client.post("/search", json={**body, "filters": {"locale": "ja_JP"}})
    assert r.status_code == 200
    assert r.json()["hits"] == []


async def test_feed_updates_are_searchable_without_restart(api):
    h = await api()
    v = ENC.embed(["purple umbrella with wooden handle"])[0]
    h.publish(VectorRecord("B000000009", v, 1, ENC.version, "h", "en_US", "hardlines", 2.0))
    for _ in range(50):
        r = await h.client.post("/search", json={"vector": v.tolist(), "k": 1})
        if r.json()["hits"][0]["asin"] == "B000000009":
            break
        await asyncio.sleep(0.05)
    assert r.json()["hits"][0]["asin"] == "B000000009"
    # a delete: the store tombstones it and the feed carries a null value
    h.store.delete("B000000009", 2)
    h.sink.send(h.settings.embeddings_topic, b"B000000009", None)
    h.sink.flush()
    for _ in range(50):
        r = await h.client.post("/search", json={"vector": v.tolist(), "k": 1})
        if r.json()["hits"][0]["asin"] != "B000000009":
            break
        await asyncio.sleep(0.05)
    assert r.json()["hits"][0]["asin"] != "B000000009"


async def test_bundle_mismatch_is_refused_and_not_ready(api):
    """Vectors of another bundle in the store the index is built from: queries would get meaningless neighbours."""
    v = ENC.embed(["anything"])[0]
    h = await api(extra_records=[VectorRecord("B000000008", v, 1, "another-bundle", "h", "en_US", "media", 2.0)])
    r = await h.client.post("/query/embed", json={"queries": ["shoes"]})
    assert r.status_code == 409
    assert "another-bundle" in r.json()["detail"]
    ready = await h.client.get("/readyz")
    assert ready.status_code == 503
    assert "mismatch" in ready.json()["reasons"][0]


async def test_feed_records_of_another_bundle_are_skipped(api):
    """During a model switch the feed carries both bundles: the serving index keeps to its own."""
    h = await api()
    v = ENC.embed(["anything"])[0]
    h.publish(VectorRecord("B000000008", v, 1, "another-bundle", "h", "en_US", "media", 2.0))
    h.publish(VectorRecord("B000000009", v, 1, ENC.version, "h", "en_US", "media", 2.0))  # behind it on the feed
    for _ in range(50):
        r = await h.client.post("/search", json={"vector": v.tolist(), "k": 1})
        if r.json()["hits"][0]["asin"] == "B000000009":
            break
        await asyncio.sleep(0.05)
    assert r.json()["hits"][0]["asin"] == "B000000009"
    assert (await h.client.post("/query/embed", json={"queries": ["shoes"]})).status_code == 200
    assert (await h.client.get("/readyz")).status_code == 200
    assert h.app.state.m5.serving.follower.other_bundle == 1


async def test_ready_and_metrics_names(api):
    h = await api()
    r = await h.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["ready"]
    assert r.json()["index_size"] == 5
    await h.client.get("/asin/B000000001/embedding")
    m = (await h.client.get("/metrics")).text
    for name in (
        "m5_http_requests_total",
        "m5_http_request_duration_seconds_bucket",
        "m5_http_requests_in_flight",
        "m5_index_size",
        "m5_feed_lag_messages",
        "m5_bundle_info",
        "m5_index_info",
    ):
        assert name in m
    assert 'route="/asin/{asin}/embedding"' in m


async def test_hot_path_answers_like_the_routed_handler(api):
    """GET embedding is served before FastAPI's router; a request it does not take (an extra query parameter)
    reaches the routed handler. Both must give the same bytes and the same metrics label."""
    h = await api()
    for asin, q in [("B000000001", ""), ("B000000001", "dtype=int8"), ("B00000000Z", "")]:
        hot = await h.client.get(f"/asin/{asin}/embedding?{q}")
        routed = await h.client.get(f"/asin/{asin}/embedding?{q}&via=router")
        assert hot.status_code == routed.status_code
        assert hot.content == routed.content
        assert {k: v for k, v in hot.headers.items() if k.startswith("x-m5")} == {k: v for k, v in routed.headers.items() if k.startswith("x-m5")}
    for accept in ("application/octet-stream", "application/json"):
        hot = await h.client.get("/asin/B000000002/embedding", headers={"accept": accept})
        routed = await h.client.get("/asin/B000000002/embedding?via=router", headers={"accept": accept})
        assert hot.content == routed.content
        assert hot.headers["content-type"] == routed.headers["content-type"]
    text = (await h.client.get("/metrics")).text
    count = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("m5_http_request_duration_seconds_count") and 'route="/asin/{asin}/embedding"' in line
    )
    assert count >= 10


async def test_search_hot_path_validates_like_fastapi(api):
    """POST /search skips FastAPI's dependency solving; a body pydantic rejects still gets FastAPI's 422."""
    h = await api()
    v = ENC.embed(["red running shoes size 42"])[0].tolist()
    ok = await h.client.post("/search", json={"vector": v, "k": 2})
    assert ok.status_code == 200
    assert ok.json()["hits"][0]["asin"] == "B000000001"
    for body, word in [({"vector": v, "k": 0}, "k"), ({"k": 2}, "query"), ({"vector": v[:3], "k": 2}, "vector")]:
        r = await h.client.post("/search", json=body)
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    r = await h.client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"] == "body: not valid JSON"
    text = (await h.client.get("/metrics")).text
    assert any(
        line.startswith("m5_http_request_duration_seconds_count") and 'route="/search"' in line and float(line.split()[-1]) >= 5
        for line in text.splitlines()
    )


async def test_request_limits_come_from_the_settings(api):
    """One home for limits: a deployment that raises or lowers them gets them in the handlers and in the schema."""
    wide = await api(max_queries=100, max_k=2000, max_query_chars=2000, max_batch_asins=2)
    r = await wide.client.post("/query/embed", json={"queries": [f"shoes {i}" for i in range(80)]})
    assert r.status_code == 200
    assert len(r.json()["vectors"]) == 80
    assert (await wide.client.post("/search", json={"query": "shoes " * 200, "k": 1500})).status_code == 200
    r = await wide.client.post("/asin/embeddings", json={"asins": ["B000000001", "B000000002", "B000000003"]})
    assert r.status_code == 422
    assert r.json()["detail"] == "asins: at most 2"
    doc = (await wide.client.get("/openapi.json")).json()["components"]["schemas"]
    assert doc["QueryEmbedRequest"]["properties"]["queries"]["maxItems"] == 100
    assert doc["SearchRequest"]["properties"]["k"]["maximum"] == 2000
    assert doc["SearchRequest"]["properties"]["query"]["maxLength"] == 2000
    assert doc["SearchRequest"]["properties"]["vector"]["maxItems"] == ENC.dim

    narrow = await api(max_queries=3, max_k=5, max_query_chars=10)
    r = await narrow.client.post("/query/embed", json={"queries": ["a", "b", "c", "d"]})
    assert r.status_code == 422
    assert r.json()["detail"] == "queries: at most 3"
    r = await narrow.client.post("/search", json={"query": "red running shoes", "k": 1})
    assert r.status_code == 422
    assert r.json()["detail"] == "query: longer than 10 characters"
    r = await narrow.client.post("/search", json={"query": "shoes", "k": 6})
    assert r.status_code == 422
    assert r.json()["detail"] == "k: at most 5"


async def test_readiness_reads_the_lag_the_follower_thread_measured(api):
    """A lag reading is a broker round trip on a consumer that is not thread-safe: only the follower's own thread
    makes it, and /readyz reports that reading and its age."""
    h = await api()
    follower = h.app.state.m5.serving.follower
    callers, real = [], follower.source.lag

    def lag():
        callers.append(threading.current_thread().name)
        return real()

    follower.source.lag = lag
    for _ in range(60):
        if callers:
            break
        await asyncio.sleep(0.05)
    r = await h.client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["feed_lag"] == 0
    assert 0 <= r.json()["feed_lag_age_s"] < 5
    assert callers
    assert set(callers) == {"feed-follower"}


async def test_a_body_that_arrives_too_slowly_gets_408_and_a_prompt_one_does_not(api):
    """A slow client (or a slowloris) must not hold a connection and an in-flight slot: its body has a deadline."""
    h = await api(body_timeout_s=0.3)

    async def body(pause: float):
        yield b'{"queries": ['
        await asyncio.sleep(pause)
        yield b'"shoes"]}'

    headers = {"content-type": "application/json"}
    slow = await h.client.post("/query/embed", content=body(1.5), headers=headers)
    assert slow.status_code == 408
    assert "in time" in slow.json()["detail"]
    prompt = await h.client.post("/query/embed", content=body(0.05), headers=headers)
    assert prompt.status_code == 200
    assert h.app.state.m5 is not None
    assert (await h.client.get("/readyz")).status_code == 200


async def test_a_chunked_body_over_the_limit_gets_413_while_it_streams(api):
    h = await api(max_body_bytes=1000)

    async def body():
        yield b'{"queries": ["'
        for _ in range(10):
            yield b"x" * 200
        yield b'"]}'

    r = await h.client.post("/query/embed", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "size limit" in r.json()["detail"]

"""POST /search/batch: each search answered as /search answers it, in order, an unknown ASIN failing alone."""

from tests.service.conftest import ENC, TEXTS


async def test_a_batch_answers_each_search_as_search_does(api):
    h = await api()
    searches = [
        {"query": "red running shoes", "k": 3},
        {"vector": ENC.embed(["steel water bottle"])[0].tolist(), "k": 2},
        {"asin": "B000000001", "k": 2, "filters": {"locale": "en_US"}},
        {"asin": "B00000000Z", "k": 2},  # not in the catalog
        {"query": "Laufschuhe", "k": 2, "filters": {"locale": "de_DE"}},
    ]
    r = await h.client.post("/search/batch", json={"searches": searches})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == len(searches)
    for body, item in zip(searches, results):
        alone = await h.client.post("/search", json=body)
        if alone.status_code != 200:
            assert item["error"] == {"status": alone.status_code, "detail": alone.json()["detail"]}
            assert item["result"] is None
            continue
        assert item["error"] is None
        assert [x["asin"] for x in item["result"]["hits"]] == [x["asin"] for x in alone.json()["hits"]]
    assert results[3]["error"]["status"] == 404
    assert results[0]["result"]["hits"][0]["asin"] in TEXTS


async def test_batch_limits_are_the_deployments_and_bad_items_name_their_place(api):
    h = await api(max_batch_searches=2, max_k=5)
    r = await h.client.post("/search/batch", json={"searches": [{"query": "shoes"}] * 3})
    assert r.status_code == 422
    assert "searches: at most 2" in r.json()["detail"]
    r = await h.client.post("/search/batch", json={"searches": [{"query": "shoes", "k": 0}]})
    assert r.status_code == 422
    assert "searches" in r.json()["detail"]
    r = await h.client.post("/search/batch", json={"searches": [{"query": "shoes", "k": 2}, {"query": "shoes", "k": 50}]})
    assert r.status_code == 422  # beyond what the schema states: the whole batch, as a lone search would be
    assert r.json()["detail"] == "searches[1].k: at most 5"
    r = await h.client.post("/search/batch", json={"searches": [{"vector": [0.5, 0.5], "k": 2}]})
    assert r.status_code == 422
    assert "searches[0].vector: has 2 dimensions" in r.json()["detail"]
    assert (await h.client.post("/search/batch", json={"searches": []})).status_code == 422
    schema = (await h.client.get("/openapi.json")).json()["components"]["schemas"]["SearchBatchRequest"]
    assert schema["properties"]["searches"]["maxItems"] == 2


async def test_hits_carry_the_requested_fields_on_search_and_batch(api):
    import orjson

    from m5core.stores.base import VectorRecord

    h = await api()
    rec = h.store.get("B000000004")
    doc = {"asin": "B000000004", "title": "Stainless steel water bottle 1 l", "brand": "Acme", "price": 12.5}
    h.store.put([VectorRecord(rec.asin, rec.vector, 2, rec.bundle_version, "h2", rec.locale, rec.product_line, 2.0, orjson.dumps(doc))])
    body = {"asin": "B000000004", "k": 5, "fields": ["title", "price", "stock"]}
    r = await h.client.post("/search", json={"vector": rec.vector.tolist(), "k": 5, "fields": ["title", "price", "stock"]})
    assert r.status_code == 200
    (hit,) = [x for x in r.json()["hits"] if x["asin"] == "B000000004"]
    assert hit["product"] == {"title": doc["title"], "price": 12.5, "stock": None}
    others = [x for x in r.json()["hits"] if x["asin"] != "B000000004"]
    assert all(x["product"] == {"title": None, "price": None, "stock": None} for x in others)  # seeded without documents
    plain = (await h.client.post("/search", json={"vector": rec.vector.tolist(), "k": 5})).json()["hits"]
    assert all("product" not in x for x in plain)
    batch = (await h.client.post("/search/batch", json={"searches": [body]})).json()["results"][0]["result"]["hits"]
    assert all(set(x["product"]) == {"title", "price", "stock"} for x in batch)
    bad = await h.client.post("/search", json={"query": "bottle", "fields": ["password"]})
    assert bad.status_code == 422
    assert "fields" in bad.json()["detail"]

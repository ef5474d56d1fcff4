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

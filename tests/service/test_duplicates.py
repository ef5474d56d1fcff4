"""GET /asin/{asin}/duplicates and POST /duplicates: neighbours at or above a threshold, the bundle's by default."""

import numpy as np

from m5core.encoder import OnnxEncoder
from m5core.stores.redis import RedisStore
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import ENC, TEXTS, listing
from tests.service.test_backends import _run


def brute_force(asin: str, threshold: float, same_locale: bool) -> list[str]:
    """What the endpoint must answer over the fixture's five products, by exact cosine."""
    asins = list(TEXTS)
    vecs = ENC.embed([t for t, _, _ in TEXTS.values()])
    me = asins.index(asin)
    scores = vecs @ vecs[me]
    keep = [i for i in np.argsort(-scores) if i != me and scores[i] >= threshold]
    return [asins[i] for i in keep if not same_locale or TEXTS[asins[i]][1] == TEXTS[asin][1]]


async def test_duplicates_are_the_neighbours_above_the_threshold_in_the_same_marketplace(api):
    h = await api()
    r = await h.client.get("/asin/B000000001/duplicates", params={"threshold": 0.2})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [d["asin"] for d in doc["duplicates"]] == brute_force("B000000001", 0.2, same_locale=True) == ["B000000002"]
    assert doc["threshold"] == 0.2 and doc["threshold_source"] == "request" and doc["scope"] == "marketplace"
    assert all(d["score"] >= 0.2 and d["product_version"] == 1 for d in doc["duplicates"])
    everywhere = (await h.client.get("/asin/B000000001/duplicates", params={"threshold": -1, "scope": "all"})).json()
    assert [d["asin"] for d in everywhere["duplicates"]] == brute_force("B000000001", -1, same_locale=False)
    assert len(everywhere["duplicates"]) == 4  # every other product, the German one included
    fields = (await h.client.get("/asin/B000000001/duplicates", params={"threshold": 0.2, "fields": ["title", "brand"]})).json()
    assert set(fields["duplicates"][0]["product"]) == {"title", "brand"}
    repeated = await h.client.get("/asin/B000000001/duplicates", params={"threshold": 0.2, "fields": ["brand"] * 12})
    assert repeated.status_code == 200 and set(repeated.json()["duplicates"][0]["product"]) == {"brand"}


async def test_bad_duplicate_requests_get_a_clear_error(api):
    h = await api(max_k=5)
    r = await h.client.get("/asin/B000000001/duplicates", params={"k": 3})
    assert r.status_code == 409 and "no calibrated duplicate threshold" in r.json()["detail"]  # HashEncoder: no bundle threshold
    assert (await h.client.get("/asin/B00000000Z/duplicates", params={"threshold": 0.5, "k": 3})).status_code == 404
    r = await h.client.post("/duplicates", json={"asins": ["B000000001"], "threshold": False, "k": 3})
    assert r.status_code == 422 and "threshold" in r.json()["detail"]  # a boolean is not a cosine
    r = await h.client.get("/asin/not-an-asin/duplicates", params={"threshold": 0.5})
    assert r.status_code == 422 and "asin" in r.json()["detail"]
    r = await h.client.get("/asin/B000000001/duplicates", params={"threshold": 0.5, "k": 50})
    assert r.status_code == 422 and "k: at most 5" in r.json()["detail"]
    r = await h.client.get("/asin/B000000001/duplicates", params={"threshold": 2})
    assert r.status_code == 422 and "threshold" in r.json()["detail"]
    r = await h.client.get("/asin/B000000001/duplicates", params={"threshold": 0.5, "scope": "galaxy"})
    assert r.status_code == 422 and "scope" in r.json()["detail"]


async def test_the_duplicates_hot_path_answers_like_the_routed_handler(api, monkeypatch):
    """GET duplicates is served before FastAPI's router when its parameters validate; anything else (here an extra
    parameter, which FastAPI ignores) reaches the routed handler. Both must answer the same, errors included, under
    one metrics label."""
    from service.hotpath import HotPath

    taken = []
    match = HotPath._match_duplicates
    monkeypatch.setattr(HotPath, "_match_duplicates", lambda self, scope: taken.append(match(self, scope)) or taken[-1])
    h = await api(max_k=5)
    queries = [
        "threshold=0.2",
        "threshold=-1&scope=all&k=4",
        "threshold=0.2&fields=title&fields=brand",
        "threshold=0.2&fields=brand&fields=brand",
        "threshold=0.5&k=5",
        "k=3",  # 409: no calibrated threshold
        "threshold=0.5&k=50",  # 422 from the handler: k over max_k
    ]
    for asin in ("B000000001", "B000000004", "B00000000Z"):
        for q in queries:
            taken.clear()
            hot = await h.client.get(f"/asin/{asin}/duplicates?{q}")
            assert taken and taken[-1] is not None, q  # the hot path took it
            routed = await h.client.get(f"/asin/{asin}/duplicates?{q}&via=router")
            assert taken[-1] is None
            assert hot.status_code == routed.status_code, (q, hot.text, routed.text)
            a, b = hot.json(), routed.json()
            a.pop("took_ms", None), b.pop("took_ms", None)
            assert a == b, q
    for q in ("threshold=2", "scope=galaxy", "k=0", "threshold=0.2&k=2&k=3", "fields=colour", "threshold=nan"):
        taken.clear()
        r = await h.client.get(f"/asin/B000000001/duplicates?{q}")
        assert taken == [None], q  # left to FastAPI: its 422 names the parameter
        assert r.status_code in (200, 422) and (r.status_code == 200) == ("k=2&k=3" in q), (q, r.text)
    m = (await h.client.get("/metrics")).text
    n = sum(
        float(line.split()[-1])
        for line in m.splitlines()
        if line.startswith("m5_http_request_duration_seconds_count") and 'route="/asin/{asin}/duplicates"' in line
    )
    assert n >= 2 * 3 * len(queries)


async def test_a_product_the_index_does_not_hold_yet_is_read_from_the_store(api):
    """The GET takes the product's vector from the index (no store round trip); one the feed has not brought to the
    index yet (here: written to the store only) is read from the store, and still gets its duplicates."""
    from m5core.stores.base import VectorRecord

    h = await api()
    twin = ENC.embed(["red running shoes size 42"])[0]  # B000000001's text: its exact twin
    h.store.put([VectorRecord("B000000009", twin, 1, ENC.version, "h", "en_US", "softlines", 1.0)])
    assert not h.app.state.m5.serving.index.contains("B000000009")
    r = await h.client.get("/asin/B000000009/duplicates", params={"threshold": 0.99})
    assert r.status_code == 200, r.text
    assert [d["asin"] for d in r.json()["duplicates"]] == ["B000000001"]
    held = await h.client.get("/asin/B000000001/duplicates", params={"threshold": 0.2})
    assert [d["asin"] for d in held.json()["duplicates"]] == brute_force("B000000001", 0.2, same_locale=True)


async def test_a_batch_answers_each_asin_as_the_get_does_and_an_unknown_one_fails_alone(api):
    h = await api(max_batch_asins=3)
    r = await h.client.post("/duplicates", json={"asins": ["B000000001", "B00000000Z", "B000000003"], "threshold": 0.1, "scope": "all"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["asin"] for x in results] == ["B000000001", "B00000000Z", "B000000003"]
    assert results[1] == {"asin": "B00000000Z", "result": None, "error": {"status": 404, "detail": "asin B00000000Z is not in the catalog"}}
    for item in (results[0], results[2]):
        alone = (await h.client.get(f"/asin/{item['asin']}/duplicates", params={"threshold": 0.1, "scope": "all"})).json()
        assert item["result"]["duplicates"] == alone["duplicates"]
    r = await h.client.post("/duplicates", json={"asins": ["B000000001"] * 4, "threshold": 0.1})
    assert r.status_code == 422 and "asins: at most 3" in r.json()["detail"]
    r = await h.client.post("/duplicates", json={"asins": ["B000000001"]})
    assert r.status_code == 409  # no threshold anywhere: the whole batch


async def test_product_documents_not_in_the_catalog_get_their_duplicates(api):
    h = await api(max_duplicate_documents=2)
    new = listing("B0000000NW", "red running shoes size 42")
    r = await h.client.post("/duplicates", json={"products": [new], "threshold": 0.2, "fields": ["title"]})
    assert r.status_code == 200, r.text
    (item,) = r.json()["results"]
    assert item["asin"] == "B0000000NW" and item["error"] is None
    dups = item["result"]["duplicates"]
    assert dups[0]["asin"] == "B000000001" and set(dups[0]["product"]) == {"title"}  # the same listing, best first
    assert {d["asin"] for d in dups} <= {"B000000001", "B000000002"}  # the marketplace's own products only
    r = await h.client.post("/duplicates", json={"products": [{**new, "title": ""}], "threshold": 0.2})
    assert r.status_code == 422 and "products.0.title" in r.json()["detail"]
    r = await h.client.post("/duplicates", json={"products": [new] * 3, "threshold": 0.2})
    assert r.status_code == 422 and "products: at most 2" in r.json()["detail"]
    r = await h.client.post("/duplicates", json={"products": [new], "asins": ["B000000001"], "threshold": 0.2})
    assert r.status_code == 422 and "exactly one of asins" in r.json()["detail"]
    r = await h.client.post("/duplicates", json={"threshold": 0.2})
    assert r.status_code == 422 and "exactly one of asins" in r.json()["detail"]


async def test_the_trained_bundle_serves_its_calibrated_threshold(trained_bundle, test_catalog, redis_url, unique_name):
    """Over real Redis with the trained bundle: no threshold in the request means the manifest's, calibrated at export
    to its target precision on the validation pairs; the answer is every same-locale neighbour at or above it."""
    from catalog.io import load_catalog
    from indexer.write import records_of
    from m5core.bundle import load_manifest
    from m5core.schema import Product, render_product

    manifest = load_manifest(trained_bundle)
    cal = manifest.duplicates
    assert cal is not None and cal.split == "valid" and cal.precision >= cal.target_precision == 0.9 and 0 < cal.recall <= 1
    cat = load_catalog(test_catalog)
    pair_asins = {a for d in cat.duplicate_pairs("test") for a in (d["asin_a"], d["asin_b"])}
    docs = [Product.model_validate(p).model_dump() for p in cat.products() if p["asin"] in pair_asins]
    product = OnnxEncoder(trained_bundle, "product", manifest=manifest)
    recs = records_of(docs, product.embed([render_product(d, manifest.render_scheme) for d in docs]), product, manifest.render_scheme)
    ns = unique_name("dups")
    store = RedisStore(redis_url, ns)
    store.put(recs)
    store.close()
    vecs = np.stack([r.vector for r in recs])
    s = ServiceSettings(store="redis", redis_url=redis_url, namespace=ns, events="local", bundle=trained_bundle)

    async def check(c):
        for i, rec in enumerate(recs[:20]):
            doc = (await c.get(f"/asin/{rec.asin}/duplicates", params={"k": len(recs)})).json()
            assert doc["threshold_source"] == "bundle" and doc["threshold"] == cal.threshold and doc["calibrated_precision"] == cal.precision
            scores = vecs @ vecs[i]
            want = {r.asin for j, r in enumerate(recs) if j != i and r.locale == rec.locale and scores[j] >= cal.threshold}
            assert {d["asin"] for d in doc["duplicates"]} == want, rec.asin
        # The same documents under new ASINs, not in the catalog: the service's product tower embeds them as the
        # indexer did, so each finds its original and the original's duplicates (int8 scales each batch on its own:
        # a neighbour within 0.01 of the threshold may fall either side).
        news = [{**d, "asin": f"B0NEW{i:05d}"} for i, d in enumerate(docs[:8])]
        r = await c.post("/duplicates", json={"products": news, "k": len(recs)})
        assert r.status_code == 200, r.text
        row = {r.asin: j for j, r in enumerate(recs)}
        for i, item in enumerate(r.json()["results"]):
            got = {d["asin"] for d in item["result"]["duplicates"]}
            scores = vecs @ vecs[i]
            want = {r.asin for j, r in enumerate(recs) if r.locale == recs[i].locale and scores[j] >= cal.threshold}
            assert recs[i].asin in got, item
            assert all(abs(scores[row[a]] - cal.threshold) < 0.01 for a in got ^ want), (got ^ want, item)

    await _run(create_app(s, follow_feed=False), check)

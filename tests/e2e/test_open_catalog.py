"""A locale and a product line no release knew (an fr_FR "garden" listing) go the whole way: change
event -> indexer -> store + feed -> the service's index -> a filtered /search. Once on the embedded
store and local events, once on the real Redis and Kafka."""

import asyncio

import httpx
import orjson
import pytest

from indexer.pipeline import Indexer
from indexer.settings import IndexerSettings
from m5core.encoder import HashEncoder
from m5core.events.kafka import KafkaSink, KafkaSource
from m5core.events.local import LocalSink, LocalSource
from m5core.schema import KEY_SHAPES
from m5core.stores.local import LocalStore
from m5core.stores.redis import RedisStore
from service.app import create_app
from service.settings import ServiceSettings

ENC = HashEncoder(32)
GARDEN_FR, SHOES_FR, GARDEN_DE = "B0GARDEN01", "B0SHOESF01", "B0GARDEN02"


def product(asin: str, locale: str, line: str, title: str) -> dict:
    return {
        "asin": asin,
        "marketplace": locale[-2:],
        "locale": locale,
        "product_line": line,
        "product_type": "lawn_mower",
        "brand": "Verdi",
        "title": title,
        "attributes": {"couleur": "vert"},
        "version": 1,
        "updated_at": 1.0,
    }


def upsert(p: dict) -> bytes:
    return orjson.dumps({"op": "upsert", "asin": p["asin"], "version": p["version"], "ts": p["updated_at"], "product": p})


EVENTS = [
    (GARDEN_FR, upsert(product(GARDEN_FR, "fr_FR", "garden", "Tondeuse à gazon électrique verte"))),
    (SHOES_FR, upsert(product(SHOES_FR, "fr_FR", "softlines", "Chaussures de course rouges"))),
    (GARDEN_DE, upsert(product(GARDEN_DE, "de_DE", "garden", "Elektrischer Rasenmäher grün"))),
    ("B0BADLOC01", upsert(product("B0BADLOC01", "french", "garden", "Tondeuse"))),  # dead-lettered: not an ll_CC tag
]


async def found(client, filters: dict, expect: int = 0) -> set[str]:
    """ASINs /search returns under `filters`, polled until at least `expect` are there (the feed is async)."""
    body = {"query": "tondeuse gazon", "k": 10, "filters": filters}
    for _ in range(100):
        r = await client.post("/search", json=body)
        assert r.status_code == 200, r.text
        hits = {h["asin"] for h in r.json()["hits"]}
        if len(hits) >= expect:
            return hits
        await asyncio.sleep(0.05)
    return hits


async def check_search(app) -> None:
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        assert await found(client, {"locale": "fr_FR", "product_line": "garden"}, expect=1) == {GARDEN_FR}
        assert await found(client, {"product_line": "garden"}, expect=2) == {GARDEN_FR, GARDEN_DE}
        assert await found(client, {"locale": "fr_FR"}, expect=2) == {GARDEN_FR, SHOES_FR}
        assert await found(client, {"locale": "de_DE", "product_line": "softlines"}) == set()
        assert await found(client, {"locale": "ja_JP", "product_line": "garden"}) == set()
        r = await client.post("/search", json={"query": "tondeuse", "filters": {"locale": "fr-FR"}})
        assert r.status_code == 422
        assert r.json()["detail"].startswith("filters.locale: locale 'fr-FR' is not")
        await client.aclose()


def assert_dead_letter_names_the_shape(dlq: list) -> None:
    assert [orjson.loads(m.value)["reason"] for m in dlq] == ["schema"]
    assert f"product.locale: locale 'french' is not {KEY_SHAPES['locale'][1]}" in orjson.loads(dlq[0].value)["error"]


async def test_new_locale_and_line_reach_a_filtered_search_on_local_store(tmp_path):
    common = dict(store="local", events="local", local_store_path=tmp_path / "store.sqlite", local_events_dir=tmp_path / "ev")
    si = IndexerSettings(**common, metrics_port=0, max_wait_ms=50, snapshot_dir=tmp_path / "snaps")
    sink = LocalSink(si.local_events_dir)
    for key, value in EVENTS:
        sink.send(si.changes_topic, key.encode(), value)
    sink.flush()
    indexer = Indexer(
        si, LocalSource(si.local_events_dir, [si.changes_topic], "indexer"), LocalSink(si.local_events_dir), LocalStore(si.local_store_path), ENC
    )
    s = ServiceSettings(**common, snapshot_dir=tmp_path / "snaps", model_poll_s=0)
    app = create_app(s, encoder=ENC, store=LocalStore(s.local_store_path), feed_source=LocalSource(s.local_events_dir, [s.embeddings_topic], "svc"))
    # The service starts empty and learns the new values from the feed while the indexer runs.
    await asyncio.gather(asyncio.to_thread(indexer.run, 1.0), check_search(app))
    assert_dead_letter_names_the_shape(LocalSource(si.local_events_dir, [si.dlq_topic], "reader").poll(10, 0.1))


@pytest.mark.services
async def test_new_locale_and_line_reach_a_filtered_search_on_redis_and_kafka(real_servers, kafka_bootstrap, redis_url, unique_name, tmp_path):
    common = dict(real_servers, snapshot_dir=tmp_path / "snaps")
    si = IndexerSettings(**common, group_id=unique_name("g"), metrics_port=0, max_wait_ms=100)
    sink = KafkaSink(kafka_bootstrap)
    for key, value in EVENTS:
        sink.send(si.changes_topic, key.encode(), value)
    sink.flush()
    indexer = Indexer(
        si, KafkaSource(kafka_bootstrap, [si.changes_topic], si.group_id), KafkaSink(kafka_bootstrap), RedisStore(redis_url, si.namespace), ENC
    )
    app = create_app(ServiceSettings(**common, model_poll_s=0), encoder=ENC)
    try:
        await asyncio.gather(asyncio.to_thread(indexer.run, 3.0), check_search(app))
        dlq = KafkaSource(kafka_bootstrap, [si.dlq_topic], unique_name("reader"))
        letters = []
        for _ in range(20):
            letters += dlq.poll(10, 0.3)
            if letters:
                break
        dlq.close()
        assert_dead_letter_names_the_shape(letters)
    finally:
        indexer.source.close()
        indexer.sink.close()
        sink.close()

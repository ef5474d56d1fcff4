import orjson
import pytest

from indexer.pipeline import Indexer
from indexer.settings import IndexerSettings
from m5core.encoder import HashEncoder
from m5core.events.kafka import KafkaSink, KafkaSource
from m5core.schema import default_marketplace
from m5core.stores.redis import RedisStore


def product(asin: str, version: int, title: str = "red running shoes", locale: str = "en_US", product_line: str = "softlines") -> dict:
    return {
        "asin": asin,
        "marketplace": default_marketplace(locale),
        "locale": locale,
        "product_line": product_line,
        "product_type": "running_shoes",
        "brand": "Acme",
        "title": title,
        "attributes": {"colour": "red"},
        "version": version,
        "updated_at": 1.0 + version,
    }


def upsert(asin, version, **kw) -> bytes:
    p = product(asin, version, **kw)
    return orjson.dumps({"op": "upsert", "asin": asin, "version": version, "ts": p["updated_at"], "product": p})


def delete(asin, version) -> bytes:
    return orjson.dumps({"op": "delete", "asin": asin, "version": version, "ts": 1.0 + version})


def patch(asin, version, **fields) -> bytes:
    return orjson.dumps({"op": "patch", "asin": asin, "version": version, "ts": 1.0 + version, **fields})


@pytest.fixture
def pipeline(real_servers, kafka_bootstrap, redis_url, unique_name):
    """-> (settings, make_indexer(), produce(key, value), store, read_topic(topic))"""
    s = IndexerSettings(
        **real_servers,
        group_id=unique_name("g"),
        max_wait_ms=100,
        metrics_port=0,
        max_event_bytes=500_000,
    )
    producer = KafkaSink(kafka_bootstrap)
    store = RedisStore(redis_url, s.namespace)
    made = []

    def make(encoder=None):
        src = KafkaSource(kafka_bootstrap, [s.changes_topic], s.group_id)
        feed = KafkaSink(kafka_bootstrap, transactional_id=unique_name("tx"))  # as `m5 index run` publishes
        idx = Indexer(s, src, feed, RedisStore(redis_url, s.namespace), encoder or HashEncoder(32))
        made.append(idx)
        return idx

    def produce(key: str, value: bytes):
        producer.send(s.changes_topic, key.encode(), value)

    def read(topic: str, expect: int, group: str | None = None):
        src = KafkaSource(kafka_bootstrap, [topic], group or unique_name("reader"))
        out = []
        for _ in range(60):
            out += src.poll(500, 0.3)
            if len(out) >= expect:
                break
        src.close()
        return out

    yield s, make, produce, producer, store, read
    for i in made:
        i.source.close()
        i.sink.close()
    producer.close()

"""Redis dies (kill -9) under a running indexer and comes back from its AOF: the state still converges.

Uses a private redis-server on a free port (appendfsync always), never the shared one.
"""

import shutil
import subprocess
import threading
import time

import orjson
import pytest
import redis

from indexer.pipeline import Indexer
from indexer.settings import IndexerSettings
from m5core.encoder import HashEncoder
from m5core.events.kafka import KafkaSink, KafkaSource
from m5core.stores.redis import RedisStore
from tests.fixtures.services import free_port
from tests.indexer.conftest import delete, patch, upsert

PASSWORD = "private-redis-password"


def _start(port: int, data_dir) -> subprocess.Popen:
    (data_dir / "auth.conf").write_text(f'requirepass "{PASSWORD}"\n')
    proc = subprocess.Popen(
        [
            shutil.which("redis-server"),
            str(data_dir / "auth.conf"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password=PASSWORD, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            if client.ping():
                return proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail(f"private redis-server on :{port} did not start")


def _settings(url, kafka_bootstrap, kafka_topics, unique_name, partitions: int, **kw) -> IndexerSettings:
    """An indexer on the private Redis and fresh topics of the shared broker (100 ms polls: see docs/indexer.md)."""
    return IndexerSettings(
        store="redis",
        events="kafka",
        redis_url=url,
        kafka_bootstrap=kafka_bootstrap,
        namespace="ns",
        changes_topic=kafka_topics("changes", partitions=partitions),
        embeddings_topic=kafka_topics("emb", compact=True),
        dlq_topic=kafka_topics("dlq"),
        group_id=unique_name("g"),
        max_wait_ms=100,
        metrics_port=0,
        **kw,
    )


def test_redis_kill_9_and_restart_mid_stream_converges(kafka_bootstrap, kafka_topics, unique_name, tmp_path):
    assert shutil.which("redis-server"), "redis-server is needed (deploy/local/services.sh installs it)"
    port = free_port()
    server = _start(port, tmp_path)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    s = _settings(url, kafka_bootstrap, kafka_topics, unique_name, partitions=2, max_batch=8, store_retries=10)
    final: dict[str, int] = {}
    deleted: set[str] = set()
    producer = KafkaSink(kafka_bootstrap)
    for v in range(1, 4):
        for i in range(120):
            a = f"B0000{i:05d}"
            if v == 3 and i % 5 == 0:
                producer.send(s.changes_topic, a.encode(), delete(a, v))
                deleted.add(a)
            else:
                producer.send(s.changes_topic, a.encode(), upsert(a, v, title=f"shoe {i} v{v}"))
            final[a] = v
    producer.flush()
    producer.close()

    store = RedisStore(url, "ns")
    idx = Indexer(s, KafkaSource(kafka_bootstrap, [s.changes_topic], s.group_id), KafkaSink(kafka_bootstrap), RedisStore(url, "ns"), HashEncoder(32))
    errors = []

    def run():
        try:
            idx.run()  # until the state converges and the test sets stop
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.time() + 60
        at_kill = 0
        while time.time() < deadline and at_kill < 30:
            try:
                at_kill = store.count()
            except redis.RedisError:
                pass
            time.sleep(0.01)
        assert at_kill >= 30 and not errors, (
            f"before the kill the indexer stored {at_kill} in 60 s, assigned {sorted(idx.source.consumer.assignment())}, errors {errors}"
        )
        server.kill()  # SIGKILL mid-stream
        server.wait()
        time.sleep(0.5)
        server = _start(port, tmp_path)  # replays the AOF
        want = [(v, a in deleted) for a, v in final.items()]
        deadline = time.time() + 90
        while time.time() < deadline and not errors:
            if [(pv, tomb) for pv, _, tomb in store.versions_of(list(final))] == want:
                break
            time.sleep(0.2)
        idx.stop.set()
        t.join(timeout=30)
        assert not t.is_alive()
        assert errors == []
        assert 30 <= at_kill < len(final) - len(deleted)  # it really was mid-stream
        for a, v in final.items():
            assert store.version_of(a) == v, a
            assert (store.get(a) is None) == (a in deleted), a
        assert store.count() == len(final) - len(deleted)
    finally:
        idx.stop.set()
        t.join(timeout=10)
        idx.source.close()
        idx.sink.close()
        server.kill()
        server.wait()


class _RestartsBeforeReads(RedisStore):
    """Fault injection on the real server, not a stand-in: `fault` runs once, just before a batch reads the store."""

    fault = None

    def versions_of(self, asins):
        if self.fault is not None:
            fault, self.fault = self.fault, None
            fault()
        return super().versions_of(asins)


def test_redis_back_from_an_older_aof_between_a_batchs_check_and_its_reads(kafka_bootstrap, kafka_topics, unique_name, tmp_path):
    """A Redis host crash after a batch compared the store's offsets with its own, before it read the store: the client
    reconnects without a word to a Redis that came back without the product the batch patches. Before, the patch was
    dead-lettered `unknown_asin` and the batch's offsets were saved over the gap (the chaos test's seed 3); now the seal
    shows another Redis process answered, the batch is retried, finds the store behind and replays what it lost."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    server = _start(port, data)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    s = _settings(url, kafka_bootstrap, kafka_topics, unique_name, partitions=1, store_retries=5)
    producer = KafkaSink(kafka_bootstrap)
    store = _RestartsBeforeReads(url, "ns")
    idx = Indexer(
        s,
        KafkaSource(kafka_bootstrap, [s.changes_topic], s.group_id),
        KafkaSink(kafka_bootstrap, transactional_id=unique_name("tx")),
        store,
        HashEncoder(32),
    )

    def batch(asin: str, value: bytes) -> None:
        producer.send(s.changes_topic, asin.encode(), value)
        producer.flush()
        idx.run(max_idle_s=1.5)

    def host_crash():
        nonlocal server
        server.kill()
        server.wait()
        shutil.rmtree(data / "appendonlydir")
        shutil.copytree(older, data / "appendonlydir")
        server = _start(port, data)

    try:
        batch("B000000001", upsert("B000000001", 1))
        older = shutil.copytree(data / "appendonlydir", tmp_path / "older")  # appendfsync always: exactly batch 1
        batch("B000000002", upsert("B000000002", 1))
        store.fault = host_crash
        batch("B000000002", patch("B000000002", 2, price=9.99))
        assert store.fault is None, "the fault never fired"
        assert store.version_of("B000000001") == 1
        assert store.version_of("B000000002") == 2, "the product patched across the crash is lost"
        assert orjson.loads(store.get_doc("B000000002"))["price"] == 9.99
        dlq = KafkaSource(kafka_bootstrap, [s.dlq_topic], unique_name("reader"))
        dead = [m for _ in range(5) for m in dlq.poll(100, 0.3)]
        dlq.close()
        assert dead == [], [orjson.loads(m.value) for m in dead]
    finally:
        idx.source.close()
        idx.sink.close()
        producer.close()
        server.kill()
        server.wait()

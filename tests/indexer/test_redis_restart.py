"""Redis dies (kill -9) under a running indexer and comes back from its AOF: the state still converges.

Uses a private redis-server on a free port (appendfsync always), never the shared one.
"""

import shutil
import subprocess
import threading
import time

import pytest
import redis

from indexer.pipeline import Indexer
from indexer.settings import IndexerSettings
from m5core.encoder import HashEncoder
from m5core.events.kafka import KafkaSink, KafkaSource
from m5core.stores.redis import RedisStore
from tests.fixtures.services import free_port
from tests.indexer.conftest import delete, upsert

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


def test_redis_kill_9_and_restart_mid_stream_converges(kafka_bootstrap, kafka_topics, unique_name, tmp_path):
    assert shutil.which("redis-server"), "redis-server is needed (deploy/local/services.sh installs it)"
    port = free_port()
    server = _start(port, tmp_path)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    s = IndexerSettings(
        store="redis",
        events="kafka",
        redis_url=url,
        kafka_bootstrap=kafka_bootstrap,
        namespace="ns",
        changes_topic=kafka_topics("changes", partitions=2),
        embeddings_topic=kafka_topics("emb", compact=True),
        dlq_topic=kafka_topics("dlq"),
        group_id=unique_name("g"),
        max_batch=8,
        max_wait_ms=100,
        metrics_port=0,
        store_retries=10,
    )
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

"""The broker stops under a running indexer and comes back: the indexer (restarted by a supervisor if it gave
up during the outage) converges to the newest version of every ASIN, nothing lost or stale.

Uses a private KRaft broker started by deploy/local/services.sh on its own ports and cache dir,
never the shared one.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from m5core.events.kafka import KafkaSink
from m5core.settings import kafka_client_options
from m5core.stores.redis import RedisStore
from tests.indexer.conftest import delete, upsert

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "services.sh"


def _services(action: str, env: dict) -> None:
    r = subprocess.run([str(SCRIPT), action, "kafka"], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]


def test_broker_restart_mid_stream_converges(tmp_path, redis_url, kafka_bootstrap, unique_name, trained_bundle):
    shared_libs = Path(os.environ.get("M5_CACHE_DIR", REPO / ".cache" / "m5")) / "kafka" / "libs"
    cache = tmp_path / "cache"
    (cache / "kafka").mkdir(parents=True)
    if (shared_libs / ".complete").exists():
        os.symlink(shared_libs, cache / "kafka" / "libs")  # reuse the shared broker's jars, no second resolve
    env = {**os.environ, "M5_CACHE_DIR": str(cache), "M5_KAFKA_PORT": "19092", "M5_KAFKA_CONTROLLER_PORT": "19093"}
    _services("start", env)
    boot = subprocess.run([str(SCRIPT), "url", "kafka"], env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    proc = None
    try:
        changes, feed = unique_name("changes"), unique_name("emb")
        admin = KafkaAdminClient(**kafka_client_options(boot))
        admin.create_topics(
            [NewTopic(changes, 3, 1), NewTopic(feed, 3, 1, topic_configs={"cleanup.policy": "compact"}), NewTopic(changes + ".dlq", 1, 1)]
        )
        admin.close()
        ns = unique_name("ns")
        ienv = {
            **os.environ,
            "M5_STORE": "redis",
            "M5_EVENTS": "kafka",
            "M5_REDIS_URL": redis_url,
            "M5_KAFKA_BOOTSTRAP": boot,
            "M5_NAMESPACE": ns,
            "M5_CHANGES_TOPIC": changes,
            "M5_EMBEDDINGS_TOPIC": feed,
            "M5_DLQ_TOPIC": changes + ".dlq",
            "M5_GROUP_ID": unique_name("g"),
            "M5_METRICS_PORT": "0",
            "M5_MAX_WAIT_MS": "100",
            "M5_BUNDLE": str(trained_bundle),
        }
        final: dict[str, int | None] = {}

        def produce(start: int, n: int) -> None:
            sink = KafkaSink(boot)
            for i in range(start, start + n):
                asin = f"B0K{i % 120:07d}"
                version = 1 + i // 120
                if i % 7 == 3:
                    sink.send(changes, asin.encode(), delete(asin, version))
                    final[asin] = None
                else:
                    sink.send(changes, asin.encode(), upsert(asin, version, title=f"shoes v{version}"))
                    final[asin] = version
            sink.flush()
            sink.close()

        def supervise() -> subprocess.Popen:
            nonlocal proc
            if proc is None or proc.poll() is not None:  # gave up during the outage: start it again
                proc = subprocess.Popen([sys.executable, "-m", "indexer", "run"], env=ienv, cwd=REPO)
            return proc

        produce(0, 360)
        supervise()
        store = RedisStore(redis_url, ns)
        deadline = time.time() + 60
        while store.count() < 20 and time.time() < deadline:
            time.sleep(0.1)
        _services("stop", env)  # the broker goes away mid-stream
        time.sleep(2)
        _services("start", env)
        produce(360, 360)  # more changes after the restart
        deadline = time.time() + 120
        while time.time() < deadline:
            supervise()
            got = dict(zip(final, store.versions_of(list(final))))
            if all(got[a][0] is not None and (got[a][0] >= (v or 0)) for a, v in final.items()) and all(
                (store.get(a) is None) == (v is None) for a, v in final.items()
            ):
                break
            time.sleep(0.5)
        for asin, version in final.items():
            rec = store.get(asin)
            if version is None:
                assert rec is None, asin  # deleted stays deleted
            else:
                assert rec is not None and rec.product_version == version, (asin, version, rec and rec.product_version)
                assert orjson.loads(store.get_doc(asin))["title"] == f"shoes v{version}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        _services("stop", env)

"""The project's own scripts start real services, idempotently, configured as the code expects."""

import os
import subprocess
import time
from pathlib import Path

import httpx
import redis

from m5core.events.kafka import KafkaSink, KafkaSource
from m5core.settings import kafka_client_options

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "services.sh"


def test_start_is_idempotent_and_status_reports_up(redis_url, kafka_bootstrap, prometheus_url):
    t0 = time.monotonic()
    r = subprocess.run([str(SCRIPT), "start", "all"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "already up" in r.stderr
    assert time.monotonic() - t0 < 30
    s = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True)
    assert s.returncode == 0
    assert s.stdout.count(" up ") == 3


def test_unknown_service_is_an_error():
    r = subprocess.run([str(SCRIPT), "start", "zookeeper"], capture_output=True, text=True)
    assert r.returncode != 0
    assert "unknown service" in r.stderr


def test_redis_runs_with_aof(redis_url):
    cfg = redis.Redis.from_url(redis_url).config_get("append*")
    assert cfg["appendonly"] == "yes"
    assert cfg["appendfsync"] == "everysec"


def test_redis_needs_its_password(redis_url):
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    assert parts.password  # the URL that services.sh hands out carries it
    anonymous = redis.Redis(host=parts.hostname, port=parts.port)
    try:
        anonymous.get("x")
        raise AssertionError("Redis answered a client without the password")
    except redis.AuthenticationError:
        pass
    finally:
        anonymous.close()
    r = subprocess.run([str(SCRIPT), "start", "redis"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert parts.password not in r.stderr + r.stdout  # never logged
    if not os.environ.get("M5_REDIS_PASSWORD"):
        secret = Path(os.environ.get("M5_CACHE_DIR", REPO / ".cache" / "m5")) / "redis" / "password"
        assert secret.stat().st_mode & 0o077 == 0


def test_kafka_needs_its_credentials(kafka_bootstrap):
    from kafka import KafkaAdminClient

    from m5core.settings import kafka_client_options

    opts = kafka_client_options(kafka_bootstrap)
    assert opts["security_protocol"] == "SASL_PLAINTEXT"  # the address services.sh hands out authenticates
    for wrong in ({}, {**opts, "sasl_plain_password": "wrong"}):
        try:
            KafkaAdminClient(**{**opts, **wrong} if wrong else {"bootstrap_servers": opts["bootstrap_servers"]}, request_timeout_ms=3000).close()
            raise AssertionError(f"the broker let a client in without its password: {sorted(wrong)}")
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001 - refused: NoBrokersAvailable, an authentication failure, a timeout
            pass
    r = subprocess.run([str(SCRIPT), "start", "kafka"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert opts["sasl_plain_password"] not in r.stderr + r.stdout  # never logged


def test_kafka_round_trip_and_default_topics(kafka_bootstrap, kafka_topics, unique_name):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**kafka_client_options(kafka_bootstrap))
    parts = {
        t.get("topic") or t.get("name"): len(t["partitions"])
        for t in admin.describe_topics(["catalog.changes", "catalog.embeddings", "catalog.changes.dlq"])
    }
    assert parts == {"catalog.changes": 3, "catalog.embeddings": 3, "catalog.changes.dlq": 1}
    from kafka.admin import ConfigResource, ConfigResourceType

    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "catalog.embeddings")])
    assert "compact" in str(res)
    topic = kafka_topics("rt")
    sink = KafkaSink(kafka_bootstrap)
    sink.send(topic, b"k", b"hello")
    sink.flush()
    src = KafkaSource(kafka_bootstrap, [topic], unique_name("g"))
    got = []
    for _ in range(30):
        got += src.poll(10, 0.3)
        if got:
            break
    src.close()
    assert got[0].value == b"hello"


def test_prometheus_loaded_our_scrape_jobs_and_rules(prometheus_url):
    # a Prometheus that has just started lists its targets only after the first discovery sync
    for _ in range(60):
        targets = httpx.get(f"{prometheus_url}/api/v1/targets").json()["data"]["activeTargets"]
        if {t["labels"]["job"] for t in targets} >= {"m5-service", "m5-indexer"}:
            break
        time.sleep(0.5)
    assert {t["labels"]["job"] for t in targets} >= {"m5-service", "m5-indexer"}
    groups = httpx.get(f"{prometheus_url}/api/v1/rules").json()["data"]["groups"]
    assert {g["name"] for g in groups} >= {"m5-alerts", "m5-recording"}


def test_promtool_accepts_rules_and_config():
    for args in (["check", "rules", "deploy/prometheus/rules/m5-alerts.yml"], ["check", "config", "deploy/prometheus/prometheus.yml"]):
        r = subprocess.run(["promtool", *args], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr

"""The service fixtures other tests rely on: helpers work, and a missing service fails loudly."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_redis_client_and_unique_names(redis_client, unique_name):
    key = unique_name("m5-test")
    assert key != unique_name("m5-test")
    assert key.startswith("m5-test-")
    redis_client.set(key, b"v", ex=30)
    assert redis_client.get(key) == b"v"
    redis_client.delete(key)


def test_kafka_admin_creates_and_deletes_topics(kafka_admin, unique_name):
    name = kafka_admin.create(unique_name("adm"), partitions=3, compact=True)
    try:
        assert name in kafka_admin.topics()
        assert kafka_admin.partitions(name) == 3
    finally:
        kafka_admin.delete(name)


def test_an_unreachable_service_fails_never_skips(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_needs_redis(redis_url):\n    pass\n")
    # port 1 never answers; services.sh starts (or finds) Redis on its own port, so the probe still fails
    env = {**os.environ, "M5_REDIS_URL": "redis://127.0.0.1:1/0"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.fixtures.services", "-p", "no:cacheprovider", str(probe)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "skipped" not in r.stdout, r.stdout
    assert "redis" in r.stdout and "deploy/local/services.sh start redis" in r.stdout, r.stdout[-2000:]

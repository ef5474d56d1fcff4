"""`m5 loadtest` end to end: a real service (subprocess, real bundle, embedded store) under locust,
gated once with a lenient SLA (exit 0, outputs written) and once with an impossible one (exit 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.routes import BATCH, EMBED_HEAD, EMBEDDING, FLOOR, SEARCH_QUERY, SEARCH_VECTOR
from m5core.bundle import load_manifest
from m5core.encoder import OnnxEncoder
from m5core.jsonl import read_jsonl, write_jsonl
from m5core.schema import content_hash, render_product
from m5core.stores.base import VectorRecord
from m5core.stores.local import LocalStore
from tests.fixtures.services import free_port, wait_http_ok

REPO = Path(__file__).resolve().parents[2]
N_PRODUCTS = 150


@pytest.fixture(scope="module")
def served(trained_bundle, test_catalog, tmp_path_factory):
    """A tiny catalog (its products embedded into a local store) and `m5 serve` over it: (url, catalog dir)."""
    root = tmp_path_factory.mktemp("loadtest")
    catalog = root / "catalog"
    catalog.mkdir()
    products = [p for _, p in zip(range(N_PRODUCTS), read_jsonl(test_catalog / "products.jsonl"))]
    write_jsonl(catalog / "products.jsonl", products)
    write_jsonl(catalog / "queries.jsonl", [q for _, q in zip(range(200), read_jsonl(test_catalog / "queries.jsonl"))])

    manifest = load_manifest(trained_bundle)
    vectors = OnnxEncoder(trained_bundle, "product", manifest=manifest).embed([render_product(p, manifest.render_scheme) for p in products])
    store = LocalStore(root / "store.sqlite", "lt")
    store.put(
        [
            VectorRecord(
                p["asin"], v, p["version"], manifest.version, content_hash(p), p["locale"], p["product_line"], p["updated_at"], json.dumps(p).encode()
            )
            for p, v in zip(products, vectors)
        ]
    )
    store.close()

    port = free_port()
    env = {
        **os.environ,
        "M5_STORE": "local",
        "M5_LOCAL_STORE_PATH": str(root / "store.sqlite"),
        "M5_NAMESPACE": "lt",
        "M5_EVENTS": "local",
        "M5_LOCAL_EVENTS_DIR": str(root / "events"),
        "M5_BUNDLE": str(trained_bundle),
    }
    proc = subprocess.Popen([sys.executable, "-m", "m5cli", "serve", "--port", str(port)], env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/readyz", proc, 30)
        yield url, catalog
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _loadtest(url: str, catalog: Path, sla: Path, out: Path, run_time: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests",
            "--host",
            url,
            "--sla",
            str(sla),
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            run_time,
            "--out",
            str(out),
            "--catalog",
            str(catalog),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _sla(path: Path, p99_ms: float, min_requests: int) -> Path:
    routes = {
        r: {"p99_ms": p99_ms, "max_error_rate": 0.01, "min_requests": min_requests, "p99_floor_ratio": p99_ms}
        for r in (EMBEDDING, BATCH, EMBED_HEAD, SEARCH_QUERY, SEARCH_VECTOR)
    }
    server = {"GET /asin/{asin}/embedding": {"p99_ms": p99_ms, "min_requests": min_requests}, "POST /search": {"p99_ms": p99_ms}}
    path.write_text(json.dumps({"routes": routes, "server": server}))  # JSON is YAML
    return path


def test_lenient_sla_passes_and_writes_outputs(served, tmp_path):
    url, catalog = served
    r = _loadtest(url, catalog, _sla(tmp_path / "sla.yaml", 5000, 1), tmp_path / "out", "10s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SLA: PASS" in r.stdout
    assert EMBEDDING in r.stdout
    out = tmp_path / "out"
    for name in ("loadtest_stats.csv", "loadtest_stats_history.csv", "loadtest.html", "loadtest_latency.png", "loadtest_throughput.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "loadtest_stats.csv").read_text()
    assert "/asin/{asin}/embedding" in rows
    assert "/search [vector]" in rows
    # End to end to the microsecond (locust's CSV has whole milliseconds), the floor beside the routes, and the
    # service's own histograms between the two scrapes.
    precise = json.loads((out / "loadtest_precise.json").read_text())
    assert precise[EMBEDDING]["n"] > 10 and precise[FLOOR]["n"] > 0
    assert 0 < precise[FLOOR]["p50_ms"] <= precise[FLOOR]["p99_ms"]
    assert any(round(p[k], 3) != round(p[k]) for p in precise.values() for k in ("p50_ms", "p99_ms"))  # not whole ms
    server = json.loads((out / "loadtest_server.json").read_text())
    assert server["GET /asin/{asin}/embedding"]["n"] >= precise[EMBEDDING]["n"]  # the embedding fetches before the run too
    assert 0 < server["POST /search"]["p50_ms"] <= server["POST /search"]["p99_ms"] < 5000
    assert "server route" in r.stdout


def test_impossible_sla_fails_with_exit_1(served, tmp_path):
    url, catalog = served
    r = _loadtest(url, catalog, _sla(tmp_path / "sla.yaml", 0, 10**9), tmp_path / "out", "4s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "SLA VIOLATION" in r.stdout
    assert "server_p99_ms" in r.stdout
    assert "SLA: FAIL" in r.stdout


def test_bad_input_exits_2_naming_it(tmp_path, test_catalog):
    r = _loadtest("http://127.0.0.1:9", test_catalog, tmp_path / "missing.yaml", tmp_path / "out", "1s")
    assert r.returncode == 2
    assert "missing.yaml" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text('routes: {"GET /nope": {p99_ms: 1}}')
    r = _loadtest("http://127.0.0.1:9", test_catalog, bad, tmp_path / "out", "1s")
    assert r.returncode == 2
    assert "unknown route" in r.stderr

"""Every PromQL expression of the dashboards and alert rules returns data from a live Prometheus
scraping a real service and indexer under a short load."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from catalog.events import bad_events, iter_change_events
from catalog.io import load_catalog
from m5core.events.local import LocalSink
from tests.fixtures.services import wait_http_ok

REPO = Path(__file__).resolve().parents[2]


def expressions() -> list[tuple[str, str]]:
    """(where, expr): dashboard targets as is; alert conditions split into their measured sides."""
    out = []
    for f in sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json")):
        for p in json.loads(f.read_text())["panels"]:
            out += [(f"{f.name}:{p['title']}", t["expr"]) for t in p["targets"]]
    for g in yaml.safe_load((REPO / "deploy" / "prometheus" / "rules" / "m5-alerts.yml").read_text())["groups"]:
        for r in g["rules"]:
            name = r.get("record") or r.get("alert")
            for side in re.split(r"\s+and\s+", r["expr"]):
                # an alert is quiet on a healthy system: evaluate what it measures, not the threshold
                out.append((name, re.split(r"\s+>\s+", side)[0].strip()))
    return out


@pytest.fixture
def running_stack(tmp_path, prometheus_url, trained_bundle, test_catalog):
    env = {
        **os.environ,
        "M5_STORE": "local",
        "M5_EVENTS": "local",
        "M5_LOCAL_STORE_PATH": str(tmp_path / "s.sqlite"),
        "M5_LOCAL_EVENTS_DIR": str(tmp_path / "ev"),
        "M5_BUNDLE": str(trained_bundle),
        "M5_METRICS_PORT": "9108",
    }
    products = [p for _, p in zip(range(200), load_catalog(test_catalog).products())]
    sink = LocalSink(tmp_path / "ev")
    for p in products:
        ev = {"op": "upsert", "asin": p["asin"], "version": p["version"], "ts": time.time(), "product": p}
        sink.send("catalog.changes", p["asin"].encode(), json.dumps(ev).encode())
    for key, payload, _ in bad_events()[:3]:
        sink.send("catalog.changes", key, payload)
    sink.flush()
    procs = [
        subprocess.Popen([sys.executable, "-m", "m5cli", "index", "run"], env=env, cwd=REPO),
        subprocess.Popen([sys.executable, "-m", "m5cli", "serve", "--port", "8000"], env=env, cwd=REPO),
    ]
    try:
        wait_http_ok("http://127.0.0.1:9108/metrics", procs[0], 60)
        wait_http_ok("http://127.0.0.1:8000/healthz", procs[1], 60)
        yield products, sink
    finally:
        for p in procs:
            p.terminate()
        indexer, server = procs
        assert indexer.wait(timeout=30) == 0  # SIGTERM: finish the batch, commit, exit 0
        # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit is -SIGTERM
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)


def test_every_dashboard_and_alert_expression_returns_data(running_stack, prometheus_url):
    products, sink = running_stack
    base = "http://127.0.0.1:8000"
    deadline = time.time() + 25
    i = 0
    while time.time() < deadline:  # a short, bounded load over a few scrape intervals
        a = products[i % len(products)]["asin"]
        httpx.get(f"{base}/asin/{a}/embedding")
        httpx.get(f"{base}/asin/ZZZZZZZZZZ/embedding")  # a 404 for the error panels
        httpx.post(f"{base}/query/embed", json={"queries": ["red running shoes", f"query {i % 7}"]})
        httpx.post(f"{base}/search", json={"asin": a, "k": 5})
        if i % 20 == 0:
            for ev in iter_change_events(products[:20], 5, seed=i):
                sink.send("catalog.changes", ev.asin.encode(), ev.model_dump_json().encode())
            sink.flush()
        i += 1
        time.sleep(0.05)
    missing = []
    for where, expr in expressions():
        r = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}).json()
        assert r["status"] == "success", (where, expr, r)
        if not r["data"]["result"]:
            missing.append(f"{where}: {expr}")
    assert not missing, "no data for:\n" + "\n".join(missing)

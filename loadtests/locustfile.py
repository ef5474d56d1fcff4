"""Realistic M5 traffic: Zipf-popular embedding lookups, text/vector/ASIN searches, head and tail query
embeds, a few batch lookups, and optionally a change-event stream into the indexer while load runs.

    M5_LOADTEST_CATALOG=DIR locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

Environment: M5_LOADTEST_CATALOG (catalog dir: products.jsonl, queries.jsonl), M5_LOADTEST_INDEX_RATE
(change events per second to the changes topic, 0 = off; transport from the usual M5_EVENTS,
M5_KAFKA_BOOTSTRAP, M5_CHANGES_TOPIC, M5_LOCAL_EVENTS_DIR), M5_LOADTEST_SEED.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import urllib.request
from pathlib import Path

from locust import FastHttpUser, between, events, task

from loadtests import gate
from loadtests import routes as R
from loadtests.settings import WorkloadSettings
from loadtests.stream import index_stream

log = logging.getLogger("m5.loadtest")
ZIPF_S = 1.1  # popularity skew of product lookups: a few ASINs take most of the traffic


class Workload:
    """ASINs with Zipf weights, head/tail queries and sample vectors, loaded once per process."""

    def __init__(self, catalog: Path, seed: int = 0):
        if not (catalog / "products.jsonl").is_file():
            raise SystemExit(f"M5_LOADTEST_CATALOG: {catalog / 'products.jsonl'} not found")
        rng = random.Random(seed)
        self.asins, locales = [], set()
        for line in (catalog / "products.jsonl").open():  # one product at a time: a 1M catalog is GBs as dicts
            if line.strip():
                p = json.loads(line)
                self.asins.append(p["asin"])
                locales.add(p["locale"])
        self.locales = sorted(locales)  # locale filters ask for the catalog's own locales, whatever they are
        if not self.asins:
            raise SystemExit(f"M5_LOADTEST_CATALOG: {catalog / 'products.jsonl'} has no products")
        rng.shuffle(self.asins)  # popularity rank independent of file order
        self.cum_weights = list(itertools.accumulate(1.0 / (r + 1) ** ZIPF_S for r in range(len(self.asins))))
        queries = [json.loads(line) for line in (catalog / "queries.jsonl").open() if line.strip()] if (catalog / "queries.jsonl").is_file() else []
        self.head = [q["text"] for q in queries if q.get("head")] or [q["text"] for q in queries[:50]] or ["red running shoes"]
        self.tail = [q["text"] for q in queries if not q.get("head")] or ["blau Trinkflasche 20 l"]
        self.vectors: list[list[float]] = []

    def asin(self, rng: random.Random) -> str:
        return rng.choices(self.asins, cum_weights=self.cum_weights)[0]

    def tail_query(self, rng: random.Random) -> str:
        # a tail query is rarely seen twice: vary it so the service's query cache does not hide the encoder
        return f"{rng.choice(self.tail)} {rng.randint(0, 10**6)}"[:512]


WORKLOAD: Workload | None = None
LATENCIES: dict[str, list[float]] = {}  # route -> every request's latency (ms, float): locust's own percentiles are whole ms
_stop = threading.Event()
INDEXING = threading.Event()  # set while the background change stream (with deletes) runs


def _fetch_vectors(host: str, asins: list[str], n: int = 64) -> list[list[float]]:
    """Vectors for search-by-vector, fetched outside locust's stats (urllib, not the measured client)."""
    out = []
    for asin in asins[:n]:
        try:
            with urllib.request.urlopen(f"{host.rstrip('/')}/asin/{asin}/embedding", timeout=5) as r:
                doc = json.load(r)
            scale = doc.get("scale") or 1.0
            out.append([x * scale for x in doc["vector"]] if doc.get("dtype") == "int8" else doc["vector"])
        except Exception as exc:  # noqa: BLE001 - a missing ASIN just gives one vector fewer
            log.debug("no vector for %s: %s", asin, exc)
    return out


@events.test_start.add_listener
def _on_start(environment, **_):
    global WORKLOAD
    w = WorkloadSettings()
    if w.catalog is None:
        raise SystemExit("M5_LOADTEST_CATALOG is not set: point it at a catalog dir (products.jsonl, queries.jsonl)")
    catalog, seed, rate = w.catalog, w.seed, w.index_rate
    WORKLOAD = Workload(Path(catalog), seed)
    WORKLOAD.vectors = _fetch_vectors(environment.host or "", WORKLOAD.asins) if environment.host else []
    _stop.clear()
    if rate > 0:
        INDEXING.set()
        threading.Thread(target=index_stream, args=(rate, Path(catalog), seed, _stop), name="index-stream", daemon=True).start()


@events.request.add_listener
def _record(request_type, name, response_time, **_):
    LATENCIES.setdefault(f"{request_type} {name}", []).append(response_time)


@events.test_stop.add_listener
def _on_stop(environment, **_):
    _stop.set()
    out = WorkloadSettings().precise_out
    if out is not None:
        Path(out).write_text(json.dumps({route: gate.percentiles_ms(xs) for route, xs in LATENCIES.items()}))


class ServiceUser(FastHttpUser):
    """One client of the service; task weights are the traffic mix (percent of requests)."""

    wait_time = between(0.0, 0.02)

    def on_start(self):
        self.rng = random.Random()

    @task(60)
    def embedding(self):
        asin = WORKLOAD.asin(self.rng)
        with self.client.get(f"/asin/{asin}/embedding", name=R.locust_name(R.EMBEDDING), catch_response=True) as r:
            _deleted_is_ok(r)

    @task(3)
    def batch(self):
        self.client.post(
            "/asin/embeddings", json={"asins": [WORKLOAD.asin(self.rng) for _ in range(self.rng.randint(5, 50))]}, name=R.locust_name(R.BATCH)
        )

    @task(8)
    def embed_head(self):
        self.client.post("/query/embed", json={"queries": [self.rng.choice(WORKLOAD.head)]}, name=R.locust_name(R.EMBED_HEAD))

    @task(4)
    def embed_tail(self):
        self.client.post("/query/embed", json={"queries": [WORKLOAD.tail_query(self.rng)]}, name=R.locust_name(R.EMBED_TAIL))

    @task(12)
    def search_query(self):
        text = self.rng.choice(WORKLOAD.head) if self.rng.random() < 0.7 else WORKLOAD.tail_query(self.rng)
        self.client.post("/search", json={"query": text, "k": 10}, name=R.locust_name(R.SEARCH_QUERY))

    @task(10)
    def search_vector(self):
        if not WORKLOAD.vectors:
            return self.search_asin()
        body = {"vector": self.rng.choice(WORKLOAD.vectors), "k": 10}
        if self.rng.random() < 0.3:
            body["filters"] = {"locale": self.rng.choice(WORKLOAD.locales)}
        self.client.post("/search", json=body, name=R.locust_name(R.SEARCH_VECTOR))

    @task(3)
    def floor(self):
        self.client.get("/healthz", name=R.locust_name(R.FLOOR))

    @task(3)
    def search_asin(self):
        with self.client.post(
            "/search", json={"asin": WORKLOAD.asin(self.rng), "k": 10}, name=R.locust_name(R.SEARCH_ASIN), catch_response=True
        ) as r:
            _deleted_is_ok(r)


def _deleted_is_ok(r) -> None:
    """While the change stream runs it deletes products: their 404 "not in the catalog" is the right answer."""
    if r.status_code == 404 and INDEXING.is_set() and "not in the catalog" in (r.text or ""):
        r.success()

"""`m5 demo`: catalog -> tiny model -> int8 bundle -> index -> serve, on embedded defaults.

No Docker, Kafka or Redis: the embedded sqlite store and the local event log stand in for them
behind the same interfaces. `--store redis --events kafka` runs the same steps on the servers of
`deploy/local/services.sh start` (the full stack the load test gates). Steps whose output exists
are reused (delete .m5/demo to start over).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from m5core.settings import M5Settings, add_settings_arguments, settings_from_args


class DemoSettings(M5Settings):
    workdir: Path = Path(".m5/demo")
    """Where the demo keeps its catalog, bundles, store and event log."""
    products: int = 5000
    """Catalog size."""
    seed: int = 0
    """Catalog seed."""
    preset: str = "tiny"
    """Training preset (tiny trains in a few minutes on 2 cores)."""
    retrain: bool = False
    """Train a new bundle even if one exists."""
    host: str = "127.0.0.1"
    """Interface the demo server listens on."""
    port: int = 8000
    """Port of the demo server."""
    store: Literal["local", "redis"] = "local"
    """local: embedded sqlite; redis: the Redis of `deploy/local/services.sh start` (M5_REDIS_URL)."""
    events: Literal["local", "kafka"] = "local"
    """local: the JSON-lines event log; kafka: the broker of `deploy/local/services.sh start` (M5_KAFKA_BOOTSTRAP)."""
    workers: int = 1
    """uvicorn workers of the demo server."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate, train, index and serve a demo on embedded defaults", description=__doc__)
    add_settings_arguments(p, DemoSettings)
    p.set_defaults(func=run, parser=p)


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run(args) -> int:
    d = settings_from_args(DemoSettings, args, args.parser)
    work = d.workdir.resolve()
    catalog, bundles = work / "catalog", work / "bundles"
    env = {
        **os.environ,
        "M5_STORE": d.store,
        "M5_EVENTS": d.events,
        "M5_LOCAL_STORE_PATH": str(work / "store.sqlite"),
        "M5_LOCAL_EVENTS_DIR": str(work / "events"),
        "M5_BUNDLE": str(bundles / "current"),
        "M5_METRICS_PORT": "0",
    }
    indexed = work / f"indexed-{d.store}-{d.events}"  # backfill done for this backend pair
    t0 = time.perf_counter()
    if not (catalog / "manifest.json").exists():
        step(f"generating a {d.products}-product catalog in {catalog}")
        from catalog.generate import generate_catalog

        generate_catalog(catalog, d.products, d.seed)
    if d.retrain or not (bundles / "current" / "manifest.json").exists():
        step(f"training the '{d.preset}' model (pre-train, fine-tune, distil, int8 export)")
        from trainer.config import load_config
        from trainer.pipeline import train_all

        train_all(load_config(None, d.preset, {"catalog": str(catalog), "out": str(bundles), "run_dir": str(work / "run")}), resume=False)
        for marker in work.glob("indexed-*"):
            marker.unlink()
        (work / "store.sqlite").unlink(missing_ok=True)
    if not indexed.exists():
        step(f"indexing the catalog (backfill into the {d.store} store and the {d.events} feed)")
        subprocess.run([sys.executable, "-m", "m5cli", "index", "backfill", str(catalog)], env=env, check=True)
        indexed.touch()
    step("starting the indexer on the local event log (m5 index run)")
    indexer = subprocess.Popen([sys.executable, "-m", "m5cli", "index", "run"], env=env)
    first = next(iter(_products(catalog)))
    target = '--kafka "$M5_KAFKA_BOOTSTRAP"' if d.events == "kafka" else f"--local-events-dir {work / 'events'}"  # never the password
    base = f"http://{d.host}:{d.port}"
    print(
        f"""
Ready in {time.perf_counter() - t0:.0f} s. Try, in another shell:

  curl -s {base}/asin/{first["asin"]}/embedding | head -c 300; echo
  curl -s -X POST {base}/query/embed -H 'content-type: application/json' -d '{{"queries": ["red running shoes"]}}' | head -c 300; echo
  curl -s -X POST {base}/search -H 'content-type: application/json' -d '{{"query": "scarlet jogging sneakers", "k": 5}}'; echo
  curl -s -X POST {base}/search -H 'content-type: application/json' -d '{{"asin": "{first["asin"]}", "k": 5, "filters": {{"locale": "{first["locale"]}"}}}}'; echo
  curl -s {base}/readyz; echo
  # change the catalog and watch it follow within a second:
  {sys.executable} -m m5cli catalog events --catalog {catalog} --count 200 {target}
""",
        flush=True,
    )
    step(f"serving on {base} (Ctrl-C stops the server and the indexer)")
    server = subprocess.Popen([sys.executable, "-m", "m5cli", "serve", "--host", d.host, "--port", str(d.port), "--workers", str(d.workers)], env=env)
    try:
        show_searches(base, server)
        return server.wait()
    except KeyboardInterrupt:  # the server got the same Ctrl-C and stops gracefully
        server.wait(timeout=30)
        return 0
    finally:
        indexer.terminate()
        indexer.wait(timeout=15)


SAMPLE_QUERIES = ("scarlet jogging sneakers", "Laufschuhe rot", "stainless steel water bottle", "حذاء جري")


def show_searches(base: str, server: subprocess.Popen, wait_s: float = 300.0) -> None:
    """Once the server is ready, a few searches with the titles they find: what the model does, in words."""
    import json
    import urllib.request

    deadline = time.monotonic() + wait_s
    while server.poll() is None and time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        return
    step("a few searches (POST /search with fields=title,locale)")
    for q in SAMPLE_QUERIES:
        req = urllib.request.Request(
            f"{base}/search",
            data=json.dumps({"query": q, "k": 3, "fields": ["title", "locale"]}).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            hits = json.loads(urllib.request.urlopen(req, timeout=10).read())["hits"]
        except OSError as exc:
            print(f"  {q!r}: {exc}", flush=True)
            continue
        print(f"  {q!r}", flush=True)
        for h in hits:
            p = h.get("product") or {}
            print(f"    {h['score']:.3f}  {h['asin']}  [{p.get('locale')}]  {p.get('title')}", flush=True)


def _products(catalog: Path):
    from m5core.jsonl import read_jsonl

    return read_jsonl(catalog / "products.jsonl")

"""Per-endpoint latency of a service over data already loaded (e.g. a 1M backfill), without wrk: end to end from a
client process with a nanosecond clock, and server side from the service's own histogram scraped before and after
(`loadtests.gate.server_stats`, interpolated inside the buckets as Prometheus does).

    M5_REDIS_URL=$(deploy/local/services.sh url redis) M5_KAFKA_BOOTSTRAP=$(deploy/local/services.sh url kafka) \\
      .venv/bin/python benchmarks/endpoint_latency.py --namespace bf13 --embeddings-topic bf13.embeddings \\
        --bundle B --snapshot-dir DIR --catalog /tmp/s13/cat1m --requests 2000

One uvicorn worker, one client, the routes taking turns in rounds of 100 requests (this VM's speed drifts); 1,000
products sampled from --catalog (their stored vectors are the by-vector queries), text queries from its queries.jsonl,
the query cache off. Writes JSON and a PNG of the distributions beside --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.rawhttp import exchange  # noqa: E402
from loadtests.gate import server_stats  # noqa: E402

# Each route gets the i-th sample: (ASIN, its stored vector, a query text). Text searches miss the query cache (the
# service runs with M5_QUERY_CACHE_SIZE=0): the query tower runs every time.
ROUTES = {
    "GET /asin/{asin}/duplicates": lambda a, v, t: ("GET", f"/asin/{a}/duplicates", b""),
    "POST /search (by asin)": lambda a, v, t: ("POST", "/search", json.dumps({"asin": a, "k": 10}).encode()),
    "POST /search (by vector)": lambda a, v, t: ("POST", "/search", json.dumps({"vector": v, "k": 10}).encode()),
    "POST /search (by text, cache miss)": lambda a, v, t: ("POST", "/search", json.dumps({"query": t, "k": 10}).encode()),
    "GET /asin/{asin}/embedding": lambda a, v, t: ("GET", f"/asin/{a}/embedding", b""),
}
SERVER_ROUTE = {
    "GET /asin/{asin}/duplicates": "GET /asin/{asin}/duplicates",
    "POST /search (by asin)": "POST /search",  # the three searches share one histogram: only their sum is server-side
    "POST /search (by vector)": "POST /search",
    "POST /search (by text, cache miss)": "POST /search",
    "GET /asin/{asin}/embedding": "GET /asin/{asin}/embedding",
}


def client_main(port: int, asins_file: str, rounds: int, out: str) -> None:
    import asyncio

    import uvloop

    samples = json.loads(Path(asins_file).read_text())

    async def main() -> dict[str, list[int]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        times: dict[str, list[int]] = {r: [] for r in ROUTES}
        for r in range(rounds):
            for name, make in ROUTES.items():
                for i in range(100):
                    method, path, body = make(*samples[(r * 100 + i) % len(samples)])
                    t0 = time.perf_counter_ns()
                    await exchange(reader, writer, method, path, body)
                    times[name].append(time.perf_counter_ns() - t0)
        return times

    times = uvloop.run(main())
    Path(out).write_text(json.dumps(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--embeddings-topic", required=True)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--snapshot-dir", type=Path)
    ap.add_argument("--catalog", required=True, type=Path, help="catalog directory whose products.jsonl gives the ASINs asked for")
    ap.add_argument("--queries", type=Path, help="queries.jsonl of the text searches (default: the catalog's)")
    ap.add_argument("--effort", type=int, help="the service's search effort (M5_EFFORT; default: the index's)")
    ap.add_argument("--requests", type=int, default=2000, help="timed requests per route")
    ap.add_argument("--port", type=int, default=8131)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "endpoint_latency")
    args = ap.parse_args()
    from m5core.jsonl import read_jsonl

    rng = random.Random(0)
    asins = [p["asin"] for _, p in zip(range(200_000), read_jsonl(args.catalog / "products.jsonl"))]
    texts = [q["text"] for q in read_jsonl(args.queries or args.catalog / "queries.jsonl")]
    tmp = Path(f"/tmp/m5-endpoint-bench-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "M5_NAMESPACE": args.namespace, "M5_EMBEDDINGS_TOPIC": args.embeddings_topic, "M5_BUNDLE": str(args.bundle)}
    env.update({"M5_STORE": "redis", "M5_EVENTS": "kafka", "M5_MODEL_POLL_S": "0", "M5_QUERY_CACHE_SIZE": "0"})
    if args.effort:
        env["M5_EFFORT"] = str(args.effort)
    if args.snapshot_dir:
        env["M5_SNAPSHOT_DIR"] = str(args.snapshot_dir)
    base = f"http://127.0.0.1:{args.port}"
    try:
        urllib.request.urlopen(base + "/healthz", timeout=1)
        taken = True
    except urllib.error.HTTPError:
        taken = True  # it answered, if not with 200
    except OSError:
        taken = False  # nothing there: ours will be the one measured
    if taken:
        raise SystemExit(f"something already answers on port {args.port}: stop it, or pass --port")
    proc = subprocess.Popen(
        [sys.executable, "-m", "m5cli", "serve", "--port", str(args.port)],
        env=env,
        cwd=REPO,
        stdout=(tmp / "svc.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"service exited: {(tmp / 'svc.log').read_text()[-2000:]}")
            try:
                ready = json.loads(urllib.request.urlopen(base + "/readyz", timeout=2).read())
                if ready["ready"]:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if time.monotonic() - t0 > 900:
                raise SystemExit("service not ready in 900 s")
            time.sleep(1)
        print(f"service ready in {time.monotonic() - t0:.0f} s: {ready['index_size']} vectors, {ready['index_kind']}", flush=True)
        picked = rng.sample(asins, min(1000, len(asins)))  # at most the service's max_batch_asins (1,000)
        req = urllib.request.Request(base + "/asin/embeddings", json.dumps({"asins": picked}).encode(), {"Content-Type": "application/json"})
        vectors = {e["asin"]: e["vector"] for e in json.loads(urllib.request.urlopen(req).read())["embeddings"]}
        samples = [(a, vectors[a], texts[i % len(texts)]) for i, a in enumerate(picked) if a in vectors]
        (tmp / "samples.json").write_text(json.dumps(samples))
        out = tmp / "times.json"
        client = [sys.executable, __file__, "--client", str(args.port), str(tmp / "samples.json")]
        subprocess.run([*client, "1", str(out)], check=True)  # warm-up: caches, pages of the index, connections
        before = urllib.request.urlopen(base + "/metrics").read().decode()
        subprocess.run([*client, str(max(1, args.requests // 100)), str(out)], check=True)
        after = urllib.request.urlopen(base + "/metrics").read().decode()
        times = {k: np.array(v) / 1e6 for k, v in json.loads(out.read_text()).items()}
        server = server_stats(before, after)
        results = {"index_size": ready["index_size"], "index_kind": ready["index_kind"], "effort": args.effort, "routes": {}}
        for name, t in times.items():
            srv = server.get(SERVER_ROUTE[name], {})
            row = {"n": len(t), "e2e_p50_ms": round(float(np.percentile(t, 50)), 3), "e2e_p99_ms": round(float(np.percentile(t, 99)), 3)}
            row.update({f"server_{k}": v for k, v in srv.items() if k != "n"})
            results["routes"][name] = row
            print(f"{name:30s} e2e p50 {row['e2e_p50_ms']:.3f} p99 {row['e2e_p99_ms']:.3f} ms; server {srv}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(results, indent=1))
        plot(times, Path(f"{args.out}.png"), results["index_size"])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return 0


def plot(times: dict, out: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, t in times.items():
        s = np.sort(t)
        ax.plot(s, np.arange(1, len(s) + 1) / len(s), label=name)
    ax.set_xscale("log")
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("ms, one client, end to end")
    ax.set_ylabel("share of requests")
    ax.set_title(f"{n:,} products, one worker")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
        sys.exit(0)
    sys.exit(main())

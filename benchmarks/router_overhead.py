"""What `m5 router` costs: the same searches sent to one whole service, through the router to that one service, and
through the router to two shards that split the feed's partitions (docs/benchmarks.md, "Shards and the router").

    M5_REDIS_URL=$(deploy/local/services.sh url redis) M5_KAFKA_BOOTSTRAP=$(deploy/local/services.sh url kafka) \\
      .venv/bin/python benchmarks/router_overhead.py --bundle B --catalog DIR --n 5000 --requests 3000

The client is a separate process with one keep-alive connection per target, timing each request with a nanosecond
clock; the targets take turns in rounds of 100 requests (the same client and moment for every target, so
differences are the servers'). "hop" = router over the whole service minus
the whole service: the router's own cost. Writes JSON and a PNG of the latency distributions. Everything it makes
(namespace, topics) is deleted at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
M5 = [sys.executable, "-m", "m5cli"]
PARTITIONS = 4


def client_main(ports: list[int], bodies_file: str, rounds: int, per_round: int, out: str) -> None:
    """The load generator (its own process): POST /search with each body in turn, one keep-alive connection per
    target, closed loop. The targets take turns in short rounds, so a drift in the machine's speed (this VM's moves
    by tens of percent within minutes) falls on all of them alike."""
    import asyncio

    import uvloop

    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines()]
    reqs = [b"POST /search HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies]

    async def main() -> dict[int, list[int]]:
        conns = {p: await asyncio.open_connection("127.0.0.1", p) for p in ports}
        times: dict[int, list[int]] = {p: [] for p in ports}
        for r in range(rounds + 1):
            for p, (reader, writer) in conns.items():
                for i in range(per_round):
                    t0 = time.perf_counter_ns()
                    writer.write(reqs[(r * per_round + i) % len(reqs)])
                    head = await reader.readuntil(b"\r\n\r\n")
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise SystemExit(f"port {p}: {head[:40]!r}")
                    n = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")).split(b":")[1])
                    await reader.readexactly(n)
                    if r:  # round 0 warms the connections and caches
                        times[p].append(time.perf_counter_ns() - t0)
        return times

    times = uvloop.run(main())
    np.savez(out, **{str(p): np.array(t) for p, t in times.items()})


def measure(ports: list[int], bodies: Path, requests: int, tmp: Path) -> list[np.ndarray]:
    """Each target's request times (ms), the targets interleaved in rounds of 100."""
    out = tmp / f"t-{uuid.uuid4().hex[:6]}.npz"
    rounds = max(1, requests // 100)
    subprocess.run([sys.executable, __file__, "--client", ",".join(map(str, ports)), str(bodies), str(rounds), "100", str(out)], check=True)
    z = np.load(out)
    return [z[str(p)] / 1e6 for p in ports]


def start(args: list[str], env: dict, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*M5, *args, "--port", str(port)], env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[:3]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{args[:3]} not ready in 300 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(proc: subprocess.Popen) -> float:
    """Resident memory of a server and its workers."""
    import psutil

    p = psutil.Process(proc.pid)
    return round(sum(k.memory_info().rss for k in [p, *p.children(recursive=True)]) / 2**20, 1)


def feed_record_bytes(bootstrap: str, topic: str, n: int = 500) -> float:
    """Mean key + value bytes of the feed's first records (what a product costs the topic before compaction)."""
    from m5core.events.kafka import KafkaAssignedSource

    src = KafkaAssignedSource(bootstrap, [topic])
    sizes: list[int] = []
    for _ in range(20):
        sizes += [len(m.key or b"") + len(m.value or b"") for m in src.poll(n, 0.5)]
        if len(sizes) >= n:
            break
    src.close()
    return round(float(np.mean(sizes)), 1) if sizes else 0.0


def pct(t: np.ndarray) -> dict:
    return {"p50_ms": round(float(np.percentile(t, 50)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3), "mean_ms": round(float(t.mean()), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--catalog", required=True, type=Path, help="catalog directory (products.jsonl)")
    ap.add_argument("--n", type=int, default=5000, help="products backfilled")
    ap.add_argument("--requests", type=int, default=3000, help="timed requests per target and kind")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "router_overhead")
    args = ap.parse_args()
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from m5core.jsonl import read_jsonl
    from m5core.settings import kafka_client_options

    bootstrap, redis_url = os.environ["M5_KAFKA_BOOTSTRAP"], os.environ["M5_REDIS_URL"]
    tag = uuid.uuid4().hex[:8]
    topics = {"M5_EMBEDDINGS_TOPIC": f"bench-emb-{tag}", "M5_CHANGES_TOPIC": f"bench-chg-{tag}", "M5_DLQ_TOPIC": f"bench-dlq-{tag}"}
    admin = KafkaAdminClient(**kafka_client_options(bootstrap), client_id="m5-bench")
    admin.create_topics(
        [NewTopic(topics["M5_EMBEDDINGS_TOPIC"], PARTITIONS, 1, topic_configs={"cleanup.policy": "compact"})]
        + [NewTopic(topics[k], 1, 1) for k in ("M5_CHANGES_TOPIC", "M5_DLQ_TOPIC")]
    )
    env = {**os.environ, **topics, "M5_NAMESPACE": f"bench{tag}", "M5_BUNDLE": str(args.bundle), "M5_STORE": "redis", "M5_EVENTS": "kafka"}
    env.update({"M5_MODEL_POLL_S": "0", "M5_QUERY_CACHE_SIZE": "10000"})
    env.pop("M5_SNAPSHOT_DIR", None)
    tmp = Path(f"/tmp/m5-router-bench-{tag}")
    tmp.mkdir(parents=True)
    products = [p for _, p in zip(range(args.n), read_jsonl(args.catalog / "products.jsonl"))]
    (tmp / "products.jsonl").write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in products))
    procs: list[subprocess.Popen] = []
    try:
        print(f"backfill {len(products)} products into {PARTITIONS} partitions ...", flush=True)
        import redis

        rds = redis.Redis.from_url(redis_url)
        before = rds.info("memory")["used_memory"]
        subprocess.run([*M5, "index", "backfill", str(tmp / "products.jsonl")], env=env, cwd=REPO, check=True, capture_output=True)
        redis_bytes = (rds.info("memory")["used_memory"] - before) / len(products)
        ports = {k: free_port() for k in ("whole", "a", "b", "r1", "r2")}
        procs.append(start(["serve"], env, ports["whole"], tmp / "whole.log"))
        procs.append(start(["serve", "--shard-partitions", "0-1"], env, ports["a"], tmp / "a.log"))
        procs.append(start(["serve", "--shard-partitions", "2-3"], env, ports["b"], tmp / "b.log"))
        url = "http://127.0.0.1:{}".format
        procs.append(start(["router", "--shards", f"0-3={url(ports['whole'])}"], env, ports["r1"], tmp / "r1.log"))
        procs.append(start(["router", "--shards", f"0-1={url(ports['a'])} 2-3={url(ports['b'])}"], env, ports["r2"], tmp / "r2.log"))
        rng = random.Random(0)
        picks = rng.sample(products, min(500, len(products)))
        kinds = {
            "asin": [{"asin": p["asin"], "k": 10} for p in picks],
            "text (cached)": [{"query": " ".join(p["title"].split()[:4]), "k": 10} for p in picks[:50]],
        }
        results: dict = {"n": len(products), "partitions": PARTITIONS, "requests": args.requests, "targets": {}}
        results["redis_bytes_per_product"] = round(redis_bytes)
        results["feed_bytes_per_record"] = feed_record_bytes(bootstrap, topics["M5_EMBEDDINGS_TOPIC"])
        samples: dict = {}
        for kind, bodies in kinds.items():
            path = tmp / f"{kind.split()[0]}.jsonl"
            path.write_text("\n".join(json.dumps(b) for b in bodies))
            targets = {"whole service": ports["whole"], "router -> whole": ports["r1"], "router -> 2 shards": ports["r2"]}
            for target, t in zip(targets, measure(list(targets.values()), path, args.requests, tmp)):
                samples[(kind, target)] = t
                results["targets"].setdefault(kind, {})[target] = pct(t)
                print(f"{kind:14s} {target:20s} p50 {np.percentile(t, 50):.3f} ms  p99 {np.percentile(t, 99):.3f} ms", flush=True)
            r = results["targets"][kind]
            r["hop_p50_ms"] = round(r["router -> whole"]["p50_ms"] - r["whole service"]["p50_ms"], 3)
            r["hop_p99_ms"] = round(r["router -> whole"]["p99_ms"] - r["whole service"]["p99_ms"], 3)
        names = ("whole service", "shard 0-1", "shard 2-3", "router -> whole", "router -> 2 shards")
        results["rss_mib"] = {name: rss_mib(p) for name, p in zip(names, procs)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(results, indent=1))
        plot(samples, Path(f"{args.out}.png"))
        print(json.dumps(results, indent=1))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        admin.delete_topics(list(topics.values()))
        import redis

        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(f"bench{tag}:*", count=1000):
            r.delete(key)
    return 0


def plot(samples: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({k for k, _ in samples})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for (k, target), t in samples.items():
            if k == kind:
                s = np.sort(t)
                ax.plot(s, np.arange(1, len(s) + 1) / len(s), label=target)
        ax.set_xscale("log")
        ax.set_xlabel("ms, one client, end to end")
        ax.set_ylabel("share of requests")
        ax.set_title(f"POST /search by {kind}")
        ax.axhline(0.99, color="grey", lw=0.5, ls="--")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main([int(p) for p in sys.argv[2].split(",")], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        sys.exit(0)
    sys.exit(main())

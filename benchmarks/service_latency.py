"""Service latency benchmark: N synthetic 256-d products in Redis + FAISS, the service under uvicorn, wrk on loopback.

Reports, per scenario (GET embedding, search by vector top-10; with a bundle of the data's dim also query embed, text
search and GET duplicates) at 1 and 32 clients: end-to-end p50/p99 (wrk)
and server-side p99 (the service's own m5_http_request_duration_seconds histogram), req/s with
--workers workers, the same GET against a bare Starlette + Redis endpoint (benchmarks/service_bare.py),
recall@10 of the index at its default effort, the query tower's cost on a cache miss (in process, one
ORT thread), and RSS per worker. Writes a PNG and a JSON of the numbers.

    .venv/bin/python benchmarks/service_latency.py --n 200000 --duration 5 --workers 2

Needs Redis (M5_REDIS_URL=$(deploy/local/services.sh url redis) after `deploy/local/services.sh start redis`) and wrk.
Everything it writes to Redis lives under a throwaway namespace that it deletes at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LOCALES = ["en_US", "de_DE", "ar_AE"]
LINES = ["consumables", "hardlines", "media", "softlines"]
log = logging.getLogger("service_latency")


# ---------------------------------------------------------------------------------------------- the app under test
def bench_app():
    """uvicorn --factory entry: the real app, with a HashEncoder query tower of the synthetic data's dim.

    With M5_BENCH_BUNDLE (a bundle whose dim is the synthetic data's), the bundle's int8 query tower
    serves /query/embed and /search by text; the synthetic vectors then carry that bundle's version.
    """
    from m5core.encoder import HashEncoder, OnnxEncoder
    from service.app import create_app
    from service.settings import ServiceSettings

    if os.environ.get("M5_BENCH_BUNDLE"):  # a bundle of the synthetic data's dim: the real query tower
        return create_app(ServiceSettings(), encoder=OnnxEncoder(os.environ["M5_BENCH_BUNDLE"], "query", threads=1))
    return create_app(ServiceSettings(), encoder=HashEncoder(int(os.environ["M5_BENCH_DIM"]), version="bench-v1"))


# ---------------------------------------------------------------------------------------------- data
def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit vectors around `clusters` centres: neighbours exist, as in a real catalog."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        x = centers[rng.integers(0, clusters, e - s)] + 0.35 * rng.standard_normal((e - s, dim)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def load_redis(url: str, ns: str, asins: list[str], x: np.ndarray, version: str) -> None:
    from m5core.stores.base import VectorRecord
    from m5core.stores.redis import RedisStore

    store = RedisStore(url, ns)
    t0, n = time.time(), len(asins)
    for s in range(0, n, 2000):
        recs = [
            VectorRecord(a, x[i], 1, version, "h", LOCALES[i % 3], LINES[i % 4], 1.0) for i, a in zip(range(s, min(n, s + 2000)), asins[s : s + 2000])
        ]
        store.put(recs)
        if (s // 2000) % 20 == 0:
            done = s + len(recs)
            rate = done / max(1e-9, time.time() - t0)
            log.info("redis: %d/%d vectors, %.0f/s, ETA %.0f s", done, n, rate, (n - done) / rate)
    store.close()


def drop_namespace(url: str, ns: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    batch = []
    for k in r.scan_iter(match=f"{ns}:*", count=5000):
        batch.append(k)
        if len(batch) >= 5000:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)


# ---------------------------------------------------------------------------------------------- measuring
def recall_and_search_latency(idx, x: np.ndarray, asins: list[str], queries: np.ndarray, effort: int | None = None) -> dict:
    """recall@10 against brute force, by id and tie-aware (ann-benchmarks' rule: a hit whose exact score is
    within 1e-4 of the 10th true score counts; catalogs hold many near-identical listings), and latency."""
    scores = queries @ x.T  # (q, n) exact cosine
    truth = np.argsort(-scores, axis=1)[:, :10]
    row = {a: i for i, a in enumerate(asins)}
    lat, hits, tie_hits = [], 0, 0
    for qi, (q, t) in enumerate(zip(queries, truth)):
        t0 = time.perf_counter()
        got = idx.search(q[None], 10, effort=effort)[0]
        lat.append(time.perf_counter() - t0)
        hits += len({asins[j] for j in t} & {a for a, _ in got})
        kth = scores[qi, t[-1]]
        tie_hits += sum(scores[qi, row[a]] >= kth - 1e-4 for a, _ in got)
    lat_ms = np.array(lat) * 1000
    return {
        "recall_at_10": hits / (10 * len(queries)),
        "recall_at_10_ties": tie_hits / (10 * len(queries)),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "kind": idx.kind,
        "effort": effort,
    }


def query_tower_latency(bundle: Path, n: int = 400) -> dict:
    from m5core.encoder import OnnxEncoder

    enc = OnnxEncoder(bundle, "query", threads=1)
    words = ["red", "running", "shoes", "steel", "bottle", "coffee", "beans", "laufschuhe", "rot", "usb", "cable", "kids"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 3)) + f" {i}" for i in range(n)]  # unique: every call is a cache miss
    enc.embed(texts[:5])
    lat = []
    for t in texts:
        t0 = time.perf_counter()
        enc.embed([t])
        lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1000
    return {"bundle": enc.version, "dim": enc.dim, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, script: Path, clients: int, duration: int) -> dict:
    threads = 1 if clients == 1 else 2
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{clients}", f"-d{duration}s", "--latency", "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    pct = {}
    for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        pct[p] = float(v) * _UNIT[u]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": pct["50"], "p90_ms": pct["90"], "p99_ms": pct["99"], "rps": rps, "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def lua_get(asins: list[str], path: Path, tail: str = "/embedding") -> Path:
    """GETs of /asin/{a random one of asins}{tail}."""
    sample = ",".join(f'"{a}"' for a in asins)
    path.write_text(
        f"local a = {{{sample}}}\nmath.randomseed(os.time())\n"
        f"request = function() return wrk.format('GET', '/asin/' .. a[math.random(#a)] .. '{tail}') end\n"
    )
    return path


def lua_search(queries: np.ndarray, path: Path) -> Path:
    bodies = ",\n".join("[[" + json.dumps({"vector": [round(float(v), 6) for v in q], "k": 10}) + "]]" for q in queries)
    path.write_text(
        f"local b = {{{bodies}}}\nmath.randomseed(os.time())\n"
        "wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
        "request = function() return wrk.format(nil, nil, nil, b[math.random(#b)]) end\n"
    )
    return path


def lua_text(path: Path, body: str) -> Path:
    """POST bodies with a fresh query each time (words + a random number): every call is a cache miss."""
    words = ["red", "running", "shoes", "steel", "bottle", "coffee", "beans", "laufschuhe", "rot", "usb", "kids", "jacket"]
    path.write_text(
        "local w = {" + ",".join(f'"{x}"' for x in words) + "}\nmath.randomseed(os.time())\n"
        "wrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
        "request = function()\n"
        "  local q = w[math.random(#w)] .. ' ' .. w[math.random(#w)] .. ' ' .. w[math.random(#w)] .. ' ' .. math.random(1, 1000000000)\n"
        f"  return wrk.format(nil, nil, nil, string.format('{body}', q))\nend\n"
    )
    return path


_BUCKET = re.compile(r"^m5_http_request_duration_seconds_bucket\{(.*)\} ([\d.e+-]+)$", re.M)


def route_buckets(base: str, route: str) -> dict[float, float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    out: dict[float, float] = {}
    for labels, value in _BUCKET.findall(text):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if d.get("route") == route:
            le = float("inf") if d["le"] == "+Inf" else float(d["le"])
            out[le] = out.get(le, 0.0) + float(value)
    return out


def server_p99_ms(before: dict, after: dict) -> float | None:
    """p99 from cumulative histogram deltas, linear within the bucket that crosses 99%."""
    les = sorted(after)
    cum = [after[le] - before.get(le, 0.0) for le in les]
    total = cum[-1] if cum else 0
    if total <= 0:
        return None
    target, prev_le, prev_c = 0.99 * total, 0.0, 0.0
    for le, c in zip(les, cum):
        if c >= target:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (target - prev_c) / max(1e-9, c - prev_c)) * 1000
        prev_le, prev_c = le, c
    return None


def start_server(args_list: list[str], env: dict, port: int, ready_path: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            *args_list,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    return wait_ready(proc, f"http://127.0.0.1:{port}{ready_path}", 600)


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float) -> subprocess.Popen:
    """Until `url` answers 200; the server is killed if it does not within `timeout_s`, and an exit fails at once."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return proc
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_rss_mib(proc: subprocess.Popen) -> list[float]:
    import psutil

    p = psutil.Process(proc.pid)
    kids = p.children(recursive=True) or [p]
    return [round(k.memory_info().rss / 2**20, 1) for k in kids if "multiprocessing.resource_tracker" not in " ".join(k.cmdline())]


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="synthetic products (1M needs ~1 GiB Redis and minutes to load)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--redis-url", default=os.environ.get("M5_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="bundle for the query-tower timing (default: newest test bundle); served over HTTP when its dim is --dim",
    )
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "service_latency.png")
    ap.add_argument(
        "--namespace",
        help="measure real vectors already in Redis under this namespace (e.g. from `m5 index "
        "backfill --snapshot`) instead of synthetic ones; needs --snapshot-dir and --bundle",
    )
    ap.add_argument("--snapshot-dir", type=Path, help="the namespace's index snapshots (with --namespace)")
    ap.add_argument("--catalog", type=Path, help="catalog whose queries.jsonl gives the search queries (with --namespace)")
    ap.add_argument("--efforts", default="", help="comma list of extra efforts (nprobe/efSearch) for the in-process sweep")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import faiss

    from m5core.index import AnnIndex
    from m5core.schema import id_to_asin

    work = Path(tempfile.mkdtemp(prefix="m5-bench-"))
    ns = f"bench{os.getpid()}"
    results: dict = {"n": args.n, "dim": args.dim, "workers": args.workers, "machine": "2-core x86-64, 24 GiB"}
    procs: list[subprocess.Popen] = []
    try:
        bundle = args.bundle or max(
            (REPO / ".cache" / "m5" / "test-bundle").glob("bundles-*/current/manifest.json"), key=lambda p: p.stat().st_mtime, default=None
        )
        bundle = bundle if bundle is None or bundle.is_dir() else bundle.parent
        serve_bundle = None
        if bundle is not None:
            from m5core.bundle import load_manifest

            m = load_manifest(bundle)
            serve_bundle = bundle if m.dim == args.dim else None
        version = load_manifest(serve_bundle).version if serve_bundle else "bench-v1"
        results["served_query_tower"] = version
        faiss.omp_set_num_threads(1)  # as the service does (ServiceSettings.search_threads): one query, one thread
        if args.namespace:  # real vectors: the namespace and snapshot a backfill wrote, queries from the catalog
            from m5core.encoder import OnnxEncoder
            from m5core.snapshots import latest_snapshot
            from m5core.stores.redis import RedisStore

            ns, snaps = args.namespace, args.snapshot_dir
            store = RedisStore(args.redis_url, ns)
            recs = list(store.scan(5000))
            store.close()
            asins, x = [r.asin for r in recs], np.stack([r.vector for r in recs]).astype(np.float32)  # (n, dim)
            del recs
            if bundle is None or load_manifest(bundle).dim != x.shape[1]:
                raise SystemExit(f"--bundle must be the bundle of namespace {ns}'s {x.shape[1]}-d vectors")
            serve_bundle = bundle
            args.n, args.dim, version = len(asins), x.shape[1], load_manifest(serve_bundle).version
            results["served_query_tower"] = version
            texts = [json.loads(line)["text"] for line in (args.catalog / "queries.jsonl").open()][:200]
            q = OnnxEncoder(serve_bundle, "query", threads=1).embed(texts)  # (200, dim)
            idx, _ = AnnIndex.load(latest_snapshot(snaps))
            results.update({"n": args.n, "dim": args.dim, "data": f"namespace {ns} ({args.n:,} real product vectors)"})
        else:
            x = clustered(args.n, args.dim, clusters=max(64, args.n // 200), seed=0)
            asins = [id_to_asin(36**9 + i) for i in range(args.n)]
            load_redis(args.redis_url, ns, asins, x, version)
            t0 = time.time()
            idx = AnnIndex.build(
                args.dim,
                asins,
                x,
                [LOCALES[i % 3] for i in range(args.n)],
                [LINES[i % 4] for i in range(args.n)],
                [1] * args.n,
                kind="auto",
                version=version,
            )
            results["index_build_s"] = round(time.time() - t0, 1)
            rng = np.random.default_rng(1)
            q = x[rng.integers(0, args.n, 200)] + 0.2 * rng.standard_normal((200, args.dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            snaps = work / "snaps"
            idx.save(snaps / "snap-0000000000001", {"offsets": {}})
            results["data"] = f"{args.n:,} synthetic clustered vectors"
        results["index_in_process"] = recall_and_search_latency(idx, x, asins, q)
        log.info("index: %s", results["index_in_process"])
        for e in [int(v) for v in args.efforts.split(",") if v]:
            results[f"index_in_process_effort_{e}"] = recall_and_search_latency(idx, x, asins, q, effort=e)
            log.info("index effort %d: %s", e, results[f"index_in_process_effort_{e}"])
        del idx

        if bundle is not None:
            results["query_tower"] = query_tower_latency(bundle)
            log.info("query tower: %s", results["query_tower"])

        env = {
            **os.environ,
            "M5_STORE": "redis",
            "M5_REDIS_URL": args.redis_url,
            "M5_NAMESPACE": ns,
            "M5_EVENTS": "local",
            "M5_LOCAL_EVENTS_DIR": str(work / "ev"),
            "M5_SNAPSHOT_DIR": str(snaps),
            "M5_BENCH_DIM": str(args.dim),
            "M5_MAX_IN_FLIGHT": "10000",
            "PYTHONPATH": str(REPO),
            "M5_BENCH_BUNDLE": str(serve_bundle or ""),
        }
        if args.workers > 1:
            (work / "prom").mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(work / "prom")
        base = f"http://127.0.0.1:{args.port}"
        proc = start_server(["benchmarks.service_latency:bench_app", "--factory", "--workers", str(args.workers)], env, args.port, "/readyz")
        procs.append(proc)
        # /readyz answered from one worker; the others may still be loading their snapshot: wait, then warm up
        time.sleep((2 + args.n / 200_000) if args.workers > 1 else 0)
        results["rss_mib_per_worker"] = worker_rss_mib(proc)
        get_lua = lua_get(asins[:: max(1, args.n // 2000)], work / "get.lua")
        search_lua = lua_search(q[:50], work / "search.lua")
        scenarios = [
            ("get_embedding", get_lua, "/asin/{asin}/embedding", "/asin/B000000000/embedding"),
            ("search_vector_top10", search_lua, "/search", "/search"),
        ]
        if serve_bundle is not None:
            scenarios += [
                ("query_embed_miss", lua_text(work / "embed.lua", '{"queries": ["%s"]}'), "/query/embed", "/query/embed"),
                ("search_text_top10", lua_text(work / "text.lua", '{"query": "%s", "k": 10}'), "/search", "/search"),
                # the bundle's calibrated threshold, 10 neighbours within the product's locale
                ("duplicates", lua_get(asins[:: max(1, args.n // 2000)], work / "dups.lua", "/duplicates"), "/asin/{asin}/duplicates", "/"),
            ]
        wrk(base + scenarios[0][3], scenarios[0][1], 32, 3)  # warm-up, discarded
        for name, script, route, path in scenarios:
            for clients in (1, 32):
                before = route_buckets(base, route)
                r = wrk(base + path, script, clients, args.duration)
                r["server_p99_ms"] = server_p99_ms(before, route_buckets(base, route))
                results[f"{name}_c{clients}"] = r
                log.info("%s c=%d: %s", name, clients, r)
        stop_server(procs.pop())

        bare = start_server(["benchmarks.service_bare:app", "--workers", str(args.workers)], env, args.port + 1, f"/asin/{asins[0]}/embedding")
        procs.append(bare)
        for clients in (1, 32):
            r = wrk(f"http://127.0.0.1:{args.port + 1}/", get_lua, clients, args.duration)
            results[f"bare_get_embedding_c{clients}"] = r
            log.info("bare get c=%d: %s", clients, r)
        stop_server(procs.pop())
    finally:
        for p in procs:
            stop_server(p)
        try:
            if not args.namespace:  # never delete data this run did not write
                drop_namespace(args.redis_url, ns)
        except Exception as exc:  # noqa: BLE001 - never mask the real error
            log.warning("could not drop namespace %s: %s", ns, exc)
        shutil.rmtree(work, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot(results, args.out)
    print(json.dumps(results, indent=1))
    return 0


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        k
        for k in (
            "get_embedding_c1",
            "bare_get_embedding_c1",
            "search_vector_top10_c1",
            "query_embed_miss_c1",
            "search_text_top10_c1",
            "get_embedding_c32",
            "bare_get_embedding_c32",
            "search_vector_top10_c32",
            "query_embed_miss_c32",
            "search_text_top10_c32",
        )
        if k in results
    ]
    p50 = [results[k]["p50_ms"] for k in names]
    p99 = [results[k]["p99_ms"] for k in names]
    srv = [results[k].get("server_p99_ms") or 0 for k in names]
    pos = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(pos - 0.27, p50, 0.27, label="e2e p50")
    ax.bar(pos, p99, 0.27, label="e2e p99")
    ax.bar(pos + 0.27, srv, 0.27, label="server p99 (histogram)")
    ax.set_xticks(pos, [n.replace("_", "\n", 1) for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"M5 service, {results['n']:,} x {results['dim']}-d, {results['workers']} workers, wrk on loopback (2-core box)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

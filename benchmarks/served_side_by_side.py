"""A fair side by side on the vectors M5 serves: each index tuned to the same recall, one query at a time.

    .venv/bin/python benchmarks/served_side_by_side.py --vectors PRODUCT_VECTORS.npz --bundle BUNDLE \\
        --queries CATALOG/queries.jsonl [--n 200000] [--nq 300] [--peers chroma,usearch]

The product vectors are the bundle's own (an .npz with `vectors`, as a backfill would write them), the queries the
catalog's through the bundle's query tower, and exact top 10 by inner product the truth. Every system sweeps its
search knob once; for each recall target (0.95, 0.98, 0.99) the smallest setting reaching it is timed over the
queries, one thread, one query a call. M5 rows: its AnnIndex as the service builds it (IVF-SQ8, graph quantiser),
the same with the top 4k candidates re-scored by exact float inner product (the vectors the store holds: the path
to 0.99, whose cost in the service is one more store read of 4k vectors), and its `hnsw` kind. Peers: Chroma's HNSW
(local mode) and usearch (f32 HNSW). Writes a JSON of every sweep beside --out and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.side_by_side import exact_topk, log, recall_at_k, timed  # noqa: E402
from m5core.index import AnnIndex  # noqa: E402
from m5core.schema import id_to_asin  # noqa: E402

K = 10
TARGETS = (0.95, 0.98, 0.99)


def sweep(name: str, search, efforts: list[int], queries: np.ndarray, truth: np.ndarray, build_s: float) -> dict:
    """search(queries (n, dim), effort) -> (n, K) row ids. Recall per effort, then each target's smallest effort timed."""
    curve = []
    for e in efforts:
        r = recall_at_k(search(queries, e), truth)
        curve.append((e, round(r, 4)))
        log(f"{name}: effort {e} recall@10 {r:.4f}")
        if r >= TARGETS[-1]:
            break
    rows = {}
    for target in TARGETS:
        e = next((e for e, r in curve if r >= target), None)
        if e is None:
            rows[str(target)] = None
            continue
        lat = timed(lambda q: search(q[None], e), queries)  # noqa: B023 - timed runs before e moves on
        rows[str(target)] = {"effort": e, "recall": dict(curve)[e], **lat}
        log(f"{name}: recall >= {target} at effort {e}: p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms")
    return {"system": name, "build_s": round(build_s, 1), "curve": curve, "at": rows}


def m5_ivf(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    n, dim = x.shape
    asins = [id_to_asin(10_000_000 + i) for i in range(n)]
    row = {a: i for i, a in enumerate(asins)}
    t = time.perf_counter()
    idx = AnnIndex.build(dim, asins, x, ["en_US"] * n, ["media"] * n, [1] * n, kind="ivf_sq8")
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)

    def ids(hits: list[list[tuple[str, float]]], k: int) -> np.ndarray:
        return np.array([[row[a] for a, _ in h] + [-1] * (k - len(h)) for h in hits])

    def plain(qs, e):
        return ids(idx.search(qs, K, effort=e), K)

    def rescored(qs, e, depth=4 * K):
        cand = ids(idx.search(qs, depth, effort=e), depth)
        out = []
        for q, c in zip(qs, cand):
            c = c[c >= 0]
            out.append(c[np.argsort(-(x[c] @ q))][:K])
        return np.array([np.pad(o, (0, K - len(o)), constant_values=-1) for o in out])

    efforts = [8, 12, 16, 24, 32, 48, 64, 96, 128, 256]
    return [
        sweep(f"M5 AnnIndex (IVF-SQ8, {idx._index.nlist} lists, graph quantiser)", plain, efforts, queries, truth, build_s),
        sweep("M5 AnnIndex + exact re-score of the top 40", rescored, efforts, queries, truth, build_s),
    ]


def m5_hnsw(x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    n, dim = x.shape
    asins = [id_to_asin(10_000_000 + i) for i in range(n)]
    row = {a: i for i, a in enumerate(asins)}
    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    idx = AnnIndex.build(dim, asins, x, ["en_US"] * n, ["media"] * n, [1] * n, kind="hnsw")
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)

    def search(qs, e):
        return np.array([[row[a] for a, _ in h] + [-1] * (K - len(h)) for h in idx.search(qs, K, effort=e)])

    return sweep("M5 AnnIndex (hnsw kind: FAISS HNSW32, f32)", search, [16, 32, 64, 128, 256, 512], queries, truth, build_s)


def peer(make, x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    p = make(x.shape[1])
    t = time.perf_counter()
    if hasattr(p, "close"):  # a database: ids with the vectors
        p.build(np.arange(len(x), dtype=np.int64), x)
    else:
        p.build(x)
    build_s = time.perf_counter() - t
    try:
        efforts = getattr(p, "efforts", [16, 32, 64, 128, 256, 512, 1024])
        return sweep(p.name, lambda qs, e: p.search(qs, K, e), efforts, queries, truth, build_s)
    finally:
        if hasattr(p, "close"):
            p.close()


def plot(results: list[dict], out: Path) -> None:
    """Recall against p50 and p99 at each system's timed settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in results:
        pts = sorted({(a["effort"], a["recall"], a["p50_ms"], a["p99_ms"]) for a in r["at"].values() if a})
        for ax, col in zip(axes, (2, 3)):
            ax.plot([p[col] for p in pts], [p[1] for p in pts], marker="o", label=r["system"])
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    for ax, name in zip(axes, ("p50", "p99")):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator([0.2, 0.5, 1, 2, 5, 10]))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{name} ms, one query a call, one thread")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@10 (exact top 10 of the served vectors)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Served product vectors, queries through the query tower")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=Path, required=True, help=".npz with `vectors` (n, dim): the bundle's product vectors")
    ap.add_argument("--bundle", type=Path, required=True, help="the bundle whose query tower embeds the queries")
    ap.add_argument("--queries", type=Path, required=True, help="queries.jsonl of the catalog the vectors come from")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--nq", type=int, default=300)
    ap.add_argument("--peers", default="chroma,usearch")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "served_side_by_side.json")
    args = ap.parse_args()
    from m5core.encoder import OnnxEncoder
    from m5core.jsonl import read_jsonl

    x = np.ascontiguousarray(np.load(args.vectors)["vectors"][: args.n], dtype=np.float32)
    texts = [q["text"] for _, q in zip(range(args.nq), read_jsonl(args.queries))]
    queries = np.ascontiguousarray(OnnxEncoder(args.bundle, "query", threads=2).embed(texts), dtype=np.float32)
    truth = exact_topk(x, queries, K)
    log(f"{len(x)} x {x.shape[1]} product vectors, {len(queries)} queries")
    results = [*m5_ivf(x, queries, truth), m5_hnsw(x, queries, truth)]
    for name in filter(None, args.peers.split(",")):
        if name == "chroma":
            from benchmarks.peers.chroma_peer import ChromaPeer as make
        elif name == "usearch":
            from benchmarks.peers.usearch_peer import USearchPeer as make
        else:
            raise SystemExit(f"--peers: unknown {name!r} (chroma, usearch)")
        results.append(peer(make, x, queries, truth))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"n": len(x), "dim": x.shape[1], "queries": len(queries), "results": results}, indent=1))
    args.out.write_text(json.dumps({"n": len(x), "dim": x.shape[1], "queries": len(queries), "results": results}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    print("| system | build s | " + " | ".join(f"recall >= {t}: effort, p50 / p99 ms" for t in TARGETS) + " |")
    print("|---|---|" + "---|" * len(TARGETS))
    for r in results:
        cells = [f"{a['effort']} ({a['recall']:.3f}), {a['p50_ms']:.2f} / {a['p99_ms']:.2f}" if a else "not reached" for a in r["at"].values()]
        print(f"| {r['system']} | {r['build_s']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

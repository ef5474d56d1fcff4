"""Search latency while the index rebuilds itself: flat -> IVF past the threshold, or IVF lists retrained as the
catalog grows (`AnnIndex._maybe_migrate`).

    python benchmarks/index_rebuild.py --scenario retrain --start 50000 --dim 384 --out docs/img/index_rebuild.png
    python benchmarks/index_rebuild.py --scenario flat-to-ivf --dim 384

One thread searches (one query at a time, `--think-ms` apart, top 10, the default effort) while the main thread upserts
batches of 1,000 new vectors at `--rate`, as the feed follower does, until the rebuild has swapped in and a little after. Prints
one JSON line: search p50 / p99 / max before, during and after the rebuild, the longest upsert, the rebuild's wall
time; and plots each search's latency over time. Vectors are clustered random unit vectors: what is measured is who
waits for whom, not recall.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    x = centers[rng.integers(0, 1000, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["retrain", "flat-to-ivf"], default="retrain")
    ap.add_argument("--start", type=int, default=50_000, help="retrain: vectors the IVF lists are first trained on")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--after-s", type=float, default=3.0, help="keep measuring this long after the swap")
    ap.add_argument("--think-ms", type=float, default=0.2, help="pause between two searches (without one, the search thread starves writers)")
    ap.add_argument("--rate", type=float, default=2000, help="upserts a second (the feed follower's pace; batches of 1,000)")
    ap.add_argument("--out", type=Path, help="PNG of search latency over time")
    args = ap.parse_args()

    import faiss

    from m5core.index import GROW_FACTOR, IVF_THRESHOLD, AnnIndex
    from m5core.schema import id_to_asin

    start = args.start if args.scenario == "retrain" else 1_000
    total = int(GROW_FACTOR * start) + 20_000 if args.scenario == "retrain" else 2 * IVF_THRESHOLD + 20_000
    x = clustered(total, args.dim, 0)
    asins = [id_to_asin(10_000 + i) for i in range(total)]
    meta = (["en_US"], ["media"], [1])
    if args.scenario == "retrain":
        idx = AnnIndex.build(args.dim, asins[:start], x[:start], meta[0] * start, meta[1] * start, meta[2] * start, kind="ivf_sq8")
    else:
        idx = AnnIndex(args.dim, "auto")
        idx.upsert(asins[:start], x[:start], meta[0] * start, meta[1] * start, meta[2] * start)
    marks: dict[str, float] = {}
    rebuild = idx._rebuild_ivf

    def timed_rebuild() -> None:  # when the background rebuild starts and swaps in
        marks["began"], marks["at"] = time.perf_counter(), len(idx)
        rebuild()
        marks["swapped"] = time.perf_counter()

    idx._rebuild_ivf = timed_rebuild
    queries = clustered(2_000, args.dim, 1)
    lat: list[tuple[float, float]] = []  # (t, seconds)
    stop = threading.Event()

    def searcher() -> None:
        faiss.omp_set_num_threads(1)  # per thread in OpenMP: as the service's event-loop thread searches
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            idx.search(queries[i % len(queries) : i % len(queries) + 1], 10)
            lat.append((t0, time.perf_counter() - t0))
            i += 1
            time.sleep(args.think_ms / 1e3)  # a request's own work between two searches (parse, respond)

    t = threading.Thread(target=searcher)
    t0 = time.perf_counter()
    t.start()
    upserts: list[float] = []
    at = start
    while "swapped" not in marks or time.perf_counter() - marks["swapped"] < args.after_s:
        if at < total:
            u0 = time.perf_counter()
            idx.upsert(asins[at : at + 1000], x[at : at + 1000], meta[0] * 1000, meta[1] * 1000, meta[2] * 1000)
            upserts.append(time.perf_counter() - u0)
            at += 1000
            time.sleep(max(0.0, 1000 / args.rate - upserts[-1]))
        elif "began" not in marks:
            raise SystemExit("no rebuild happened: raise --start or the vectors upserted")
        else:
            time.sleep(0.05)
    stop.set()
    t.join()

    began, swapped = marks["began"], marks["swapped"]
    print(f"rebuild from {marks['at']:,} vectors: {swapped - began:.2f} s, {idx.kind} with {idx._index.nlist} lists", flush=True)

    def stats(sel: list[float]) -> dict:
        ms = np.array(sel) * 1e3
        return {
            "n": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "max_ms": round(float(ms.max()), 2),
        }

    out = {
        "scenario": args.scenario,
        "dim": args.dim,
        "rebuild_started_at_vectors": marks["at"],
        "rebuild_s": round(swapped - began, 2),
        "before": stats([s for t_, s in lat if t_ < began]),
        "during": stats([s for t_, s in lat if began <= t_ < swapped]),
        "after": stats([s for t_, s in lat if t_ >= swapped]),
        "longest_upsert_ms": round(max(upserts) * 1e3, 2),
        "kind": idx.kind,
        "lists": idx._index.nlist,
        "vectors": len(idx),
    }
    print(json.dumps(out))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ts = np.array([t_ - t0 for t_, _ in lat])
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.plot(ts, [s * 1e3 for _, s in lat], ",", alpha=0.5)
        ax.axvspan(began - t0, swapped - t0, color="orange", alpha=0.2, label="rebuild in the background")
        ax.set(yscale="log", xlabel="seconds", ylabel="search latency (ms)", title=f"{args.scenario}, {args.dim}-d: every search while upserts go on")
        ax.legend(loc="upper left")
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

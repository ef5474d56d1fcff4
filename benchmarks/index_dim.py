"""Search time against vector length: what a longer vector (the lexical block) costs the index.

In process, no HTTP: `AnnIndex.build` (kind auto: IVF-SQ8 from 50k) over N clustered random unit vectors,
then 500 single-vector searches, k=10, one thread.

    python benchmarks/index_dim.py --products 200000 --dims 384,640
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=200_000)
    ap.add_argument("--dims", default="384,640")
    ap.add_argument("--searches", type=int, default=500)
    args = ap.parse_args()

    import faiss

    from m5core.index import AnnIndex

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    n = args.products
    for dim in (int(d) for d in args.dims.split(",")):
        centres = rng.standard_normal((2000, dim)).astype(np.float32)
        v = centres[rng.integers(0, 2000, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)  # (n, dim)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        t0 = time.perf_counter()
        idx = AnnIndex.build(dim, [f"B{i:09d}" for i in range(n)], v, ["en_US"] * n, ["hardlines"] * n, [1] * n, version="bench")
        built = time.perf_counter() - t0
        lat = []
        for row in v[rng.integers(0, n, args.searches)]:
            t = time.perf_counter()
            idx.search(row[None], 10)
            lat.append(time.perf_counter() - t)
        ms = np.array(lat) * 1000
        print(
            f"dim {dim}, {n:,} vectors, {idx.kind}: build {built:.1f} s; search p50 {np.percentile(ms, 50):.3f} ms, "
            f"p99 {np.percentile(ms, 99):.3f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Same IVF lists, two coarse quantisers: flat inner product (what snapshots held before) vs an HNSW graph over the
same centroids (`m5core.index._graph_quantizer`). Served vectors of a backfill snapshot, the catalog's queries through
the bundle's query tower, exact top 10 as truth, one thread:

    .venv/bin/python benchmarks/coarse_quantizer.py SNAPSHOT_DIR BUNDLE CATALOG_DIR
"""

import glob
import json
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from m5core.encoder import OnnxEncoder  # noqa: E402
from m5core.index import AnnIndex, _graph_quantizer  # noqa: E402

snap = sorted(glob.glob(sys.argv[1] + "/snap-*"))[-1]
bundle, cat = sys.argv[2], sys.argv[3]
idx, _ = AnnIndex.load(snap)
ivf = idx._index
if not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):  # the load gave it a graph: flat for the baseline
    flat_q = faiss.IndexFlatIP(ivf.d)
    flat_q.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    ivf.quantizer = flat_q
    ivf.own_fields = False  # flat_q is Python's; the graph read from the file is left to leak (a benchmark)
n = len(idx._asins)
faiss.omp_set_num_threads(2)
x = np.vstack([ivf.reconstruct_batch(np.arange(lo, min(n, lo + 100_000), dtype=np.int64)) for lo in range(0, n, 100_000)])
texts = [json.loads(line)["text"] for line in open(f"{cat}/queries.jsonl")][:1000]
q = OnnxEncoder(bundle, "query", threads=2).embed(texts)
flat = faiss.IndexFlatIP(x.shape[1])
flat.add(x)
_, truth = flat.search(q, 10)
del flat, x
sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
print("nlist", ivf.nlist, "list sizes p50/p99/max", np.percentile(sizes, 50), np.percentile(sizes, 99), sizes.max(), flush=True)
_, lists = ivf.quantizer.search(q, 32)
print("vectors scanned at probe 16: mean", sizes[lists[:, :16]].sum(1).mean(), "(uniform", 16 * n / ivf.nlist, ")", flush=True)


def bench(name, probes, efs=(None,)):
    faiss.omp_set_num_threads(1)
    for ef in efs:
        if ef:
            faiss.downcast_index(ivf.quantizer).hnsw.efSearch = ef
        tq = []
        for i in range(len(q)):
            t0 = time.perf_counter()
            ivf.quantizer.search(q[i : i + 1], 16)
            tq.append(time.perf_counter() - t0)
        tq = np.array(tq[50:]) * 1e3
        for p in probes:
            ivf.nprobe = p
            t = []
            found = 0
            for i in range(len(q)):
                t0 = time.perf_counter()
                _, got = ivf.search(q[i : i + 1], 10)
                t.append(time.perf_counter() - t0)
                found += len(set(got[0]) & set(truth[i]))
            t = np.array(t[50:]) * 1e3
            pct = lambda a, p: np.percentile(a, p)  # noqa: E731
            row = f"{name:5s} ef {ef} probe {p:3d} recall@10 {found / len(q) / 10:.3f} p50 {pct(t, 50):.3f} p99 {pct(t, 99):.3f} ms"
            print(f"{row}; quantiser alone p50 {pct(tq, 50):.3f} p99 {pct(tq, 99):.3f}", flush=True)
    faiss.omp_set_num_threads(2)


bench("flat", (16, 24, 32))
t0 = time.time()
_graph_quantizer(ivf)  # what AnnIndex builds and loads: the graph over the same centroids
print("graph quantiser built in", round(time.time() - t0, 2), "s", flush=True)
bench("hnsw", (16, 24, 32), (32, 64, 128))

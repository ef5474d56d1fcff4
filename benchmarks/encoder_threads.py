"""Bulk product encoding on 2 cores: one intra-op pool vs sub-batches side by side, alone and beside other work.

    python benchmarks/encoder_threads.py BUNDLES/current --products /tmp/cat1m/products.jsonl [--rounds 4]

`intra-op` is what OnnxEncoder did before session 4: length-sorted sub-batches of 16, one at a
time, each split over 2 ONNX Runtime threads. `side by side` is OnnxEncoder(threads=2): the same
sub-batches, two at once, one thread each. `--busy` runs a process that burns that fraction of one
core beside them (the indexer's own Python, Redis and the broker are ~10% of the machine), to show
why the intra-op pool loses more than the time taken: its threads meet at a barrier after every
operator. Rounds alternate so that this VM's speed swings hit both alike. One JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_BUSY = """
import sys, time
duty = float(sys.argv[1])
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < duty * 0.01:
        pass
    time.sleep(0.01 * (1 - duty))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--products", type=Path, required=True, help="products.jsonl; 4,096 texts spread over it are encoded")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--busy", type=float, default=0.2, help="fraction of one core the neighbour process burns (0: none)")
    args = ap.parse_args()

    import onnxruntime as ort

    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.schema import render_product

    m = load_manifest(args.bundle)
    lines = open(args.products, "rb").readlines()
    texts = [render_product(orjson.loads(x), m.render_scheme) for x in lines[:: max(1, len(lines) // 4096)][:4096]]
    side = OnnxEncoder(args.bundle, "product", threads=2, manifest=m)
    # The pre-session-4 encoder: the same sorted sub-batches, one at a time, on a 2-thread intra-op session.
    old = OnnxEncoder(args.bundle, "product", threads=1, manifest=m)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    old.session = ort.InferenceSession(str(args.bundle / m.towers["product"].onnx), opts, providers=["CPUExecutionProvider"])
    intra = old.embed

    def rate(embed) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts), args.batch):
            embed(texts[i : i + args.batch])
        return len(texts) / (time.perf_counter() - t0)

    intra(texts[: args.batch]), side.embed(texts[: args.batch])  # warm-up
    for busy in [0.0, args.busy] if args.busy > 0 else [0.0]:
        neighbour = subprocess.Popen([sys.executable, "-c", _BUSY, str(busy)]) if busy > 0 else None
        try:
            for r in range(args.rounds):
                a, b = rate(intra), rate(side.embed)
                print(
                    json.dumps(
                        {
                            "busy_core_share": busy,
                            "round": r,
                            "intra_op_per_s": round(a, 1),
                            "side_by_side_per_s": round(b, 1),
                            "ratio": round(b / a, 3),
                        }
                    ),
                    flush=True,
                )
        finally:
            if neighbour is not None:
                neighbour.kill()
    side.close()


if __name__ == "__main__":
    main()

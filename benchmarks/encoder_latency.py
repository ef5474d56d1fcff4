"""Batch-1, one-thread latency of a bundle's towers, fp32 vs int8 (tokenize + ONNX Runtime run).

    python benchmarks/encoder_latency.py .m5/bundles/current --iters 2000

Prints a markdown table (p50/p99 ms, ONNX size, token count) and the int8 speed-up per tower.
The query text is 16 tokens with [CLS]/[SEP] on the demo tokenizer; targets: query tower
p99 <= 0.5 ms int8, int8 >= 1.5x faster than fp32. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="bundle directory (fp32 files are compared when the bundle kept them)")
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per tower and precision")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()

    from trainer.report import latency_table

    table, figures = latency_table(args.bundle, args.iters)
    print(table)
    for tower in ("query", "query_full", "product"):
        if f"{tower}_speedup_p50" in figures:
            print(f"{tower}: int8 is {figures[f'{tower}_speedup_p50']:.2f}x faster than fp32 at p50")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

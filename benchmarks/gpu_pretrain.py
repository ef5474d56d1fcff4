"""DeepSpeed MLM pre-training throughput on a GPU, at sequence 128 and 512 (the brief's two phases).

    python benchmarks/gpu_pretrain.py --steps 60 --out results/

Generates its own catalog, trains a 32k tokenizer and runs the same `trainer.pretrain` code the CPU
path runs, with a BERT-base-sized model in bf16. Prints samples/s per phase (warm-up steps excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--products", type=int, default=20000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--micro-batch-128", type=int, default=256)
    ap.add_argument("--micro-batch-512", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("gpu-results"))
    args = ap.parse_args()

    import torch

    from catalog.generate import generate_catalog
    from catalog.io import load_catalog
    from m5core.schema import render_product
    from trainer.config import load_config
    from trainer.pretrain import pretrain
    from trainer.tokenizer import train_tokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    cat = args.out / "catalog"
    generate_catalog(cat, args.products, seed=0, show_progress=False)
    products = list(load_catalog(cat).products())
    tok = train_tokenizer([render_product(p, "fields") for p in products], 32000)
    results = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    for seq, mb in ((128, args.micro_batch_128), (512, args.micro_batch_512)):
        cfg = load_config(
            None,
            "scratch",
            {
                "run_dir": str(args.out / f"run{seq}"),
                "device": "cuda",
                "model": {
                    "vocab_size": tok.get_vocab_size(),
                    "layers": args.layers,
                    "hidden": args.hidden,
                    "heads": args.hidden // 64,
                    "intermediate": 4 * args.hidden,
                    "proj_dim": 256,
                },
                "pretrain": {
                    "steps": args.steps,
                    "micro_batch": mb,
                    "precision": "bf16",
                    "zero_stage": 1,
                    "warmup": 5,
                    "seq_schedule": [[seq, 1.0]],
                    "save_every": 10**9,
                    "lr": 1e-4,
                },
            },
        )
        t0 = time.perf_counter()
        _, metrics = pretrain(cfg, products, tok, resume=False)
        rows = [json.loads(x) for x in (args.out / f"run{seq}" / "metrics.jsonl").read_text().splitlines()]
        # steady state: samples over the last half of the steps
        half = rows[len(rows) // 2 :]
        steady = (len(half) * mb) / max(1e-9, _span(args.out / f"run{seq}", half, mb, rows))
        results[f"seq{seq}"] = {
            "micro_batch": mb,
            "steps": args.steps,
            "samples_per_s_overall": round(metrics["pretrain_samples_per_s"], 1),
            "samples_per_s_steady": round(steady, 1),
            "final_loss": metrics["final_loss"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        }
        print(json.dumps(results[f"seq{seq}"]), flush=True)
        torch.cuda.reset_peak_memory_stats()
    (args.out / "gpu_pretrain.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


def _span(run: Path, half, mb, rows) -> float:
    """Seconds spent on the second half, from the cumulative rate the loop logs per step."""
    n_all, n_first = len(rows) * mb, (len(rows) - len(half)) * mb
    t_all = n_all / rows[-1]["samples_per_s"]
    t_first = n_first / rows[len(rows) - len(half) - 1]["samples_per_s"] if n_first else 0.0
    return t_all - t_first


if __name__ == "__main__":
    sys.exit(main())

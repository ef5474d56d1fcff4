"""What int8 costs a bundle's retrieval, and which quantisation choices move it (the parity gate's numbers).

    python benchmarks/int8_variants.py BUNDLE --catalog CATALOG [--validation-size 256]

Re-quantises the bundle's fp32 towers (kept by `export.keep_fp32`) several ways and prints, for each,
the parity gate's recall@10 on the validation split and the product tower's mean cosine to fp32; then
fp32 plus random noise of int8's error norm, which says whether int8's loss is more than tie-breaking
noise, and the median gap between ranks 10 and 11 against int8's median error on a query-product dot.
Needs onnxruntime and the catalog; no torch.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {  # name -> (nodes kept fp32 by name suffix, quantize_dynamic options)
    "all MatMuls int8 (shipped)": ((), {}),
    "final projection kept fp32": (("/proj/MatMul",), {}),
    "attention qkv kept fp32": (("qkv/MatMul",), {}),
    "MLP output kept fp32": (("mlp.2/MatMul",), {}),
    "all int8, reduce_range": ((), {"reduce_range": True}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--catalog", type=Path, required=True, help="the catalog the bundle was trained on")
    ap.add_argument("--validation-size", type=int, default=256, help="validation queries, as export.validation_size")
    ap.add_argument("--noise-draws", type=int, default=5)
    args = ap.parse_args()

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from catalog.io import load_catalog
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder, embed_in_batches
    from trainer.export import recall_at_10
    from trainer.pipeline import validation_set

    man = load_manifest(args.bundle)
    towers = ("product", "query")
    if not all((args.bundle / f"{t}.fp32.onnx").is_file() for t in towers):
        raise SystemExit(f"{args.bundle} has no fp32 towers (it was exported with export.keep_fp32=false)")
    cat = load_catalog(args.catalog)
    val = validation_set(cat, {p["asin"]: p for p in cat.products()}, man.render_scheme, args.validation_size)

    with tempfile.TemporaryDirectory(prefix="m5-int8-") as tmp:
        work = Path(tmp)
        for f in args.bundle.iterdir():
            if f.is_file():
                shutil.copy(f, work / f.name)

        def encode(suffix: str) -> tuple[np.ndarray, np.ndarray]:  # (products, dim), (queries, dim)
            m = man.model_copy(update={"towers": {t: s.model_copy(update={"onnx": f"{t}.{suffix}.onnx"}) for t, s in man.towers.items()}})
            return (
                embed_in_batches(OnnxEncoder(work, "product", threads=2, manifest=m), val["product_texts"], 64),
                embed_in_batches(OnnxEncoder(work, "query", threads=2, manifest=m), val["query_texts"], 64),
            )

        def recall(q: np.ndarray, p: np.ndarray) -> float:
            return recall_at_10(q, p, val["asins"], val["relevant"])

        p32, q32 = encode("fp32")
        base = recall(q32, p32)
        print("| int8 variant | recall@10 | drop | product cosine |\n|---|---|---|---|")
        print(f"| fp32 | {base:.4f} | - | 1 |")
        shipped_err = None
        for name, (keep, opts) in VARIANTS.items():
            for t in towers:
                src = work / f"{t}.fp32.onnx"
                nodes = [n.name for n in onnx.load(str(src)).graph.node if any(n.name.endswith(k) for k in keep)]
                quantize_dynamic(
                    str(src), str(work / f"{t}.variant.onnx"), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=nodes, **opts
                )
            p8, q8 = encode("variant")
            r8 = recall(q8, p8)
            print(f"| {name} | {r8:.4f} | {100 * (base - r8) / base:.2f}% | {float((p8 * p32).sum(1).mean()):.5f} |")
            if shipped_err is None:
                shipped_err = p8 - p32

        rng = np.random.default_rng(0)
        norms = np.linalg.norm(shipped_err, axis=1, keepdims=True)
        noisy = []
        for _ in range(args.noise_draws):
            n = rng.standard_normal(p32.shape).astype(np.float32)
            pn = p32 + n * norms / np.linalg.norm(n, axis=1, keepdims=True)
            noisy.append(recall(q32, pn / np.linalg.norm(pn, axis=1, keepdims=True)))
        print(
            f"| fp32 + random noise of int8's error norm ({args.noise_draws} draws) | {min(noisy):.4f}-{max(noisy):.4f} | "
            f"{100 * (base - max(noisy)) / base:.2f} to {100 * (base - min(noisy)) / base:.2f}% | - |"
        )
        top = -np.sort(-(q32 @ p32.T), axis=1)
        print(
            f"\nmedian gap between ranks 10 and 11: {np.median(top[:, 9] - top[:, 10]):.4f}; "
            f"median int8 error on a query-product dot: {np.median(np.abs(q32 @ shipped_err.T)):.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

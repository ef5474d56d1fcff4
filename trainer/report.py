"""`m5 train report`: the brief's appendix tables from published bundles. Torch-free (ONNX Runtime only).

Tables: MLM accuracy per language per configuration; the parity gate (fp32 vs int8 cosine and
recall@10); fp32 vs int8 size and batch-1 one-thread latency per tower; with --catalog, search
Recall@100 / nDCG@10 and duplicate AUC on the test split next to baselines (BM25, MiniLM), and the
distilled query tower against the full fine-tuned one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from m5core.bundle import Manifest, load_manifest
from m5core.encoder import OnnxEncoder

# A 16-token query (with [CLS]/[SEP]) and a typical product text, for the latency rows.
QUERY_16 = "stainless steel water bottle 750 ml insulated leak proof for running and hiking blue"
PRODUCT = ("[TITLE] Insulated stainless steel water bottle 750 ml, leak proof [BRAND] Acme [TYPE] water bottle "
           "[ATTR] capacity [VAL] 750 ml [ATTR] colour [VAL] blue [BULLET] keeps drinks cold for 24 hours "
           "[BULLET] fits car cup holders [DESC] A double-walled bottle for hiking, running and the office.")


def tower_variant(bundle: Path, manifest: Manifest, tower: str, quant: str) -> Manifest | None:
    """The manifest pointing `tower` at its fp32 or int8 file, or None when that file was not kept."""
    spec = manifest.towers[tower]
    onnx = spec.onnx.replace(".int8.", f".{quant}.") if quant == "fp32" else spec.onnx
    if not (bundle / onnx).is_file():
        return None
    return manifest.model_copy(update={"towers": {tower: spec.model_copy(update={"onnx": onnx})}})


def latency(encoder: OnnxEncoder, text: str, iters: int = 300, warmup: int = 30) -> dict:
    """p50/p99 of one `embed([text])` call (tokenize + run) at batch 1, in milliseconds."""
    for _ in range(warmup):
        encoder.embed([text])
    t = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        encoder.embed([text])
        t[i] = time.perf_counter() - t0
    return {"p50_ms": float(np.percentile(t, 50) * 1e3), "p99_ms": float(np.percentile(t, 99) * 1e3),
            "tokens": len(encoder.tokenizer.encode(text).ids)}


def text_of_tokens(encoder: OnnxEncoder, text: str, n: int) -> str:
    """The longest word prefix of `text` that is at most n tokens (with [CLS]/[SEP]) for this tokenizer."""
    words, best = text.split(), text.split()[0]
    for k in range(1, len(words) + 1):
        cand = " ".join(words[:k])
        if len(encoder.tokenizer.encode(cand).ids) > n:
            break
        best = cand
    return best


def latency_table(bundle: Path, iters: int = 300, query_tokens: int = 16) -> tuple[str, dict]:
    bundle = Path(bundle).resolve()
    m = load_manifest(bundle)
    rows, out = [], {}
    # "query, full tower": a query through the fine-tuned tower itself, what int8 buys per query before
    # distillation; the student's graph is so small that tokenising and run overhead are a fixed share.
    for key, label, tower, text in (("query", "query", "query", QUERY_16), ("query_full", "query, full tower", "product", QUERY_16),
                                    ("product", "product", "product", PRODUCT)):
        for quant in ("fp32", "int8"):
            mv = tower_variant(bundle, m, tower, quant)
            if mv is None:
                continue
            enc = OnnxEncoder(bundle, tower, threads=1, manifest=mv)
            if key != "product":
                text = text_of_tokens(enc, QUERY_16 + " " + QUERY_16, query_tokens)
            r = latency(enc, text, iters)
            r["mib"] = (bundle / mv.towers[tower].onnx).stat().st_size / 2**20
            out[f"{key}_{quant}"] = r
            rows.append(f"| {label} | {quant} | {r['tokens']} | {r['mib']:.2f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |")
        if f"{key}_fp32" in out and f"{key}_int8" in out:
            out[f"{key}_speedup_p50"] = out[f"{key}_fp32"]["p50_ms"] / out[f"{key}_int8"]["p50_ms"]
    head = ["| tower | weights | tokens | size MiB | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    return "\n".join(head + rows), out


def mlm_table(manifests: list[Manifest]) -> str:
    langs = sorted({k for m in manifests for k in m.metrics.get("pretrain", {}).get("mlm_accuracy", {})} - {"all"})
    head = ["| configuration | " + " | ".join(langs + ["all"]) + " |", "|---" * (len(langs) + 2) + "|"]
    rows = []
    for m in manifests:
        acc = m.metrics.get("pretrain", {}).get("mlm_accuracy", {})
        c = m.training_config
        conf = (f"{m.version} ({c.get('model', {}).get('layers')}x{c.get('model', {}).get('hidden')}, "
                f"{c.get('pretrain', {}).get('scheme')}, {c.get('pretrain', {}).get('masking')}, alpha {c.get('pretrain', {}).get('alpha')})")
        rows.append(f"| {conf} | " + " | ".join(f"{acc[k]:.3f}" if k in acc else "-" for k in langs + ["all"]) + " |")
    return "\n".join(head + rows)


def parity_table(manifests: list[Manifest]) -> str:
    head = ["| bundle | product cos mean | product cos min | query cos mean | recall@10 fp32 | recall@10 int8 |", "|---|---|---|---|---|---|"]
    rows = []
    for m in manifests:
        p = m.metrics.get("parity", {})
        rows.append(f"| {m.version} | {p.get('product_cosine_mean', float('nan')):.4f} | {p.get('product_cosine_min', float('nan')):.4f} | "
                    f"{p.get('query_cosine_mean', float('nan')):.4f} | {p.get('recall_at_10_fp32', float('nan')):.3f} | "
                    f"{p.get('recall_at_10_int8', float('nan')):.3f} |")
    return "\n".join(head + rows)


def eval_rows(bundle: Path, catalog: Path, baselines: bool, split: str = "test", scope: str = "marketplace") -> list[str]:
    """Search and duplicate metrics (evaluation.harness) for the bundle's variants and the baselines."""
    from evaluation.harness import HEADER, evaluate, markdown_row

    bundle = Path(bundle).resolve()
    m = load_manifest(bundle)
    rows = [HEADER]
    product = OnnxEncoder(bundle, "product", threads=2, manifest=m)
    variants = [("int8, distilled query tower", OnnxEncoder(bundle, "query", threads=1, manifest=m)),
                ("int8, full query tower", OnnxEncoder(bundle, "product", threads=1, manifest=m))]
    for name, query in variants:
        r = evaluate(None, catalog, split, product_encoder=product, query_encoder=query, scheme=m.render_scheme, scope=scope)
        rows.append(markdown_row(f"{m.name} {name}", r))
    fp32 = tower_variant(bundle, m, "product", "fp32")
    q32 = tower_variant(bundle, m, "query", "fp32")
    if fp32 is not None and q32 is not None:
        r = evaluate(None, catalog, split, product_encoder=OnnxEncoder(bundle, "product", threads=2, manifest=fp32),
                     query_encoder=OnnxEncoder(bundle, "query", threads=1, manifest=q32), scheme=m.render_scheme, scope=scope)
        rows.append(markdown_row(f"{m.name} fp32, distilled query tower", r))
    if baselines:
        from evaluation.baselines import BM25Retriever

        rows.append(markdown_row("BM25", evaluate(None, catalog, split, scorer_factory=BM25Retriever, scheme="plain", scope=scope)))
        try:
            from evaluation.baselines import MiniLMEncoder

            rows.append(markdown_row("MiniLM-L6 (off the shelf)", evaluate(MiniLMEncoder(threads=2), catalog, split, scheme="plain", scope=scope)))
        except (ImportError, FileNotFoundError, OSError) as exc:  # the eval extra is optional
            rows.append(f"| MiniLM-L6: not available ({type(exc).__name__}) |" + " |" * 10)
    return rows


def build_report(bundles: list[Path], catalog: Path | None = None, baselines: bool = False, latency_iters: int = 300,
                 scope: str = "marketplace") -> str:
    manifests = [load_manifest(b) for b in bundles]
    out = ["# Trainer report", "", "## MLM accuracy per language", "", mlm_table(manifests), "",
           "## Parity gate (fp32 vs int8)", "", parity_table(manifests), ""]
    if latency_iters:
        for b in bundles:
            table, _ = latency_table(b, latency_iters)
            out += [f"## Size and latency, batch 1, 1 thread: {load_manifest(b).version}", "", table, ""]
    if catalog is not None:
        for b in bundles:
            out += [f"## Search and duplicates on the test split ({scope} scope): {load_manifest(b).version}", "",
                    *eval_rows(b, catalog, baselines, scope=scope), ""]
    return "\n".join(out)


__all__ = ["build_report", "latency", "latency_table", "mlm_table", "parity_table"]

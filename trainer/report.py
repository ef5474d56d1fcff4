"""`m5 train report`: the brief's appendix tables from published bundles. Torch-free (ONNX Runtime only).

Tables: MLM accuracy per language per configuration; the parity gate (fp32 vs int8 cosine and
recall@10); fp32 vs int8 size and batch-1 one-thread latency per tower; with --catalog, search
Recall@100 / nDCG@10 and duplicate AUC on the test split and on the hand-written set (per language),
next to baselines (BM25, MiniLM), and the distilled query tower against the full fine-tuned one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from m5core.bundle import Manifest, load_manifest
from m5core.encoder import OnnxEncoder

# A 16-token query (with [CLS]/[SEP]) and a typical product text, for the latency rows.
QUERY_16 = "stainless steel water bottle 750 ml insulated leak proof for running and hiking blue"
PRODUCT = (
    "[TITLE] Insulated stainless steel water bottle 750 ml, leak proof [BRAND] Acme [TYPE] water bottle "
    "[ATTR] capacity [VAL] 750 ml [ATTR] colour [VAL] blue [BULLET] keeps drinks cold for 24 hours "
    "[BULLET] fits car cup holders [DESC] A double-walled bottle for hiking, running and the office."
)


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
    return {
        "p50_ms": float(np.percentile(t, 50) * 1e3),
        "p99_ms": float(np.percentile(t, 99) * 1e3),
        "tokens": len(encoder.tokenizer.encode(text).ids),
    }


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
    for key, label, tower, text in (
        ("query", "query", "query", QUERY_16),
        ("query_full", "query, full tower", "product", QUERY_16),
        ("product", "product", "product", PRODUCT),
    ):
        for quant in ("fp32", "int8"):
            mv = tower_variant(bundle, m, tower, quant)
            if mv is None:
                continue
            enc = OnnxEncoder(bundle, tower, threads=1, manifest=mv, lexical="query" if key != "product" else "product")
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
        conf = (
            f"{m.version} ({c.get('model', {}).get('layers')}x{c.get('model', {}).get('hidden')}, "
            f"{c.get('pretrain', {}).get('scheme')}, {c.get('pretrain', {}).get('masking')}, alpha {c.get('pretrain', {}).get('alpha')})"
        )
        rows.append(f"| {conf} | " + " | ".join(f"{acc[k]:.3f}" if k in acc else "-" for k in langs + ["all"]) + " |")
    return "\n".join(head + rows)


def parity_table(manifests: list[Manifest]) -> str:
    head = ["| bundle | product cos mean | product cos min | query cos mean | recall@10 fp32 | recall@10 int8 |", "|---|---|---|---|---|---|"]
    rows = []
    for m in manifests:
        p = m.metrics.get("parity", {})
        rows.append(
            f"| {m.version} | {p.get('product_cosine_mean', float('nan')):.4f} | {p.get('product_cosine_min', float('nan')):.4f} | "
            f"{p.get('query_cosine_mean', float('nan')):.4f} | {p.get('recall_at_10_fp32', float('nan')):.3f} | "
            f"{p.get('recall_at_10_int8', float('nan')):.3f} |"
        )
    return "\n".join(head + rows)


def handwritten_set(handwritten: bool | Path | str = True) -> Path | None:
    """The hand-written set to report: with True, its home (`evaluation.harness.handwritten_dir`) when a set is there;
    with False, none; with a path, that directory.

    Raises:
        CatalogError: a path was given and holds no catalog.
    """
    from catalog.io import CatalogError
    from evaluation.harness import handwritten_dir, is_catalog

    if handwritten is False:
        return None
    d = handwritten_dir(None if handwritten is True else handwritten)
    if is_catalog(d):
        return d
    if handwritten is not True:
        raise CatalogError(f"no hand-written set at {d}: it needs products.jsonl, queries.jsonl and judgements.jsonl")
    return None


def eval_tables(
    bundle: Path, catalog: Path, baselines: bool, split: str = "test", scope: str = "marketplace", handwritten: Path | None = None
) -> list[str]:
    """Search and duplicate metrics (evaluation.harness) for the bundle's variants and the baselines on the catalog's
    split and, when given, the hand-written set (test split): one table with a `set` column, then one per language."""
    from evaluation.harness import HANDWRITTEN, HANDWRITTEN_SPLIT, SET_LABEL, SYNTHETIC, comparison_tables, evaluate

    sets = [(SET_LABEL[SYNTHETIC].format(split=split), catalog, split)]
    if handwritten is not None:
        sets.append((SET_LABEL[HANDWRITTEN], handwritten, HANDWRITTEN_SPLIT))
    bundle = Path(bundle).resolve()
    m = load_manifest(bundle)
    product = OnnxEncoder(bundle, "product", threads=2, manifest=m)
    # (row name, evaluate's encoder arguments or why there are none, render scheme): built once, run on every set
    variants: list[tuple[str, dict | str, str]] = [
        (
            f"{m.name} int8, distilled query tower",
            {"encoder": None, "product_encoder": product, "query_encoder": OnnxEncoder(bundle, "query", threads=1, manifest=m)},
            m.render_scheme,
        ),
        (
            f"{m.name} int8, full query tower",
            {"encoder": None, "product_encoder": product, "query_encoder": OnnxEncoder(bundle, "product", threads=1, manifest=m, lexical="query")},
            m.render_scheme,
        ),
    ]
    if m.lexical:
        variants.append(
            (
                f"{m.name} int8, dense part only (no lexical block)",
                {
                    "encoder": None,
                    "product_encoder": OnnxEncoder(bundle, "product", threads=2, manifest=m, lexical="off"),
                    "query_encoder": OnnxEncoder(bundle, "query", threads=1, manifest=m, lexical="off"),
                },
                m.render_scheme,
            )
        )
    fp32 = tower_variant(bundle, m, "product", "fp32")
    q32 = tower_variant(bundle, m, "query", "fp32")
    if fp32 is not None and q32 is not None:
        variants.append(
            (
                f"{m.name} fp32, distilled query tower",
                {
                    "encoder": None,
                    "product_encoder": OnnxEncoder(bundle, "product", threads=2, manifest=fp32),
                    "query_encoder": OnnxEncoder(bundle, "query", threads=1, manifest=q32),
                },
                m.render_scheme,
            )
        )
    if baselines:
        from evaluation.baselines import BM25Retriever

        variants.append(("BM25", {"encoder": None, "scorer_factory": BM25Retriever}, "plain"))
        variants.append(("BM25 over character 4-grams", {"encoder": None, "scorer_factory": BM25Retriever.char4}, "plain"))
        try:
            from evaluation.baselines import MiniLMEncoder

            variants.append(("MiniLM-L6 (off the shelf)", {"encoder": MiniLMEncoder(threads=2)}, "plain"))
        except (ImportError, RuntimeError, OSError) as exc:  # the eval extra is optional
            variants.append(("MiniLM-L6", f"not available ({type(exc).__name__})", "plain"))
    results = []
    for label, directory, set_split in sets:
        for name, kwargs, scheme in variants:
            r = kwargs if isinstance(kwargs, str) else evaluate(catalog_dir=directory, split=set_split, scheme=scheme, scope=scope, **kwargs)
            results.append((label, name, r))
    return comparison_tables(results)


def build_report(
    bundles: list[Path],
    catalog: Path | None = None,
    baselines: bool = False,
    latency_iters: int = 300,
    scope: str = "marketplace",
    handwritten: bool | Path = True,
) -> str:
    """The report's markdown. With `catalog`, search and duplicates on its test split and, beside it, on the
    hand-written set (see `handwritten_set`; never used for training or tuning)."""
    manifests = [load_manifest(b) for b in bundles]
    out = [
        "# Trainer report",
        "",
        "## MLM accuracy per language",
        "",
        mlm_table(manifests),
        "",
        "## Parity gate (fp32 vs int8)",
        "",
        parity_table(manifests),
        "",
    ]
    if latency_iters:
        for b in bundles:
            table, _ = latency_table(b, latency_iters)
            out += [f"## Size and latency, batch 1, 1 thread: {load_manifest(b).version}", "", table, ""]
    if catalog is not None:
        hw = handwritten_set(handwritten)
        sets = "the test split and the hand-written set" if hw is not None else "the test split"
        for b in bundles:
            out += [f"## Search and duplicates on {sets} ({scope} scope): {load_manifest(b).version}", ""]
            if hw is None and handwritten is not False:
                from evaluation.harness import handwritten_dir

                out += [f"No hand-written set at {handwritten_dir()}: the synthetic test split only.", ""]
            out += [*eval_tables(b, catalog, baselines, scope=scope, handwritten=hw), ""]
    return "\n".join(out)


__all__ = ["build_report", "eval_tables", "handwritten_set", "latency", "latency_table", "mlm_table", "parity_table"]

"""`m5 eval`: search and duplicate-detection metrics for any encoder or baseline on one catalog split.

Search: each judged query of the split retrieves the top k (100) of its marketplace (the products of
its locale, the only ones judged for it, as in ESCI; `scope="all"` searches the whole catalog) by
cosine (faiss IndexFlatIP) or by a sparse scorer (BM25, one index per marketplace); Recall@100 and MAP count Exact products as
relevant, nDCG@10 uses graded gains (E=1, S=0.1, C=0.01), Exact@10 is the Exact share of the top
10. Slices: lexical gap (Exact products share no content word with the query), head, tail.
Duplicates: ROC-AUC per product line and overall, recall at 90% precision, pair score = cosine.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from catalog.io import CatalogError, load_catalog
from evaluation.metrics import (
    average_precision,
    exact_share_at_k,
    ndcg_at_k,
    pr_curve,
    recall_at_k,
    recall_at_precision,
    roc_auc,
    roc_curve,
)
from m5core.schema import render_product

log = logging.getLogger(__name__)
RECALL_KS = (1, 5, 10, 20, 50, 100)
SEARCH_METRICS = ("recall_at_100", "map", "ndcg_at_10", "exact_share_at_10")


class Encoder(Protocol):
    version: str

    def embed(self, texts: list[str]) -> np.ndarray: ...  # (n, dim) float32, L2-normalised


class Scorer(Protocol):
    """A sparse retriever (BM25): ranks catalog indices, scores a text pair."""

    def top(self, query: str, k: int) -> np.ndarray: ...

    def pair_score(self, a: str, b: str) -> float: ...


def _embed_all(encoder: Encoder, texts: list[str], batch: int) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    chunks, last = [], t0
    for i in range(0, len(texts), batch):
        chunks.append(encoder.embed(texts[i:i + batch]))
        now = time.perf_counter()
        if now - last > 10:
            done = i + batch
            rate = done / (now - t0)
            log.info("encoded %d/%d texts (%.0f/s, ETA %.0f s)", done, len(texts), rate, (len(texts) - done) / rate)
            last = now
    out = np.concatenate(chunks).astype(np.float32)  # (n, dim)
    return out, len(texts) / max(1e-9, time.perf_counter() - t0)


def evaluate(encoder: Encoder | None, catalog_dir: Path | str, split: str = "test", *, product_encoder: Encoder | None = None,
             query_encoder: Encoder | None = None, scorer_factory=None, scheme: str = "plain", k: int = 100,
             batch_size: int = 256, scope: str = "marketplace") -> dict:
    """Report dict (metrics plus `curves` for the plots) for an encoder, a tower pair, or a sparse scorer.

    scorer_factory(texts) -> Scorer builds a sparse retriever over the rendered products (BM25).
    scope: "marketplace" ranks only the query's locale (judgements never cross it: a product of another
    marketplace would count as irrelevant however well it matches); "all" ranks the whole catalog.

    Raises:
        CatalogError: the catalog has no judgements, or no judged query in `split` (never report zeros).
    """
    cat = load_catalog(catalog_dir)
    judg = cat.judgements()  # raises CatalogError naming judgements.jsonl when missing
    queries = [q for q in cat.queries(split) if any(lbl == "E" for lbl in judg.get(q["query_id"], {}).values())]
    if not queries:
        raise CatalogError(f"catalog at {catalog_dir} has no judged queries in split {split!r}: nothing to evaluate "
                           "(generate one with `m5 catalog generate`)")
    product_encoder = product_encoder or encoder
    query_encoder = query_encoder or encoder
    if scorer_factory is None and (product_encoder is None or query_encoder is None):
        raise ValueError("encoder: give an encoder, product_encoder and query_encoder, or scorer_factory")
    products = list(cat.products())
    asins = [p["asin"] for p in products]
    texts = [render_product(p, scheme) for p in products]
    if scope not in ("marketplace", "all"):
        raise ValueError(f"scope: {scope!r} is not one of marketplace, all")
    report: dict = {"split": split, "scheme": scheme, "scope": scope, "products": len(products), "queries": len(queries), "k": k}
    # Candidate groups: one per marketplace (locale), or the whole catalog under one key.
    group_of = (lambda locale: locale) if scope == "marketplace" else (lambda locale: "all")
    members: dict[str, np.ndarray] = {
        g: np.array([i for i, p in enumerate(products) if group_of(p["locale"]) == g])
        for g in sorted({group_of(p["locale"]) for p in products})}
    t0 = time.perf_counter()
    scorer = None
    ranked: list[list[str]] = [[] for _ in queries]
    if scorer_factory is not None:
        scorers = {g: scorer_factory([texts[i] for i in idx]) for g, idx in members.items()}
        scorer = next(iter(scorers.values()))  # pair scores do not depend on the index
        report["index_seconds"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        for qi, q in enumerate(queries):
            g = group_of(q["locale"])
            ranked[qi] = [asins[members[g][i]] for i in scorers[g].top(q["text"], k)] if g in members else []
        report["queries_per_s"] = round(len(queries) / (time.perf_counter() - t1), 1)
    else:
        import faiss

        pvec, report["encode_products_per_s"] = _embed_all(product_encoder, texts, batch_size)  # (n_products, dim)
        qvec, report["encode_queries_per_s"] = _embed_all(query_encoder, [q["text"] for q in queries], batch_size)
        for g, idx in members.items():
            qrows = [qi for qi, q in enumerate(queries) if group_of(q["locale"]) == g]
            if not qrows:
                continue
            index = faiss.IndexFlatIP(pvec.shape[1])
            index.add(pvec[idx])
            _, top = index.search(qvec[qrows], min(k, len(idx)))  # (n_queries_in_group, k)
            for qi, row in zip(qrows, top):
                ranked[qi] = [asins[idx[i]] for i in row if i >= 0]
        report["encode_products_per_s"] = round(report["encode_products_per_s"], 1)
        report["encode_queries_per_s"] = round(report["encode_queries_per_s"], 1)

    rows = []
    for q, r in zip(queries, ranked):
        labels = judg[q["query_id"]]
        exact = {a for a, lbl in labels.items() if lbl == "E"}
        rows.append({"gap": q["lexical_gap"], "head": q["head"], "recall_at_100": recall_at_k(r, exact, k),
                     "map": average_precision(r, exact, k), "ndcg_at_10": ndcg_at_k(r, labels, 10),
                     "exact_share_at_10": exact_share_at_k(r, labels, 10),
                     "recall_curve": [recall_at_k(r, exact, kk) for kk in RECALL_KS]})
    slices = {"search": lambda x: True, "search_lexical_gap": lambda x: x["gap"], "search_head": lambda x: x["head"],
              "search_tail": lambda x: not x["head"]}
    curves: dict = {"recall_at_k": {"k": list(RECALL_KS)}}
    for name, sel in slices.items():
        sub = [x for x in rows if sel(x)]
        report[name] = ({m: round(float(np.mean([x[m] for x in sub])), 4) for m in SEARCH_METRICS} | {"queries": len(sub)}) if sub else {"queries": 0}
        if sub:
            curves["recall_at_k"][name] = [float(v) for v in np.mean([x["recall_curve"] for x in sub], axis=0)]

    text_of = dict(zip(asins, texts))
    pairs = [d for d in cat.duplicate_pairs(split) if d["asin_a"] in text_of and d["asin_b"] in text_of]
    if pairs and 0 < sum(d["label"] for d in pairs) < len(pairs):
        if scorer is not None:
            title_of = {p["asin"]: p["title"] for p in products}
            scores = [scorer.pair_score(title_of[d["asin_a"]], title_of[d["asin_b"]]) for d in pairs]
            score_kind = "title token Jaccard"
        else:
            row_of = {a: i for i, a in enumerate(asins)}
            a_idx = np.array([row_of[d["asin_a"]] for d in pairs])
            b_idx = np.array([row_of[d["asin_b"]] for d in pairs])
            scores = np.einsum("nd,nd->n", pvec[a_idx], pvec[b_idx]).tolist()  # (n_pairs,) cosine
            score_kind = "cosine"
        labels = [d["label"] for d in pairs]
        dup = {"pairs": len(pairs), "positives": int(sum(labels)), "score": score_kind,
               "auc": round(roc_auc(scores, labels), 4), "recall_at_p90": round(recall_at_precision(scores, labels, 0.9), 4)}
        per_line: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for d, s in zip(pairs, scores):
            per_line[d["product_line"]][0].append(s)
            per_line[d["product_line"]][1].append(d["label"])
        dup["auc_by_product_line"] = {pl: round(roc_auc(s, y), 4) for pl, (s, y) in sorted(per_line.items()) if 0 < sum(y) < len(y)}
        report["duplicates"] = dup
        curves["roc"] = roc_curve(scores, labels)
        curves["pr"] = pr_curve(scores, labels)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["curves"] = curves
    return report


HEADER = ("| encoder | Recall@100 | MAP | nDCG@10 | Exact@10 | gap Recall@100 | gap nDCG@10 | head nDCG@10 | tail nDCG@10 "
          "| dup AUC | dup R@P90 |\n|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(name: str, r: dict) -> str:
    nan = float("nan")
    s, g, d = r["search"], r.get("search_lexical_gap", {}), r.get("duplicates", {})
    h, t = r.get("search_head", {}), r.get("search_tail", {})
    cells = [s["recall_at_100"], s["map"], s["ndcg_at_10"], s["exact_share_at_10"], g.get("recall_at_100", nan),
             g.get("ndcg_at_10", nan), h.get("ndcg_at_10", nan), t.get("ndcg_at_10", nan), d.get("auc", nan), d.get("recall_at_p90", nan)]
    return f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + " |"


def to_markdown(name: str, r: dict) -> str:
    lines = [f"# Evaluation: {name} on split {r['split']}", "",
             f"{r['products']} products, {r['queries']} judged queries ({r['search_lexical_gap']['queries']} lexical-gap), "
             f"render scheme `{r['scheme']}`, {r['scope']} scope.", "", HEADER, markdown_row(name, r), ""]
    if "duplicates" in r:
        d = r["duplicates"]
        lines += [f"Duplicates: {d['pairs']} pairs ({d['positives']} positive), score {d['score']}; AUC by product line: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in d["auc_by_product_line"].items()), ""]
    speed = {k: r[k] for k in ("encode_products_per_s", "encode_queries_per_s", "queries_per_s", "index_seconds") if k in r}
    lines.append("Throughput: " + ", ".join(f"{k} {v}" for k, v in speed.items()))
    return "\n".join(lines) + "\n"


def write_plots(name: str, r: dict, out: Path, prefix: str = "") -> list[Path]:
    """ROC and precision-recall curves of the duplicate task, Recall@k of search; PNGs under `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    c = r["curves"]
    fig, ax = plt.subplots(figsize=(5, 4))
    for sl, ys in c["recall_at_k"].items():
        if sl != "k":
            ax.plot(c["recall_at_k"]["k"], ys, marker="o", label=sl.replace("search_", "") if sl != "search" else "all")
    ax.set(xscale="log", xlabel="k", ylabel="Recall@k (Exact)", title=f"{name}: recall vs k", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    written.append(out / f"{prefix}recall_at_k.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    if "roc" in c:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
        a1.plot(c["roc"]["fpr"], c["roc"]["tpr"])
        a1.plot([0, 1], [0, 1], "k:", lw=0.8)
        a1.set(xlabel="false positive rate", ylabel="true positive rate", title=f"duplicates ROC (AUC {r['duplicates']['auc']:.3f})")
        a2.plot(c["pr"]["recall"], c["pr"]["precision"])
        a2.axhline(0.9, color="k", ls=":", lw=0.8)
        a2.set(xlabel="recall", ylabel="precision", title="duplicates precision-recall", ylim=(0, 1.02))
        fig.tight_layout()
        written.append(out / f"{prefix}duplicates_roc_pr.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    return written


def build_encoders(kind: str, bundle: Path | None = None, threads: int = 2):
    """(name, kwargs for evaluate, scheme) for `m5 eval --encoder`."""
    from evaluation import baselines

    if kind == "bm25":
        return "bm25", {"encoder": None, "scorer_factory": baselines.BM25Retriever}, "plain"
    if kind == "random":
        return "random", {"encoder": baselines.RandomEncoder()}, "plain"
    if kind == "minilm":
        return "minilm", {"encoder": baselines.MiniLMEncoder(threads=threads)}, "plain"
    if kind == "bundle":
        from m5core.bundle import load_manifest
        from m5core.encoder import OnnxEncoder

        if bundle is None:
            raise ValueError("bundle: --bundle PATH is required for --encoder bundle")
        m = load_manifest(bundle)
        return (f"bundle {m.version}", {"encoder": None, "product_encoder": OnnxEncoder(bundle, "product", threads=threads, manifest=m),
                                        "query_encoder": OnnxEncoder(bundle, "query", threads=1, manifest=m)}, m.render_scheme)
    raise ValueError(f"encoder: unknown {kind!r} (choose bm25, random, minilm, bundle)")


def run_eval(catalog_dir: Path, encoder: str, bundle: Path | None, split: str, out: Path | None, threads: int = 2,
             scope: str = "marketplace") -> dict:
    """Evaluate one encoder kind; write report.json, report.md and PNGs to `out` when given."""
    cat = load_catalog(catalog_dir)
    cat.judgements()  # fail on a catalog without judgements before loading a model
    name, kwargs, scheme = build_encoders(encoder, bundle, threads)
    r = evaluate(catalog_dir=catalog_dir, split=split, scheme=scheme, scope=scope, **kwargs)
    r["encoder"] = name
    r["markdown"] = to_markdown(name, r)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        r["plots"] = [p.name for p in write_plots(name, r, out)]
        (out / "report.json").write_bytes(orjson.dumps({k: v for k, v in r.items() if k != "curves"}, option=orjson.OPT_INDENT_2))
        (out / "report.md").write_text(r["markdown"])
    return r

"""`m5 eval`: search and duplicate-detection metrics for any encoder or baseline on one catalog split.

Search: each judged query of the split retrieves the top k (100) of its marketplace (the products of
its locale, the only ones judged for it, as in ESCI; `scope="all"` searches the whole catalog) by
cosine (faiss IndexFlatIP) or by a sparse scorer (BM25, one index per marketplace); Recall@10, Recall@100 and MAP count Exact products as
relevant, nDCG@10 uses graded gains (E=1, S=0.1, C=0.01), Exact@10 is the Exact share of the top
10. Slices: lexical gap (Exact products share no content word with the query), head, tail.
Per language (the query's locale, `m5core.schema.language_of`): the same search metrics with their
query counts. A query without a `lexical_gap` flag (hand-written sets) gets it computed by the data
card's rule; one without `head` is in neither the head nor the tail slice.
Duplicates: ROC-AUC overall, per product line and per language (of the pair's two listings: "en", or
"de+en" across two), recall at 90% precision, pair score = cosine.

Two sets: the synthetic catalog's split and the hand-written EN/DE/AR(+) set (`handwritten_dir()`),
never used for training or tuning; `run_eval` evaluates one encoder on both and reports them side by side.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from catalog.generate import content_words, listing_words
from catalog.io import CatalogError, load_catalog
from m5core.encoder import Encoder, embed_in_batches
from m5core.lexical import RERANK_DEPTH
from m5core.metrics import (
    average_precision,
    exact_share_at_k,
    ndcg_at_k,
    pr_curve,
    recall_at_k,
    recall_at_precision,
    roc_auc,
    roc_curve,
)
from m5core.schema import language_of, render_product

log = logging.getLogger(__name__)
RECALL_KS = (1, 5, 10, 20, 50, 100)
SEARCH_METRICS = ("recall_at_10", "recall_at_100", "map", "ndcg_at_10", "exact_share_at_10")

# The hand-written evaluation set: a catalog directory (products, queries, judgements, clusters,
# duplicate_pairs; every row split "test") beside this package, so an installed checkout finds it too.
HANDWRITTEN_DIR = Path(__file__).resolve().parent / "handwritten"
HANDWRITTEN_ENV = "M5_HANDWRITTEN_DIR"
HANDWRITTEN_SPLIT = "test"
SYNTHETIC, HANDWRITTEN = "synthetic", "handwritten"  # report.json keys, file prefixes
SET_LABEL = {SYNTHETIC: "synthetic {split}", HANDWRITTEN: "hand-written"}


def handwritten_dir(override: Path | str | None = None) -> Path:
    """Where the hand-written set lives: `override`, else $M5_HANDWRITTEN_DIR, else evaluation/handwritten/."""
    if override is not None:
        return Path(override)
    env = os.environ.get(HANDWRITTEN_ENV)
    return Path(env) if env else HANDWRITTEN_DIR


def is_catalog(directory: Path | str) -> bool:
    """True when `directory` holds what the harness reads: products, queries and judgements."""
    return all((Path(directory) / f"{name}.jsonl").is_file() for name in ("products", "queries", "judgements"))


class Scorer(Protocol):
    """A sparse retriever (BM25): ranks catalog indices, scores a text pair."""

    def top(self, query: str, k: int) -> np.ndarray: ...

    def pair_score(self, a: str, b: str) -> float: ...


def _embed_all(encoder: Encoder, texts: list[str], batch: int) -> tuple[np.ndarray, float]:
    """-> ((n, dim) vectors, texts per second), with a progress line every 10 s."""
    t0 = last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if now - last > 10:
            rate = done / (now - t0)
            log.info("encoded %d/%d texts (%.0f/s, ETA %.0f s)", done, len(texts), rate, (len(texts) - done) / rate)
            last = now

    out = embed_in_batches(encoder, texts, batch, progress)
    return out, len(texts) / max(1e-9, time.perf_counter() - t0)


def lexical_gap(query: str, exact: list[dict]) -> bool:
    """The data card's rule: the query has Exacts and none shares a content word (title, description, bullets)."""
    words = content_words(query)
    return bool(exact) and all(not words & listing_words(p) for p in exact)


def pair_language(locale_a: str, locale_b: str) -> str:
    """Language key of a duplicate pair: "de" when both listings are German, "de+en" across two languages."""
    return "+".join(sorted({language_of(locale_a), language_of(locale_b)}))


def _mean_metrics(rows: list[dict]) -> dict:
    if not rows:
        return {"queries": 0}
    return {m: round(float(np.mean([x[m] for x in rows])), 4) for m in SEARCH_METRICS} | {"queries": len(rows)}


def _precision_recall(scores: list[float], labels: list[int], threshold: float) -> dict:
    """Precision and recall of calling every pair at or above `threshold` a duplicate (precision None when none is)."""
    called = [y for s, y in zip(scores, labels) if s >= threshold]
    positives = sum(labels)
    return {
        "pairs": len(labels),
        "precision": round(sum(called) / len(called), 4) if called else None,
        "recall": round(sum(called) / positives, 4) if positives else None,
    }


def _auc_by(keys: list[str], scores: list[float], labels: list[int]) -> dict[str, float]:
    """ROC-AUC per key, for the keys whose pairs hold both labels."""
    groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for key, s, y in zip(keys, scores, labels):
        groups[key][0].append(s)
        groups[key][1].append(y)
    return {key: round(roc_auc(s, y), 4) for key, (s, y) in sorted(groups.items()) if 0 < sum(y) < len(y)}


def evaluate(
    encoder: Encoder | None,
    catalog_dir: Path | str,
    split: str = "test",
    *,
    product_encoder: Encoder | None = None,
    query_encoder: Encoder | None = None,
    scorer_factory=None,
    scheme: str = "plain",
    k: int = 100,
    batch_size: int = 256,
    scope: str = "marketplace",
) -> dict:
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
        raise CatalogError(
            f"catalog at {catalog_dir} has no judged queries in split {split!r}: nothing to evaluate (generate one with `m5 catalog generate`)"
        )
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
        g: np.array([i for i, p in enumerate(products) if group_of(p["locale"]) == g]) for g in sorted({group_of(p["locale"]) for p in products})
    }
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
        block = getattr(product_encoder, "lexical", None)
        blobs = block.product_terms(texts) if block is not None and block.exact else None
        report["rerank_depth"] = RERANK_DEPTH if blobs is not None else 0
        for g, idx in members.items():
            qrows = [qi for qi, q in enumerate(queries) if group_of(q["locale"]) == g]
            if not qrows:
                continue
            index = faiss.IndexFlatIP(pvec.shape[1])
            index.add(pvec[idx])
            _, top = index.search(qvec[qrows], min(k, len(idx)))  # (n_queries_in_group, k)
            for qi, row in zip(qrows, top):
                row = idx[row[row >= 0]]
                if blobs is not None:  # what the service answers: the first candidates re-scored exactly
                    head = row[:RERANK_DEPTH]
                    order = np.argsort(-block.rescore(qvec[qi], queries[qi]["text"], pvec[head] @ qvec[qi], [blobs[i] for i in head]), kind="stable")
                    row = np.concatenate([head[order], row[RERANK_DEPTH:]])
                ranked[qi] = [asins[i] for i in row]
        report["encode_products_per_s"] = round(report["encode_products_per_s"], 1)
        report["encode_queries_per_s"] = round(report["encode_queries_per_s"], 1)

    by_asin = {p["asin"]: p for p in products}
    rows = []
    for q, r in zip(queries, ranked):
        labels = judg[q["query_id"]]
        exact = {a for a, lbl in labels.items() if lbl == "E"}
        gap = q["lexical_gap"] if "lexical_gap" in q else lexical_gap(q["text"], [by_asin[a] for a in exact if a in by_asin])
        rows.append(
            {
                "gap": bool(gap),
                "head": q.get("head"),
                "language": language_of(q["locale"]),
                "recall_at_10": recall_at_k(r, exact, 10),
                "recall_at_100": recall_at_k(r, exact, k),
                "map": average_precision(r, exact, k),
                "ndcg_at_10": ndcg_at_k(r, labels, 10),
                "exact_share_at_10": exact_share_at_k(r, labels, 10),
                "recall_curve": [recall_at_k(r, exact, kk) for kk in RECALL_KS],
            }
        )
    slices = {
        "search": lambda x: True,
        "search_lexical_gap": lambda x: x["gap"],
        "search_head": lambda x: x["head"] is True,
        "search_tail": lambda x: x["head"] is False,
    }
    curves: dict = {"recall_at_k": {"k": list(RECALL_KS)}}
    for name, sel in slices.items():
        sub = [x for x in rows if sel(x)]
        report[name] = _mean_metrics(sub)
        if sub:
            curves["recall_at_k"][name] = [float(v) for v in np.mean([x["recall_curve"] for x in sub], axis=0)]
    report["search_by_language"] = {lang: _mean_metrics([x for x in rows if x["language"] == lang]) for lang in sorted({x["language"] for x in rows})}

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
        dup = {
            "pairs": len(pairs),
            "positives": int(sum(labels)),
            "score": score_kind,
            "auc": round(roc_auc(scores, labels), 4),
            "recall_at_p90": round(recall_at_precision(scores, labels, 0.9), 4),
        }
        dup["auc_by_product_line"] = _auc_by([d["product_line"] for d in pairs], scores, labels)
        dup["auc_by_language"] = _auc_by(
            [pair_language(by_asin[d["asin_a"]]["locale"], by_asin[d["asin_b"]]["locale"]) for d in pairs], scores, labels
        )
        calibrated = getattr(getattr(product_encoder, "manifest", None), "duplicates", None)
        if calibrated is not None:  # what the served endpoint calls a duplicate, per product line and over all
            lines = [d["product_line"] for d in pairs]
            dup["at_threshold"] = {
                "threshold": calibrated.threshold,
                "all": _precision_recall(scores, labels, calibrated.threshold),
                "by_product_line": {
                    line: _precision_recall(*zip(*[(s, y) for s, y, x in zip(scores, labels, lines) if x == line]), calibrated.threshold)
                    for line in sorted(set(lines))
                },
            }
        report["duplicates"] = dup
        curves["roc"] = roc_curve(scores, labels)
        curves["pr"] = pr_curve(scores, labels)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["curves"] = curves
    return report


MAIN_COLUMNS = (
    "Recall@10",
    "Recall@100",
    "MAP",
    "nDCG@10",
    "Exact@10",
    "gap Recall@100",
    "gap nDCG@10",
    "head nDCG@10",
    "tail nDCG@10",
    "dup AUC",
    "dup R@P90",
)
LANGUAGE_COLUMNS = ("language", "queries", "Recall@10", "Recall@100", "MAP", "nDCG@10", "Exact@10", "dup AUC")


def table_header(*columns: str) -> str:
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


HEADER = table_header("encoder", *MAIN_COLUMNS)
SET_HEADER = table_header("set", "encoder", *MAIN_COLUMNS)
LANGUAGE_HEADER = table_header("set", "encoder", *LANGUAGE_COLUMNS)


def _cells(values) -> str:
    """Three decimals; "-" where a slice or a duplicate task has nothing to measure."""
    return " | ".join("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" for v in values)


def _lead(name: str, set_name: str | None) -> str:
    return f"| {name} | " if set_name is None else f"| {set_name} | {name} | "


def markdown_row(name: str, r: dict, set_name: str | None = None) -> str:
    """One row under HEADER, or under SET_HEADER when `set_name` is given."""
    s, g, d = r["search"], r.get("search_lexical_gap", {}), r.get("duplicates", {})
    h, t = r.get("search_head", {}), r.get("search_tail", {})
    cells = [
        s.get("recall_at_10"),
        s.get("recall_at_100"),
        s.get("map"),
        s.get("ndcg_at_10"),
        s.get("exact_share_at_10"),
        g.get("recall_at_100"),
        g.get("ndcg_at_10"),
        h.get("ndcg_at_10"),
        t.get("ndcg_at_10"),
        d.get("auc"),
        d.get("recall_at_p90"),
    ]
    return _lead(name, set_name) + _cells(cells) + " |"


def language_rows(name: str, r: dict, set_name: str | None = None) -> list[str]:
    """One row per query language under LANGUAGE_HEADER (without its `set` column when `set_name` is None).

    dup AUC is that of the pairs whose two listings are both in the language (cross-language pairs are
    in `duplicates.auc_by_language` only)."""
    dup = r.get("duplicates", {}).get("auc_by_language", {})
    return [
        _lead(name, set_name) + f"{lang} | {m['queries']} | " + _cells([m.get(x) for x in SEARCH_METRICS] + [dup.get(lang)]) + " |"
        for lang, m in r.get("search_by_language", {}).items()
    ]


def comparison_tables(results: list[tuple[str, str, dict | str]]) -> list[str]:
    """Markdown lines: the metrics table with a `set` column, then the per-language table.

    results: (set label, encoder name, report) in display order; a string in place of the report is the
    reason that encoder could not be evaluated (an optional baseline not installed)."""
    main, langs = [SET_HEADER], [LANGUAGE_HEADER]
    for set_name, name, r in results:
        if isinstance(r, str):
            main.append(_lead(f"{name}: {r}", set_name) + " | ".join(["-"] * len(MAIN_COLUMNS)) + " |")
            continue
        main.append(markdown_row(name, r, set_name))
        langs += language_rows(name, r, set_name)
    return [*main, "", "Per language of the query (`m5core.schema.language_of` of its locale):", "", *langs]


def _describe(r: dict) -> str:
    return (
        f"{r['products']} products, {r['queries']} judged queries ({r['search_lexical_gap']['queries']} lexical-gap), "
        f"render scheme `{r['scheme']}`, {r['scope']} scope"
    )


def _duplicates_line(r: dict) -> str:
    d = r["duplicates"]
    line = (
        f"Duplicates: {d['pairs']} pairs ({d['positives']} positive), score {d['score']}; AUC by product line: "
        + (", ".join(f"{k} {v:.3f}" for k, v in d["auc_by_product_line"].items()) or "-")
        + "; by language: "
        + (", ".join(f"{k} {v:.3f}" for k, v in d["auc_by_language"].items()) or "-")
    )
    if at := d.get("at_threshold"):

        def pr(x: dict) -> str:
            return f"P {x['precision'] if x['precision'] is not None else '-'} / R {x['recall'] if x['recall'] is not None else '-'}"

        parts = ", ".join(f"{k} {pr(v)}" for k, v in at["by_product_line"].items())
        line += f". At the bundle's threshold {at['threshold']:.4f}: all {pr(at['all'])}; by product line: {parts}"
    return line


def _throughput_line(r: dict) -> str:
    speed = {k: r[k] for k in ("encode_products_per_s", "encode_queries_per_s", "queries_per_s", "index_seconds") if k in r}
    return "Throughput: " + ", ".join(f"{k} {v}" for k, v in speed.items())


def to_markdown(name: str, r: dict) -> str:
    """One report: the metrics row, the per-language rows, duplicates and throughput."""
    lines = [
        f"# Evaluation: {name} on split {r['split']}",
        "",
        _describe(r) + ".",
        "",
        HEADER,
        markdown_row(name, r),
        "",
        table_header("encoder", *LANGUAGE_COLUMNS),
        *language_rows(name, r),
        "",
    ]
    if "duplicates" in r:
        lines += [_duplicates_line(r), ""]
    lines.append(_throughput_line(r))
    return "\n".join(lines) + "\n"


def sets_markdown(name: str, sets: dict[str, dict]) -> str:
    """One encoder on several sets (synthetic split, hand-written) side by side, a `set` column in each table."""
    lines = [f"# Evaluation: {name}", ""]
    lines += [f"- {r['set']} (`{r['catalog']}`): {_describe(r)}." for r in sets.values()]
    lines += ["", *comparison_tables([(r["set"], name, r) for r in sets.values()]), ""]
    for r in sets.values():
        if "duplicates" in r:
            lines += [f"{r['set']}: {_duplicates_line(r)}", ""]
    lines += [f"{r['set']}: {_throughput_line(r)}" for r in sets.values()]
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
    """(name, kwargs for evaluate, scheme) for `m5 eval --encoder`.

    Baselines read the `plain` rendering (field tokens mean nothing to BM25 or MiniLM); a bundle reads the
    scheme it was trained on, from its manifest, as the indexer renders products for it."""
    from evaluation import baselines

    if kind == "bm25":
        return "bm25", {"encoder": None, "scorer_factory": baselines.BM25Retriever}, "plain"
    if kind == "bm25-char4":
        return "bm25-char4", {"encoder": None, "scorer_factory": baselines.BM25Retriever.char4}, "plain"
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
        return (
            f"bundle {m.version}",
            {
                "encoder": None,
                "product_encoder": OnnxEncoder(bundle, "product", threads=threads, manifest=m),
                "query_encoder": OnnxEncoder(bundle, "query", threads=1, manifest=m),
            },
            m.render_scheme,
        )
    raise ValueError(f"encoder: unknown {kind!r} (choose bm25, bm25-char4, random, minilm, bundle)")


def run_eval(
    catalog_dir: Path | None,
    encoder: str,
    bundle: Path | None,
    split: str,
    out: Path | None,
    threads: int = 2,
    scope: str = "marketplace",
    handwritten: Path | None = None,
) -> dict:
    """Evaluate one encoder kind on the synthetic catalog's `split` and/or the hand-written set's test split.

    The same encoder (and render scheme) scores every set. Returns {"encoder", "sets": {SYNTHETIC|HANDWRITTEN:
    report}, "markdown"}; with `out`, writes report.json (one key per set), report.md and PNGs prefixed by set.

    Raises:
        CatalogError: a set without judgements (checked before any model is loaded) or without judged queries.
        ValueError: neither a catalog nor the hand-written set to evaluate.
    """
    targets = []
    if catalog_dir is not None:
        targets.append((SYNTHETIC, SET_LABEL[SYNTHETIC].format(split=split), Path(catalog_dir), split))
    if handwritten is not None:
        targets.append((HANDWRITTEN, SET_LABEL[HANDWRITTEN], Path(handwritten), HANDWRITTEN_SPLIT))
    if not targets:
        raise ValueError("nothing to evaluate: give a catalog (--catalog), the hand-written set, or both")
    for _, _, directory, _ in targets:
        load_catalog(directory).judgements()  # fail on a catalog without judgements before loading a model
    name, kwargs, scheme = build_encoders(encoder, bundle, threads)
    sets = {}
    for key, label, directory, set_split in targets:
        r = evaluate(catalog_dir=directory, split=set_split, scheme=scheme, scope=scope, **kwargs)
        sets[key] = r | {"encoder": name, "set": label, "catalog": str(directory)}
    result = {"encoder": name, "sets": sets, "markdown": sets_markdown(name, sets)}
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for key, r in sets.items():
            r["plots"] = [p.name for p in write_plots(f"{name}, {r['set']}", r, out, prefix=f"{key}_")]
        (out / "report.json").write_bytes(
            orjson.dumps({key: {k: v for k, v in r.items() if k != "curves"} for key, r in sets.items()}, option=orjson.OPT_INDENT_2)
        )
        (out / "report.md").write_text(result["markdown"])
    return result

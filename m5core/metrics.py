"""Retrieval and classification metrics (pure numpy), for the trainer, the evaluation harness and the
indexer's re-embed gate alike. Gains follow ESCI: E=1, S=0.1, C=0.01, I=0."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GAINS = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Probability a random positive outscores a random negative (ties count half)."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs both positive and negative labels")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def recall_at_precision(scores: Sequence[float], labels: Sequence[int], precision: float = 0.9) -> float:
    """Highest recall at any threshold whose precision is at least `precision`."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    order = np.argsort(-s, kind="mergesort")
    tp = np.cumsum(y[order])
    prec = tp / np.arange(1, len(s) + 1)
    rec = tp / max(1, y.sum())
    ok = prec >= precision
    return float(rec[ok].max()) if ok.any() else 0.0


def threshold_at_precision(scores: Sequence[float], labels: Sequence[int], precision: float = 0.9) -> tuple[float, float, float] | None:
    """(threshold, precision, recall) of the lowest score threshold whose pairs at or above it are at least
    `precision` positive, the one of highest recall among those; None when no threshold reaches it."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]  # a threshold keeps every pair of its score: cut only after a run of ties
    tp = np.cumsum(y)
    prec = tp / np.arange(1, len(s) + 1)
    ok = np.flatnonzero(last & (prec >= precision))
    if not len(ok) or not y.sum():
        return None
    best = ok[np.argmax(tp[ok])]
    return float(s[best]), float(prec[best]), float(tp[best] / y.sum())


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Capped recall (BEIR's R_cap@k): found / min(|relevant|, k), so a query with more relevant
    products than k can still reach 1.0 and every query weighs the same."""
    return len(set(ranked[:k]) & relevant) / min(len(relevant), k) if relevant else 0.0


def average_precision(ranked: Sequence[str], relevant: set[str], k: int | None = None) -> float:
    """AP (AP@k when k is given, normalised by min(|relevant|, k) like the usual MAP@k)."""
    hits, total = 0, 0.0
    for i, a in enumerate(ranked[:k] if k else ranked):
        if a in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / (min(len(relevant), k) if k else len(relevant)) if relevant else 0.0


def ndcg_at_k(ranked: Sequence[str], labels: dict[str, str], k: int = 10) -> float:
    gains = [GAINS.get(labels.get(a, "I"), 0.0) for a in ranked[:k]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((GAINS[lbl] for lbl in labels.values()), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def exact_share_at_k(ranked: Sequence[str], labels: dict[str, str], k: int = 10) -> float:
    top = ranked[:k]
    return sum(labels.get(a) == "E" for a in top) / max(1, len(top))


def roc_curve(scores: Sequence[float], labels: Sequence[int], points: int = 200) -> dict[str, list[float]]:
    """False/true positive rates over descending thresholds, thinned to about `points` for plotting."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    order = np.argsort(-s, kind="mergesort")
    tp = np.concatenate([[0], np.cumsum(y[order])])
    fp = np.concatenate([[0], np.cumsum(1 - y[order])])
    step = max(1, len(tp) // points)
    idx = np.unique(np.r_[np.arange(0, len(tp), step), len(tp) - 1])
    return {"fpr": (fp[idx] / max(1, fp[-1])).tolist(), "tpr": (tp[idx] / max(1, tp[-1])).tolist()}


def pr_curve(scores: Sequence[float], labels: Sequence[int], points: int = 200) -> dict[str, list[float]]:
    """Precision and recall over descending thresholds, thinned for plotting."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    order = np.argsort(-s, kind="mergesort")
    tp = np.cumsum(y[order])
    prec = tp / np.arange(1, len(s) + 1)
    rec = tp / max(1, y.sum())
    step = max(1, len(s) // points)
    idx = np.unique(np.r_[np.arange(0, len(s), step), len(s) - 1])
    return {"precision": prec[idx].tolist(), "recall": rec[idx].tolist()}


def mlm_accuracy_by_language(batches: Sequence[tuple[str, int, int]]) -> dict[str, float]:
    """(language, correct, masked) per batch -> accuracy per language plus "all" (token-weighted)."""
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for lang, c, n in batches:
        if c < 0 or n < 0 or c > n:
            raise ValueError(f"batches: correct={c} masked={n} for {lang!r} is not a valid count")
        correct[lang] = correct.get(lang, 0) + c
        total[lang] = total.get(lang, 0) + n
    out = {lang: correct[lang] / total[lang] for lang in sorted(total) if total[lang]}
    if sum(total.values()):
        out["all"] = sum(correct.values()) / sum(total.values())
    return out

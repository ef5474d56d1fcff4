"""Metrics against values computed by hand."""

import math

import pytest

from m5core.metrics import (
    average_precision,
    exact_share_at_k,
    mlm_accuracy_by_language,
    ndcg_at_k,
    pr_curve,
    recall_at_k,
    recall_at_precision,
    roc_auc,
    roc_curve,
    threshold_at_precision,
)


def test_roc_auc_counts_ordered_pairs_and_half_ties():
    # positives 0.9, 0.3; negatives 0.8, 0.1: 3 of 4 pairs ordered correctly
    assert roc_auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert roc_auc([0.1, 0.9], [1, 0]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_recall_at_precision():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0]
    # precision by cutoff 1, 1, 2/3, 3/4, 3/5; recall 1/3, 2/3, 2/3, 1, 1
    assert recall_at_precision(scores, labels, 0.9) == pytest.approx(2 / 3)
    assert recall_at_precision(scores, labels, 0.75) == pytest.approx(1.0)
    assert recall_at_precision([0.9, 0.1], [0, 1], 0.9) == 0.0


def test_threshold_at_precision_is_the_lowest_cut_that_keeps_the_precision():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0]
    assert threshold_at_precision(scores, labels, 0.9) == pytest.approx((0.8, 1.0, 2 / 3))
    assert threshold_at_precision(scores, labels, 0.75) == pytest.approx((0.6, 0.75, 1.0))
    assert threshold_at_precision([0.9, 0.1], [0, 1], 0.9) is None
    # a cut keeps every pair of its score: at 0.8 both tied pairs are in (precision 2/3), so the cut stays at 0.9
    assert threshold_at_precision([0.9, 0.8, 0.8], [1, 1, 0], 0.9) == pytest.approx((0.9, 1.0, 0.5))
    assert threshold_at_precision([0.9, 0.8], [0, 0], 0.5) is None


def test_recall_average_precision_and_exact_share():
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"b", "d", "z"}, 2) == pytest.approx(1 / 2)  # capped: min(|rel|, k) = 2
    assert recall_at_k(ranked, {"b", "d", "z"}, 4) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"a", "b"}, 2) == pytest.approx(1.0)
    assert average_precision(ranked, {"b", "d"}) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert average_precision(ranked, {"b", "d"}, k=2) == pytest.approx((1 / 2) / 2)
    assert average_precision(ranked, {"a", "b", "z"}, k=2) == pytest.approx(1.0)  # normalised by min(|rel|, k)
    assert exact_share_at_k(ranked, {"a": "E", "b": "S", "c": "E"}, 2) == pytest.approx(0.5)


def test_ndcg_uses_esci_gains():
    labels = {"a": "S", "b": "E", "c": "I", "d": "C"}
    dcg = 0.1 / math.log2(2) + 1.0 / math.log2(3)
    idcg = 1.0 + 0.1 / math.log2(3) + 0.01 / math.log2(4)
    assert ndcg_at_k(["a", "b", "c"], labels, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["b", "a", "d"], labels, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], {"x": "I"}, 3) == 0.0


def test_curves_run_from_origin_to_one():
    roc = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    assert roc["fpr"][0] == roc["tpr"][0] == 0.0
    assert roc["fpr"][-1] == roc["tpr"][-1] == 1.0
    pr = pr_curve([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    assert pr["precision"] == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert pr["recall"][-1] == 1.0


def test_mlm_accuracy_is_token_weighted_per_language():
    acc = mlm_accuracy_by_language([("en", 3, 4), ("de", 1, 4), ("en", 1, 4)])
    assert acc == pytest.approx({"de": 0.25, "en": 0.5, "all": 5 / 12})
    with pytest.raises(ValueError, match="batches"):
        mlm_accuracy_by_language([("en", 5, 4)])

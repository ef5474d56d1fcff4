"""`m5 train report` with --catalog: the synthetic test split and, beside it, the hand-written set per language.

A real bundle without training: tests/evaluation/handwritten_fixture.py writes WordLevel + ONNX towers whose
rankings are worked out by hand, so the rows carry exact numbers."""

import pytest

from catalog.io import CatalogError
from tests.evaluation.handwritten_fixture import write_catalog, write_word_bundle
from trainer.report import build_report, handwritten_set

DISTILLED = "words int8, distilled query tower"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return (write_word_bundle(root / "bundle"), write_catalog(root / "synthetic", locales=("en_US", "de_DE")), write_catalog(root / "handwritten"))


@pytest.fixture(scope="module")
def report(sets):
    """With --baselines, MiniLM absent (its own test lives in tests/evaluation): its row says so on both sets."""
    import evaluation.baselines

    bundle, synthetic, hw = sets
    mp = pytest.MonkeyPatch()

    class NoMiniLM:
        def __init__(self, *a, **k):
            raise ImportError("no eval extra")

    mp.setattr(evaluation.baselines, "MiniLMEncoder", NoMiniLM)
    try:
        return build_report([bundle], catalog=synthetic, baselines=True, latency_iters=0, handwritten=hw)
    finally:
        mp.undo()


def test_synthetic_and_handwritten_rows_side_by_side(report):
    assert f"| synthetic test | {DISTILLED} |" in report
    assert f"| hand-written | {DISTILLED} |" in report


def test_handwritten_fr_row_has_the_hand_computed_metrics(report):
    assert f"| hand-written | {DISTILLED} | fr | 1 | 1.000 | 1.000 | 1.000 | 1.000 | 0.500 | - |" in report


def test_handwritten_de_row_has_ndcg_zero(report):
    line = next(x for x in report.splitlines() if x.startswith(f"| hand-written | {DISTILLED} | de |"))
    assert line.split(" | ")[7] == "0.000"  # nDCG@10


def test_fr_is_only_in_the_set_that_has_it(report):
    assert f"| synthetic test | {DISTILLED} | fr |" not in report


def test_fp32_and_baselines_rows_on_the_handwritten_set(report):
    assert "| hand-written | words fp32, distilled query tower |" in report
    assert "| hand-written | BM25 |" in report


def test_missing_minilm_is_a_row_not_a_crash(report):
    assert "| hand-written | MiniLM-L6: not available (ImportError) |" in report


def test_handwritten_false_reports_the_synthetic_split_only(sets):
    bundle, synthetic, _ = sets
    assert "| hand-written |" not in build_report([bundle], catalog=synthetic, latency_iters=0, handwritten=False)


def test_default_handwritten_set_absent_is_said(sets, monkeypatch, tmp_path):
    bundle, synthetic, _ = sets
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(tmp_path / "none"))
    assert f"No hand-written set at {tmp_path / 'none'}" in build_report([bundle], catalog=synthetic, latency_iters=0)


def test_default_handwritten_set_comes_from_its_home(sets, monkeypatch):
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(sets[2]))
    assert handwritten_set() == sets[2]


def test_named_handwritten_set_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(CatalogError, match="no hand-written set"):
        handwritten_set(tmp_path / "none")

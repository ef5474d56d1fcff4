"""The harness: the brief's report shape, the BM25 scorer path, files written, and refusals instead of zeros."""

import subprocess
import sys

import numpy as np
import pytest

from catalog.generate import generate_catalog
from catalog.io import CatalogError
from evaluation.baselines import BM25Retriever, RandomEncoder
from evaluation.harness import evaluate, run_eval
from m5core.encoder import HashEncoder


@pytest.fixture(scope="module")
def cat_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcat")
    generate_catalog(d, 1500, seed=3, show_progress=False)
    return d


def _check(r):
    assert r["queries"] > 0
    assert r["search"]["queries"] == r["queries"]
    for m in ("recall_at_100", "map", "ndcg_at_10", "exact_share_at_10"):
        assert 0.0 <= r["search"][m] <= 1.0
    assert r["search_head"]["queries"] + r["search_tail"]["queries"] == r["queries"]
    assert 0.0 <= r["duplicates"]["auc"] <= 1.0
    assert r["duplicates"]["auc_by_product_line"]


def test_dense_encoder_report(cat_dir):
    r = evaluate(HashEncoder(64), cat_dir, "test")
    _check(r)
    assert r["encode_products_per_s"] > 0
    assert r["duplicates"]["score"] == "cosine"


def test_bm25_scorer_path_beats_random(cat_dir):
    bm = evaluate(None, cat_dir, "test", scorer_factory=BM25Retriever)
    rnd = evaluate(RandomEncoder(), cat_dir, "test")
    _check(bm)
    _check(rnd)
    assert bm["search"]["ndcg_at_10"] > rnd["search"]["ndcg_at_10"]
    assert bm["duplicates"]["score"] == "title token Jaccard"


def test_marketplace_scope_only_ranks_the_querys_marketplace(cat_dir):
    """Judgements never cross a locale, so a product of another marketplace can only push judged ones down:
    ranking within the marketplace is at least as good on every query, and better for an encoder that
    cannot tell locales apart (random)."""
    mine = evaluate(RandomEncoder(), cat_dir, "test")
    every = evaluate(RandomEncoder(), cat_dir, "test", scope="all")
    assert mine["scope"] == "marketplace"
    assert every["scope"] == "all"
    for m in ("recall_at_100", "ndcg_at_10", "exact_share_at_10"):
        assert mine["search"][m] >= every["search"][m]
    assert mine["search"]["recall_at_100"] > every["search"]["recall_at_100"]
    with pytest.raises(ValueError, match="scope"):
        evaluate(RandomEncoder(), cat_dir, "test", scope="region")


def test_separate_towers_are_used(cat_dir):
    r = evaluate(None, cat_dir, "valid", product_encoder=HashEncoder(32, "p"), query_encoder=HashEncoder(32, "q"))
    assert r["split"] == "valid"
    assert r["queries"] > 0


def test_random_encoder_is_deterministic_and_normalised():
    a, b = RandomEncoder().embed(["x", "y"]), RandomEncoder().embed(["x", "y"])
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0)
    assert RandomEncoder().embed([]).shape == (0, 64)


def test_run_eval_writes_report_and_plots(cat_dir, tmp_path):
    r = run_eval(cat_dir, "random", None, "test", tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.json", "report.md", "synthetic_recall_at_k.png", "synthetic_duplicates_roc_pr.png"} <= names
    assert "| synthetic test | random |" in r["markdown"]


def test_catalog_without_judgements_is_refused(cat_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "products.jsonl").write_bytes((cat_dir / "products.jsonl").read_bytes())
    (bare / "queries.jsonl").write_bytes((cat_dir / "queries.jsonl").read_bytes())
    with pytest.raises(CatalogError, match="judgements.jsonl"):
        evaluate(HashEncoder(), bare)
    r = subprocess.run([sys.executable, "-m", "m5cli", "eval", "--catalog", str(bare), "--encoder", "random"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "judgements.jsonl" in r.stderr
    assert "Recall" not in r.stdout


def test_empty_judgements_are_refused_not_zero(cat_dir, tmp_path):
    d = tmp_path / "nojudged"
    d.mkdir()
    for name in ("products", "queries"):
        (d / f"{name}.jsonl").write_bytes((cat_dir / f"{name}.jsonl").read_bytes())
    (d / "judgements.jsonl").write_bytes(b"")
    with pytest.raises(CatalogError, match="no judged queries"):
        evaluate(HashEncoder(), d)


def test_eval_cli_bad_split_exits_2(cat_dir):
    r = subprocess.run([sys.executable, "-m", "m5cli", "eval", "--catalog", str(cat_dir), "--split", "dev"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "--split" in r.stderr


def test_minilm_weights_ship_in_the_wheel():
    from evaluation.baselines import minilm_model_dir

    d = minilm_model_dir()
    assert (d / "config.json").is_file()
    assert (d / "tokenizer.json").is_file()


def test_minilm_onnx_baseline_gives_sentence_transformers_vectors(tmp_path, monkeypatch):
    """The baseline runs the packaged weights through ONNX Runtime; its vectors must be MiniLM's own."""
    from sentence_transformers import SentenceTransformer

    from evaluation.baselines import MiniLMEncoder, minilm_model_dir

    monkeypatch.setenv("M5_CACHE_DIR", str(tmp_path))
    texts = ["red running shoes size 42", "Kaffeebohnen dunkel 500 g", "سماعات بلوتوث سوداء", "A long listing " + "with many words " * 40]
    enc = MiniLMEncoder(threads=1)
    got = enc.embed(texts)  # (4, 384)
    ref = SentenceTransformer(str(minilm_model_dir()), device="cpu")
    ref.max_seq_length = 128
    want = ref.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert got.shape == (4, 384)
    assert np.einsum("nd,nd->n", got, want).min() > 0.9999
    assert (tmp_path / "minilm" / "all-MiniLM-L6-v2.fp32.onnx").is_file()  # exported once, then reused

"""The hand-written set: per-language metrics worked out by hand on a tiny fixture (tests/evaluation/handwritten_fixture.py),
its home and override, and `m5 eval` evaluating it beside the synthetic split."""

import orjson
import pytest

from evaluation.baselines import BM25Retriever, RandomEncoder
from evaluation.harness import HANDWRITTEN_DIR, evaluate, handwritten_dir, pair_language, to_markdown
from m5cli.main import main
from tests.evaluation.handwritten_fixture import WordEncoder, write_catalog, write_word_bundle


@pytest.fixture(scope="module")
def hw_dir(tmp_path_factory):
    return write_catalog(tmp_path_factory.mktemp("handwritten"))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """The same fixture without fr_FR, standing in for the synthetic catalog."""
    return write_catalog(tmp_path_factory.mktemp("synthetic"), locales=("en_US", "de_DE"))


@pytest.fixture(scope="module")
def words_report(hw_dir):
    return evaluate(WordEncoder(), hw_dir, "test")


@pytest.mark.parametrize("language, queries, ndcg", [("en", 2, 1.0), ("de", 1, 0.0), ("fr", 1, 1.0)])
def test_ndcg_per_language(words_report, language, queries, ndcg):
    """en and fr Exacts rank first; the de Exact shares no word with "Kocher" and 12 spare parts rank above it."""
    m = words_report["search_by_language"][language]
    assert (m["queries"], m["ndcg_at_10"]) == (queries, ndcg)


def test_languages_are_those_of_the_query_locales(words_report):
    assert list(words_report["search_by_language"]) == ["de", "en", "fr"]


def test_exact_share_per_language(words_report):
    """en: 2 of 3 and 1 of 3 listings of the marketplace are Exact; de: none in the top 10; fr: 1 of 2."""
    assert {k: v["exact_share_at_10"] for k, v in words_report["search_by_language"].items()} == {"de": 0.0, "en": 0.5, "fr": 0.5}


def test_de_exact_below_the_top_10_is_still_recalled_at_100(words_report):
    assert words_report["search_by_language"]["de"]["recall_at_100"] == 1.0


def test_overall_ndcg_is_the_mean_over_queries(words_report):
    assert words_report["search"]["ndcg_at_10"] == 0.75  # (1 + 1 + 0 + 1) / 4


def test_lexical_gap_is_computed_when_the_query_has_no_flag(words_report):
    """Only "Kocher" shares no content word with its Exact ("Wasserkocher Edelstahl")."""
    assert (words_report["search_lexical_gap"]["queries"], words_report["search_lexical_gap"]["ndcg_at_10"]) == (1, 0.0)


def test_queries_without_a_head_flag_are_neither_head_nor_tail(words_report):
    assert (words_report["search_head"]["queries"], words_report["search_tail"]["queries"]) == (0, 0)


def test_duplicate_auc_per_language(words_report):
    """en and de+en hold both labels; fr has one negative pair and no AUC."""
    assert words_report["duplicates"]["auc_by_language"] == {"de+en": 1.0, "en": 1.0}


def test_duplicate_auc_per_open_product_line(words_report):
    assert words_report["duplicates"]["auc_by_product_line"] == {"hardlines": 1.0}


def test_pair_language_names_both_languages_across():
    assert (pair_language("en_US", "en_GB"), pair_language("fr_FR", "de_DE")) == ("en", "de+fr")


def test_markdown_has_a_row_per_language(words_report):
    assert "| words | fr | 1 | 1.000 | 1.000 | 1.000 | 1.000 | 0.500 | - |" in to_markdown("words", words_report)


def test_bm25_per_language(hw_dir):
    """BM25 reads the plain rendering (an "unknown" product type is one more word): the same ranking as the bag of words."""
    r = evaluate(None, hw_dir, "test", scorer_factory=BM25Retriever)
    assert {k: v["ndcg_at_10"] for k, v in r["search_by_language"].items()} == {"de": 0.0, "en": 1.0, "fr": 1.0}


def test_random_encoder_runs_on_every_language(hw_dir):
    assert list(evaluate(RandomEncoder(), hw_dir, "test")["search_by_language"]) == ["de", "en", "fr"]


def test_handwritten_home_is_beside_the_evaluation_package(monkeypatch):
    monkeypatch.delenv("M5_HANDWRITTEN_DIR")
    assert handwritten_dir() == HANDWRITTEN_DIR
    assert HANDWRITTEN_DIR.parent.name == "evaluation"


def test_handwritten_env_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(tmp_path / "env"))
    assert (handwritten_dir(), handwritten_dir(tmp_path / "flag")) == (tmp_path / "env", tmp_path / "flag")


# `m5 eval`


def test_eval_default_reports_both_sets_side_by_side(synthetic_dir, hw_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(hw_dir))
    assert main(["eval", "--catalog", str(synthetic_dir), "--encoder", "bm25", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    main_table = out.split("Per language")[0].splitlines()
    recall_at_100 = {
        x.split(" | ")[0]: x.split(" | ")[3] for x in main_table if x.startswith(("| synthetic test | bm25 |", "| hand-written | bm25 |"))
    }
    assert recall_at_100 == {"| synthetic test": "1.000", "| hand-written": "1.000"}


def test_eval_per_language_rows_per_set(synthetic_dir, hw_dir, monkeypatch, capsys):
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(hw_dir))
    assert main(["eval", "--catalog", str(synthetic_dir), "--encoder", "bm25"]) == 0
    out = capsys.readouterr().out
    assert ("| hand-written | bm25 | fr | 1 |" in out, "| synthetic test | bm25 | fr |" in out) == (True, False)


def test_eval_out_writes_a_report_key_per_set(synthetic_dir, hw_dir, tmp_path, capsys):
    assert main(["eval", "--catalog", str(synthetic_dir), "--handwritten", str(hw_dir), "--encoder", "random", "--out", str(tmp_path)]) == 0
    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert set(report) == {"synthetic", "handwritten"}
    assert {"synthetic_recall_at_k.png", "handwritten_recall_at_k.png", "report.md"} <= {p.name for p in tmp_path.iterdir()}


def test_eval_handwritten_only(hw_dir, tmp_path, capsys):
    assert main(["eval", "--handwritten-only", "--handwritten", str(hw_dir), "--encoder", "random", "--out", str(tmp_path)]) == 0
    assert set(orjson.loads((tmp_path / "report.json").read_bytes())) == {"handwritten"}


def test_eval_no_handwritten(synthetic_dir, hw_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(hw_dir))
    assert main(["eval", "--catalog", str(synthetic_dir), "--no-handwritten", "--encoder", "random", "--out", str(tmp_path)]) == 0
    assert set(orjson.loads((tmp_path / "report.json").read_bytes())) == {"synthetic"}


def test_eval_without_a_handwritten_set_evaluates_the_catalog(synthetic_dir, tmp_path, capsys):
    """The autouse fixture points M5_HANDWRITTEN_DIR at nothing: the default skips the set instead of failing."""
    assert main(["eval", "--catalog", str(synthetic_dir), "--encoder", "random", "--out", str(tmp_path)]) == 0
    assert set(orjson.loads((tmp_path / "report.json").read_bytes())) == {"synthetic"}


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--handwritten-only"], "no hand-written set at"),
        (["--handwritten-only", "--catalog", "X"], "drop --catalog"),
        ([], "--catalog is required"),
        (["--catalog", "X", "--no-handwritten", "--handwritten", "Y"], "contradict"),
    ],
)
def test_eval_refuses_unclear_sets(argv, says, capsys):
    assert main(["eval", "--encoder", "random", *argv]) == 2
    assert says in capsys.readouterr().err


def test_eval_bundle_keeps_its_render_scheme_on_the_handwritten_set(hw_dir, tmp_path, capsys):
    """A bundle reads its manifest's scheme (field tokens here), the same on both sets."""
    bundle = write_word_bundle(tmp_path / "bundle", render_scheme="fields")
    assert main(["eval", "--handwritten-only", "--handwritten", str(hw_dir), "--bundle", str(bundle), "--out", str(tmp_path / "o")]) == 0
    r = orjson.loads((tmp_path / "o" / "report.json").read_bytes())["handwritten"]
    assert (r["scheme"], r["search_by_language"]["fr"]["ndcg_at_10"]) == ("fields", 1.0)


def test_minilm_baseline_on_the_handwritten_set(hw_dir):
    """The off-the-shelf model reads fr and an "unknown" product type like any other text."""
    from evaluation.baselines import MiniLMEncoder

    r = evaluate(MiniLMEncoder(threads=1), hw_dir, "test")
    assert list(r["search_by_language"]) == ["de", "en", "fr"]

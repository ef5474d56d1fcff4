"""The yardstick must be right: determinism, label consistency, no leakage between splits."""

import hashlib
import subprocess
import sys

import pytest

from catalog.events import iter_change_events
from catalog.generate import content_words, generate_catalog
from catalog.io import CatalogError, load_catalog
from catalog.vocab import KEY_ATTRIBUTES, canonical_value
from m5core.jsonl import read_jsonl
from m5core.schema import ChangeEvent, Product


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    d = tmp_path_factory.mktemp("cat")
    generate_catalog(d, 2000, seed=11, show_progress=False)
    return load_catalog(d)


def _digest(d):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.glob("*.jsonl"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, cat):
    generate_catalog(tmp_path / "a", 2000, seed=11, show_progress=False)
    generate_catalog(tmp_path / "b", 2000, seed=12, show_progress=False)
    assert _digest(tmp_path / "a") == _digest(cat.dir)
    assert _digest(tmp_path / "b")["products.jsonl"] != _digest(cat.dir)["products.jsonl"]


def test_every_product_is_valid_and_asins_unique(cat):
    products = [Product.model_validate(p) for p in cat.products()]
    assert len(products) == 2000 == len({p.asin for p in products})
    assert {p.locale for p in products} == {"en_US", "de_DE", "ar_AE"}


def _canon(p):
    return {k: canonical_value(k, v) for k, v in p["attributes"].items()}


def test_exact_judgements_match_every_query_attribute(cat):
    products = {p["asin"]: p for p in cat.products()}
    judg = cat.judgements()
    n_exact = 0
    for q in cat.queries():
        for asin, label in judg[q["query_id"]].items():
            p = products[asin]
            if label == "E":
                n_exact += 1
                assert p["product_type"] == q["product_type"]
                assert p["locale"] == q["locale"]
                canon = _canon(p)
                assert all(canon.get(k) == v for k, v in q["attributes"].items()), (q, p["attributes"])
            elif label == "S":
                assert p["product_type"] == q["product_type"]
    assert n_exact > 100


def test_exact_judgements_are_complete(cat):
    """Every product that matches a query is judged Exact: recall is measured against all of them, not a pool."""
    by_key = {}
    for p in cat.products():
        by_key.setdefault((p["locale"], p["product_type"]), []).append((p["asin"], _canon(p)))
    judg = cat.judgements()
    for q in cat.queries():
        truth = {a for a, canon in by_key.get((q["locale"], q["product_type"]), []) if all(canon.get(k) == v for k, v in q["attributes"].items())}
        assert {a for a, lbl in judg[q["query_id"]].items() if lbl == "E"} == truth, q["text"]


def test_training_only_queries_never_repeat_an_evaluation_query(cat):
    qs = cat.queries()
    extra = [q for q in qs if q["query_id"].startswith("t")]
    assert len(extra) > 100
    assert all(q["split"] == "train" for q in extra)  # 0.2 per product, minus repeats
    held_out = {q["text"] for q in qs if q["split"] != "train"}
    assert held_out
    assert not held_out & {q["text"] for q in extra}


def test_duplicate_clusters_share_type_brand_and_key_attributes(cat):
    products = {p["asin"]: p for p in cat.products()}
    multi = [c for c in cat.clusters() if len(c["asins"]) > 1]
    assert multi
    for c in multi:
        ps = [products[a] for a in c["asins"]]
        assert len({p["product_type"] for p in ps}) == 1
        assert len({p["brand"] for p in ps}) == 1
        for k in KEY_ATTRIBUTES:
            vals = {_canon(p).get(k) for p in ps}
            assert len(vals) == 1, (k, [p["attributes"] for p in ps])


def test_hard_negatives_differ_in_a_key_attribute(cat):
    products = {p["asin"]: p for p in cat.products()}
    hard = [d for d in read_jsonl(cat.dir / "duplicate_pairs.jsonl") if d.get("hard")]
    assert hard
    for d in hard:
        a, b = products[d["asin_a"]], products[d["asin_b"]]
        assert d["label"] == 0
        assert a["brand"] == b["brand"]
        assert a["product_type"] == b["product_type"]
        assert _canon(a) != _canon(b)


def test_splits_share_no_cluster_or_query(cat):
    split_of = {c["cluster_id"]: c["split"] for c in cat.clusters()}
    for d in cat.duplicate_pairs():
        assert split_of[d["cluster_a"]] == split_of[d["cluster_b"]] == d["split"]
    qs = cat.queries()
    assert len({q["query_id"] for q in qs}) == len(qs)
    assert {q["split"] for q in qs} == {"train", "valid", "test"}
    split_of_text = {}
    for q in qs:  # a repeated query text stays in one split (train-only extras are train)
        assert split_of_text.setdefault(q["text"], q["split"]) == q["split"], q["text"]


def test_lexical_gap_slice_is_large_and_honest(cat):
    products = {p["asin"]: p for p in cat.products()}
    judg = cat.judgements()
    qs = [q for q in cat.queries() if q["query_id"].startswith("q")]  # the judged set (train-only extras aside)
    gap = [q for q in qs if q["lexical_gap"]]
    assert len(gap) / len(qs) >= 0.25
    for q in gap:
        words = content_words(q["text"])
        for asin, label in judg[q["query_id"]].items():
            if label == "E":
                p = products[asin]
                text = " ".join([p["title"], p["description"], *p["bullet_points"]])
                assert not (words & content_words(text)), (q["text"], p["title"])


def test_change_events_are_valid_and_monotonic(cat):
    products = list(cat.products())[:50]
    last = {p["asin"]: p["version"] for p in products}
    n = 0
    for ev in iter_change_events(products, 500, seed=3):
        ChangeEvent.model_validate(ev.model_dump())
        assert ev.version > last[ev.asin]
        last[ev.asin] = ev.version
        n += 1
    assert n > 400


def test_missing_files_say_how_to_fix(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CatalogError, match="m5 catalog generate"):
        load_catalog(tmp_path / "x").judgements()


@pytest.mark.parametrize("argv,word", [(["--products", "0"], "--products"), (["--locales", "us,fr"], "--locales")])
def test_cli_errors_exit_2_naming_the_flag(tmp_path, argv, word):
    r = subprocess.run([sys.executable, "-m", "m5cli", "catalog", "generate", "--out", str(tmp_path), *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert word in r.stderr

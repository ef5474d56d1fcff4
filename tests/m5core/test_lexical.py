import json

import numpy as np
import pytest

from m5core.bundle import BundleError, LexicalRef, Manifest, TowerSpec
from m5core.lexical import ANALYZERS, LexicalBlock, char_ngrams, pack_terms, unpack_terms, words

CORPUS = [
    "Gardena Gartenschlauch 20m, 1/2 Zoll, knickfest, mit Spritze",
    "Cast iron skillet 26 cm, pre-seasoned, oven safe",
    "Cast iron grill pan, square, 28cm, enamel",
    "خرطوم حديقة 15 متر مع مسدس رش",
    "USB-C cable 2m braided, 60W fast charge",
    "Katzenstreu klumpend 10 l, staubarm, Babypuder Duft",
    "Sunscreen SPF 50+, water resistant, 200 ml",
]
QUERIES = ["cast iron skillet", "gartenschlauch 20m", "خرطوم حديقة", "usb-c cable braided", "katzenstreu staubarm", "spf 50 sunscreen"]


@pytest.mark.parametrize("analyzer", sorted(ANALYZERS))
def test_products_dot_queries_ranks_as_bm25_does(analyzer):
    """With buckets to spare (no collisions), the block's inner product is the bm25s library's score over the same terms."""
    import bm25s

    terms = ANALYZERS[analyzer]
    block = LexicalBlock.fit(CORPUS, dims=1 << 20, share=0.4, analyzer=analyzer)
    scores = block.queries(QUERIES) @ block.products(CORPUS).T  # (queries, products)
    bm25 = bm25s.BM25(k1=1.2, b=0.75)
    bm25.index([terms(t) for t in CORPUS], show_progress=False)
    for qi, q in enumerate(QUERIES):
        ref = np.asarray(bm25.get_scores(sorted(set(terms(q)))))
        assert np.argmax(scores[qi]) == np.argmax(ref) and ref.max() > 0, q
        np.testing.assert_allclose(scores[qi] / 2.2, ref, rtol=1e-4, atol=1e-5)  # BM25 up to the constant k1 + 1


def test_appended_vectors_are_unit_length_and_let_a_shared_word_decide():
    """Two products the dense part cannot tell apart: the one sharing the query's rare word wins, in any script."""
    block = LexicalBlock.fit(CORPUS, dims=512, share=0.4)
    dense = np.tile(np.eye(1, 8, dtype=np.float32), (2, 1))  # identical dense vectors
    for query, hit, miss in (
        ("zorblax hose", "zorblax garden hose 20m", "garden hose 20m"),
        ("خرطوم", "خرطوم حديقة", "مسدس رش"),
        ("Akkuschrauber", "Akkuschrauber 18V", "Bohrmaschine 18V"),
    ):
        p = block.append(dense, block.products([hit, miss]))
        q = block.append(dense[:1], block.queries([query]))
        np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)
        assert p.shape == (2, 8 + 512)
        s = (q @ p.T)[0]
        assert s[0] > s[1], query


def test_char_ngrams_mark_word_ends_and_keep_short_words():
    assert char_ngrams("Akku 4 XL") == ["<akk", "akku", "kku>", "<4>", "<xl>"]
    assert char_ngrams("ab") == ["<ab>"]
    assert char_ngrams("abc") == ["<abc", "abc>"]
    assert char_ngrams("-- !") == []


def test_char4_matches_compounds_clitics_and_typos_that_whole_words_miss():
    """A query word that is part of, or a misspelling of, a listing's word: whole words score the two listings the
    same (no shared word), 4-grams prefer the one that shares most of it."""
    dense = np.tile(np.eye(1, 8, dtype=np.float32), (2, 1))
    for query, hit, miss in (
        ("akkuschrauber", "Akku-Bohrschrauber 18V", "Bohrmaschine 18V"),
        ("مثقاب", "المثقاب اللاسلكي", "مفك براغي"),
        ("sunglases polarized", "sunglasses uv400", "ski goggles uv400"),
    ):
        for analyzer, wins in (("char4", True), ("words", False)):
            block = LexicalBlock.fit(CORPUS, dims=1 << 16, share=0.4, analyzer=analyzer)
            s = (block.append(dense[:1], block.queries([query])) @ block.append(dense, block.products([hit, miss])).T)[0]
            assert bool(s[0] > s[1] + 1e-6) is wins, (analyzer, query)


def test_known_share_counts_the_words_a_vocabulary_reads():
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from m5core.encoder import known_share

    vocab = ["[UNK]", "cord", "##less", "drill", "with", "two", "batteries", "z", "##wei"] + list("مثقابلسكي") + [f"##{c}" for c in "مثقابلسكي"]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = BertPreTokenizer()
    assert known_share(tok, "cordless drill with two batteries") == 1.0
    assert known_share(tok, "مثقاب لاسلكي") == 0.0  # letter by letter
    assert known_share(tok, "drill مثقاب") == 0.5
    assert known_share(tok, "zwei 18v") == 1.0  # two pieces of two characters; model numbers left out
    assert known_share(tok, "18v 2000") == 1.0
    assert words("18V") == ["18v"]


def test_adaptive_share_sends_an_unreadable_query_to_the_block_alone():
    block = LexicalBlock.fit(CORPUS, dims=64, share=0.4)
    assert block.adaptive
    assert block.query_share(1.0) == pytest.approx(0.4)
    assert block.query_share(0.0) == 1.0
    assert block.query_share(0.5) == pytest.approx(0.7)
    fixed = LexicalBlock.fit(CORPUS, dims=64, share=0.4, adaptive=False)
    assert fixed.query_share(0.0) == pytest.approx(0.4)
    dense = np.full((2, 4), 0.5, np.float32)
    v = block.append(dense, block.queries(["خرطوم حديقة", "cast iron"]), shares=[1.0, 0.4])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert not v[0, :4].any()
    assert v[1, :4].any()
    np.testing.assert_allclose(v[1], block.append(dense[1:], block.queries(["cast iron"]))[0], rtol=1e-6)


def test_text_without_words_adds_nothing():
    block = LexicalBlock.fit(CORPUS, dims=64, share=0.4)
    assert not block.products(["", "--- !!"]).any()
    assert not block.queries([""]).any()
    dense = np.full((1, 4), 0.5, np.float32)
    np.testing.assert_allclose(block.append(dense, block.queries([""]))[0, :4], dense[0], rtol=1e-6)


def test_save_load_round_trip_and_bad_files_name_themselves(tmp_path):
    block = LexicalBlock.fit(CORPUS, dims=32, share=0.3)
    block.save(tmp_path / "lexical.json")
    back = LexicalBlock.load(tmp_path / "lexical.json")
    np.testing.assert_allclose(back.products(CORPUS), block.products(CORPUS), rtol=1e-5, atol=1e-6)
    d = json.loads((tmp_path / "lexical.json").read_text())
    assert d["analyzer"] == "char4"
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in d.items() if k != "analyzer"}))
    assert LexicalBlock.load(tmp_path / "old.json").analyzer == "words"  # bundles exported before analyzers had names
    (tmp_path / "odd.json").write_text(json.dumps({**d, "analyzer": "stems"}))
    with pytest.raises(ValueError, match="odd.json.*analyzer 'stems'"):
        LexicalBlock.load(tmp_path / "odd.json")
    (tmp_path / "short.json").write_text(json.dumps({**d, "idf": d["idf"][:5]}))
    with pytest.raises(ValueError, match="short.json.*32.*5 idf"):
        LexicalBlock.load(tmp_path / "short.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not a lexical block"):
        LexicalBlock.load(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="dims"):
        LexicalBlock.fit(CORPUS, dims=0, share=0.4)
    with pytest.raises(ValueError, match="share"):
        LexicalBlock.fit(CORPUS, dims=8, share=1.0)


def test_rescore_without_collisions_is_the_served_inner_product():
    """With buckets to spare the hashed block is exact, so the re-score must give what the vectors' inner product gives
    (up to the float16 of the stored weights); at 8 buckets collisions blur the hashed score and the re-score still
    ranks as the exact one does."""
    rng = np.random.default_rng(0)
    dense_p = rng.standard_normal((len(CORPUS), 6)).astype(np.float32)
    dense_p /= np.linalg.norm(dense_p, axis=1, keepdims=True)
    for dims in (1 << 20, 8):
        block = LexicalBlock.fit(CORPUS, dims=dims, share=0.4)
        products = block.append(dense_p, block.products(CORPUS))
        blobs = block.product_terms(CORPUS)
        assert all(blobs)
        for qi, text in enumerate(QUERIES):
            dense_q = dense_p[qi : qi + 1]
            q = block.append(dense_q, block.queries([text]), np.array([0.7]))[0]
            got = block.rescore(q, text, products @ q, blobs)
            if dims == 1 << 20:
                np.testing.assert_allclose(got, products @ q, atol=2e-3)
            else:
                wide = LexicalBlock.fit(CORPUS, dims=1 << 20, share=0.4)
                ref = wide.append(dense_p, wide.products(CORPUS)) @ wide.append(dense_q, wide.queries([text]), np.array([0.7]))[0]
                np.testing.assert_allclose(got, ref, atol=2e-3)


def test_packed_terms_round_trip_and_candidates_without_terms_keep_their_score():
    ids, sat = np.array([1, 5, 2**32 - 1]), np.array([0.6, 1.0, 2.2], np.float32)
    norms, terms, owner = unpack_terms([pack_terms(ids, sat, 3.0, 4.0), pack_terms(ids[:1], sat[:1], 1.0, 2.0)])
    assert norms.tolist() == [[3.0, 4.0], [1.0, 2.0]] and owner.tolist() == [0, 0, 0, 1]
    assert terms["id"].tolist() == [1, 5, 2**32 - 1, 1] and np.allclose(terms["sat"], [*sat, sat[0]], rtol=1e-3)
    with pytest.raises(ValueError, match="13 bytes"):
        unpack_terms([b"1234567890123"])
    block = LexicalBlock.fit(CORPUS, dims=16, share=0.4)
    q = block.append(np.ones((1, 2), np.float32) / np.sqrt(2), block.queries(["cable"]))[0]
    scores = np.array([0.3, 0.2, 0.1], np.float32)
    np.testing.assert_array_equal(block.rescore(q, "cable", scores, [None, None, b""]), scores)
    got = block.rescore(q, "cable", scores, [None, block.product_terms(["USB-C cable 2m"])[0], None])
    assert got[0] == scores[0] and got[2] == scores[2] and got[1] != scores[1]


def test_exact_statistics_survive_save_and_old_files_have_none(tmp_path):
    block = LexicalBlock.fit(CORPUS, dims=32, share=0.3)
    assert block.exact and block.n_docs == len(CORPUS)
    block.save(tmp_path / "lexical.json")
    back = LexicalBlock.load(tmp_path / "lexical.json")
    (n1, t1, _), (n2, t2, _) = (unpack_terms(b.product_terms(CORPUS)) for b in (back, block))
    np.testing.assert_allclose(n1, n2, rtol=1e-5)  # idf saved to 6 decimals
    assert t1.tobytes() == t2.tobytes()
    d = json.loads((tmp_path / "lexical.json").read_text())
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in d.items() if not k.startswith("exact") and k != "n_docs"}))
    old = LexicalBlock.load(tmp_path / "old.json")
    assert not old.exact and old.product_terms(CORPUS) == [None] * len(CORPUS)
    (tmp_path / "unsorted.json").write_text(json.dumps({**d, "exact_ids": d["exact_ids"][::-1]}))
    with pytest.raises(ValueError, match="unsorted.json: exact_ids must be sorted"):
        LexicalBlock.load(tmp_path / "unsorted.json")


def test_manifest_refuses_a_lexical_block_that_leaves_no_dense_part():
    with pytest.raises(ValueError, match="leaves no dense part"):
        Manifest(version="t", created_at=0.0, dim=16, towers={"product": TowerSpec(onnx="p.onnx")}, lexical=LexicalRef(dims=16))
    m = Manifest(version="t", created_at=0.0, dim=48, towers={"product": TowerSpec(onnx="p.onnx")}, lexical=LexicalRef(dims=16))
    assert m.dense_dim == 32


def test_trained_bundle_serves_dense_plus_lexical(trained_bundle, tmp_path):
    """The exported bundle carries the block: both towers give dense + block dims; `off` gives the tower alone."""
    import shutil

    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder

    m = load_manifest(trained_bundle)
    assert m.lexical is not None
    assert m.dim == m.dense_dim + m.lexical.dims
    prod, query = OnnxEncoder(trained_bundle, "product"), OnnxEncoder(trained_bundle, "query")
    dense = OnnxEncoder(trained_bundle, "product", lexical="off")
    assert prod.dim == query.dim == m.dim
    assert dense.dim == m.dense_dim
    texts = ["zorblax garden hose 20m", "garden hose 20m"]
    p, q = prod.embed(texts), query.embed(["zorblax hose"])
    assert p.shape == (2, m.dim)
    assert dense.embed(texts).shape == (2, m.dense_dim)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)
    s = (q @ p.T)[0]
    assert s[0] - s[1] > 0.01

    copy = tmp_path / "b"
    shutil.copytree(trained_bundle, copy)
    (copy / "lexical.json").write_text("{}")
    with pytest.raises(BundleError, match="lexical.json"):
        OnnxEncoder(copy, "product")


def test_a_batch_of_rescores_is_each_search_rescored_alone():
    """`/search/batch` re-scores all its searches in one pass: no search may see another's query terms or vector."""
    rng = np.random.default_rng(1)
    block = LexicalBlock.fit(CORPUS, dims=8, share=0.4)
    dense_p = rng.standard_normal((len(CORPUS), 6)).astype(np.float32)
    products = block.append(dense_p / np.linalg.norm(dense_p, axis=1, keepdims=True), block.products(CORPUS))
    blobs = block.product_terms(CORPUS)
    queries = block.append(products[: len(QUERIES), :6], block.queries(QUERIES), np.full(len(QUERIES), 0.7))
    picks = [rng.permutation(len(CORPUS))[: 2 + i % 3] for i in range(len(QUERIES))]  # each search its own candidates
    cand_blobs = [[blobs[j] if j % 4 else None for j in pick] for pick in picks]  # some without stored terms
    scores = [products[pick] @ q for pick, q in zip(picks, queries)]
    many = block.rescore_many(queries, QUERIES, scores, cand_blobs)
    alone = [block.rescore(q, t, sc, bl) for q, t, sc, bl in zip(queries, QUERIES, scores, cand_blobs)]
    assert len(many) == len(QUERIES)
    for got, want in zip(many, alone):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(got, sc) for got, sc in zip(many, scores))  # it did re-score

"""ANN invariants: recall against brute force on seeded clustered data, filters, updates, snapshots."""

import numpy as np
import pytest

from m5core.index import AnnIndex
from m5core.schema import id_to_asin

LOCALES = ["en_US", "de_DE", "ar_AE"]
LINES = ["consumables", "hardlines", "media", "softlines"]


def clustered(n, dim=32, clusters=400, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make(kind, n=6000, dim=32):
    x = clustered(n, dim)
    asins = [id_to_asin(1000 + i) for i in range(n)]
    locs = [LOCALES[i % 3] for i in range(n)]
    pls = [LINES[i % 4] for i in range(n)]
    return AnnIndex.build(dim, asins, x, locs, pls, [1] * n, kind=kind), x, asins, locs, pls


def recall_at_10(idx, x, asins, queries, mask=None, **kw):
    scores = queries @ x.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    truth = np.argsort(-scores, axis=1)[:, :10]
    got = idx.search(queries, 10, **kw)
    hits = sum(len({asins[j] for j in t} & {a for a, _ in g}) for t, g in zip(truth, got))
    return hits / (10 * len(queries))


# Small synthetic sets cut natural clusters across IVF lists, so IVF needs a wider probe here than
# at 1M scale (docs/benchmarks.md measures the defaults there).
EFFORT = {"flat": None, "ivf_sq8": 64, "hnsw": None}


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8", "hnsw"])
def test_recall_against_brute_force(kind):
    idx, x, asins, locs, pls = make(kind)
    q = clustered(100, seed=7)
    assert recall_at_10(idx, x, asins, q, effort=EFFORT[kind]) >= 0.95
    mask = np.array([loc == "de_DE" and pl == "media" for loc, pl in zip(locs, pls)])
    r = recall_at_10(idx, x, asins, q, mask=mask, locale="de_DE", product_line="media", effort=EFFORT[kind])
    assert r >= 0.95
    for hits in idx.search(q[:5], 10, locale="de_DE", product_line="media"):
        assert len(hits) == 10
        assert all(locs[asins.index(a)] == "de_DE" and pls[asins.index(a)] == "media" for a, _ in hits)


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8", "hnsw"])
def test_upsert_replace_remove_exclude(kind):
    idx, x, asins, _, _ = make(kind, n=3000)
    a = asins[10]
    new = x[2000]
    idx.upsert([a], new[None], ["en_US"], ["media"], [2])
    assert len(idx) == 3000
    assert idx.version_of(a) == 2
    top = idx.search(new[None], 2)[0]
    assert a in [h[0] for h in top]
    idx.remove([a])
    assert not idx.contains(a)
    assert len(idx) == 2999
    assert a not in [h[0] for h in idx.search(new[None], 20)[0]]
    idx.upsert([a], new[None], ["en_US"], ["media"], [3])
    assert idx.contains(a)
    hits = idx.search(new[None], 5, exclude=a)[0]
    assert a not in [h[0] for h in hits]
    assert len(hits) == 5


def test_k_larger_than_n_and_empty():
    idx = AnnIndex(8, "flat")
    assert idx.search(np.ones((1, 8), np.float32), 5) == [[]]
    v = np.eye(8, dtype=np.float32)[:3]
    idx.upsert(["A000000001", "A000000002", "A000000003"], v, ["en_US"] * 3, ["media"] * 3, [1, 1, 1])
    assert len(idx.search(v[:1], 100)[0]) == 3


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8"])
def test_snapshot_round_trip(tmp_path, kind):
    idx, x, asins, _, _ = make(kind, n=3000)
    idx.remove([asins[0]])
    idx.save(tmp_path / "snap", {"offsets": {"catalog.embeddings:0": 42}})
    back, meta = AnnIndex.load(tmp_path / "snap")
    assert meta == {"offsets": {"catalog.embeddings:0": 42}}
    assert len(back) == len(idx)
    assert back.kind == idx.kind
    q = x[5:8]
    assert back.search(q, 5, locale="en_US") == idx.search(q, 5, locale="en_US")


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8", "hnsw"])
def test_filter_on_values_first_seen_at_run_time(kind):
    idx, x, asins, _, _ = make(kind, n=3000)
    new = [id_to_asin(900_000 + i) for i in range(20)]
    idx.upsert(new, clustered(20, seed=3), ["fr_FR"] * 20, ["garden"] * 10 + ["media"] * 10, [1] * 20)
    q = x[:3]
    for hits in idx.search(q, 10, locale="fr_FR", product_line="garden"):
        assert {a for a, _ in hits} == set(new[:10])
    for hits in idx.search(q, 30, product_line="garden"):
        assert {a for a, _ in hits} == set(new[:10])


def test_unknown_filter_value_matches_nothing_and_keeps_no_state():
    idx, x, _, _, _ = make("flat", n=500)
    masks, cache = set(idx._masks), set(idx._sel_cache)
    assert idx.search(x[:2], 5, locale="ja_JP") == [[], []]
    assert idx.search(x[:2], 5, locale="en_US", product_line="garden") == [[], []]
    assert (set(idx._masks), set(idx._sel_cache)) == (masks, cache)


def test_snapshot_keeps_run_time_values(tmp_path):
    idx, x, _, _, _ = make("flat", n=500)
    idx.upsert(["F000000001"], x[:1], ["fr_FR"], ["garden"], [1])
    idx.save(tmp_path / "snap")
    back, _ = AnnIndex.load(tmp_path / "snap")
    assert back.search(x[:1], 5, locale="fr_FR", product_line="garden")[0][0][0] == "F000000001"


def test_snapshots_hold_plain_arrays_and_a_pickled_one_is_refused(tmp_path):
    """Whoever can write the snapshot directory must not be able to run code in the service: no pickle on load."""
    import json as _json

    idx = AnnIndex(8, "flat", "v1")
    vecs = np.eye(8, dtype=np.float32)[:3]
    idx.upsert(["B000000001", "B000000002", "B000000003"], vecs, ["en_US", "de_DE", "en_US"], ["media", "toys", "media"], [1, 1, 2])
    idx.save(tmp_path / "snap")
    back, _ = AnnIndex.load(tmp_path / "snap")
    assert back.search(vecs[:1], 3, locale="en_US")[0][0][0] == "B000000001"
    assert back.version_of("B000000003") == 2
    with np.load(tmp_path / "snap" / "meta.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    z = dict(np.load(tmp_path / "snap" / "meta.npz"))
    z["asins"] = np.array(["B000000001", "B000000002", "B000000003"], dtype=object)  # a pickled array where strings belong
    np.savez(tmp_path / "snap" / "meta.npz", **z)
    with pytest.raises(ValueError, match="allow_pickle"):
        AnnIndex.load(tmp_path / "snap")
    info = _json.loads((tmp_path / "snap" / "index.json").read_text())
    del info["mask_keys"]
    (tmp_path / "snap" / "index.json").write_text(_json.dumps(info))
    with pytest.raises(ValueError, match="rebuilt from the store"):
        AnnIndex.load(tmp_path / "snap")


def _live_set(idx, x, asins, removed):
    """Every live product finds itself first; a removed one is found by nothing."""
    for i in range(0, len(asins), 97):
        top = idx.search(x[i : i + 1], 3, effort=idx._index.nlist if idx.kind == "ivf_sq8" else None)[0]
        if asins[i] in removed:
            assert asins[i] not in {a for a, _ in top}
        else:
            assert top[0][0] == asins[i], (i, top)


def test_flat_becomes_ivf_in_the_background_and_keeps_every_change_made_meanwhile():
    import threading

    n, dim = 3000, 32
    x = clustered(n, dim)
    asins = [id_to_asin(5000 + i) for i in range(n)]
    release = threading.Event()

    class Slow(AnnIndex):
        def _new_index(self, kind, train=None, n_total=None):
            if kind == "ivf_sq8":
                assert release.wait(30)  # the lists "train" until the test has searched and written meanwhile
            return super()._new_index(kind, train, n_total)

    idx = Slow(dim, "ivf_sq8")
    idx.upsert(asins[:1500], x[:1500], ["en_US"] * 1500, ["media"] * 1500, [1] * 1500)  # past IVF_MIN_TRAIN: rebuild starts
    assert idx.kind == "flat" and idx._rebuilder is not None
    # While it trains, searches and updates go on against the flat index (they would deadlock under a held lock).
    done = threading.Event()

    def meanwhile():
        assert idx.search(x[:1], 1)[0][0][0] == asins[0]
        idx.upsert(asins[1500:], x[1500:], ["de_DE"] * 1500, ["media"] * 1500, [1] * 1500)
        x[7] = x[8]  # product 7 re-listed with another vector
        idx.upsert([asins[7]], x[7:8], ["en_US"], ["media"], [2])
        idx.remove([asins[11], asins[2000]])
        done.set()

    t = threading.Thread(target=meanwhile)
    t.start()
    assert done.wait(30), "searches or updates waited for the rebuild"
    t.join()
    release.set()
    assert idx.wait_rebuilt(60)
    assert idx.kind == "ivf_sq8" and idx.rebuilds == 1 and len(idx) == n - 2
    assert idx.version_of(asins[7]) == 2 and not idx.contains(asins[11])
    assert idx._index.ntotal == n - 2
    _live_set(idx, x, asins, {asins[11], asins[2000]})
    assert {a for a, _ in idx.search(x[7:8], 2, effort=idx._index.nlist)[0]} == {asins[7], asins[8]}
    assert idx.search(x[2500:2501], 5, locale="de_DE", effort=idx._index.nlist)[0][0][0] == asins[2500]


def test_ivf_lists_are_retrained_when_the_catalog_has_grown():
    from m5core.index import GROW_FACTOR, ivf_lists

    dim = 32
    x = clustered(9000, dim, seed=3)
    asins = [id_to_asin(20000 + i) for i in range(9000)]
    idx = AnnIndex.build(dim, asins[:2000], x[:2000], ["en_US"] * 2000, ["media"] * 2000, [1] * 2000, kind="ivf_sq8")
    assert idx.trained_on == 2000 and idx._index.nlist == ivf_lists(2000)
    grown = int(GROW_FACTOR * 2000)
    for at in range(2000, grown + 1, 1000):  # the catalog grows past 4x what the lists were trained on
        idx.upsert(asins[at : at + 1000], x[at : at + 1000], ["en_US"] * 1000, ["media"] * 1000, [1] * 1000)
    assert idx.wait_rebuilt(60) and idx.rebuilds == 1
    assert idx.trained_on >= grown and idx._index.nlist == ivf_lists(idx.trained_on) > ivf_lists(2000)
    _live_set(idx, x[: len(idx)], asins[: len(idx)], set())


def test_the_openmp_setting_reaches_every_thread_that_searches():
    """OpenMP keeps its thread count per thread: the service sets it once, and the thread pool that runs batch searches
    and the feed follower's thread must search with it too (idle OpenMP threads spin against the workers)."""
    import threading

    import faiss

    import m5core.index as index_module
    from m5core.index import set_threads

    idx, x, *_ = make("flat", n=200)
    seen, before = [], faiss.omp_get_max_threads()

    def worker():
        idx.search(x[:2], 3)
        seen.append(faiss.omp_get_max_threads())

    try:
        set_threads(1)
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert seen == [1]
    finally:
        index_module._THREADS = None  # other tests keep OpenMP's default
        faiss.omp_set_num_threads(before)


def test_a_near_search_probes_only_its_effort_and_still_finds_close_neighbours():
    """Duplicates (`near=True`): a locale filter of a third of the catalog made a search probe three times the lists
    (so that k matches are scanned), which near-duplicates, sitting in the lists nearest the product, do not need: at
    200k real vectors the same recall of above-threshold pairs at 2.7x less p99 (docs/benchmarks.md, "Duplicates")."""
    import faiss

    n, dim = 12_000, 32
    base = clustered(n // 2, dim, seed=3)
    rng = np.random.default_rng(4)
    twins = base + 0.02 * rng.standard_normal(base.shape).astype(np.float32)  # each product's near-duplicate
    x = np.vstack([base, twins / np.linalg.norm(twins, axis=1, keepdims=True)])
    asins = [id_to_asin(5000 + i) for i in range(n)]
    locs = [LOCALES[i % 3] for i in range(n // 2)] * 2  # a twin shares its original's locale
    idx = AnnIndex.build(dim, asins, x, locs, [LINES[0]] * n, [1] * n, kind="ivf_sq8")
    probes = []
    for near in (False, True):
        faiss.cvar.indexIVF_stats.reset()
        got = idx.search(base[:300], 5, locale="de_DE", effort=4, near=near)
        probes.append(faiss.cvar.indexIVF_stats.nlist / 300)
        want = [asins[n // 2 + i] for i in range(300)]
        found = [w in {a for a, s in hits if s >= 0.9} for w, hits, loc in zip(want, got, locs) if loc == "de_DE"]
        assert np.mean(found) >= 0.97
    assert probes[1] == 4 and probes[0] >= 3 * 4  # the filter widened the plain search's probe, not the near one's


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8", "hnsw"])
def test_filtered_searches_follow_every_update_without_rebuilding_their_bitmaps(kind):
    """The filter bitmaps are kept in step with updates in place (rebuilding one per update cost ~0.5 ms at 1M, paid by
    most filtered searches under a live feed): moves between locales, removals, re-adds and new products all show."""
    idx, x, asins, locs, pls = make(kind, n=3000)
    q = clustered(20, seed=9)
    effort = EFFORT[kind]
    idx.search(q, 10, locale="de_DE", effort=effort)  # the de_DE bitmap, cached
    idx.search(q, 10, locale="de_DE", product_line="media", effort=effort)
    rng = np.random.default_rng(5)
    locs, pls = list(locs), list(pls)
    for _ in range(5):
        moved = rng.choice(3000, 40, replace=False)
        for i in moved:
            locs[i] = "de_DE" if locs[i] != "de_DE" else "en_US"
        idx.upsert([asins[i] for i in moved], x[moved], [locs[i] for i in moved], [pls[i] for i in moved], [2] * 40)
        gone = [asins[i] for i in rng.choice(3000, 20, replace=False)]
        idx.remove(gone)
        live = np.array([idx.contains(a) for a in asins])
        for loc, pl in (("de_DE", None), ("de_DE", "media")):
            mask = live & np.array([lo == loc and (pl is None or p == pl) for lo, p in zip(locs, pls)])
            assert recall_at_10(idx, x, asins, q, mask=mask, locale=loc, product_line=pl, effort=effort) >= 0.95
            for hits in idx.search(q, 10, locale=loc, product_line=pl, effort=effort):
                assert all(mask[asins.index(a)] for a, _ in hits)
    # The cached share the probe is scaled by is the live one.
    _, share = idx._selector("de_DE", None)
    assert share == pytest.approx(sum(1 for a, lo in zip(asins, locs) if lo == "de_DE" and idx.contains(a)) / len(idx))
    # A product added after the bitmap was made is found too.
    new = id_to_asin(99_999)
    idx.upsert([new], q[:1], ["de_DE"], ["media"], [1])
    assert idx.search(q[:1], 1, locale="de_DE", product_line="media", effort=effort)[0][0][0] == new


def test_a_graph_over_the_centroids_probes_the_lists_a_flat_quantizer_would(tmp_path, monkeypatch):
    """From GRAPH_QUANTIZER_LISTS lists the coarse quantiser is an HNSW graph over the centroids (a flat one read all
    4,000 x 640 centroids per query at 1M: 0.72 of a 1.03 ms search). Same lists, so the same recall; a filter so
    selective that the probe widens to every list still finds every match; an older snapshot with a flat quantiser is
    given the graph at load and answers as before."""
    import faiss

    import m5core.index as ix

    x = clustered(20_000, 32, clusters=600)
    asins = [id_to_asin(9000 + i) for i in range(len(x))]
    locs = ["fr_FR" if i % 4000 == 0 else LOCALES[i % 3] for i in range(len(x))]  # fr_FR: five products
    q = clustered(200, 32, clusters=600, seed=11)
    monkeypatch.setattr(ix, "GRAPH_QUANTIZER_LISTS", 10**9)
    flat = AnnIndex.build(32, asins, x, locs, [LINES[0]] * len(x), [1] * len(x), kind="ivf_sq8")
    monkeypatch.setattr(ix, "GRAPH_QUANTIZER_LISTS", 64)
    graph = AnnIndex.build(32, asins, x, locs, [LINES[0]] * len(x), [1] * len(x), kind="ivf_sq8")
    assert isinstance(faiss.downcast_index(flat._index.quantizer), faiss.IndexFlat)
    assert isinstance(faiss.downcast_index(graph._index.quantizer), faiss.IndexHNSWFlat)
    for effort in (4, 16):
        r_flat, r_graph = (recall_at_10(i, x, asins, q, effort=effort) for i in (flat, graph))
        assert abs(r_flat - r_graph) <= 0.01 and r_graph >= (0.85 if effort == 16 else 0.5), (effort, r_flat, r_graph)
    fr = {a for a, loc in zip(asins, locs) if loc == "fr_FR"}
    assert [{a for a, _ in hits} for hits in graph.search(q[:3], 10, locale="fr_FR", effort=4)] == [fr] * 3
    flat.save(tmp_path / "old")
    loaded, _ = AnnIndex.load(tmp_path / "old")
    assert isinstance(faiss.downcast_index(loaded._index.quantizer), faiss.IndexHNSWFlat)
    assert abs(recall_at_10(loaded, x, asins, q, effort=16) - recall_at_10(flat, x, asins, q, effort=16)) <= 0.01
    del flat, loaded, graph  # the swapped quantisers are freed once, by their owners (a double free would crash here)
    import gc

    gc.collect()


@pytest.mark.parametrize("kind", ["flat", "ivf_sq8", "hnsw"])
def test_held_gives_the_indexed_vector_and_locale(kind):
    idx, x, asins, locs, pls = make(kind, n=3000)
    for i in (0, 1, 2, 2999):
        vec, loc = idx.held(asins[i])
        assert loc == locs[i] and float(vec @ x[i]) > 0.995  # ivf_sq8: its 8-bit codes decoded (32-d here)
        if kind != "ivf_sq8":
            np.testing.assert_allclose(vec, x[i], rtol=1e-6)
    idx.remove([asins[0]])
    assert idx.held(asins[0]) is None and idx.held("B0NOTTHERE") is None

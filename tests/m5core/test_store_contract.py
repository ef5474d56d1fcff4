"""One contract, every backend: the embedded store must behave exactly like Redis."""

import numpy as np
import pytest

from m5core.stores.base import VectorRecord
from m5core.stores.local import LocalStore
from m5core.stores.redis import RedisStore


@pytest.fixture(params=["local", "redis", "redis-int8"])
def store(request, tmp_path, unique_name):
    if request.param == "local":
        s = LocalStore(tmp_path / "store.sqlite", "t")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, unique_name("ns"), dtype="int8" if request.param == "redis-int8" else "float32")
    yield s
    s.close()


def rec(asin="B000000001", pv=1, seed=0, doc=b'{"x":1}'):
    v = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    v /= np.linalg.norm(v)
    return VectorRecord(asin, v, pv, "b-1", f"h{seed}", "en_US", "media", 100.0 + pv, doc)


def close(a, b, store):
    tol = 0.02 if getattr(store, "dtype", "float32") == "int8" else 0
    np.testing.assert_allclose(a, b, atol=tol)


def test_put_get_round_trip(store):
    r = rec()
    assert store.put([r]) == [True]
    got = store.get(r.asin)
    close(got.vector, r.vector, store)
    assert (got.product_version, got.bundle_version, got.locale, got.product_line) == (1, "b-1", "en_US", "media")
    assert store.count() == 1
    assert store.version_of(r.asin) == 1
    assert store.get_doc(r.asin) == b'{"x":1}'


def test_documents_of_many_products_in_one_call(store):
    store.put([rec("B000000001", doc=b'{"title":"a"}'), rec("B000000002", seed=1, doc=b'{"title":"b"}')])
    store.delete("B000000002", 2)
    assert store.get_docs(["B000000002", "B000000009", "B000000001"]) == [None, None, b'{"title":"a"}']  # deleted, unknown, live


def test_lexical_terms_for_the_rescore_in_one_call(store):
    """Text search's re-score reads each candidate's stored terms; a touch keeps them, a newer version replaces
    them (here with none), a delete drops them."""
    from dataclasses import replace

    from m5core.lexical import pack_terms, unpack_terms

    blob = pack_terms(np.array([3, 7, 2**32 - 1]), np.array([0.5, 0.25, 0.125], np.float32), 1.5, 2.5)
    store.put([replace(rec("B000000001"), lex=blob), rec("B000000002", seed=1), replace(rec("B000000003", seed=2), lex=blob)])
    store.delete("B000000003", 2)
    lex1, lex2, lex3, lex4 = store.get_terms(["B000000001", "B000000002", "B000000003", "B000000009"])
    norms, terms, _ = unpack_terms([lex1])
    assert norms.tolist() == [[1.5, 2.5]] and terms["id"].tolist() == [3, 7, 2**32 - 1] and terms["sat"].tolist() == [0.5, 0.25, 0.125]
    assert (lex2, lex3, lex4) == (None, None, None)  # written without terms, deleted, unknown
    store.touch("B000000001", 2, b'{"x":2}', 5.0)  # same text, new metadata: the terms stay
    assert store.get_terms(["B000000001"]) == [blob]
    store.put([rec("B000000001", pv=3, seed=5)])
    assert store.get_terms(["B000000001"]) == [None]


def test_older_and_equal_versions_are_skipped(store):
    assert store.put([rec(pv=5, seed=1)]) == [True]
    assert store.put([rec(pv=4, seed=2), rec(pv=5, seed=3)]) == [False, False]
    close(store.get("B000000001").vector, rec(seed=1).vector, store)
    assert store.put([rec(pv=6, seed=4)]) == [True]
    assert store.get("B000000001").product_version == 6
    assert store.count() == 1


def test_delete_leaves_a_tombstone(store):
    store.put([rec(pv=3)])
    assert store.delete("B000000001", 2) is False  # older delete loses
    assert store.delete("B000000001", 4) is True
    assert store.get("B000000001") is None
    assert store.count() == 0
    assert store.version_of("B000000001") == 4
    assert store.put([rec(pv=3, seed=9)]) == [False]  # late, older upsert does not resurrect
    assert store.get("B000000001") is None
    assert store.put([rec(pv=5, seed=9)]) == [True]  # a newer one does
    assert store.count() == 1


def test_delete_of_unknown_asin_blocks_older_upserts(store):
    assert store.delete("B000000009", 7) is True
    assert store.put([rec("B000000009", pv=6)]) == [False]
    assert store.count() == 0


def test_touch_keeps_the_vector(store):
    store.put([rec(pv=1, seed=5)])
    assert store.touch("B000000001", 2, b'{"price":1}', 200.0) is True
    assert store.touch("B000000001", 2, b'{"price":2}', 201.0) is False
    got = store.get("B000000001")
    assert got.product_version == 2
    close(got.vector, rec(seed=5).vector, store)
    assert store.get_doc("B000000001") == b'{"price":1}'


def test_get_many_versions_and_scan(store):
    store.put([rec(f"B00000000{i}", pv=i, seed=i) for i in range(1, 6)])
    store.delete("B000000003", 10)
    got = store.get_many(["B000000001", "B000000003", "ZZZZZZZZZZ"])
    assert got[0] is not None
    assert got[1] is None
    assert got[2] is None
    assert store.versions_of(["B000000002", "B000000003", "ZZZZZZZZZZ"]) == [(2, "h2", False), (10, None, True), (None, None, False)]
    assert sorted(r.asin for r in store.scan(batch=2)) == ["B000000001", "B000000002", "B000000004", "B000000005"]
    assert store.count() == 4
    assert store.ping()


def test_iter_docs_yields_live_product_documents(store):
    store.put([rec(f"B00000000{i}", pv=1, seed=i, doc=b'{"i":%d}' % i) for i in range(1, 4)])
    store.delete("B000000002", 2)
    assert sorted(store.iter_docs(batch=1)) == [("B000000001", b'{"i":1}'), ("B000000003", b'{"i":3}')]


def test_iter_tombstones_yields_each_deleted_version(store):
    store.put([rec(f"B00000000{i}", pv=1, seed=i) for i in range(1, 4)])
    store.delete("B000000002", 2)
    store.delete("B000000009", 7)  # never held: the tombstone still guards against a late older upsert
    assert sorted(store.iter_tombstones(batch=1)) == [("B000000002", 2), ("B000000009", 7)]


def test_active_pointer_swaps_atomically_and_keeps_the_previous(store, unique_name):
    name = unique_name("ptr")
    assert store.get_pointer(name) is None
    assert store.swap_pointer(name, "ns-a", name + ":prev") is None
    assert store.get_pointer(name + ":prev") is None
    assert store.swap_pointer(name, "ns-b", name + ":prev") == "ns-a"
    assert (store.get_pointer(name), store.get_pointer(name + ":prev")) == ("ns-b", "ns-a")


def test_change_topic_offsets_are_kept_per_group_and_namespace(store):
    assert store.load_offsets("g1") == {}
    store.save_offsets("g1", {("catalog.changes", 0): 10, ("catalog.changes", 2): 7})
    store.save_offsets("g1", {("catalog.changes", 0): 25})
    store.save_offsets("g2", {("catalog.changes", 1): 3})
    assert store.load_offsets("g1") == {("catalog.changes", 0): 25, ("catalog.changes", 2): 7}
    assert store.load_offsets("g2") == {("catalog.changes", 1): 3}


def test_offsets_sealed_by_a_member_are_saved_only_while_its_seal_holds(store):
    """The indexer saves a batch's offsets only if the seal it wrote after the batch's writes is still there: a store
    that restarted from an older AOF since lost the seal, and the batch is replayed instead of skipped."""
    tp = ("catalog.changes", 0)
    here = store.instance()
    assert store.seal("g1", "member-a", "t1") == here == store.instance()  # one process answers: the same id
    store.seal("g1", "member-b", "t9")  # another member's seal is its own
    assert store.save_offsets("g1", {tp: 5}, sealed=("member-a", "t1")) is True
    assert store.save_offsets("g1", {tp: 9}, sealed=("member-a", "t0")) is False  # not the token it wrote
    assert store.save_offsets("g1", {tp: 9}, sealed=("member-c", "t9")) is False  # never sealed
    assert store.load_offsets("g1") == {tp: 5}

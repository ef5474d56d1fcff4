"""Backfill, feed snapshots and re-embed with a namespace switch, on the embedded store and local log."""

import threading

import numpy as np
import orjson
import pytest

from indexer.backfill import backfill
from indexer.pipeline import Indexer
from indexer.reembed import Gates, ReembedRefused, namespace_for, reembed, rollback
from indexer.settings import IndexerSettings
from indexer.snapshot import Snapshotter
from m5core.encoder import HashEncoder
from m5core.events.local import LocalSink, LocalSource
from m5core.jsonl import write_jsonl
from m5core.snapshots import list_snapshots, load_latest, offsets_from_meta
from m5core.stores import active_namespace, open_store
from tests.indexer.conftest import delete, product, upsert

TITLES = ["red running shoes", "blue denim jacket", "steel water bottle", "wireless earbuds", "yoga mat purple"]


@pytest.fixture
def local(tmp_path):
    s = IndexerSettings(
        store="local",
        events="local",
        local_store_path=tmp_path / "store.sqlite",
        local_events_dir=tmp_path / "events",
        snapshot_dir=tmp_path / "snaps",
        metrics_port=0,
        max_wait_ms=20,
        snapshots_keep=2,
        index_kind="flat",
    )
    docs = [product(f"B0000{i:05d}", 1, title=f"{TITLES[i % 5]} model {i}") for i in range(60)]
    write_jsonl(tmp_path / "products.jsonl", docs)
    return s, tmp_path / "products.jsonl", docs


def test_backfill_writes_store_feed_and_a_snapshot_in_one_pass(local):
    s, path, docs = local
    store, sink = open_store(s), LocalSink(s.local_events_dir)
    feed = LocalSource(s.local_events_dir, [s.embeddings_topic], "snap")
    out = backfill(path, store, sink, HashEncoder(32), s, batch=16, snapshot_root=s.snapshot_dir, feed_source=feed)
    assert out["written"] == 60
    assert store.count() == 60
    index, meta = load_latest(s.snapshot_dir)
    assert len(index) == 60
    assert offsets_from_meta(meta["offsets"]) == {(s.embeddings_topic, 0): 60}
    rec = store.get(docs[7]["asin"])
    assert index.search(rec.vector[None, :], 1)[0][0][0] == docs[7]["asin"]


def test_backfill_takes_new_locales_and_lines_and_skips_malformed_ones(local, tmp_path):
    s, _, _ = local
    docs = [
        product("B0GARDEN01", 1, "tondeuse à gazon", "fr_FR", "garden"),
        product("B0GARDEN02", 1, "芝刈り機", "ja_JP", "garden"),
        {**product("B0BADLOC01", 1, locale="fr_FR"), "locale": "fr-FR"},
    ]
    write_jsonl(tmp_path / "new.jsonl", docs)
    out = backfill(tmp_path / "new.jsonl", open_store(s), LocalSink(s.local_events_dir), HashEncoder(32), s, batch=16, snapshot_root=s.snapshot_dir)
    assert (out["written"], out["invalid"]) == (2, 1)
    index, _ = load_latest(s.snapshot_dir)
    q = HashEncoder(32).embed(["tondeuse"])
    assert [a for a, _ in index.search(q, 5, locale="fr_FR", product_line="garden")[0]] == ["B0GARDEN01"]
    assert {a for a, _ in index.search(q, 5, product_line="garden")[0]} == {"B0GARDEN01", "B0GARDEN02"}


def test_snapshotter_resumes_from_its_snapshot_and_applies_only_the_tail(local):
    s, path, docs = local
    store, sink = open_store(s), LocalSink(s.local_events_dir)
    backfill(path, store, sink, HashEncoder(32), s, batch=32)
    first = Snapshotter(LocalSource(s.local_events_dir, [s.embeddings_topic], "snap"), store, s.snapshot_dir, 32, "flat", 3600, 2)
    first.run(threading.Event(), max_idle_s=0.3)
    assert len(first.index) == 60
    assert len(list_snapshots(s.snapshot_dir)) == 1

    # more changes through the event path: one delete, one new product
    sink.send(s.changes_topic, b"B000000003", delete("B000000003", 2))
    sink.send(s.changes_topic, b"B000009999", upsert("B000009999", 1, title="green tea"))
    sink.flush()
    idx = Indexer(s, LocalSource(s.local_events_dir, [s.changes_topic], "indexer"), sink, store, HashEncoder(32))
    idx.run(max_idle_s=0.3)

    second = Snapshotter(LocalSource(s.local_events_dir, [s.embeddings_topic], "snap"), store, s.snapshot_dir, 32, "flat", 3600, 2)
    assert len(second.index) == 60  # loaded from the file, not the store
    second.run(threading.Event(), max_idle_s=0.3)
    assert second.follower.applied == 2  # only the tail: one new vector, one removal
    assert second.index.contains("B000009999")
    assert not second.index.contains("B000000003")
    index, meta = load_latest(s.snapshot_dir)
    assert len(index) == 60
    assert offsets_from_meta(meta["offsets"]) == {(s.embeddings_topic, 0): 62}
    assert len(list_snapshots(s.snapshot_dir)) == 2  # snapshots_keep


def test_reembed_switches_the_active_namespace_and_rollback_returns(local):
    s, path, docs = local
    store = open_store(s)
    backfill(path, store, LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)
    store.delete(docs[0]["asin"], 5)
    new_enc = HashEncoder(48, "new-v2")
    out = reembed(s, new_enc, gates=Gates(min_coverage=1.0, sample=20, k=5))
    assert out["to"] == namespace_for("m5", "new-v2")
    assert out["new_count"] == 59
    assert out["switched"]
    assert active_namespace(s) == out["to"]
    new = open_store(s, out["to"])
    rec = new.get(docs[1]["asin"])
    assert rec.bundle_version == "new-v2"
    assert rec.vector.shape == (48,)
    assert new.get(docs[0]["asin"]) is None
    assert new.versions_of([docs[0]["asin"]]) == [(5, None, True)]  # the tombstone came along: a late v1-4 upsert stays out
    assert orjson.loads(new.get_doc(docs[1]["asin"]))["title"] == docs[1]["title"]
    # the same bundle again is refused: it is the active namespace already
    with pytest.raises(ReembedRefused):
        reembed(s, new_enc)
    assert rollback(s) == (out["to"], "m5")
    assert active_namespace(s) == "m5"


def _feed_latest(s) -> dict[str, dict | None]:
    """What a partner keeps from the feed: the last record of each key (compaction's view)."""
    src = LocalSource(s.local_events_dir, [s.embeddings_topic], "partner")
    latest = {}
    while batch := src.poll(1000, 0.05):
        latest.update({m.key.decode(): orjson.loads(m.value) if m.value is not None else None for m in batch})
    return latest


def test_a_switch_and_a_rollback_publish_the_namespace_to_the_feed(local):
    """A partner following the feed gets every product in the new bundle at a switch, not only those changed since,
    and every product back in the old one at a rollback."""
    s, path, docs = local
    sink = LocalSink(s.local_events_dir)
    backfill(path, open_store(s), sink, HashEncoder(32, "old-v1"), s, batch=32)
    open_store(s).delete(docs[0]["asin"], 5)
    out = reembed(s, HashEncoder(48, "new-v2"), gates=Gates(min_coverage=1.0, sample=20, k=5), sink=sink, topic=s.embeddings_topic)
    assert out["published"] == 59
    latest = _feed_latest(s)
    assert {a for a, v in latest.items() if v is not None and v["bv"] == "new-v2"} == {d["asin"] for d in docs[1:]}
    assert rollback(s, sink, s.embeddings_topic) == (out["to"], "m5")
    latest = _feed_latest(s)
    assert {latest[d["asin"]]["bv"] for d in docs[1:]} == {"old-v1"}


def test_reembed_refuses_to_switch_when_a_gate_fails(local):
    s, path, docs = local
    backfill(path, open_store(s), LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)

    # an encoder that maps every product to one vector: neighbours no longer mean anything
    class Collapsed(HashEncoder):
        def embed(self, texts):
            v = np.zeros((len(texts), self.dim), np.float32)
            v[:, 0] = 1
            return v

    with pytest.raises(ReembedRefused, match="overlap"):
        reembed(s, Collapsed(32, "broken-v3"), gates=Gates(min_overlap=0.5, sample=20, k=5))
    assert active_namespace(s) == "m5"


def test_an_indexer_with_the_old_bundle_refuses_the_switched_namespace(local):
    """After a switch, an indexer restarted with the old bundle would fill the new namespace with old-model vectors."""
    from indexer.runtime import BundleMismatch, build_indexer

    s, path, docs = local
    backfill(path, open_store(s), LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)
    assert build_indexer(s, HashEncoder(32, "old-v1")).store.namespace == "m5"  # its own namespace: fine
    out = reembed(s, HashEncoder(48, "new-v2"), gates=Gates(min_coverage=1.0, sample=20, k=5))
    with pytest.raises(BundleMismatch, match=rf"namespace {out['to']} holds vectors of bundle\(s\) \['new-v2'\], this process encodes with old-v1"):
        build_indexer(s, HashEncoder(32, "old-v1"))
    assert build_indexer(s, HashEncoder(48, "new-v2")).store.namespace == out["to"]
    assert rollback(s) == (out["to"], "m5")
    assert build_indexer(s, HashEncoder(32, "old-v1")).store.namespace == "m5"  # and back after a rollback


def test_changes_after_the_reembed_copy_reach_the_new_namespace(local):
    """The old indexer keeps writing the old namespace after the re-embed's catch-up; the indexer restarted on the
    new bundle starts from the offsets the old namespace held before the copy, so those changes are replayed."""
    s, path, docs = local
    sink = LocalSink(s.local_events_dir)
    for d in docs[:10]:
        sink.send(s.changes_topic, d["asin"].encode(), upsert(d["asin"], 1))
    sink.flush()

    def run_indexer(enc):
        idx = Indexer(s, LocalSource(s.local_events_dir, [s.changes_topic], s.group_id), sink, open_store(s, active_namespace(s)), enc)
        idx.run(max_idle_s=0.5)
        return idx.store

    old = run_indexer(HashEncoder(32, "old-v1"))
    assert old.count() == 10
    assert old.load_offsets(s.group_id) == {(s.changes_topic, 0): 10}
    out = reembed(s, HashEncoder(48, "new-v2"), gates=Gates(min_coverage=1.0, sample=5, k=3), switch=False)
    assert out["replay_from"] == {f"{s.changes_topic}:0": 10}
    for d in docs[10:15]:  # reach the old indexer after the catch-up, before the switch and its restart
        sink.send(s.changes_topic, d["asin"].encode(), upsert(d["asin"], 1))
    sink.send(s.changes_topic, docs[0]["asin"].encode(), delete(docs[0]["asin"], 2))
    sink.flush()
    assert run_indexer(HashEncoder(32, "old-v1")).count() == 14
    from m5core.stores import switch_namespace

    switch_namespace(s, out["to"])
    new = run_indexer(HashEncoder(48, "new-v2"))
    assert new.namespace == out["to"]
    assert new.count() == 14
    assert all(new.get(d["asin"]).bundle_version == "new-v2" for d in docs[1:15])
    assert new.get(docs[0]["asin"]) is None


def test_the_new_namespace_replays_from_the_earliest_offsets_the_old_store_showed(local, monkeypatch):
    """A store that came back with less than it acknowledged during the copy (a host crash) did not hand the copy what
    it lost: the indexer restarted on the new namespace must replay from the offsets the store fell back to."""
    import indexer.reembed as reembed_module

    s, path, docs = local
    store = open_store(s)
    backfill(path, store, LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)
    tp = ("catalog.changes", 0)
    store.save_offsets(s.group_id, {tp: 100})
    copy = reembed_module.copy_namespace

    def copy_then_lose(old, new, *args, **kw):
        n = copy(old, new, *args, **kw)
        old.save_offsets(s.group_id, {tp: 40})  # what a restart from an older AOF leaves
        return n

    monkeypatch.setattr(reembed_module, "copy_namespace", copy_then_lose)
    out = reembed(s, HashEncoder(48, "new-v2"), gates=Gates(min_coverage=1.0, sample=20, k=5))
    assert open_store(s, out["to"]).load_offsets(s.group_id) == {tp: 40}
    assert reembed_module.earliest([{tp: 100, ("t", 1): 5}, {tp: 40}]) == {tp: 40, ("t", 1): 0}


def test_the_overlap_gate_survives_a_product_deleted_while_it_measures(local):
    """Events keep flowing during a re-embed: a product in the gate's sample can be deleted between its reads. The
    chaos test's re-embed died on it (`old.get(a)` was None) and left the switch undone."""
    from indexer.reembed import neighbour_overlap

    s, path, docs = local
    old = open_store(s)
    backfill(path, old, LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)
    new = open_store(s, "other")
    backfill(path, new, LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)
    victim = docs[0]["asin"]
    read = old.get_many

    def read_then_delete(asins):
        out = read(asins)
        old.delete(victim, 2)  # the stream deletes it right after the gate read the pool
        return out

    old.get_many = read_then_delete
    assert neighbour_overlap(old, new, sample=20, k=5) == 1.0  # same encoder both sides: the same neighbours
    assert old.get(victim) is None


def test_a_switch_back_counts_deletes_the_target_namespace_already_has(local):
    """Right after a rollback the old namespace may still be catching up: the re-embed namespace, active until then,
    already holds the newer tombstone of a product the old one still holds live. That product is covered; the chaos
    test's re-embed was refused there (coverage 260 / 265)."""
    s, path, docs = local
    store = open_store(s)
    backfill(path, store, LocalSink(s.local_events_dir), HashEncoder(32, "old-v1"), s, batch=32)
    out = reembed(s, HashEncoder(48, "new-v2"), gates=Gates(sample=20, k=5))
    rollback(s)
    open_store(s, out["to"]).delete(docs[3]["asin"], 2)  # written while it was active; the old one replays it later
    again = reembed(s, HashEncoder(48, "new-v2"), gates=Gates(sample=20, k=5))
    assert again["switched"] and again["coverage"] == 1.0
    assert open_store(s, out["to"]).get(docs[3]["asin"]) is None  # the newer delete stands

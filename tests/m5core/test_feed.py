"""FeedFollower: applies the embeddings feed to an AnnIndex, tolerates bad records, resumes from snapshots."""

import threading
import time

import numpy as np
import pytest

from m5core.encoder import HashEncoder
from m5core.events.base import EventSource, Message
from m5core.events.local import LocalSink, LocalSource
from m5core.feed import FeedFollower, encode_feed_value
from m5core.index import AnnIndex
from m5core.snapshots import latest_snapshot
from m5core.stores.base import VectorRecord
from m5core.stores.local import LocalStore

ENC = HashEncoder(dim=16)
TOPIC = "catalog.embeddings"


class MemorySource(EventSource):
    """One-partition in-memory topic: what the follower needs of a transport, nothing more."""

    def __init__(self):
        self.log: list[Message] = []
        self.pos = 0

    def append(self, key: str, value: bytes | None) -> None:
        self.log.append(Message(TOPIC, 0, len(self.log), key.encode(), value, 0))

    def poll(self, max_records=500, timeout_s=0.1):
        out = self.log[self.pos : self.pos + max_records]
        self.pos += len(out)
        return out

    def commit(self, offsets):
        pass

    def lag(self):
        return {(TOPIC, 0): len(self.log) - self.pos}

    def end_offsets(self):
        return {(TOPIC, 0): len(self.log)}

    def seek(self, offsets):
        self.pos = offsets.get((TOPIC, 0), self.pos)


def rec(asin, text, pv=1, locale="en_US", line="media", bundle=ENC.version):
    return VectorRecord(asin, ENC.embed([text])[0], pv, bundle, "h", locale, line, 1.0)


def top1(index, text):
    return index.search(ENC.embed([text]), 1)[0][0][0]


def test_applies_upserts_deletes_and_skips_older_versions():
    src = MemorySource()
    idx = AnnIndex(ENC.dim, "flat")
    f = FeedFollower(src, idx)
    src.append("B000000001", encode_feed_value(rec("B000000001", "red shoes", pv=2)))
    src.append("B000000002", encode_feed_value(rec("B000000002", "green tea")))
    src.append("B000000001", encode_feed_value(rec("B000000001", "old text", pv=1)))  # late and older: ignored
    assert f.poll_once() == 3
    assert len(idx) == 2
    assert idx.version_of("B000000001") == 2
    assert top1(idx, "red shoes") == "B000000001"
    assert f.offsets == {(TOPIC, 0): 3}
    assert f.lag() == 0
    src.append("B000000002", None)  # tombstone
    src.append("B000000001", encode_feed_value(rec("B000000001", "blue hat", pv=3)))
    f.poll_once()
    assert not idx.contains("B000000002")
    assert idx.version_of("B000000001") == 3
    assert top1(idx, "blue hat") == "B000000001"
    assert f.offsets == {(TOPIC, 0): 5}


def test_malformed_values_are_counted_and_skipped():
    src = MemorySource()
    idx = AnnIndex(ENC.dim, "flat")
    f = FeedFollower(src, idx)
    wrong_dim = VectorRecord("B000000003", HashEncoder(dim=8).embed(["x"])[0], 1, "v", "h", "en_US", "media", 1.0)
    nan = VectorRecord("B000000004", np.full(ENC.dim, np.nan, np.float32), 1, "v", "h", "en_US", "media", 1.0)
    src.append("B000000001", b"not json")
    src.append("B000000002", b'{"asin": "B000000002"}')
    src.append("B000000003", encode_feed_value(wrong_dim))
    src.append("B000000004", encode_feed_value(nan))
    src.append("B000000005", encode_feed_value(rec("B000000005", "good one")))
    assert f.poll_once() == 5
    assert f.malformed == 4
    assert len(idx) == 1
    assert idx.contains("B000000005")
    assert f.offsets == {(TOPIC, 0): 5}  # skipped records are consumed, not retried forever


def test_bootstrap_from_store_then_follow_local_transport(tmp_path):
    store = LocalStore(tmp_path / "s.sqlite")
    store.put([rec("B000000001", "red shoes"), rec("B000000002", "green tea")])
    sink = LocalSink(tmp_path / "ev")
    sink.send(TOPIC, b"B000000001", encode_feed_value(rec("B000000001", "red shoes")))  # already in the store
    sink.flush()
    src = LocalSource(tmp_path / "ev", [TOPIC], "svc")
    f = FeedFollower(src, AnnIndex(ENC.dim, "flat"), store)
    assert f.bootstrap() == 2
    assert f.offsets == {(TOPIC, 0): 1}
    new = rec("B000000003", "purple umbrella")
    store.put([new])
    sink.send(TOPIC, b"B000000003", encode_feed_value(new))
    store.delete("B000000002", 2)
    sink.send(TOPIC, b"B000000002", None)
    sink.flush()
    stop = threading.Event()
    t = threading.Thread(target=f.run, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 5
        while (f.index.contains("B000000002") or not f.index.contains("B000000003")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        t.join(timeout=5)
    assert not t.is_alive()
    assert f.index.contains("B000000003")
    assert not f.index.contains("B000000002")
    assert f.lag() == 0


def test_bootstrap_from_latest_snapshot_replays_only_the_tail(tmp_path):
    src = MemorySource()
    for i, text in enumerate(["red shoes", "green tea", "steel bottle"]):
        src.append(f"B00000000{i + 1}", encode_feed_value(rec(f"B00000000{i + 1}", text)))
    snap_idx = AnnIndex(ENC.dim, "flat", ENC.version)
    first = FeedFollower(src, snap_idx)
    first.poll_once(max_records=2)  # the snapshot holds offsets 0..1
    snap_idx.save(tmp_path / "snap-0000000000001", {"offsets": {f"{TOPIC}:0": 2}, "bundle_versions": [ENC.version]})
    snap_idx.save(tmp_path / "snap-0000000000000", {"offsets": {f"{TOPIC}:0": 0}})  # older
    (tmp_path / "snap-0000000000009.tmp").mkdir()  # half-written: ignored
    assert latest_snapshot(tmp_path).name == "snap-0000000000001"

    src.pos = 0
    f = FeedFollower(src, AnnIndex(ENC.dim, "flat"), snapshot_dir=tmp_path)
    assert f.bootstrap() == 2
    assert f.snapshot_meta["offsets"] == {f"{TOPIC}:0": 2}
    assert src.pos == 2
    assert f.bundle_versions == {ENC.version}
    assert f.poll_once() == 1  # only the tail
    assert len(f.index) == 3
    assert f.offsets == {(TOPIC, 0): 3}


def test_snapshot_of_another_dim_falls_back_to_the_store(tmp_path):
    AnnIndex(8, "flat").save(tmp_path / "snap-0000000000001", {"offsets": {f"{TOPIC}:0": 0}})
    store = LocalStore(tmp_path / "s.sqlite")
    store.put([rec("B000000001", "red shoes")])
    f = FeedFollower(MemorySource(), AnnIndex(ENC.dim, "flat"), store, snapshot_dir=tmp_path)
    assert f.bootstrap() == 1
    assert f.snapshot_meta is None
    assert f.index.dim == ENC.dim


class BlippingStore(LocalStore):
    """The store as Redis is during a blip: the next `blips` reads fail with a connection error."""

    blips = 0

    def get(self, asin):
        if self.blips:
            self.blips -= 1
            raise ConnectionError("Redis went away")
        return super().get(asin)


def test_a_batch_whose_apply_fails_is_read_again_not_skipped(tmp_path):
    """A store blip during the tombstone check: neither the delete nor the upsert beside it is lost, and the
    follower's offsets (what a snapshot records) never pass the failed batch."""
    store = BlippingStore(tmp_path / "s.sqlite")
    sink = LocalSink(tmp_path / "ev")
    old, new = rec("B000000001", "red shoes"), rec("B000000002", "green tea")
    store.put([old])
    src = LocalSource(tmp_path / "ev", [TOPIC], "svc")
    f = FeedFollower(src, AnnIndex(ENC.dim, "flat"), store)
    assert f.bootstrap() == 1
    start = dict(f.offsets)
    store.delete("B000000001", 2)
    sink.send(TOPIC, b"B000000001", None)
    store.put([new])
    sink.send(TOPIC, b"B000000002", encode_feed_value(new))
    sink.flush()
    store.blips = 1
    with pytest.raises(ConnectionError):
        f.poll_once()
    assert f.offsets == start
    assert f.index.contains("B000000001")
    assert not f.index.contains("B000000002")
    assert f.poll_once() == 2  # the same two messages again
    assert not f.index.contains("B000000001")
    assert f.index.contains("B000000002")
    assert f.offsets == {(TOPIC, 0): start.get((TOPIC, 0), 0) + 2}


def test_snapshots_record_only_what_the_index_applied(tmp_path):
    from indexer.snapshot import Snapshotter

    store = BlippingStore(tmp_path / "s.sqlite")
    sink = LocalSink(tmp_path / "ev")
    store.put([rec("B000000001", "red shoes")])
    snap = Snapshotter(LocalSource(tmp_path / "ev", [TOPIC], "snap"), store, tmp_path / "snaps", ENC.dim, "flat", interval_s=3600)
    store.delete("B000000001", 2)
    sink.send(TOPIC, b"B000000001", None)
    sink.flush()
    store.blips = 1
    with pytest.raises(ConnectionError):
        snap.follower.poll_once()
    meta_offsets = snap.follower.offsets.get((TOPIC, 0), 0)
    path = snap.snapshot()
    follower = FeedFollower(LocalSource(tmp_path / "ev", [TOPIC], "svc"), AnnIndex(ENC.dim, "flat"), store, snapshot_dir=tmp_path / "snaps")
    follower.bootstrap()
    assert follower.snapshot_meta is not None
    assert path.name in str(latest_snapshot(tmp_path / "snaps"))
    assert follower.index.contains("B000000001")
    assert meta_offsets == 0  # the snapshot still holds it, and knows the delete is ahead
    follower.poll_once()
    assert not follower.index.contains("B000000001")


def test_a_snapshot_older_than_the_bound_is_passed_over_for_the_store(tmp_path):
    """Compaction may have dropped the tombstones an old snapshot would need to replay: start from the store instead."""
    import time as _time

    held = AnnIndex(ENC.dim, "flat", ENC.version)
    held.upsert(["B000000001", "B000000002"], ENC.embed(["red shoes", "green tea"]), ["en_US"] * 2, ["media"] * 2, [1, 1])
    held.save(tmp_path / "snap-0000000000001", {"offsets": {f"{TOPIC}:0": 0}, "created_at": _time.time() - 13 * 3600})
    store = LocalStore(tmp_path / "s.sqlite")
    store.put([rec("B000000001", "red shoes")])  # B000000002 was deleted, and its tombstone compacted away
    f = FeedFollower(MemorySource(), AnnIndex(ENC.dim, "flat"), store, snapshot_dir=tmp_path, max_snapshot_age_s=12 * 3600)
    assert f.bootstrap() == 1
    assert f.snapshot_meta is None
    assert not f.index.contains("B000000002")
    fresh = FeedFollower(MemorySource(), AnnIndex(ENC.dim, "flat"), store, snapshot_dir=tmp_path, max_snapshot_age_s=14 * 3600)
    assert fresh.bootstrap() == 2
    assert fresh.snapshot_meta is not None  # within its bound the snapshot is used


def test_versioned_tombstones_order_deletes_and_upserts_by_version(tmp_path):
    """Across batches and without a store: an older upsert after a delete does not bring the product back, an older
    delete after a relisting does not remove it, and a newer relisting does come back. Headers survive the local log."""
    from m5core.feed import tombstone_headers

    sink, src = LocalSink(tmp_path / "ev"), LocalSource(tmp_path / "ev", [TOPIC], "svc")
    f = FeedFollower(src, AnnIndex(ENC.dim, "flat"))

    def feed(*records):
        for r in records:
            if isinstance(r, tuple):
                sink.send(TOPIC, r[0].encode(), None, tombstone_headers(r[1]))
            else:
                sink.send(TOPIC, r.asin.encode(), encode_feed_value(r))
        sink.flush()
        while f.poll_once(timeout_s=0.05):
            pass

    a, b = "B000000001", "B000000002"
    feed(rec(a, "red shoes", pv=4), rec(b, "green tea", pv=2))
    feed((a, 5))  # deleted at v5
    assert not f.index.contains(a)
    feed(rec(a, "red shoes again", pv=3))  # a stale writer's late v3, in a later batch
    assert not f.index.contains(a)
    feed(rec(b, "green tea refill", pv=7), (b, 6))  # v6's delete arrives after the v7 relisting, same batch
    assert f.index.version_of(b) == 7
    feed((b, 5))  # and in a later batch
    assert f.index.version_of(b) == 7
    feed(rec(a, "red shoes relisted", pv=6))  # relisted after the delete
    assert f.index.version_of(a) == 6
    assert top1(f.index, "red shoes relisted") == a
    assert src.poll(timeout_s=0.01) == []
    assert f.malformed == 0


def test_an_unversioned_tombstone_still_asks_the_store(tmp_path):
    """Tombstones written before versions were sent: the product goes only when the store no longer holds it."""
    src = MemorySource()
    store = LocalStore(tmp_path / "s.sqlite")
    store.put([rec("B000000001", "red shoes", pv=3)])  # relisted since that old delete
    f = FeedFollower(src, AnnIndex(ENC.dim, "flat"), store)
    src.append("B000000001", encode_feed_value(rec("B000000001", "red shoes", pv=3)))
    src.append("B000000002", encode_feed_value(rec("B000000002", "green tea")))
    f.poll_once()
    src.append("B000000001", None)  # an old delete, replayed
    src.append("B000000002", None)  # the store never held it: gone
    f.poll_once()
    assert f.index.contains("B000000001")
    assert not f.index.contains("B000000002")


def test_a_later_record_of_the_same_version_replaces_the_vector():
    """A store write lost and replayed is encoded again in another batch: int8 dynamic quantisation gives a vector that
    differs in the 4th digit, the store keeps the second, and so must every follower (compaction keeps the last)."""
    src = MemorySource()
    f = FeedFollower(src, AnnIndex(ENC.dim, "flat"))
    first, again = rec("B000000001", "red shoes", pv=3), rec("B000000001", "red shoes again", pv=3)
    src.append("B000000001", encode_feed_value(first))
    f.poll_once()
    src.append("B000000001", encode_feed_value(again))
    f.poll_once()
    assert top1(f.index, "red shoes again") == "B000000001"
    assert f.index.version_of("B000000001") == 3
    got = f.index._index.reconstruct(f.index._ids["B000000001"])
    np.testing.assert_allclose(got, again.vector, rtol=1e-5)

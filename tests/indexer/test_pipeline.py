"""The indexer against the real Kafka and Redis: ordering, dead letters, unchanged content, groups."""

import threading
import time

import orjson
import pytest
from prometheus_client import REGISTRY

from catalog.events import bad_events
from indexer.parse import DeadLetter, parse_event
from m5core.encoder import HashEncoder
from m5core.events.base import Message
from m5core.feed import decode_feed_value
from tests.indexer.conftest import delete, patch, upsert


def test_parse_names_the_reason():
    msg = lambda v, k=b"B000000001": Message("t", 0, 7, k, v, 0)  # noqa: E731
    for key, payload, reason in bad_events():
        out = parse_event(msg(payload, key), 500_000)
        assert isinstance(out, DeadLetter) and out.reason == reason, (payload[:60], out)
        assert len(out.payload()) < 20_000 and len(out.key() or b"") <= 256, "a dead letter must fit any producer request"
    assert not isinstance(parse_event(msg(upsert("B000000001", 1)), 1_000_000), DeadLetter)


def test_newest_version_wins_out_of_order_and_deletes_stick(pipeline):
    s, make, produce, producer, store, read = pipeline
    produce("B000000001", upsert("B000000001", 3, title="third"))
    produce("B000000001", upsert("B000000001", 1, title="first"))
    produce("B000000001", upsert("B000000001", 2, title="second"))
    produce("B000000002", upsert("B000000002", 1))
    produce("B000000002", delete("B000000002", 2))
    produce("B000000002", upsert("B000000002", 1, title="late replay"))
    producer.flush()
    make().run(max_idle_s=1.5)
    rec = store.get("B000000001")
    assert rec.product_version == 3
    assert b"third" in store.get_doc("B000000001")
    assert store.get("B000000002") is None
    assert store.version_of("B000000002") == 2
    feed = read(s.embeddings_topic, 2)
    tombs = [m for m in feed if m.value is None]
    assert [(m.key, m.headers) for m in tombs] == [(b"B000000002", (("pv", b"2"),))]  # the delete's version rides in a header


def test_dead_letters_keep_the_good_events_flowing(pipeline):
    s, make, produce, producer, store, read = pipeline
    produce("B000000001", upsert("B000000001", 1))
    for key, payload, _ in bad_events():
        producer.send(s.changes_topic, key, payload)
    produce("B00000000P", patch("B00000000P", 2, price=3.0))  # never seen
    produce("B000000003", upsert("B000000003", 1))
    producer.flush()
    make().run(max_idle_s=1.5)
    assert store.get("B000000001")
    assert store.get("B000000003")
    dlq = read(s.dlq_topic, len(bad_events()) + 1)
    reasons = sorted(orjson.loads(m.value)["reason"] for m in dlq)
    assert reasons == sorted([r for _, _, r in bad_events()] + ["unknown_asin"])
    schema = [orjson.loads(m.value) for m in dlq if orjson.loads(m.value)["reason"] == "schema"]
    assert all(d["source"]["topic"] == s.changes_topic and d["payload"] for d in schema)
    assert any(d["error"].startswith("asin:") for d in schema)
    assert any(d["error"].startswith("op:") for d in schema)


def test_unchanged_content_is_not_reembedded(pipeline):
    s, make, produce, producer, store, read = pipeline
    produce("B000000001", upsert("B000000001", 1))
    produce("B000000001", patch("B000000001", 2, price=9.5, stock=3))  # metadata only
    produce("B000000001", patch("B000000001", 3, attributes={"colour": "blue"}))  # content
    producer.flush()
    make().run(max_idle_s=1.5)
    assert store.get("B000000001").product_version == 3
    doc = orjson.loads(store.get_doc("B000000001"))
    assert doc["price"] == 9.5
    assert doc["attributes"] == {"colour": "blue"}
    feed = read(s.embeddings_topic, 1)
    # one batch folds the three events: a single vector reaches the feed, at version 3
    assert [decode_feed_value(m.value).product_version for m in feed] == [3]


def test_a_product_moved_to_another_line_leaves_its_old_filter(pipeline):
    """Store record and feed carry the new line, so every replica's index filters it under the new one."""
    s, make, produce, producer, store, read = pipeline
    indexer = make()
    produce("B000000001", upsert("B000000001", 1))
    producer.flush()
    indexer.run(max_idle_s=1.5)
    produce("B000000001", upsert("B000000001", 2, product_line="garden"))
    producer.flush()
    indexer.run(max_idle_s=1.5)
    assert store.get("B000000001").product_line == "garden"
    feed = [decode_feed_value(m.value) for m in read(s.embeddings_topic, 2)]
    assert [(r.product_version, r.product_line) for r in feed] == [(1, "softlines"), (2, "garden")]


def test_a_patch_that_breaks_the_product_is_dead_lettered_as_itself(pipeline):
    """The merged product is validated; the dead letter is the patch's own message, and later events still apply."""
    from m5core.schema import MAX_ATTRIBUTES

    s, make, produce, producer, store, read = pipeline
    indexer = make()
    produce("B000000001", upsert("B000000001", 1))
    producer.flush()
    indexer.run(max_idle_s=1.5)
    produce("B000000001", patch("B000000001", 2, attributes={f"a{i}": "x" for i in range(MAX_ATTRIBUTES)}))
    produce("B000000001", patch("B000000001", 3, price=4.0))
    producer.flush()
    indexer.run(max_idle_s=1.5)
    (dead,) = [orjson.loads(m.value) for m in read(s.dlq_topic, 1)]
    assert dead["reason"] == "schema"
    assert "attributes" in dead["error"]
    assert '"version":2' in dead["payload"]
    doc = orjson.loads(store.get_doc("B000000001"))
    assert (doc["version"], doc["price"], len(doc["attributes"])) == (3, 4.0, 1)


def test_price_only_patch_after_upsert_skips_the_encoder(pipeline):
    s, make, produce, producer, store, read = pipeline
    produce("B000000001", upsert("B000000001", 1))
    producer.flush()
    first = make()
    first.run(max_idle_s=5.0)  # idle time includes joining the group, slow on a busy machine
    first.source.close()  # leave the group so the next indexer gets the partitions at once
    calls = []

    class Counting:
        dim, version = 32, "hash-v1"

        def embed(self, texts):
            calls.append(len(texts))
            raise AssertionError("a price change must not be embedded")

    produce("B000000001", patch("B000000001", 2, price=1.0))
    producer.flush()
    make(encoder=Counting()).run(max_idle_s=5.0)
    assert calls == []
    assert store.get("B000000001").product_version == 2


def test_consumer_lag_is_reported_while_a_backlog_drains_and_reaches_zero(pipeline):
    s, make, produce, producer, store, read = pipeline
    for i in range(600):
        produce(f"B0L{i:07d}", upsert(f"B0L{i:07d}", 1))
    producer.flush()
    idx = make()
    idx.s = s.model_copy(update={"max_batch": 16})

    def lag() -> float:
        return sum(REGISTRY.get_sample_value("m5_indexer_consumer_lag", {"topic": s.changes_topic, "partition": str(p)}) or 0 for p in range(3))

    seen = []
    runner = threading.Thread(target=idx.run, kwargs={"max_idle_s": 2.5})
    runner.start()
    while runner.is_alive():
        seen.append((lag(), store.count()))
        time.sleep(0.005)
    runner.join()
    assert store.count() == 600
    assert any(v > 0 and n < 600 for v, n in seen), "no lag reading while the backlog drained"
    assert lag() == 0  # drained: the idle readings report zero


def test_two_indexers_in_one_group_process_every_asin_once(pipeline):
    s, make, produce, producer, store, read = pipeline
    asins = [f"B0000{i:05d}" for i in range(300)]
    for a in asins:
        produce(a, upsert(a, 1))
    producer.flush()
    a, b = make(), make()
    ta = threading.Thread(target=a.run, kwargs={"max_idle_s": 10})
    tb = threading.Thread(target=b.run, kwargs={"max_idle_s": 10})
    ta.start(), tb.start()
    ta.join(), tb.join()
    assert store.count() == 300
    feed = read(s.embeddings_topic, 300)
    assert sorted(decode_feed_value(m.value).asin for m in feed) == asins


class PoisonEncoder(HashEncoder):
    """An encoder that fails any batch holding one particular product (a text that crashes a tokenizer, say)."""

    def embed(self, texts):
        if any("poison" in t for t in texts):
            raise ValueError("tokenizer crashed")
        return super().embed(texts)


def test_an_encode_failure_dead_letters_only_the_product_that_causes_it(pipeline):
    s, make, produce, producer, store, read = pipeline
    asins = [f"B00000010{i}" for i in range(9)]
    for i, asin in enumerate(asins):
        produce(asin, upsert(asin, 1, title="poison ivy lotion" if i == 5 else f"red running shoes model {i}"))
    producer.flush()
    make(PoisonEncoder(32)).run(max_idle_s=1.5)
    assert [a for a in asins if store.get(a) is None] == [asins[5]]
    msgs = read(s.dlq_topic, 1)
    dlq = [orjson.loads(m.value) for m in msgs]
    assert [d["reason"] for d in dlq] == ["encode_failed"]
    assert msgs[0].key == asins[5].encode()
    assert dlq[0]["error"].startswith(f"{asins[5]} v1: ValueError: tokenizer crashed")
    assert "poison ivy" in dlq[0]["payload"]


def test_a_store_that_comes_back_with_less_than_it_acknowledged_is_refilled(pipeline):
    """A Redis host crash under `appendfsync everysec` loses up to a second of writes whose offsets were already
    committed. Emulated with Redis itself: every key of the namespace is put back as it was after the first
    batch (DUMP / RESTORE), as an AOF cut at that point would leave it. The next indexer starts from the offsets
    the store kept with its data, so the lost products are written again; the rollback is counted."""
    s, make, produce, producer, store, read = pipeline

    def run_and_leave():
        idx = make()
        idx.run(max_idle_s=1.5)
        idx.source.close()  # leave the group now: the next indexer gets every partition at once

    first = [f"B00000020{i}" for i in range(10)]
    later = [f"B00000030{i}" for i in range(10)]
    for asin in first:
        produce(asin, upsert(asin, 1))
    producer.flush()
    run_and_leave()
    saved = {k: store.client.dump(k) for k in store.client.scan_iter(f"{s.namespace}:*")}
    for asin in later:
        produce(asin, upsert(asin, 1))
    produce(first[0], upsert(first[0], 2, title="blue running shoes"))
    producer.flush()
    run_and_leave()
    assert all(store.get(a) for a in later)
    assert store.version_of(first[0]) == 2

    store.client.delete(*store.client.scan_iter(f"{s.namespace}:*"))
    for k, v in saved.items():
        store.client.restore(k, 0, v)
    assert not any(store.get(a) for a in later)
    assert store.version_of(first[0]) == 1  # what a cut AOF would hold

    before = REGISTRY.get_sample_value("m5_indexer_store_offset_replays_total") or 0
    run_and_leave()
    assert all(store.get(a) for a in later)
    assert store.version_of(first[0]) == 2
    assert (REGISTRY.get_sample_value("m5_indexer_store_offset_replays_total") or 0) > before


def test_a_store_that_goes_back_under_a_running_indexer_is_refilled(pipeline):
    """The same loss while one member keeps its partitions (Redis restarted between two of its batches): its next
    batch finds the store's offsets behind the ones it saved, seeks back to them and replays the lost changes."""
    s, make, produce, producer, store, read = pipeline
    idx = make()
    first, later = [f"B00000040{i}" for i in range(10)], [f"B00000050{i}" for i in range(10)]
    for asin in first:
        produce(asin, upsert(asin, 1))
    producer.flush()
    idx.run(max_idle_s=1.5)
    saved = {k: store.client.dump(k) for k in store.client.scan_iter(f"{s.namespace}:*")}
    for asin in later:
        produce(asin, upsert(asin, 1))
    producer.flush()
    idx.run(max_idle_s=1.5)
    store.client.delete(*store.client.scan_iter(f"{s.namespace}:*"))
    for k, v in saved.items():
        store.client.restore(k, 0, v)
    assert not any(store.get(a) for a in later)
    produce("B000000600", upsert("B000000600", 1))  # the stream goes on
    producer.flush()
    idx.run(max_idle_s=1.5)
    assert all(store.get(a) for a in later + first + ["B000000600"])


def test_a_store_that_goes_back_before_a_members_first_batch_is_refilled(pipeline):
    """The loss right after a member (re)started: it was assigned its partitions at the store's offsets, then Redis came
    back from an older AOF before the member wrote a batch. The offsets it started from count as what it saved, so its
    first batch finds the store behind them and replays (the chaos test's model switches restart members often)."""
    s, make, produce, producer, store, read = pipeline
    first, later = [f"B00000070{i}" for i in range(10)], [f"B00000080{i}" for i in range(10)]
    idx = make()
    for asin in first:
        produce(asin, upsert(asin, 1))
    producer.flush()
    idx.run(max_idle_s=1.5)
    saved = {k: store.client.dump(k) for k in store.client.scan_iter(f"{s.namespace}:*")}
    for asin in later:
        produce(asin, upsert(asin, 1))
    producer.flush()
    idx.run(max_idle_s=1.5)
    idx.source.close()  # leaves the group: the next member gets every partition

    restarted = make()
    for _ in range(50):  # joins the group and is assigned its partitions at the store's offsets, with nothing to read
        assert restarted.source.poll(10, 0.2) == []
        if restarted.source.assignment():
            break
    store.client.delete(*store.client.scan_iter(f"{s.namespace}:*"))
    for k, v in saved.items():
        store.client.restore(k, 0, v)
    assert not any(store.get(a) for a in later)
    produce("B000000900", upsert("B000000900", 1))  # the stream goes on
    producer.flush()
    restarted.run(max_idle_s=1.5)
    assert all(store.get(a) for a in later + first + ["B000000900"])


def test_an_indexer_switched_away_from_publishes_nothing_more(pipeline):
    """After a re-embed's switch the new namespace publishes itself to the feed; an indexer still on the old namespace
    then replayed a delete and its tombstone became the key's last record over the product's newer upsert (chaos seed
    6). The batch is aborted (transactional: no reader sees it) and the indexer stops with the reason."""
    from indexer.pipeline import NamespaceSwitched
    from m5core.stores import switch_namespace

    s, make, produce, producer, store, read = pipeline
    asin = "B000000950"
    idx = make()
    produce(asin, upsert(asin, 1))
    producer.flush()
    idx.run(max_idle_s=1.5)
    switch_namespace(s, f"{s.namespace}.next")  # what `m5 index reembed` does once its gates pass
    produce(asin, delete(asin, 2))
    producer.flush()
    with pytest.raises(NamespaceSwitched, match="no longer active"):
        idx.run(max_idle_s=3)
    feed = [m for m in read(s.embeddings_topic, 1) if m.key == asin.encode()]
    assert [m.value is None for m in feed] == [False]  # the upsert only: the tombstone's transaction was aborted


def test_a_batchs_feed_records_are_in_the_log_before_the_pointer_check(pipeline):
    """Chaos (CI, seed 1, a busy box): a re-embed switched the pointer and published its namespace between an old
    indexer's pointer check and its commit. The producer had not sent the batch's records yet (the commit flushes
    them), so they landed after the publish and five live products' last feed record was an old-bundle vector. The
    records are flushed before the check: a check that passes means they precede anything published after a switch.
    The sink here holds every record until a flush, as a slow link to the broker does."""
    from m5core.stores import switch_namespace

    s, make, produce, producer, store, read = pipeline
    asin = "B000000951"
    idx = make()
    held, send, flush = [], idx.sink.send, idx.sink.flush

    def flush_held(*a, **kw):
        while held:
            send(*held.pop(0))
        return flush(*a, **kw)

    idx.sink.send = lambda *a: held.append(a)
    idx.sink.flush = flush_held
    read_pointer = idx.store.get_pointer

    def switch_right_after_the_check(name):
        active = read_pointer(name)
        switch_namespace(s, f"{s.namespace}.next")  # what `m5 index reembed` does once its gates pass, then it publishes
        producer.send(s.embeddings_topic, asin.encode(), b"published by the re-embed")
        producer.flush()
        return active

    idx.store.get_pointer = switch_right_after_the_check
    produce(asin, upsert(asin, 1))
    producer.flush()
    idx.run(max_idle_s=1.5)
    feed = [m.value for m in read(s.embeddings_topic, 2) if m.key == asin.encode()]
    assert len(feed) == 2 and feed[-1] == b"published by the re-embed", feed

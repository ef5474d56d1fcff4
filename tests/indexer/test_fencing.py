"""A member the group has moved on from (a zombie: paused past max.poll.interval, a long GC, a network partition)
must not publish its batch after the partitions' new owner has published a newer one. On real Kafka."""

import time

import pytest

from m5core.events.base import CommitRejected
from m5core.events.kafka import KafkaAssignedSource, KafkaSink, KafkaSource


def _poll_until(source, timeout_s: float = 60.0) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if msgs := source.poll(100, 0.5):
            return msgs
    raise AssertionError("no records within the timeout")


def test_a_zombie_members_batch_never_reaches_the_feed(kafka_bootstrap, kafka_topics, unique_name):
    changes, feed = kafka_topics("changes"), kafka_topics("feed", compact=True)
    setup = KafkaSink(kafka_bootstrap)
    setup.send(changes, b"B000000001", b"v1")
    setup.flush()
    setup.close()
    group = unique_name("g")

    # A takes the batch, writes its feed record in a transaction, then stalls past max.poll.interval.
    a_src = KafkaSource(kafka_bootstrap, [changes], group, max_poll_interval_ms=2000, session_timeout_ms=6000)
    a_sink = KafkaSink(kafka_bootstrap, transactional_id=unique_name("a"))
    msgs = _poll_until(a_src)
    offsets = {(changes, 0): msgs[-1].offset + 1}
    a_sink.begin()
    a_sink.send(feed, b"B000000001", b"stale, from the zombie")

    # B is given the partition once the group drops A, redoes the batch with what is newer, and commits.
    b_src = KafkaSource(kafka_bootstrap, [changes], group, session_timeout_ms=6000)
    b_sink = KafkaSink(kafka_bootstrap, transactional_id=unique_name("b"))
    assert [m.value for m in _poll_until(b_src)] == [b"v1"]
    b_sink.begin()
    b_sink.send(feed, b"B000000001", b"fresh, from the owner")
    b_sink.commit_batch(offsets, b_src)

    # A wakes up and commits: refused, and its record is aborted.
    with pytest.raises(CommitRejected):
        a_sink.commit_batch(offsets, a_src)

    reader = KafkaAssignedSource(kafka_bootstrap, [feed])
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not seen:
        seen += [m.value for m in reader.poll(100, 0.5)]
    time.sleep(1.0)
    seen += [m.value for m in reader.poll(100, 0.5)]
    assert seen == [b"fresh, from the owner"]
    assert b_src.committed([(changes, 0)]) == {(changes, 0): 1}
    for c in (reader, a_src, b_src, a_sink, b_sink):
        c.close()

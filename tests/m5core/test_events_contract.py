"""One contract for both transports: at-least-once delivery that resumes after the last commit."""

import pytest

from m5core.events.kafka import KafkaSink, KafkaSource
from m5core.events.local import LocalSink, LocalSource


@pytest.fixture(params=["local", "kafka"])
def transport(request, tmp_path, unique_name):
    """-> (topic, make_sink(), make_source(group))"""
    if request.param == "local":
        topic = unique_name("t")
        return topic, lambda: LocalSink(tmp_path), lambda g: LocalSource(tmp_path, [topic], g)
    boot = request.getfixturevalue("kafka_bootstrap")
    topic = request.getfixturevalue("kafka_topics")("t", partitions=1)
    return topic, lambda: KafkaSink(boot), lambda g: KafkaSource(boot, [topic], g)


def drain(src, n, rounds=100):
    got = []
    for _ in range(rounds):
        got += src.poll(100, 0.2)
        if len(got) >= n:
            break
    return got


def test_resume_after_commit_and_redeliver_uncommitted(transport, unique_name):
    topic, make_sink, make_source = transport
    sink = make_sink()
    for i in range(10):
        sink.send(topic, f"k{i}".encode(), f"v{i}".encode() if i != 7 else None)
    sink.flush()
    group = unique_name("g")
    src = make_source(group)
    msgs = drain(src, 10)
    assert [m.key for m in msgs] == [f"k{i}".encode() for i in range(10)]
    assert msgs[7].value is None
    assert msgs[3].value == b"v3"  # tombstones round-trip
    src.commit({(topic, 0): msgs[5].offset + 1})  # processed 0..5
    src.close()

    src = make_source(group)
    again = drain(src, 4)
    assert [m.key for m in again] == [f"k{i}".encode() for i in range(6, 10)]
    assert src.lag() == {(topic, 0): 0}
    src.close()
    sink.close()


def test_kafka_sink_flush_raises_when_the_broker_refuses_a_record(kafka_bootstrap, kafka_topics):
    """Delivery failures surface at flush(), so a caller never commits input whose output was lost."""
    from kafka.errors import KafkaError

    topic = kafka_topics("small", configs={"max.message.bytes": "2000"})
    sink = KafkaSink(kafka_bootstrap)
    try:
        sink.send(topic, b"ok", b"x" * 10)
        sink.flush()  # a record the broker takes: no error
        sink.send(topic, b"big", b"x" * 20_000)  # under the client's limit, over the topic's
        with pytest.raises(KafkaError):
            sink.flush()
        # The idempotent producer treats the refusal as fatal: later records fail too, and loudly, never
        # reported as delivered (the indexer exits without committing and a restart replays them).
        sink.send(topic, b"ok2", b"y")
        with pytest.raises(KafkaError):
            sink.flush()
    finally:
        sink.close()

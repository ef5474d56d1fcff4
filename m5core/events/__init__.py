"""Event transports, chosen by `FeedConfig.events`: kafka (production) or local (JSON-lines files)."""

from m5core.events.base import EmptySource, EventSink, EventSource, Message
from m5core.settings import FeedConfig


def open_source(settings: FeedConfig, topics: list[str], group: str | None, partitions: frozenset[int] | None = None, **kafka_opts) -> EventSource:
    """A consumer of `topics`; group=None reads every partition without a group (index followers), or only
    `partitions` of each topic (a service shard).

    kafka_opts go to the Kafka consumer (group membership settings); the local source has no group protocol.
    """
    if settings.events == "kafka":
        from m5core.events.kafka import KafkaAssignedSource, KafkaSource

        if group is None:
            return KafkaAssignedSource(settings.kafka_bootstrap, topics, partitions)
        return KafkaSource(settings.kafka_bootstrap, topics, group, **kafka_opts)
    if partitions is not None:
        raise ValueError("shard_partitions: a shard follows Kafka partitions; the local event source has none (use --events kafka)")
    from m5core.events.local import LocalSource

    return LocalSource(settings.local_events_dir, topics, group or "follower")


def open_sink(settings: FeedConfig, transactional_id: str | None = None) -> EventSink:
    """`transactional_id`: each batch in a Kafka transaction with its offsets (the event indexer; see KafkaSink)."""
    if settings.events == "kafka":
        from m5core.events.kafka import KafkaSink

        return KafkaSink(settings.kafka_bootstrap, transactional_id)
    from m5core.events.local import LocalSink

    return LocalSink(settings.local_events_dir)


__all__ = ["EmptySource", "EventSink", "EventSource", "Message", "open_sink", "open_source"]

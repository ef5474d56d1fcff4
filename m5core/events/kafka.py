"""Kafka transport (kafka-python): manual commits after side effects, earliest reset, acks=all; consumers read
committed records only, and the event indexer publishes each batch in a transaction with its offsets.

Each client takes the `M5_KAFKA_BOOTSTRAP` address as it is, credentials included (`m5core.settings.kafka_client_options`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from m5core.events.base import CommitRejected, EventSink, EventSource, Message
from m5core.events.base import TopicPartition as TP
from m5core.settings import kafka_client_options

# kafka-python caps its reconnect back-off at 30 s (the Java client at 1 s): after a broker outage our
# clients would resume up to 30 s after the broker is back, which the freshness target cannot absorb.
# One connection attempt a second per broker is cheap.
_CLIENT_DEFAULTS = {"reconnect_backoff_max_ms": 1000}
# Consumers skip records of aborted transactions: a zombie indexer's batch never reaches a follower or partner.
_CONSUMER_DEFAULTS = {**_CLIENT_DEFAULTS, "isolation_level": "read_committed"}
# The group moved the partitions: the batch's new owner redoes it from the last commit.
_GROUP_MOVED = (CommitFailedError, RebalanceInProgressError, IllegalGenerationError, UnknownMemberIdError, FencedInstanceIdError)


TRANSACTION_TIMEOUT_MS = 30_000
"""Longest a batch's transaction may stay open: a batch is one encode and one store write (seconds at most)."""


class KafkaSource(EventSource):
    _fetched_as = None

    def __init__(self, bootstrap: str, topics: list[str], group_id: str, **opts):
        self.consumer = KafkaConsumer(
            **kafka_client_options(bootstrap),
            group_id=group_id,
            enable_auto_commit=False,
            # A group with no commit starts at the beginning: nothing produced before the first commit is skipped.
            auto_offset_reset="earliest",
            max_poll_records=opts.pop("max_poll_records", 1000),
            **{**_CONSUMER_DEFAULTS, **opts},
        )
        # Know the partitions before joining: a member that joins without a fresh topic's metadata is
        # assigned nothing, and the group only notices at the next metadata refresh (minutes).
        deadline = time.monotonic() + 10
        while any(not self.consumer.partitions_for_topic(t) for t in topics) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.consumer.subscribe(topics)

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Message]:
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        # The membership these records were fetched under: a member dropped from the group meanwhile resets its
        # own generation, and a commit under the reset one would not be checked (KIP-447 fencing needs the old one).
        self._fetched_as = self.consumer.group_metadata() if self.consumer.config["group_id"] else None
        out = [
            Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp, tuple(r.headers or ()))
            for records in batches.values()
            for r in records
        ]
        out.sort(key=lambda m: (m.topic, m.partition, m.offset))
        return out

    def commit(self, offsets: Mapping[TP, int]) -> None:
        if offsets:
            try:
                self.consumer.commit({TopicPartition(t, p): OffsetAndMetadata(off, "", -1) for (t, p), off in offsets.items()})
            except _GROUP_MOVED as exc:
                # The group is moving the partitions: retrying without a poll() cannot succeed (kafka-python
                # completes a rebalance inside poll), and whoever owns them next replays from the last commit.
                raise CommitRejected(f"{type(exc).__name__}: {exc}") from exc

    def seek(self, offsets: Mapping[TP, int]) -> None:
        for (t, p), off in offsets.items():
            self.consumer.seek(TopicPartition(t, p), off)

    def on_assign(self, start: Callable[[list[TP]], Mapping[TP, int]]) -> None:
        """Re-subscribes with a listener (before the first poll): kafka-python runs it inside poll(), after the
        group's commits are known and before any record of the new partitions is fetched."""
        source = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                source.seek(start([(tp.topic, tp.partition) for tp in assigned]))

        self.consumer.subscribe(list(self.consumer.subscription() or ()), listener=_Listener())

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self.consumer.assignment()]

    def committed(self, partitions: list[TP]) -> dict[TP, int]:
        out = {}
        for t, p in partitions:
            off = self.consumer.committed(TopicPartition(t, p))
            if off is not None:
                out[(t, p)] = int(off)
        return out

    def group_metadata(self):
        return self._fetched_as

    def end_offsets(self) -> dict[TP, int]:
        parts = list(self.consumer.assignment())
        return {(tp.topic, tp.partition): off for tp, off in self.consumer.end_offsets(parts).items()} if parts else {}

    def lag(self) -> dict[TP, int]:
        parts = list(self.consumer.assignment())
        if not parts:
            return {}
        ends = self.consumer.end_offsets(parts)
        return {(tp.topic, tp.partition): max(0, ends[tp] - self.consumer.position(tp)) for tp in parts}

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class KafkaAssignedSource(KafkaSource):
    """Reads every partition of the topics without a group (the service's index follower), or only `partitions`
    of each (a service shard: `m5core.shards`)."""

    def __init__(self, bootstrap: str, topics: list[str], partitions: frozenset[int] | None = None, **opts):
        self.consumer = KafkaConsumer(
            **kafka_client_options(bootstrap),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            **{**_CONSUMER_DEFAULTS, **opts},
        )
        parts = []
        self.partition_counts: dict[str, int] = {}
        for t in topics:
            ids = self.consumer.partitions_for_topic(t) or {0}
            self.partition_counts[t] = len(ids)
            if partitions is not None and (missing := partitions - ids):
                self.consumer.close()
                raise ValueError(f"shard_partitions: topic {t} has partitions 0-{len(ids) - 1}, not {sorted(missing)}")
            parts += [TopicPartition(t, p) for p in sorted(ids) if partitions is None or p in partitions]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)

    def commit(self, offsets: Mapping[TP, int]) -> None:
        pass  # offsets live in the index snapshot, not in a group


class KafkaSink(EventSink):
    def __init__(self, bootstrap: str, transactional_id: str | None = None, **opts):
        """`transactional_id`: publish each batch in a Kafka transaction with its consumed offsets (`commit_batch`).
        The broker checks the offsets against the group's generation (KIP-447), so a member the group has moved on
        from cannot commit, and its records are aborted: read-committed consumers never see a zombie's stale batch."""
        # kafka-python >= 3 enables idempotence by default (acks=all, bounded in-flight): retries cannot
        # duplicate or reorder a partition. Large batches matter more than linger: a feed record is
        # ~1.5 KB and kafka-python's sender is Python, so per-request cost dominates at 16 KB batches.
        opts = {**_CLIENT_DEFAULTS, "batch_size": 1 << 20, **opts}
        if transactional_id:
            # A crashed member's open transaction holds back read-committed consumers until the broker aborts it.
            opts = {"transactional_id": transactional_id, "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS, **opts}
        self.producer = KafkaProducer(**kafka_client_options(bootstrap), acks="all", linger_ms=opts.pop("linger_ms", 5), retries=5, **opts)
        self.transactional = bool(transactional_id)
        self._open = False
        if self.transactional:
            self.producer.init_transactions()  # fences an earlier producer of this id and aborts what it left open
        # Failures are collected by callback rather than by keeping every future until flush(): a
        # 1M-record backfill would otherwise hold a million futures and slow every GC pass.
        self._errors: list[Exception] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        self.producer.send(topic, key=key, value=value, headers=list(headers) or None).add_errback(self._errors.append)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.producer.flush(timeout=timeout_s)  # every send is then acked or failed
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]  # the broker did not take a record: the caller must not commit past it

    def begin(self) -> None:
        if self.transactional:
            self.producer.begin_transaction()
            self._open = True

    def commit_batch(self, offsets: Mapping[TP, int], source: EventSource) -> None:
        if not self.transactional:
            return super().commit_batch(offsets, source)
        self.flush()
        try:
            if offsets:
                tps = {TopicPartition(t, p): OffsetAndMetadata(off, "", -1) for (t, p), off in offsets.items()}
                self.producer.send_offsets_to_transaction(tps, source.group_metadata())
            self.producer.commit_transaction()
            self._open = False
        except _GROUP_MOVED as exc:
            self.abort()
            raise CommitRejected(f"{type(exc).__name__}: {exc}") from exc

    def abort(self) -> None:
        if self._open:  # a fatal producer error raises here: the process exits, and the broker aborts at the timeout
            self._open = False
            self._errors = []
            self.producer.abort_transaction()

    def close(self) -> None:
        self.producer.close()

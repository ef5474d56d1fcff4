"""Event transport interface: Kafka in production, JSON-lines files in the embedded demo.

At-least-once: a consumer commits offsets only after its side effects are durable, and a
restarted consumer resumes from the last commit (or the earliest record when none exists).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None is a tombstone on a compacted topic
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


TopicPartition = tuple[str, int]


def offsets_to_meta(offsets: Mapping[TopicPartition, int]) -> dict[str, int]:
    """{(topic, partition): next_offset} -> {"topic:partition": next_offset} (JSON keys)."""
    return {f"{t}:{p}": int(o) for (t, p), o in sorted(offsets.items())}


def offsets_from_meta(meta: Mapping[str, int]) -> dict[TopicPartition, int]:
    """{"topic:partition": next_offset} -> {(topic, partition): next_offset}."""
    out = {}
    for key, off in meta.items():
        topic, _, part = key.rpartition(":")
        out[(topic, int(part))] = int(off)
    return out


class CommitRejected(RuntimeError):
    """The group moved the partitions away while the batch was processed: the new owner redoes it."""


class EventSource(ABC):
    @abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Message]:
        """Next messages of the subscribed topics; empty when none arrived within the timeout."""

    @abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Mark everything below `offsets[tp]` (the next offset to read) as processed."""

    @abstractmethod
    def lag(self) -> dict[TopicPartition, int]:
        """Messages not yet consumed, per partition."""

    @abstractmethod
    def end_offsets(self) -> dict[TopicPartition, int]:
        """The next offset to be written, per partition: a bootstrap point taken before a store scan."""

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:  # noqa: B027
        """Start reading at these offsets (snapshot bootstrap); a no-op where unsupported."""

    def on_assign(self, start: Callable[[list[TopicPartition]], Mapping[TopicPartition, int]]) -> None:  # noqa: B027
        """Where a group transport assigns partitions: `start(partitions)` says where to read each from (those it
        names; the rest resume at the group's commit). A no-op for single-owner transports."""

    def assignment(self) -> list[TopicPartition]:
        """The partitions this reader owns now."""
        return []

    def committed(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The group's committed next offsets of these partitions (those with a commit)."""
        return {}

    def group_metadata(self):
        """The group membership the last poll's records were fetched under (Kafka's generation), which a transactional
        commit of their offsets is checked against; None without a group."""
        return None

    def close(self) -> None:  # noqa: B027
        pass


class EventSink(ABC):
    @abstractmethod
    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Queue one record; headers travel beside the value (a tombstone's version, say: its value must stay null)."""

    @abstractmethod
    def flush(self, timeout_s: float = 30.0) -> None:
        """Block until everything sent is durable at the transport (raise if not)."""

    def begin(self) -> None:  # noqa: B027
        """Open a batch: what is sent until `commit_batch` or `abort` belongs to it."""

    def commit_batch(self, offsets: Mapping[TopicPartition, int], source: EventSource) -> None:
        """Make the batch's records durable and mark its consumed `offsets` processed in `source`. Here one after
        the other; a transactional sink does both atomically, so a member the group has moved on from (a zombie)
        publishes nothing. Raises CommitRejected when the group has moved the partitions."""
        self.flush()
        source.commit(offsets)

    def abort(self) -> None:  # noqa: B027
        """Drop the batch's records where the transport can (a transaction); otherwise they stay sent."""

    def close(self) -> None:  # noqa: B027
        pass


class EmptySource(EventSource):
    """A source with nothing in it: an index that follows no feed (bootstrapped from the store alone)."""

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Message]:
        return []

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass

    def lag(self) -> dict[TopicPartition, int]:
        return {}

    def end_offsets(self) -> dict[TopicPartition, int]:
        return {}

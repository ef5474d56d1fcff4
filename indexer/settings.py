from __future__ import annotations

from pydantic import Field

from m5core.settings import BundleConfig, FeedConfig, IndexConfig, StoreConfig


class IndexerSettings(StoreConfig, FeedConfig, BundleConfig, IndexConfig):
    group_id: str = "m5-indexer"
    """Kafka consumer group: indexers in one group share the partitions of catalog.changes."""
    group_instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Static group membership: an indexer restarted under the same id (e.g. its pod name) takes its
    partitions back at once, instead of after session_timeout_ms. Unset: dynamic membership."""
    transactional_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Kafka transactional id of this indexer's feed producer (one per replica, stable across its restarts, e.g. the
    pod name): a restart then aborts at once what the crashed process left open. Unset: the group instance id if
    set, else a random one (a crash then holds back the feed's readers for up to 30 s, until the broker aborts)."""
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    """How long the group waits for a member that stopped heartbeating (a crash) before its partitions
    move; within the broker's group.{min,max}.session.timeout.ms (6 s-5 min by default)."""
    max_batch: int = Field(default=256, ge=1, le=100_000)
    """Most events encoded and written together by `m5 index run`."""
    batch: int = Field(default=512, ge=1)
    """Products encoded and written together by `m5 index backfill` and `reembed`."""
    max_wait_ms: int = Field(default=50, ge=0, le=60_000)
    """Longest a poll waits for a batch to fill (bounds the added freshness delay)."""
    encode_threads: int = Field(default=2, ge=1, le=256)
    """Product-tower sub-batches encoded at once, one ONNX Runtime thread each."""
    max_event_bytes: int = Field(default=1_000_000, ge=1024)
    """Payloads above this go to the dead-letter topic as oversize."""
    encode_retries: int = Field(default=3, ge=1, le=20)
    """Encoding attempts (with exponential back-off) before the events are dead-lettered."""
    metrics_port: int = Field(default=9108, ge=0, le=65_535)
    """Port of the indexer's Prometheus /metrics (0 disables)."""
    snapshot_interval_s: float = Field(default=60.0, gt=0)
    """Seconds between FAISS snapshots written by `m5 index snapshot` (one more at exit)."""
    snapshots_keep: int = Field(default=3, ge=1)
    """Snapshots kept on disk; older ones are deleted after each save."""
    store_retries: int = Field(default=5, ge=1, le=50)
    """Attempts at a batch when the store or the feed fails (exponential back-off); then the indexer exits non-zero."""

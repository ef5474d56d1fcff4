"""Follow the `catalog.embeddings` feed into a FAISS index and save atomic snapshots of it.

A snapshot is a directory `snap-<unix ms>` written by AnnIndex.save (temp dir + rename), whose
meta holds the feed offsets it includes: {"offsets": {"topic:partition": next_offset}, ...}. A
reader loads the newest snapshot and replays the feed from those offsets, so a service restart
costs a file load plus the recent tail of the feed instead of a full store scan.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from m5core.events.base import EventSource, Message, TopicPartition
from m5core.feed import SNAPSHOT_PREFIX as PREFIX
from m5core.feed import FeedFollower, offsets_from_meta
from m5core.index import AnnIndex
from m5core.stores.base import EmbeddingStore

log = logging.getLogger(__name__)


def offsets_to_meta(offsets: Mapping[TopicPartition, int]) -> dict[str, int]:
    return {f"{t}:{p}": int(o) for (t, p), o in sorted(offsets.items())}


def list_snapshots(root: Path) -> list[Path]:
    """Complete snapshots, oldest first (half-written `.tmp` dirs are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp")
                  and (p / "index.json").is_file())


def save_snapshot(index: AnnIndex, root: Path, offsets: Mapping[TopicPartition, int], keep: int = 3,
                  extra: dict | None = None) -> Path:
    """Save atomically, then drop all but the newest `keep` snapshots. -> the new snapshot dir."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{int(time.time() * 1000):013d}"
    path = root / name
    while path.exists():  # two saves within one millisecond
        name = f"{PREFIX}{int(name[len(PREFIX):]) + 1:013d}"
        path = root / name
    meta = {"offsets": offsets_to_meta(offsets), "count": len(index), "created_at": time.time(), **(extra or {})}
    index.save(path, meta)
    for old in list_snapshots(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_latest(root: Path) -> tuple[AnnIndex, dict] | None:
    """The newest snapshot and its meta, or None when there is none."""
    snaps = list_snapshots(root)
    return AnnIndex.load(snaps[-1]) if snaps else None


class OffsetTracking(EventSource):
    """Wraps a source and remembers the next offset per partition: what a snapshot includes."""

    def __init__(self, inner: EventSource):
        self.inner = inner
        self.offsets: dict[TopicPartition, int] = {}

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Message]:
        msgs = self.inner.poll(max_records, timeout_s)
        for m in msgs:
            self.offsets[(m.topic, m.partition)] = max(self.offsets.get((m.topic, m.partition), 0), m.offset + 1)
        return msgs

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.inner.seek(offsets)
        self.offsets.update(offsets)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.inner.commit(offsets)

    def lag(self) -> dict[TopicPartition, int]:
        return self.inner.lag()

    def end_offsets(self) -> dict[TopicPartition, int]:
        return self.inner.end_offsets()

    def close(self) -> None:
        self.inner.close()


class Snapshotter:
    """FeedFollower + periodic snapshots. Resumes from the newest snapshot, else from the store."""

    def __init__(self, source: EventSource, store: EmbeddingStore, root: Path, dim: int, kind: str = "auto",
                 interval_s: float = 60.0, keep: int = 3):
        self.source = OffsetTracking(source)
        self.store, self.root, self.interval_s, self.keep = store, Path(root), interval_s, keep
        loaded = load_latest(self.root)
        if loaded is not None:
            self.index, meta = loaded
            offsets = offsets_from_meta(meta.get("offsets", {}))
            if offsets:
                self.source.seek(offsets)
            log.info("resumed from snapshot with %d vectors at %s", len(self.index), meta.get("offsets"))
            self.follower = FeedFollower(self.source, self.index, store, log)
        else:
            self.index = AnnIndex(dim, kind)  # type: ignore[arg-type]
            self.follower = FeedFollower(self.source, self.index, store, log)
            # No snapshot: the store is the source of truth up to the feed's end offsets at this moment.
            n = self.follower.bootstrap()  # seeks to (and so records) the end offsets taken before the scan
            log.info("bootstrapped %d vectors from the store", n)
        self.saved_at_applied = -1
        self.snapshots: list[Path] = []

    def snapshot(self) -> Path:
        path = save_snapshot(self.index, self.root, self.source.offsets, self.keep,
                             {"bundle_versions": sorted(self.follower.bundle_versions)})
        self.saved_at_applied = self.follower.applied
        self.snapshots.append(path)
        log.info("snapshot %s: %d vectors, offsets %s", path.name, len(self.index), offsets_to_meta(self.source.offsets))
        return path

    def run(self, stop: threading.Event, max_idle_s: float | None = None) -> None:
        """Follow until stop is set (or max_idle_s without feed messages); snapshot every interval_s and at exit."""
        last_save = time.monotonic()
        idle_since = time.monotonic()
        while not stop.is_set():
            try:
                n = self.follower.poll_once(2000, 0.2)
            except Exception:  # noqa: BLE001 - a broker hiccup must not lose the in-memory index
                log.exception("feed poll failed; retrying")
                stop.wait(1.0)
                continue
            now = time.monotonic()
            if n:
                idle_since = now
            elif max_idle_s is not None and now - idle_since > max_idle_s:
                break
            if now - last_save >= self.interval_s and self.follower.applied != self.saved_at_applied:
                self.snapshot()
                last_save = now
        if self.follower.applied != self.saved_at_applied or not self.snapshots:
            self.snapshot()

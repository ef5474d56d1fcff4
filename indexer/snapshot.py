"""`m5 index snapshot`: follow the `catalog.embeddings` feed into a FAISS index and save atomic snapshots
of it (the format: `m5core.snapshots`), so a service restart costs a file load plus the feed's tail."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from m5core.events.base import EventSource
from m5core.feed import FeedFollower
from m5core.index import AnnIndex
from m5core.snapshots import offsets_to_meta, save_snapshot
from m5core.stores.base import EmbeddingStore

log = logging.getLogger(__name__)


class Snapshotter:
    """FeedFollower + periodic snapshots. Resumes from the newest snapshot, else from the store."""

    def __init__(
        self,
        source: EventSource,
        store: EmbeddingStore,
        root: Path,
        dim: int,
        kind: str = "auto",
        interval_s: float = 60.0,
        keep: int = 3,
        max_age_s: float | None = None,
    ):
        self.source = source
        self.store, self.root, self.interval_s, self.keep = store, Path(root), interval_s, keep
        # The newest snapshot of this namespace, else the store up to the feed's end offsets at this moment;
        # then the follower's offsets say where the index stands: past what it applied, never past what it polled.
        self.follower = FeedFollower(self.source, AnnIndex(dim, kind), store, log, snapshot_dir=self.root, max_snapshot_age_s=max_age_s)
        n = self.follower.bootstrap()
        log.info("started from %s with %d vectors", "a snapshot" if self.follower.snapshot_meta else "the store", n)
        self.saved_at_applied = -1
        self.snapshots: list[Path] = []

    @property
    def index(self) -> AnnIndex:
        return self.follower.index

    def snapshot(self) -> Path:
        path = save_snapshot(
            self.index,
            self.root,
            self.follower.offsets,
            self.keep,
            {"bundle_versions": sorted(self.follower.bundle_versions), "namespace": self.store.namespace},
        )
        self.saved_at_applied = self.follower.applied
        self.snapshots.append(path)
        log.info("snapshot %s: %d vectors, offsets %s", path.name, len(self.index), offsets_to_meta(self.follower.offsets))
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

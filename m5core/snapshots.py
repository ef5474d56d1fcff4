"""Index snapshots on disk, and the feed offsets they include: the one home of the format.

A snapshot is a directory `snap-<unix ms>` written by `AnnIndex.save` (temp dir + rename) whose meta
holds {"offsets": {"topic:partition": next_offset}, "bundle_versions": [...], "namespace": ...}. A
reader loads the newest one and replays the feed from those offsets, so a restart costs a file load
plus the recent tail of the feed instead of a full store scan. The indexer's snapshotter and backfill
write them; the service and the snapshotter read them (`m5core.feed.FeedFollower.bootstrap`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from m5core.events.base import TopicPartition, offsets_from_meta, offsets_to_meta  # noqa: F401 - re-exported

if TYPE_CHECKING:  # faiss is needed only by whoever saves or loads an index
    from m5core.index import AnnIndex

PREFIX = "snap-"


def list_snapshots(root: Path | str | None) -> list[Path]:
    """Complete snapshots, oldest first (half-written `.tmp` dirs and ones without index.json are ignored)."""
    root = Path(root) if root else None
    if root is None or not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and not p.name.endswith(".tmp") and (p / "index.json").is_file()
    )


def latest_snapshot(root: Path | str | None) -> Path | None:
    snaps = list_snapshots(root)
    return snaps[-1] if snaps else None


def save_snapshot(index: AnnIndex, root: Path, offsets: Mapping[TopicPartition, int], keep: int = 3, extra: dict | None = None) -> Path:
    """Save atomically, then drop all but the newest `keep` snapshots. -> the new snapshot dir."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{int(time.time() * 1000):013d}"
    path = root / name
    while path.exists():  # two saves within one millisecond
        name = f"{PREFIX}{int(name[len(PREFIX) :]) + 1:013d}"
        path = root / name
    meta = {"offsets": offsets_to_meta(offsets), "count": len(index), "created_at": time.time(), **(extra or {})}
    index.save(path, meta)
    for old in list_snapshots(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_latest(root: Path | str | None) -> tuple[AnnIndex, dict] | None:
    """The newest snapshot and its meta, or None when there is none."""
    from m5core.index import AnnIndex

    snap = latest_snapshot(root)
    return AnnIndex.load(snap) if snap is not None else None

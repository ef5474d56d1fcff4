"""What the service serves, and how it follows a model switch without a restart.

A `Serving` set is one bundle's query tower, its namespace's store, the index of its vectors and the
feed follower that keeps that index current. A switch (`m5 index reembed` / `rollback` moved the
active-namespace pointer) builds a new set beside the old one and swaps one reference, so a request
that reads `state.serving` once sees either the old set or the new one, never a mix.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from m5core.bundle import check_version
from m5core.encoder import Encoder
from m5core.events import EmptySource, EventSource, open_source
from m5core.feed import FeedFollower
from m5core.index import AnnIndex, set_threads
from m5core.shards import partition_of
from m5core.stores import active_pointer, open_store
from m5core.stores.base import EmbeddingStore
from service import metrics as M
from service.queries import QueryCache
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class Serving:
    namespace: str
    encoder: Encoder
    store: EmbeddingStore
    index: AnnIndex
    follower: FeedFollower
    source: EventSource | None = None
    """The feed consumer the follower runs on (None: the index follows nothing)."""
    owns_store: bool = True
    cache: QueryCache = field(default_factory=lambda: QueryCache(0))
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    _product: Encoder | None = None
    _product_lock: threading.Lock = field(default_factory=threading.Lock)

    def product_tower(self) -> Encoder:
        """The bundle's product tower, loaded on first use (`POST /duplicates` with documents): a listing not yet in
        the catalog is embedded as the indexer would embed it. An encoder that is no bundle's tower (tests'
        HashEncoder) embeds both sides itself."""
        with self._product_lock:
            if self._product is None:
                from m5core.encoder import OnnxEncoder

                bundle = getattr(self.encoder, "bundle_dir", None)
                self._product = self.encoder if bundle is None else OnnxEncoder(bundle, "product", threads=1, manifest=self.encoder.manifest)
            return self._product

    def mismatch(self, encoder: Encoder | None = None) -> str | None:
        """A query tower from another bundle than the indexed vectors gives meaningless neighbours."""
        enc = encoder or self.encoder
        held = set(self.follower.bundle_versions)
        if self.index.version:
            held.add(self.index.version)
        other = sorted(v for v in held if v != enc.version)
        if other:
            return f"indexed vectors come from bundle(s) {other}, the query tower is {enc.version}"
        return None

    def start(self) -> None:
        if self.source is not None:
            self.follower.lag()  # a first reading before the thread owns the consumer: /readyz has one from the start
            self.thread = threading.Thread(target=self.follower.run, args=(self.stop,), name="feed-follower", daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=5)
        if self.source is not None:
            self.source.close()
        if self.owns_store:
            self.store.close()


def build_serving(
    s: ServiceSettings,
    namespace: str,
    encoder: Encoder,
    *,
    store: EmbeddingStore | None = None,
    index: AnnIndex | None = None,
    feed_source: EventSource | None = None,
    follow_feed: bool = True,
) -> Serving:
    """Load a serving set: the index starts from the newest snapshot of this bundle, else a store scan,
    and then follows the feed (records of other bundles on the feed are skipped). An injected index is used as is."""
    st = store or open_store(s, namespace)
    idx = index if index is not None else AnnIndex(encoder.dim, s.index_kind, encoder.version)
    shard = s.shard()
    source = feed_source if feed_source is not None else (open_source(s, [s.embeddings_topic], None, shard) if follow_feed else None)
    follower = FeedFollower(
        source if source is not None else EmptySource(),
        idx,
        st,
        log,
        snapshot_dir=s.snapshot_dir,
        bundle_version=encoder.version,
        max_snapshot_age_s=s.max_snapshot_age_s,
        keep=None if shard is None else shard_filter(shard, source, s.embeddings_topic),
    )
    if index is None:
        follower.bootstrap()
        idx = follower.index  # the snapshot's index when one was loaded
    return Serving(namespace, encoder, st, idx, follower, source, owns_store=store is None, cache=QueryCache(s.query_cache_size))


def shard_filter(shard: frozenset[int], source: EventSource | None, topic: str) -> Callable[[str], bool]:
    """A shard's test of an ASIN: its feed partition is one of the shard's (the feed's partition count from the
    consumer, which checked that the shard's partitions exist)."""
    counts = getattr(source, "partition_counts", None)
    if not counts or topic not in counts:
        raise ValueError("shard_partitions: a shard must follow the Kafka feed (--events kafka) to know its partitions")
    n = counts[topic]
    return lambda asin: partition_of(asin, n) in shard


def bundle_dir_for(bundles_dir: Path, version: str) -> Path:
    """The bundle directory holding `version` (bundles are `<bundles_dir>/<version>/`, as export writes them).
    The version comes from the store: checked as a plain name before it touches a path."""
    check_version(version)
    for cand in [bundles_dir / version, *sorted(p for p in bundles_dir.iterdir() if p.is_dir())]:
        try:
            if orjson.loads((cand / "manifest.json").read_bytes()).get("version") == version:
                return cand
        except (OSError, ValueError):
            continue
    raise FileNotFoundError(f"no bundle {version} under {bundles_dir}")


def namespace_bundle(store: EmbeddingStore) -> str | None:
    """The bundle version of a namespace's vectors: a re-embed fills one namespace per bundle.
    (Batches of 1,000: a Redis SCAN with COUNT 1 would walk a large keyspace one bucket per round trip.)"""
    return next((rec.bundle_version for rec in store.scan(1000)), None)


def stored_bundle(s: ServiceSettings, namespace: str) -> str | None:
    """`namespace_bundle` of `namespace`, over a connection of its own."""
    probe = open_store(s, namespace)
    try:
        return namespace_bundle(probe)
    finally:
        probe.close()


@dataclass
class State:
    """The app's state: the current serving set, and the switch to the next one."""

    settings: ServiceSettings
    serving: Serving
    load_tower: Callable[[str], Encoder]
    """bundle version -> its query tower, for model switches."""
    started: float = field(default_factory=time.time)
    watch_stop: threading.Event = field(default_factory=threading.Event)
    watcher: threading.Thread | None = None
    _switching: threading.Lock = field(default_factory=threading.Lock)

    def follow_model(self, namespace: str) -> bool:
        """Switch to `namespace` if the active-namespace pointer moved there. -> switched.

        The new set (its bundle's query tower, store, index, feed follower) is built while the old one
        serves; then one reference swap, and the old one is closed.
        """
        if namespace == self.serving.namespace:
            return False
        s = self.settings
        version = stored_bundle(s, namespace)
        if version is None:
            log.warning("active namespace %s holds no vectors yet; still serving %s", namespace, self.serving.namespace)
            return False
        encoder = self.load_tower(version)
        new = build_serving(s, namespace, encoder)
        if (msg := new.mismatch()) is not None:
            new.close()
            raise RuntimeError(f"namespace {namespace}: {msg}")
        new.start()
        old, self.serving = self.serving, new
        M.BUNDLE_INFO.labels(old.encoder.version).set(0)
        M.BUNDLE_INFO.labels(encoder.version).set(1)
        log.info("model switch: %s (%s) -> %s (%s), %d vectors", old.namespace, old.encoder.version, namespace, encoder.version, len(new.index))
        old.close()
        gc.unfreeze()  # the startup freeze (app lifespan) holds the old set too: let the collector free it, then freeze again
        gc.collect()
        gc.freeze()
        return True

    def readiness(self) -> dict:
        """/readyz: ready unless the store is unreachable, the index lags the feed beyond its bound, or the
        query tower and the indexed vectors come from different bundles; each reason is named."""
        s, g = self.settings, self.serving
        reasons = []
        if not g.store.ping():
            reasons.append(f"store ({s.store}) unreachable")
        lag = g.follower.last_lag  # read by the follower's own thread (FeedFollower.run)
        if lag > s.feed_lag_ready_bound:
            reasons.append(f"index is {lag} feed messages behind (bound {s.feed_lag_ready_bound})")
        if (msg := g.mismatch()) is not None:
            reasons.append(f"bundle mismatch: {msg}")
        return {
            "ready": not reasons,
            "reasons": reasons,
            "index_size": len(g.index),
            "index_kind": g.index.kind,
            "feed_lag": lag,
            "feed_lag_age_s": None if g.follower.lag_at is None else round(time.monotonic() - g.follower.lag_at, 1),
            "bundle_version": g.encoder.version,
            "namespace": g.namespace,
            "shard_partitions": s.shard_partitions or None,
            "feed_partitions": (getattr(g.source, "partition_counts", None) or {}).get(s.embeddings_topic),
        }

    def watch(self) -> None:
        self.watcher = threading.Thread(target=self.watch_model, args=(self.watch_stop,), name="model-watch", daemon=True)
        self.watcher.start()

    def close(self) -> None:
        self.watch_stop.set()
        if self.watcher is not None:
            self.watcher.join(timeout=5)
        self.serving.close()

    def check_model(self) -> bool:
        """Read the active-namespace pointer (outside any namespace: over the current store's connection) and follow it."""
        with self._switching:  # the watcher and POST /admin/model/check never build two sets at once
            return self.follow_model(self.serving.store.get_pointer(active_pointer(self.settings)[0]) or self.settings.namespace)

    def watch_model(self, stop: threading.Event) -> None:
        """Thread body: poll the active-namespace pointer (one store read) every `model_poll_s`."""
        while not stop.wait(self.settings.model_poll_s):
            try:
                self.check_model()
            except Exception:  # noqa: BLE001 - keep serving the current model; retry on the next tick
                log.exception("model switch failed; still serving %s", self.serving.namespace)


def start_state(
    s: ServiceSettings,
    *,
    encoder: Encoder | None = None,
    store: EmbeddingStore | None = None,
    index: AnnIndex | None = None,
    feed_source: EventSource | None = None,
    follow_feed: bool = True,
    load_tower: Callable[[str], Encoder] | None = None,
) -> State:
    """The service's startup: query tower, serving set, feed follower and (unless a store is injected without
    `load_tower`, as tests do) the watcher that follows the active-namespace pointer."""
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.stores import active_namespace

    set_threads(s.search_threads)
    bundles_dir = s.bundles_dir or Path(s.bundle).parent
    load = load_tower or (lambda version: OnnxEncoder(bundle_dir_for(bundles_dir, version), "query", threads=1))
    enc = encoder or OnnxEncoder(s.bundle, "query", threads=1, manifest=load_manifest(s.bundle))
    namespace = active_namespace(s) if store is None else s.namespace  # follows a re-embed's namespace switch
    if store is None and (held := stored_bundle(s, namespace)) not in (None, enc.version):
        # The pointer moved on from the configured bundle (a re-embed or a rollback while this process was down): the
        # query tower must be the one the namespace's vectors came from. The watcher does the same on a later switch.
        try:
            enc = load(held)
            log.warning("namespace %s holds bundle %s, not the configured %s: serving its query tower", namespace, held, s.bundle)
        except FileNotFoundError as exc:
            log.error("namespace %s holds bundle %s, whose query tower is not found (%s): not ready until it is", namespace, held, exc)
    serving = build_serving(s, namespace, enc, store=store, index=index, feed_source=feed_source, follow_feed=follow_feed)
    state = State(s, serving, load)
    serving.start()
    if s.model_poll_s > 0 and (store is None or load_tower is not None):
        state.watch()
    log.info("service up: %d vectors (%s index), query tower %s, namespace %s", len(serving.index), serving.index.kind, enc.version, namespace)
    M.BUNDLE_INFO.labels(enc.version).set(1)
    # The index's million ASIN strings and dicts live as long as the worker: move them out of the
    # collector's generations, or each full collection walks them all inside some request.
    gc.collect()
    gc.freeze()
    return state

"""Wiring: settings -> encoder, store, transports -> Indexer. The only place that opens sockets."""

from __future__ import annotations

import itertools
import logging
import uuid

from indexer.pipeline import Indexer, NamespaceSwitched
from indexer.settings import IndexerSettings
from m5core.bundle import load_manifest
from m5core.encoder import OnnxEncoder
from m5core.events import open_sink, open_source
from m5core.stores import active_namespace, open_store
from m5core.stores.base import EmbeddingStore

log = logging.getLogger(__name__)


class BundleMismatch(RuntimeError):
    """The namespace to write holds another bundle's vectors."""


def check_bundle(store: EmbeddingStore, version: str, sample: int = 1000) -> None:
    """Refuse to write a namespace whose vectors come from another bundle: an indexer restarted with the old
    bundle after a re-embed switch would fill the new namespace with vectors of the old model, and every
    replica would then refuse text search (409) for the mix.

    Raises:
        BundleMismatch: naming the namespace, its bundle(s) and ours.
    """
    held = {r.bundle_version for r in itertools.islice(store.scan(min(sample, 1000)), sample)} - {version}
    if held:
        raise BundleMismatch(
            f"namespace {store.namespace} holds vectors of bundle(s) {sorted(held)}, this process encodes with {version}: "
            "start it with that namespace's bundle (--bundle), or re-embed into a new namespace (`m5 index reembed --bundle`)"
        )


def build_indexer(s: IndexerSettings, encoder=None, render_scheme: str = "fields") -> Indexer:
    """encoder: the bundle's product tower (and its render scheme) unless one is given."""
    if encoder is None:
        manifest = load_manifest(s.bundle)
        encoder = OnnxEncoder(s.bundle, "product", threads=s.encode_threads, manifest=manifest)
        render_scheme = manifest.render_scheme
    store = open_store(s, active_namespace(s))  # follows a re-embed's switch
    check_bundle(store, encoder.version)
    source = open_source(s, [s.changes_topic], s.group_id, group_instance_id=s.group_instance_id, session_timeout_ms=s.session_timeout_ms)
    sink = open_sink(s, transactional_id=f"{s.group_id}.{s.transactional_id or s.group_instance_id or uuid.uuid4().hex}")
    return Indexer(s, source, sink, store, encoder, render_scheme)


def run(s: IndexerSettings) -> int:
    if s.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(s.metrics_port, addr="127.0.0.1" if s.events == "local" else "0.0.0.0")
    idx = build_indexer(s)
    idx.install_signal_handlers()
    log.info("indexer up: %s -> %s store (%s), bundle %s", s.changes_topic, s.store, s.namespace, idx.encoder.version)
    try:
        idx.run()
    except NamespaceSwitched as exc:  # a re-embed switched (or a rollback): this process's bundle no longer serves
        log.error("%s", exc)
        return 3
    finally:
        idx.sink.flush()
        idx.source.close()
        idx.sink.close()
        idx.store.close()
    log.info("indexer stopped cleanly")
    return 0

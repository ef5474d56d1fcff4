"""Wiring: settings -> encoder, store, transports -> Indexer. The only place that opens sockets."""

from __future__ import annotations

import logging

from indexer.pipeline import Indexer
from indexer.settings import IndexerSettings
from m5core.bundle import load_manifest
from m5core.encoder import OnnxEncoder
from m5core.events import open_sink, open_source
from m5core.stores import active_namespace, open_store

log = logging.getLogger(__name__)


def build_indexer(s: IndexerSettings, encoder=None) -> Indexer:
    manifest = load_manifest(s.bundle)
    encoder = encoder or OnnxEncoder(s.bundle, "product", threads=s.encode_threads, manifest=manifest)
    store = open_store(s, active_namespace(s))  # follows a re-embed's switch
    source = open_source(s, [s.changes_topic], s.group_id, group_instance_id=s.group_instance_id, session_timeout_ms=s.session_timeout_ms)
    sink = open_sink(s)
    return Indexer(s, source, sink, store, encoder, manifest.render_scheme)


def run(s: IndexerSettings) -> int:
    if s.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(s.metrics_port, addr="127.0.0.1" if s.events == "local" else "0.0.0.0")
    idx = build_indexer(s)
    idx.install_signal_handlers()
    log.info("indexer up: %s -> %s store (%s), bundle %s", s.changes_topic, s.store, s.namespace, idx.encoder.version)
    try:
        idx.run()
    finally:
        idx.sink.flush()
        idx.source.close()
        idx.sink.close()
        idx.store.close()
    log.info("indexer stopped cleanly")
    return 0

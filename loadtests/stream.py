"""Background indexing during a load test: catalog change events at a fixed rate to the changes topic.

Separate from the locustfile so it can be tested without locust (gevent patches the process)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("m5.loadtest")


def index_stream(rate: float, catalog: Path, seed: int, stop: threading.Event) -> int:
    """Send change events (catalog.events.iter_change_events over products.jsonl) at `rate`/s until `stop`.

    Transport and topic come from the usual settings (M5_EVENTS, M5_KAFKA_BOOTSTRAP, M5_CHANGES_TOPIC,
    M5_LOCAL_EVENTS_DIR). Returns the number of events sent."""
    from catalog.events import iter_change_events
    from m5core.events import open_sink
    from m5core.jsonl import read_jsonl
    from m5core.settings import FeedConfig

    if rate <= 0:
        raise ValueError(f"index rate must be > 0 events/s, got {rate}")
    settings = FeedConfig()
    sink = open_sink(settings)
    products = list(read_jsonl(catalog / "products.jsonl"))
    sent, t0 = 0, time.monotonic()
    try:
        for ev in iter_change_events(products, 10**9, seed=seed):
            if stop.is_set():
                break
            ev = ev.model_copy(update={"ts": time.time()})  # event time = now, so indexer lag metrics mean something
            sink.send(settings.changes_topic, ev.asin.encode(), ev.model_dump_json().encode())
            sent += 1
            if sent % max(1, int(rate)) == 0:
                sink.flush()
            delay = t0 + sent / rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        sink.flush()
    finally:
        sink.close()
    log.info("index stream: %d change events in %.1f s", sent, time.monotonic() - t0)
    return sent

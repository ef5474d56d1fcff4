"""Indexer metrics (Prometheus, base units). Names are what deploy/grafana and the alert rules use."""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("m5_indexer_events", "Change events consumed, by op.", ["op"])
BATCHES = Counter("m5_indexer_batches", "Batches processed.")
ENCODE_SECONDS = Histogram(
    "m5_indexer_encode_seconds", "Product-tower encode time per batch.", buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
)
FRESHNESS_SECONDS = Histogram(
    "m5_indexer_freshness_seconds",
    "Event time -> vector durable in the store and the feed.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
CONSUMER_LAG = Gauge("m5_indexer_consumer_lag", "Messages not yet consumed.", ["topic", "partition"])
DEAD_LETTERS = Counter("m5_indexer_dead_letters", "Events sent to the dead-letter topic, by reason.", ["reason"])
SKIPPED_UNCHANGED = Counter("m5_indexer_skipped_unchanged", "Changes that left the embedded content as it was (not re-embedded).")
STALE = Counter("m5_indexer_stale_events", "Events older than what the store holds (skipped).")
WRITES = Counter("m5_indexer_vectors_written", "Vectors written to the store and the feed.")
BUNDLE_INFO = Gauge("m5_indexer_bundle_info", "Bundle the indexer encodes with.", ["version"])
STORE_SIZE = Gauge("m5_indexer_store_size", "Live vectors in the store.")
STORE_REPLAYS = Counter(
    "m5_indexer_store_offset_replays",
    "Partitions assigned at store offsets behind the group's commit (a re-embedded namespace, or a store that lost acknowledged writes): replayed.",
)

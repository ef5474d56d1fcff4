from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from m5core.lexical import RERANK_DEPTH
from m5core.settings import BundleConfig, FeedConfig, IndexConfig, StoreConfig
from m5core.shards import parse_partitions

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def exposure_error(s: ServiceSettings) -> str | None:
    """Why these settings must not serve, or None. Without a key, anyone who reaches the port reads every
    embedding and runs the model: only the loopback interface may serve that way, unless told `--insecure`."""
    if s.host in LOOPBACK or s.api_key is not None or s.api_keys_file is not None or s.insecure:
        return None
    return (
        f"--host {s.host} without --api-key or --api-keys-file: anyone who can reach port {s.port} could read every embedding and "
        "run the model; set --api-keys-file (or M5_API_KEYS_FILE, made with `m5 keys add`) or --api-key (M5_API_KEY), "
        "or pass --insecure to serve openly anyway"
    )


class ServiceSettings(StoreConfig, FeedConfig, BundleConfig, IndexConfig):
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(default=8000, ge=0, le=65_535)
    """HTTP port."""
    workers: int = Field(default=1, ge=1, le=256)
    """uvicorn worker processes (each holds its own index; see docs/service.md)."""
    api_key: SecretStr | None = None
    """One key with every scope, named `default`. With it or a keys file, every route but /healthz, /readyz and
    /metrics needs a key in `X-API-Key` or `Authorization: Bearer`."""
    api_keys_file: Path | None = None
    """Named, scoped, hashed keys (`m5 keys add`; docs/service.md), re-read when the file changes."""
    key_rate_per_s: float = Field(default=0.0, ge=0)
    """Requests a second each key may make (per worker) unless its entry says otherwise; 0: unlimited. Over it: 429."""
    key_burst: float = Field(default=0.0, ge=0)
    """Requests a key may make at once (its bucket's size); 0: one second's worth of its rate."""
    insecure: bool = False
    """Serve without a key on an address other hosts can reach (refused otherwise); logged as a warning."""
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Larger request bodies get 413."""
    body_timeout_s: float = Field(default=10.0, gt=0)
    """A request body not received whole within this many seconds of the request's start gets 408."""
    max_k: int = Field(default=1000, ge=1)
    """Largest k for /search."""
    max_batch_asins: int = Field(default=1000, ge=1)
    """Largest ASIN list for POST /asin/embeddings."""
    max_queries: int = Field(default=64, ge=1)
    """Largest query list for POST /query/embed."""
    max_duplicate_documents: int = Field(default=32, ge=1)
    """Largest product document list for POST /duplicates (each runs through the product tower: ~2 ms, 32 in one call ~70 ms)."""
    max_batch_searches: int = Field(default=64, ge=1)
    """Largest search list for POST /search/batch (its texts are embedded together, so at most max_queries of them)."""
    max_query_chars: int = Field(default=512, ge=1)
    """Longer query strings get 422."""
    query_cache_size: int = Field(default=10_000, ge=0)
    """LRU entries of query embeddings (0 disables)."""
    max_in_flight: int = Field(default=256, ge=0)
    """Requests in progress beyond this get 503 with Retry-After instead of queueing without bound."""
    shed_wait_ms: float = Field(default=0.0, ge=0)
    """A request that waited longer than this for the event loop (parsed, not yet handled) gets 503 with Retry-After at once,
    so the requests served stay fast under overload (docs/service.md, "Overload"); 0: never shed by wait."""
    feed_lag_ready_bound: int = Field(default=10_000, ge=0)
    """/readyz fails while the index is more than this many feed messages behind."""
    rerank_depth: int = Field(default=RERANK_DEPTH, ge=0, le=1000)
    """Text searches re-score this many of the index's first candidates with the exact lexical terms the indexer
    stored (one store round trip); 0, or a bundle without exact terms: the index's order as it is."""
    effort: int | None = None
    """Default recall/latency knob: nprobe (IVF) or efSearch (HNSW); None uses the index default."""
    duplicate_effort: int | None = Field(default=None, ge=1)
    """Duplicate searches' nprobe (IVF): near-duplicates sit in the lists nearest the product, so it is not widened by
    the locale filter as a search's is; None: `m5core.index.NEAR_EFFORT` (docs/benchmarks.md, "Duplicates")."""
    search_threads: int = Field(default=1, ge=1, le=256)
    """FAISS (OpenMP) threads per worker. One query does not get faster with more, and idle OpenMP threads
    spinning next to uvicorn workers cost 10x latency on a busy box: keep 1 and scale with workers."""
    model_poll_s: float = Field(default=2.0, ge=0)
    """Seconds between checks of the active-namespace pointer; when `m5 index reembed` or `rollback` moves it,
    the service loads that namespace's bundle and index beside the old ones and swaps without a restart (0: off)."""
    bundles_dir: Path | None = None
    """Where to find the bundle of a newly active namespace (`<bundles_dir>/<version>/`); default: the parent of `bundle`."""
    shard_partitions: str = ""
    """Serve as a shard: index only the products of these `catalog.embeddings` partitions (`0-3,6`; the feed is keyed
    by ASIN, so its partitions split the catalog) and follow only them; `m5 router` fans searches out to the shards
    (docs/service.md, "Shards"). Empty: the whole catalog."""

    @field_validator("shard_partitions")
    @classmethod
    def _partitions_shape(cls, v: str) -> str:
        if v.strip():
            parse_partitions(v, "shard_partitions")
        return v.strip()

    def shard(self) -> frozenset[int] | None:
        """The partitions this shard follows; None: not a shard."""
        return parse_partitions(self.shard_partitions) if self.shard_partitions else None

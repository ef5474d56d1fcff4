"""Embedding stores, chosen by `StoreConfig.store`: redis (production) or local (embedded sqlite)."""

from m5core.settings import StoreConfig
from m5core.stores.base import EmbeddingStore, VectorRecord


def open_store(settings: StoreConfig, namespace: str | None = None) -> EmbeddingStore:
    ns = namespace or settings.namespace
    if settings.store == "redis":
        from m5core.stores.redis import RedisStore

        return RedisStore(settings.redis_url, ns, dtype=settings.vector_dtype)
    from m5core.stores.local import LocalStore

    return LocalStore(settings.local_store_path, ns)


__all__ = ["EmbeddingStore", "VectorRecord", "open_store"]

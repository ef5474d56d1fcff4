"""Embedding stores, chosen by `StoreConfig.store`: redis (production) or local (embedded sqlite)."""

from m5core.settings import StoreConfig
from m5core.stores.base import EmbeddingStore, VectorRecord


def open_store(settings: StoreConfig, namespace: str | None = None) -> EmbeddingStore:
    ns = namespace or settings.namespace
    if settings.store == "redis":
        from m5core.stores.redis import RedisStore

        return RedisStore(settings.redis_url, ns, dtype=settings.vector_dtype, timeout_s=settings.redis_timeout_s)
    from m5core.stores.local import LocalStore

    return LocalStore(settings.local_store_path, ns)


def active_pointer(settings: StoreConfig) -> tuple[str, str]:
    """(pointer name, previous-pointer name) of a base namespace: `m5:active` for the default `m5`."""
    return f"{settings.namespace}:active", f"{settings.namespace}:active:prev"


def active_namespace(settings: StoreConfig) -> str:
    """The namespace readers should use now: the `{namespace}:active` pointer, else `namespace` itself.

    A re-embed (`m5 index reembed`) fills a new namespace and then moves the pointer, so the
    service and the indexer call this at start-up instead of using `namespace` directly.
    """
    store = open_store(settings)
    try:
        return store.get_pointer(active_pointer(settings)[0]) or settings.namespace
    finally:
        store.close()


def switch_namespace(settings: StoreConfig, namespace: str) -> str:
    """Point readers at `namespace` atomically; -> the namespace that was active before."""
    store = open_store(settings)
    try:
        name, prev = active_pointer(settings)
        if store.get_pointer(name) is None:
            # no pointer yet means the base namespace is active: record it so rollback can return there
            store.swap_pointer(name, settings.namespace, prev)
        return store.swap_pointer(name, namespace, prev) or settings.namespace
    finally:
        store.close()


def previous_namespace(settings: StoreConfig) -> str | None:
    """The namespace active before the last switch (what `m5 index rollback` returns to)."""
    store = open_store(settings)
    try:
        return store.get_pointer(active_pointer(settings)[1])
    finally:
        store.close()


__all__ = ["EmbeddingStore", "VectorRecord", "active_namespace", "active_pointer", "open_store", "previous_namespace", "switch_namespace"]

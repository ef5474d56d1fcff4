"""Typed settings: every field from an `M5_*` environment variable or a `--flag`, docstring as help.

Each component declares one settings class built from the mixins below, so a name such as
`M5_REDIS_URL` means the same thing to the service and the indexer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="M5Settings")


class M5Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="M5_",
        extra="forbid",  # an unknown key is an error, never silently ignored
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def safe_dump(self) -> dict[str, Any]:
        """Settings as a dict for logs, with secrets masked (SecretStr fields, and passwords inside addresses)."""
        doc = json.loads(self.model_dump_json())
        for name in ("redis_url", "kafka_bootstrap"):
            if isinstance(doc.get(name), str):
                doc[name] = mask_url(doc[name])
        return doc


def mask_url(url: str) -> str:
    """`redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`: what logs, errors and /readyz may show
    (Kafka addresses too: `kafka://user:secret@h1:9092,h2:9092` -> `kafka://user:***@h1:9092,h2:9092`)."""
    from urllib.parse import urlsplit, urlunsplit

    scheme, sep, rest = url.partition("://")
    if sep and scheme in KAFKA_SCHEMES:  # several hosts: not one URL netloc
        userinfo, at, hosts = rest.rpartition("@")
        return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}" if at else url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = f"{parts.username}:***" if parts.username else ":***"
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


KAFKA_SCHEMES = {"kafka": "SASL_PLAINTEXT", "kafka+ssl": "SASL_SSL"}


def kafka_client_options(bootstrap: str) -> dict[str, Any]:
    """`M5_KAFKA_BOOTSTRAP` -> kafka-python client options. Credentials travel in the address, as Redis's do in its
    URL: `host:9092,host2:9092` is plaintext; `kafka://user:password@host:9092,host2:9092` authenticates with SASL
    SCRAM-SHA-256 (`?mechanism=SCRAM-SHA-512` or `PLAIN` for another), `kafka+ssl://` over TLS as well.

    Raises:
        ValueError: an address of another scheme, or credentials without a password, named with the password masked.
    """
    from urllib.parse import parse_qs, unquote

    scheme, sep, rest = bootstrap.partition("://")
    if not sep:
        return {"bootstrap_servers": [h.strip() for h in bootstrap.split(",") if h.strip()]}
    if scheme not in KAFKA_SCHEMES:
        expected = " or ".join(["host:port,...", *(f"{k}://" for k in KAFKA_SCHEMES)])
        raise ValueError(f"kafka_bootstrap: scheme {scheme!r} in {mask_url(bootstrap)}; expected {expected}")
    rest, _, query = rest.partition("?")
    userinfo, at, hosts = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not user or not colon or not password:
        raise ValueError(f"kafka_bootstrap: {mask_url(bootstrap)} needs user:password@ before the hosts")
    mechanism = parse_qs(query).get("mechanism", ["SCRAM-SHA-256"])[0]
    return {
        "bootstrap_servers": [h.strip() for h in hosts.split(",") if h.strip()],
        "security_protocol": KAFKA_SCHEMES[scheme],
        "sasl_mechanism": mechanism,
        "sasl_plain_username": unquote(user),
        "sasl_plain_password": unquote(password),
    }


class StoreConfig(M5Settings):
    store: Literal["redis", "local"] = "local"
    """Embedding store backend: `redis` (production) or `local` (embedded on-disk, for the demo)."""
    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis URL of the embedding store of record."""
    local_store_path: Path = Path(".m5/store.sqlite")
    """File of the embedded store, used when store=local."""
    namespace: str = "m5"
    """Key prefix in the store; re-embedding writes a new namespace then switches."""
    vector_dtype: Literal["float32", "int8"] = "float32"
    """How vectors are kept in Redis: float32, or int8 with a per-vector scale (4x smaller)."""
    redis_timeout_s: float = Field(default=5.0, gt=0)
    """Longest wait for Redis to connect or answer one command: a host that stops answering (a partition, a
    frozen VM) fails requests and retries batches instead of hanging them. Above Redis's own stalls (an AOF
    fsync on a slow disk blocks writes up to ~2 s)."""


class FeedConfig(M5Settings):
    events: Literal["kafka", "local"] = "local"
    """Event transport: `kafka` (production) or `local` (JSON-lines files, for the demo)."""
    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma separated; with credentials `kafka://user:password@host:9092,...` (SASL SCRAM-SHA-256;
    `kafka+ssl://` over TLS; `?mechanism=` for another): `deploy/local/services.sh url kafka` gives the local broker's."""

    def kafka_options(self) -> dict[str, Any]:
        return kafka_client_options(self.kafka_bootstrap)

    changes_topic: str = "catalog.changes"
    """Topic of catalog change events (input of the indexer)."""
    embeddings_topic: str = "catalog.embeddings"
    """Compacted, ASIN-keyed topic of new vectors and tombstones (output of the indexer)."""
    dlq_topic: str = "catalog.changes.dlq"
    """Dead-letter topic for events that cannot be indexed, with the reason."""
    local_events_dir: Path = Path(".m5/events")
    """Directory of the local event log (one JSON-lines file per topic), used when events=local."""


IndexKind = Literal["auto", "flat", "hnsw", "ivf_sq8"]


class IndexConfig(M5Settings):
    index_kind: IndexKind = "auto"
    """FAISS index type: auto is exact (flat) below 50k vectors and IVF-SQ8 from there; hnsw on request."""
    snapshot_dir: Path = Path(".m5/snapshots")
    """Index snapshots (`snap-<ms>` with the feed offsets they include): the indexer writes them (`m5 index snapshot`,
    `backfill --snapshot`), the service starts from the newest one of its namespace and bundle and replays only the
    feed after it; with none there, from a store scan."""
    max_snapshot_age_s: float = Field(default=12 * 3600, gt=0)
    """A snapshot older than this is not started from (a store scan is). Replaying the compacted feed from an old
    offset can miss deletes whose tombstones compaction has dropped (`delete.retention.ms`, 24 h on the feed topic):
    the bound must stay below it."""


class CacheConfig(M5Settings):
    cache_dir: Path = Path(".cache/m5")
    """Derived files worth keeping between runs (the MiniLM baseline's ONNX export, the test bundle)."""


class BundleConfig(M5Settings):
    bundle: Path = Path(".m5/bundles/current")
    """Model bundle directory (manifest.json, tokenizer, int8 ONNX towers)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[M5Settings]) -> None:
    """Add one `--flag` per settings field; unset flags fall through to env vars and defaults."""
    group = parser.add_argument_group(f"{cls.__name__} (each flag also reads M5_<NAME>)")
    for name, field in cls.model_fields.items():
        ann = field.annotation
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        help_text = (field.description or "").strip()
        default = field.default if field.default is not None else "none"
        if isinstance(default, SecretStr):
            default = "***"
        kwargs["help"] = f"{help_text} [env M5_{name.upper()}; default {default}]"
        if ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(ann) is Literal:
            kwargs["choices"] = [str(c) for c in get_args(ann)]
        elif get_origin(ann) is list:
            kwargs["nargs"] = "+"
        group.add_argument(_flag(name), **kwargs)


def settings_from_args(cls: type[S], args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> S:
    """Build settings from parsed flags (flags win over env vars); a bad value exits 2 naming the field."""
    given = {k: v for k, v in vars(args).items() if k in cls.model_fields}
    try:
        return cls(**given)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            msgs.append(f"{_flag(loc)} / M5_{loc.upper()}: {err['msg']}")
        text = "; ".join(msgs)
        if parser is not None:
            parser.error(text)
        raise SystemExit(f"error: {text}") from None

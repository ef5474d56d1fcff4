"""What the locust workers need to know, handed over from `m5 loadtest` through M5_LOADTEST_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from m5core.settings import M5Settings


class WorkloadSettings(M5Settings):
    model_config = SettingsConfigDict(env_prefix="M5_LOADTEST_")

    catalog: Path | None = None
    """Catalog directory (products.jsonl, queries.jsonl) the workload draws ASINs and queries from."""
    seed: int = 0
    """Seed of the ASIN popularity order and the change stream."""
    index_rate: float = Field(0.0, ge=0)
    """Catalog change events per second published while the load runs (0: none)."""
    precise_out: Path | None = None
    """Where the locustfile writes each route's percentiles to the microsecond (`gate.with_precise`)."""

    def to_env(self) -> dict[str, str]:
        return {f"M5_LOADTEST_{k.upper()}": str(v) for k, v in self.model_dump().items() if v is not None}

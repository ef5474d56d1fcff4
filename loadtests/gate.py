"""The SLA gate: locust's `<prefix>_stats.csv` + sla.yaml -> the list of broken budgets.

Pure functions only, so the gate is unit-tested on crafted CSVs and reused by the runner.
Routes are named "<METHOD> <locust name>", e.g. "GET /asin/{asin}/embedding".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

PERCENTILES = {"p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%"}
BUDGET_KEYS = {*PERCENTILES, "max_error_rate", "min_requests"}


class SlaError(ValueError):
    """The SLA file or stats CSV is unusable (exit code 2), with the field named."""


@dataclass(frozen=True)
class Budget:
    route: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_rate: float = 0.0
    min_requests: int = 1


@dataclass(frozen=True)
class RouteStats:
    route: str
    requests: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Violation:
    route: str
    metric: str  # p50_ms | p95_ms | p99_ms | max_error_rate | min_requests
    limit: float
    actual: float

    def __str__(self) -> str:
        return f"{self.route}: {self.metric} {self.actual:g} breaks budget {self.limit:g}"


def _number(value, where: str, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SlaError(f"{where} must be a non-negative number, got {value!r}")
    if integer and int(value) != value:
        raise SlaError(f"{where} must be an integer, got {value!r}")
    return int(value) if integer else float(value)


def parse_sla(doc, known_routes: Iterable[str] | None = None) -> dict[str, Budget]:
    """Validate a parsed sla.yaml: {"routes": {route: {p50_ms, p95_ms, p99_ms, max_error_rate, min_requests}}}."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("routes"), Mapping) or not doc["routes"]:
        raise SlaError('SLA needs a non-empty mapping `routes: {"GET /asin/{asin}/embedding": {p99_ms: ...}}`')
    known = set(known_routes) if known_routes is not None else None
    budgets = {}
    for route, spec in doc["routes"].items():
        if known is not None and route not in known:
            raise SlaError(f"routes.{route}: unknown route (known: {', '.join(sorted(known))})")
        if not isinstance(spec, Mapping):
            raise SlaError(f"routes.{route}: expected a mapping of budgets")
        extra = set(spec) - BUDGET_KEYS
        if extra:
            raise SlaError(f"routes.{route}.{sorted(extra)[0]}: unknown budget (allowed: {', '.join(sorted(BUDGET_KEYS))})")
        values = {k: _number(v, f"routes.{route}.{k}", integer=k == "min_requests") for k, v in spec.items() if v is not None}
        if values.get("max_error_rate", 0.0) > 1:
            raise SlaError(f"routes.{route}.max_error_rate must be a fraction in [0, 1]")
        budgets[route] = Budget(route=route, **values)
    return budgets


def load_sla(path: Path | str, known_routes: Iterable[str] | None = None) -> dict[str, Budget]:
    path = Path(path)
    if not path.is_file():
        raise SlaError(f"SLA file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SlaError(f"SLA file {path} is not valid YAML: {exc}") from exc
    return parse_sla(doc, known_routes)


def _ms(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value)


def read_stats(path: Path | str) -> dict[str, RouteStats]:
    """Per-route rows of locust's _stats.csv, keyed "<Type> <Name>"; the "Aggregated" row is kept as "Aggregated"."""
    path = Path(path)
    if not path.is_file():
        raise SlaError(f"locust stats CSV not found: {path}")
    out = {}
    with path.open(newline="") as f:
        rows = csv.DictReader(f)
        missing = {"Type", "Name", "Request Count", "Failure Count", "Requests/s", *PERCENTILES.values()} - set(rows.fieldnames or [])
        if missing:
            raise SlaError(f"{path} is not a locust stats CSV (missing column {sorted(missing)[0]!r})")
        for row in rows:
            route = f"{row['Type']} {row['Name']}".strip()
            out[route] = RouteStats(
                route=route,
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                p50_ms=_ms(row["50%"]),
                p95_ms=_ms(row["95%"]),
                p99_ms=_ms(row["99%"]),
                rps=float(row["Requests/s"]),
            )
    return out


def check(stats: Mapping[str, RouteStats], budgets: Mapping[str, Budget]) -> list[Violation]:
    """Every budget a route breaks; a budgeted route with too few requests is itself a violation."""
    violations = []
    for route, b in budgets.items():
        s = stats.get(route)
        n = s.requests if s else 0
        if n < b.min_requests:
            violations.append(Violation(route, "min_requests", b.min_requests, n))
            continue
        for key in PERCENTILES:
            limit, actual = getattr(b, key), getattr(s, key)
            if limit is not None and actual is not None and actual > limit:
                violations.append(Violation(route, key, limit, actual))
        if s.error_rate > b.max_error_rate:
            violations.append(Violation(route, "max_error_rate", b.max_error_rate, round(s.error_rate, 6)))
    return violations


def table(stats: Mapping[str, RouteStats], budgets: Mapping[str, Budget], violations: Iterable[Violation]) -> str:
    """Plain-text report: one line per route with measured vs budget, and PASS/FAIL."""
    broken = {v.route for v in violations}
    head = f"{'route':<34} {'reqs':>7} {'rps':>7} {'err%':>6} {'p50':>6} {'p95':>6} {'p99':>6}  {'budget p50/p95/p99 err%':<26} result"
    lines = [head, "-" * len(head)]

    def fmt(x):
        return "-" if x is None else f"{x:g}"

    for route in sorted(set(stats) | set(budgets), key=lambda r: (r == "Aggregated", r)):
        s, b = stats.get(route), budgets.get(route)
        cols = (
            f"{s.requests:>7} {s.rps:>7.1f} {100 * s.error_rate:>6.2f} {fmt(s.p50_ms):>6} {fmt(s.p95_ms):>6} {fmt(s.p99_ms):>6}"
            if s
            else f"{0:>7} {'-':>7} {'-':>6} {'-':>6} {'-':>6} {'-':>6}"
        )
        bud = f"{fmt(b.p50_ms)}/{fmt(b.p95_ms)}/{fmt(b.p99_ms)} {100 * b.max_error_rate:g}" if b else ""
        result = ("FAIL" if route in broken else "PASS") if b else ""
        lines.append(f"{route:<34} {cols}  {bud:<26} {result}")
    return "\n".join(lines)

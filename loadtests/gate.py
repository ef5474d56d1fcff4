"""The SLA gate: what the load generator and the service measured + sla.yaml -> the list of broken budgets.

Three sources, each for what it can see. Locust's `<prefix>_stats.csv` counts requests and failures; its percentiles
are whole milliseconds, too coarse for a service whose goal is one, so the locustfile also writes every request's
latency to `<prefix>_precise.json` (microseconds) and the end-to-end percentiles come from there when it exists. The
service's own `m5_http_request_duration_seconds` histograms (sub-millisecond buckets), scraped before and after the run,
give server-side percentiles (`server:` budgets). And on a shared machine, where every end-to-end figure moves with
the load beside it, `p99_floor_ratio` gates a route's p99 against that of a bare endpoint (`/healthz`) measured in
the same run.

Pure functions only, so the gate is unit-tested on crafted inputs and reused by the runner.
Routes are named "<METHOD> <locust name>", e.g. "GET /asin/{asin}/embedding"; server routes "<METHOD> <path>".
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from loadtests.routes import FLOOR

PERCENTILES = {"p50_ms": "50%", "p95_ms": "95%", "p99_ms": "99%"}
BUDGET_KEYS = {*PERCENTILES, "max_error_rate", "min_requests", "p99_floor_ratio"}
SERVER_KEYS = {*PERCENTILES, "min_requests"}


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
    p99_floor_ratio: float | None = None


@dataclass(frozen=True)
class ServerBudget:
    route: str  # "<METHOD> <path>" as the service labels it, e.g. "POST /search"
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
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
    metric: str  # p50_ms | p95_ms | p99_ms | max_error_rate | min_requests | p99_floor_ratio | server_p99_ms ...
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


def _budget_values(spec, where: str, allowed: set[str]) -> dict[str, float]:
    """One route's budgets, each checked and named `where.key` in the error."""
    if not isinstance(spec, Mapping):
        raise SlaError(f"{where}: expected a mapping of budgets")
    extra = set(spec) - allowed
    if extra:
        raise SlaError(f"{where}.{sorted(extra)[0]}: unknown budget (allowed: {', '.join(sorted(allowed))})")
    return {k: _number(v, f"{where}.{k}", integer=k == "min_requests") for k, v in spec.items() if v is not None}


def parse_sla(doc, known_routes: Iterable[str] | None = None) -> dict[str, Budget]:
    """Validate a parsed sla.yaml: {"routes": {route: {p50_ms, p95_ms, p99_ms, max_error_rate, min_requests}}}."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("routes"), Mapping) or not doc["routes"]:
        raise SlaError('SLA needs a non-empty mapping `routes: {"GET /asin/{asin}/embedding": {p99_ms: ...}}`')
    known = set(known_routes) if known_routes is not None else None
    budgets = {}
    for route, spec in doc["routes"].items():
        if known is not None and route not in known:
            raise SlaError(f"routes.{route}: unknown route (known: {', '.join(sorted(known))})")
        values = _budget_values(spec, f"routes.{route}", BUDGET_KEYS)
        if values.get("max_error_rate", 0.0) > 1:
            raise SlaError(f"routes.{route}.max_error_rate must be a fraction in [0, 1]")
        budgets[route] = Budget(route=route, **values)
    return budgets


def parse_server(doc) -> dict[str, ServerBudget]:
    """The optional `server: {"GET /asin/{asin}/embedding": {p99_ms: 1}}` section: budgets on the service's own
    histograms, per route as the service labels it."""
    spec_all = doc.get("server") if isinstance(doc, Mapping) else None
    if spec_all is None:
        return {}
    if not isinstance(spec_all, Mapping):
        raise SlaError('server: expected a mapping `server: {"POST /search": {p99_ms: ...}}`')
    out = {}
    for route, spec in spec_all.items():
        if not isinstance(route, str) or len(route.split(" ", 1)) != 2 or not route.split(" ", 1)[1].startswith("/"):
            raise SlaError(f'server.{route}: expected "<METHOD> /path", e.g. "POST /search"')
        out[route] = ServerBudget(route=route, **_budget_values(spec, f"server.{route}", SERVER_KEYS))
    return out


def _read_doc(path: Path | str):
    path = Path(path)
    if not path.is_file():
        raise SlaError(f"SLA file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SlaError(f"SLA file {path} is not valid YAML: {exc}") from exc


def load_sla(path: Path | str, known_routes: Iterable[str] | None = None) -> dict[str, Budget]:
    return parse_sla(_read_doc(path), known_routes)


def load_server_sla(path: Path | str) -> dict[str, ServerBudget]:
    return parse_server(_read_doc(path))


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


def with_precise(stats: Mapping[str, RouteStats], path: Path | str) -> dict[str, RouteStats]:
    """Locust's rows with their percentiles replaced by the locustfile's microsecond ones (`<prefix>_precise.json`:
    {route: {"n", "p50_ms", "p95_ms", "p99_ms"}}); a route it did not record keeps locust's."""
    path = Path(path)
    if not path.is_file():
        return dict(stats)
    try:
        precise = json.loads(path.read_text())
    except ValueError as exc:
        raise SlaError(f"{path} is not JSON: {exc}") from exc
    out = dict(stats)
    for route, s in stats.items():
        p = precise.get(route)
        if isinstance(p, Mapping) and all(isinstance(p.get(k), (int, float)) for k in PERCENTILES):
            out[route] = replace(s, **{k: float(p[k]) for k in PERCENTILES})
    return out


def percentiles_ms(latencies_ms: Iterable[float]) -> dict[str, float]:
    """What the locustfile writes per route: request count and p50/p95/p99 (ms, to the microsecond)."""
    xs = sorted(latencies_ms)
    if not xs:
        return {"n": 0}

    def at(q: float) -> float:  # nearest rank
        return round(xs[min(len(xs) - 1, max(0, int(-(-q * len(xs) // 100)) - 1))], 3)

    return {"n": len(xs), "p50_ms": at(50), "p95_ms": at(95), "p99_ms": at(99)}


HISTOGRAM = "m5_http_request_duration_seconds"


def _buckets(exposition: str) -> dict[str, dict[float, float]]:
    """Prometheus text -> {"METHOD route": {le: cumulative count}} of the service's request histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != HISTOGRAM:
            continue
        for sample in family.samples:
            if sample.name == HISTOGRAM + "_bucket":
                key = f"{sample.labels.get('method', '')} {sample.labels.get('route', '')}"
                le = float(sample.labels["le"])
                out.setdefault(key, {})[le] = out.get(key, {}).get(le, 0.0) + sample.value
    return out


def server_stats(before: str, after: str) -> dict[str, dict[str, float]]:
    """Two scrapes of /metrics -> per server route the requests between them and their p50/p95/p99 (ms), each
    interpolated inside its histogram bucket as Prometheus's histogram_quantile does."""
    b, a = _buckets(before), _buckets(after)
    out = {}
    for route, cum in a.items():
        les = sorted(cum)
        counts = [cum[le] - b.get(route, {}).get(le, 0.0) for le in les]
        n = counts[-1] if counts else 0
        row: dict[str, float] = {"n": n}
        for key, label in PERCENTILES.items():
            if n <= 0:
                continue
            rank, lo, prev = n * float(label[:-1]) / 100, 0.0, 0.0
            for le, c in zip(les, counts):
                if c >= rank:
                    hi = le if le != float("inf") else lo
                    row[key] = round(1000 * (lo + (hi - lo) * ((rank - prev) / (c - prev) if c > prev else 1.0)), 4)
                    break
                lo, prev = le, c
        out[route] = row
    return out


def check_server(stats: Mapping[str, Mapping[str, float]], budgets: Mapping[str, ServerBudget]) -> list[Violation]:
    """Every server-side budget broken, named `server_<metric>`; a budgeted route with too few requests is one."""
    violations = []
    for route, b in budgets.items():
        s = stats.get(route, {})
        n = int(s.get("n", 0))
        if n < b.min_requests:
            violations.append(Violation(f"server {route}", "min_requests", b.min_requests, n))
            continue
        for key in PERCENTILES:
            limit, actual = getattr(b, key), s.get(key)
            if limit is not None and actual is not None and actual > limit:
                violations.append(Violation(f"server {route}", f"server_{key}", limit, actual))
    return violations


def check(stats: Mapping[str, RouteStats], budgets: Mapping[str, Budget]) -> list[Violation]:
    """Every budget a route breaks; a budgeted route with too few requests is itself a violation."""
    violations = []
    floor = stats.get(FLOOR)
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
        if b.p99_floor_ratio is not None:
            if floor is None or not floor.p99_ms or s.p99_ms is None:
                violations.append(Violation(route, "p99_floor_ratio", b.p99_floor_ratio, float("nan")))  # no floor measured
            elif s.p99_ms / floor.p99_ms > b.p99_floor_ratio:
                violations.append(Violation(route, "p99_floor_ratio", b.p99_floor_ratio, round(s.p99_ms / floor.p99_ms, 2)))
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


def server_table(stats: Mapping[str, Mapping[str, float]], budgets: Mapping[str, ServerBudget], violations: Iterable[Violation]) -> str:
    """The service's own view: requests and p50/p95/p99 (ms) per route between the two scrapes, with the budgets."""
    broken = {v.route for v in violations}
    head = f"{'server route':<34} {'reqs':>7} {'p50':>8} {'p95':>8} {'p99':>8}  {'budget p50/p95/p99':<20} result"
    lines = [head, "-" * len(head)]

    def fmt(x):
        return "-" if x is None else f"{x:g}"

    for route in sorted(set(stats) | set(budgets)):
        s, b = stats.get(route, {}), budgets.get(route)
        cols = f"{int(s.get('n', 0)):>7} {fmt(s.get('p50_ms')):>8} {fmt(s.get('p95_ms')):>8} {fmt(s.get('p99_ms')):>8}"
        bud = f"{fmt(b.p50_ms)}/{fmt(b.p95_ms)}/{fmt(b.p99_ms)}" if b else ""
        result = ("FAIL" if f"server {route}" in broken else "PASS") if b else ""
        lines.append(f"{route:<34} {cols}  {bud:<20} {result}")
    return "\n".join(lines)

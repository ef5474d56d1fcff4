"""`m5 loadtest`: run locust headless against a host, gate its stats on sla.yaml, plot, report.

Exit codes: 0 every budget met, 1 some route broke its budget, 2 bad input (SLA file, catalog, flags).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from loadtests import gate
from loadtests.routes import ROUTES
from loadtests.settings import WorkloadSettings

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class LoadTestConfig:
    host: str
    sla: Path
    out: Path
    catalog: Path
    users: int = 10
    spawn_rate: float = 5.0
    run_time: str = "60s"
    index_rate: float = 0.0
    seed: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadTestResult:
    exit_code: int
    violations: list[gate.Violation]
    table: str
    files: dict[str, Path]


def locust_command(cfg: LoadTestConfig) -> list[str]:
    prefix = cfg.out / "loadtest"
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        cfg.host,
        "--users",
        str(cfg.users),
        "--spawn-rate",
        str(cfg.spawn_rate),
        "--run-time",
        cfg.run_time,
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        str(prefix) + ".html",
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "5",
        "--loglevel",
        "WARNING",
    ]


def validate(cfg: LoadTestConfig) -> dict[str, gate.Budget]:
    """Fail fast (exit 2) before any load: SLA parses with known routes, catalog is there."""
    budgets = gate.load_sla(cfg.sla, ROUTES)
    if not (cfg.catalog / "products.jsonl").is_file():
        raise gate.SlaError(f"--catalog: {cfg.catalog / 'products.jsonl'} not found")
    if cfg.users < 1 or cfg.spawn_rate <= 0 or cfg.index_rate < 0:
        raise gate.SlaError("--users must be >= 1, --spawn-rate > 0 and --index-rate >= 0")
    return budgets


def run(cfg: LoadTestConfig) -> LoadTestResult:
    budgets = validate(cfg)
    server_budgets = gate.load_server_sla(cfg.sla)
    cfg.out.mkdir(parents=True, exist_ok=True)
    workload = WorkloadSettings(catalog=cfg.catalog.resolve(), index_rate=cfg.index_rate, seed=cfg.seed)
    prefix = cfg.out / "loadtest"
    precise = Path(f"{prefix}_precise.json")
    workload = workload.model_copy(update={"precise_out": precise.resolve()})
    env = {**os.environ, **cfg.extra_env, **workload.to_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    print(f"locust: {cfg.users} users against {cfg.host} for {cfg.run_time} (index stream {cfg.index_rate:g} events/s)", flush=True)
    before = scrape(cfg.host)
    proc = subprocess.run(locust_command(cfg), env=env)
    after = scrape(cfg.host)
    stats_csv = Path(f"{prefix}_stats.csv")
    if proc.returncode != 0 or not stats_csv.is_file():
        raise RuntimeError(f"locust exited with {proc.returncode} and wrote no usable {stats_csv}")
    stats = gate.with_precise(gate.read_stats(stats_csv), precise)
    server = gate.server_stats(before, after) if before and after else {}
    violations = gate.check(stats, budgets) + gate.check_server(server, server_budgets)
    files = {"stats": stats_csv, "precise": precise, "history": Path(f"{prefix}_stats_history.csv"), "html": Path(f"{prefix}.html")}
    files["server"] = cfg.out / "loadtest_server.json"
    files["server"].write_text(json.dumps(server, indent=1))
    files.update(plot_history(files["history"], cfg.out))
    report = gate.table(stats, budgets, violations) + "\n\n" + gate.server_table(server, server_budgets, violations)
    return LoadTestResult(1 if violations else 0, violations, report, files)


def scrape(host: str) -> str:
    """The service's /metrics (its histograms count every request, whatever worker served it); "" when it has none."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/metrics", timeout=10) as r:
            return r.read().decode()
    except OSError:
        return ""


def _read_history(path: Path) -> dict[str, dict[str, list[float]]]:
    """Per route: seconds since start, rps, p50/p95/p99 ms (rows without data yet are skipped)."""
    series: dict[str, dict[str, list[float]]] = {}
    t0 = None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            t = float(row["Timestamp"])
            t0 = t if t0 is None else t0
            route = f"{row['Type']} {row['Name']}".strip()
            if row["99%"] in ("N/A", ""):
                continue
            s = series.setdefault(route, {"t": [], "rps": [], "p50": [], "p95": [], "p99": []})
            s["t"].append(t - t0)
            s["rps"].append(float(row["Requests/s"]))
            for p in ("50", "95", "99"):
                s[f"p{p}"].append(float(row[f"{p}%"]))
    return series


def plot_history(history_csv: Path, out: Path) -> dict[str, Path]:
    """loadtest_latency.png (aggregate p50/p95/p99 and per-route p99 over time) and loadtest_throughput.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _read_history(history_csv)
    agg = series.get("Aggregated", {"t": [], "rps": [], "p50": [], "p95": [], "p99": []})
    latency, throughput = out / "loadtest_latency.png", out / "loadtest_throughput.png"

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for p in ("p50", "p95", "p99"):
        a1.plot(agg["t"], agg[p], label=p)
    a1.set(title="All routes: latency percentiles (running)", xlabel="seconds", ylabel="ms")
    a1.legend()
    for route, s in sorted(series.items()):
        if route != "Aggregated":
            a2.plot(s["t"], s["p99"], label=route)
    a2.set(title="p99 by route (running)", xlabel="seconds", ylabel="ms", yscale="log")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(agg["t"], agg["rps"], label="all routes")
    for route, s in sorted(series.items()):
        if route != "Aggregated":
            ax.plot(s["t"], s["rps"], label=route, linewidth=0.8)
    ax.set(title="Throughput", xlabel="seconds", ylabel="requests/s")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(throughput, dpi=110)
    plt.close(fig)
    return {"latency_png": latency, "throughput_png": throughput}

"""`m5 loadtest`: locust headless + SLA gate. Heavy imports (locust, matplotlib) stay inside the command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest",
        help="load-test a running service with a realistic mix and gate it on per-route SLAs",
        description="Runs locust headless, writes CSV/HTML/PNG under --out, exits 1 when a route breaks its budget and 2 on bad input.",
    )
    p.add_argument("--host", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--sla", type=Path, default=Path("loadtests/sla.yaml"), help="per-route budgets (default: loadtests/sla.yaml)")
    p.add_argument("--users", type=int, default=10, help="concurrent simulated clients")
    p.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    p.add_argument("--run-time", default="60s", help="locust duration, e.g. 60s, 5m")
    p.add_argument("--out", type=Path, required=True, help="directory for loadtest_stats.csv, .html and PNG plots")
    p.add_argument("--catalog", type=Path, default=None, help="catalog dir with products.jsonl / queries.jsonl (default: $M5_LOADTEST_CATALOG)")
    p.add_argument(
        "--index-rate",
        type=float,
        default=0.0,
        help="change events per second produced to the changes topic during the run (0 = off; "
        "transport from M5_EVENTS / M5_KAFKA_BOOTSTRAP / M5_CHANGES_TOPIC)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the ASIN popularity order and the change stream")
    p.set_defaults(func=_loadtest, parser=p)


def _loadtest(args) -> int:
    from loadtests.gate import SlaError
    from loadtests.runner import LoadTestConfig, run
    from loadtests.settings import WorkloadSettings

    catalog = args.catalog or WorkloadSettings().catalog
    if catalog is None:
        print("m5 loadtest: error: --catalog (or M5_LOADTEST_CATALOG) is required", file=sys.stderr)
        return 2
    cfg = LoadTestConfig(
        host=args.host,
        sla=args.sla,
        out=args.out,
        catalog=catalog,
        users=args.users,
        spawn_rate=args.spawn_rate,
        run_time=args.run_time,
        index_rate=args.index_rate,
        seed=args.seed,
    )
    try:
        result = run(cfg)
    except SlaError as exc:
        print(f"m5 loadtest: error: {exc}", file=sys.stderr)
        return 2
    print(result.table)
    for v in result.violations:
        print(f"SLA VIOLATION {v}")
    print("outputs: " + ", ".join(str(p) for p in result.files.values()))
    print("SLA: " + ("FAIL" if result.exit_code else "PASS"))
    return result.exit_code

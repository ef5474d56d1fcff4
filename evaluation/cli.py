"""`m5 eval`: the brief's metrics for an encoder or a baseline on a catalog."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a bundle or a baseline: search and duplicate-detection metrics")
    p.add_argument("--catalog", type=Path, required=True, help="catalog directory with judgements")
    p.add_argument("--encoder", choices=["bundle", "bm25", "random", "minilm"], default="bundle")
    p.add_argument("--bundle", type=Path, default=Path(".m5/bundles/current"))
    p.add_argument("--split", choices=["train", "valid", "test"], default="test")
    p.add_argument("--out", type=Path, help="write report.json and report.md here")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import sys

    from catalog.io import CatalogError
    from evaluation.harness import run_eval

    try:
        report = run_eval(args.catalog, args.encoder, args.bundle, args.split, args.out)
    except CatalogError as exc:
        print(f"m5 eval: error: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    return 0

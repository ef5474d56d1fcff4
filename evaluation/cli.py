"""`m5 eval`: search and duplicate-detection metrics for a bundle or a baseline on a catalog split."""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a bundle or a baseline: search and duplicate-detection metrics", description=__doc__)
    p.add_argument("--catalog", type=Path, required=True, help="catalog directory with judgements (m5 catalog generate)")
    p.add_argument("--encoder", choices=["bundle", "bm25", "random", "minilm"], default="bundle",
                   help="what to evaluate: a trained bundle or a baseline (default bundle)")
    p.add_argument("--bundle", type=Path, default=Path(".m5/bundles/current"), help="bundle directory for --encoder bundle")
    p.add_argument("--split", choices=["train", "valid", "test"], default="test", help="query and pair split (default test)")
    p.add_argument("--threads", type=_positive, default=2, help="encoder threads (default 2)")
    p.add_argument("--scope", choices=["marketplace", "all"], default="marketplace",
                   help="rank the query's marketplace (default, as judged) or the whole catalog")
    p.add_argument("--out", type=Path, help="write report.json, report.md and PNG curves here")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import logging
    import sys

    from catalog.io import CatalogError
    from evaluation.harness import run_eval

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        report = run_eval(args.catalog, args.encoder, args.bundle, args.split, args.out, threads=args.threads, scope=args.scope)
    except (CatalogError, RuntimeError, ValueError) as exc:
        print(f"m5 eval: error: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    return 0

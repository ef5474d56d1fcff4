"""`m5 eval`: search and duplicate-detection metrics for a bundle or a baseline on a catalog split and,
beside it, on the hand-written EN/DE/AR set (evaluation/handwritten/, test split), per language."""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def add_scope_flag(p: argparse.ArgumentParser) -> None:
    """`--scope`, shared by `m5 eval` and `m5 train report`: both rank what the judgements judged unless told otherwise."""
    p.add_argument(
        "--scope",
        choices=["marketplace", "all"],
        default="marketplace",
        help="rank the query's marketplace (default, as judged) or the whole catalog",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a bundle or a baseline: search and duplicate-detection metrics", description=__doc__)
    p.add_argument("--catalog", type=Path, help="catalog directory with judgements (m5 catalog generate); required unless --handwritten-only")
    p.add_argument(
        "--encoder",
        choices=["bundle", "bm25", "bm25-char4", "random", "minilm"],
        default="bundle",
        help="what to evaluate: a trained bundle or a baseline (default bundle)",
    )
    p.add_argument("--bundle", type=Path, default=Path(".m5/bundles/current"), help="bundle directory for --encoder bundle")
    p.add_argument(
        "--split",
        choices=["train", "valid", "test"],
        default="test",
        help="query and pair split of --catalog (default test; the hand-written set is always its test split)",
    )
    p.add_argument(
        "--handwritten",
        type=Path,
        metavar="DIR",
        help="hand-written set to evaluate beside the catalog (default $M5_HANDWRITTEN_DIR, else evaluation/handwritten/, "
        "skipped when absent unless named here)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--no-handwritten", action="store_true", help="evaluate --catalog only")
    which.add_argument("--handwritten-only", action="store_true", help="evaluate the hand-written set only (no --catalog)")
    p.add_argument("--threads", type=_positive, default=2, help="encoder threads (default 2)")
    add_scope_flag(p)
    p.add_argument("--out", type=Path, help="write report.json (one key per set), report.md and PNG curves here")
    p.set_defaults(func=_run)


def sets_to_evaluate(args) -> tuple[Path | None, Path | None]:
    """(synthetic catalog, hand-written set) from the flags; None where that set is not evaluated.

    Raises:
        ValueError: contradictory flags, or a hand-written set asked for by name that is not there.
    """
    from evaluation.harness import handwritten_dir, is_catalog

    if args.handwritten_only and args.catalog is not None:
        raise ValueError("--handwritten-only evaluates the hand-written set alone: drop --catalog")
    if not args.handwritten_only and args.catalog is None:
        raise ValueError("--catalog is required (or --handwritten-only)")
    if args.no_handwritten:
        if args.handwritten is not None:
            raise ValueError("--no-handwritten and --handwritten DIR contradict each other")
        return args.catalog, None
    hw = handwritten_dir(args.handwritten)
    if is_catalog(hw):
        return args.catalog, hw
    if args.handwritten_only or args.handwritten is not None:
        raise ValueError(f"no hand-written set at {hw}: it needs products.jsonl, queries.jsonl and judgements.jsonl")
    return args.catalog, None


def _run(args) -> int:
    import logging
    import sys

    from catalog.io import CatalogError
    from evaluation.harness import handwritten_dir, run_eval

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        catalog, handwritten = sets_to_evaluate(args)
        if handwritten is None and not args.no_handwritten:
            logging.getLogger("evaluation").info("no hand-written set at %s: evaluating %s only", handwritten_dir(), catalog)
        report = run_eval(catalog, args.encoder, args.bundle, args.split, args.out, threads=args.threads, scope=args.scope, handwritten=handwritten)
    except (CatalogError, RuntimeError, ValueError) as exc:
        print(f"m5 eval: error: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    return 0

"""`m5 index run|backfill`."""

from __future__ import annotations

import argparse
from pathlib import Path

from indexer.settings import IndexerSettings
from m5core.settings import add_settings_arguments, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="consume catalog changes into the embedding store and feed")
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    r = isub.add_parser("run", help="consume catalog.changes until SIGTERM (commits after each durable batch)")
    add_settings_arguments(r, IndexerSettings)
    r.set_defaults(func=_run, parser=r)
    b = isub.add_parser("backfill", help="bulk-load a catalog's products.jsonl (much faster than events)")
    b.add_argument("catalog", type=Path, help="catalog directory or products.jsonl")
    b.add_argument("--batch", type=int, default=512, help="encode batch size")
    add_settings_arguments(b, IndexerSettings)
    b.set_defaults(func=_backfill, parser=b)


def _run(args) -> int:
    from indexer.runtime import run

    return run(settings_from_args(IndexerSettings, args, args.parser))


def _backfill(args) -> int:
    from indexer.backfill import backfill
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.events import open_sink
    from m5core.stores import open_store

    s = settings_from_args(IndexerSettings, args, args.parser)
    path = args.catalog / "products.jsonl" if args.catalog.is_dir() else args.catalog
    if not path.is_file():
        args.parser.error(f"catalog: {path} does not exist")
    manifest = load_manifest(s.bundle)
    enc = OnnxEncoder(s.bundle, "product", threads=s.encode_threads, manifest=manifest)
    store, sink = open_store(s), open_sink(s)
    out = backfill(path, store, sink, enc, s, manifest.render_scheme, args.batch)
    sink.close()
    store.close()
    print(f"backfill: {out}")
    return 0

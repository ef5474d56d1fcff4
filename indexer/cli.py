"""`m5 index run|backfill|snapshot|reembed|rollback` and `m5 duplicates clusters`."""

from __future__ import annotations

import argparse
from contextlib import ExitStack, closing
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
    add_settings_arguments(b, IndexerSettings)
    b.add_argument("--snapshot", action="store_true", help="also build the FAISS index and save it under --snapshot-dir")
    b.set_defaults(func=_backfill, parser=b)
    sn = isub.add_parser("snapshot", help="follow catalog.embeddings into a FAISS index, saving snapshots every --snapshot-interval-s")
    sn.add_argument("--once", action="store_true", help="catch up with the feed, save one snapshot and exit")
    add_settings_arguments(sn, IndexerSettings)
    sn.set_defaults(func=_snapshot, parser=sn)
    re_ = isub.add_parser("reembed", help="re-embed the catalog with --bundle into a new namespace, gate it, switch atomically")
    re_.add_argument("--golden", type=Path, help="catalog dir whose test queries/judgements give the recall@10 gate")
    re_.add_argument("--min-recall", type=float, default=0.0, help="refuse the switch below this golden recall@10")
    re_.add_argument("--min-overlap", type=float, default=0.0, help="refuse below this old/new top-10 neighbour overlap")
    re_.add_argument("--min-coverage", type=float, default=0.999, help="refuse if the new namespace holds less of the old")
    re_.add_argument("--no-switch", action="store_true", help="fill and gate the new namespace, leave the pointer")
    add_settings_arguments(re_, IndexerSettings)
    re_.set_defaults(func=_reembed, parser=re_)
    rb = isub.add_parser("rollback", help="point readers back at the namespace active before the last switch")
    add_settings_arguments(rb, IndexerSettings)
    rb.set_defaults(func=_rollback, parser=rb)

    d = sub.add_parser("duplicates", help="duplicate detection over the whole catalog")
    dsub = d.add_subparsers(dest="duplicates_command", metavar="SUBCOMMAND", required=True)
    c = dsub.add_parser("clusters", help="write the store's duplicate clusters as JSONL (connected components above the threshold)")
    c.add_argument("--out", type=Path, required=True, help="JSONL file to write (replaced whole)")
    c.add_argument("--threshold", type=float, help="cosine of a duplicate link (default: the bundle's calibrated threshold)")
    c.add_argument("--k", type=_positive, default=20, help="neighbours looked at per product")
    c.add_argument("--max-cluster", type=_positive, default=50, help="largest cluster; links beyond it are counted, not followed")
    c.add_argument("--scope", choices=("marketplace", "all"), default="marketplace", help="marketplace: links within a locale only")
    c.add_argument(
        "--effort",
        type=_positive,
        help="nprobe (IVF) or efSearch (HNSW) of the neighbour search, not widened by the locale filter "
        "(duplicates sit close); default m5core.index.NEAR_EFFORT",
    )
    add_settings_arguments(c, IndexerSettings)
    c.set_defaults(func=_clusters, parser=c)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _clusters(args) -> int:
    from indexer.clusters import duplicate_clusters
    from m5core.bundle import load_manifest
    from m5core.stores import active_namespace, open_store

    s = settings_from_args(IndexerSettings, args, args.parser)
    threshold = args.threshold
    if threshold is None:
        calibrated = load_manifest(s.bundle).duplicates
        if calibrated is None:
            args.parser.error(f"--threshold: bundle {s.bundle} has no calibrated duplicate threshold; give one")
        threshold = calibrated.threshold
    if not -1 <= threshold <= 1:
        args.parser.error(f"--threshold: a cosine is between -1 and 1, got {threshold}")
    with closing(open_store(s, active_namespace(s))) as store:
        try:
            out = duplicate_clusters(
                store, args.out, threshold, args.k, args.max_cluster, args.scope == "marketplace", s.index_kind, effort=args.effort
            )
        except ValueError as exc:
            args.parser.exit(2, f"m5 duplicates clusters: error: {exc}\n")
    print(f"clusters: {out}")
    return 0


def _run(args) -> int:
    from indexer.runtime import BundleMismatch, run

    try:
        return run(settings_from_args(IndexerSettings, args, args.parser))
    except BundleMismatch as exc:
        args.parser.exit(2, f"m5 index run: error: {exc}\n")


def _backfill(args) -> int:
    from indexer.backfill import backfill
    from indexer.runtime import BundleMismatch, check_bundle
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.events import open_sink, open_source
    from m5core.stores import active_namespace, open_store

    s = settings_from_args(IndexerSettings, args, args.parser)
    path = args.catalog / "products.jsonl" if args.catalog.is_dir() else args.catalog
    if not path.is_file():
        args.parser.error(f"catalog: {path} does not exist")
    manifest = load_manifest(s.bundle)
    enc = OnnxEncoder(s.bundle, "product", threads=s.encode_threads, manifest=manifest)
    with ExitStack() as opened:
        store = opened.enter_context(closing(open_store(s, active_namespace(s))))
        try:
            check_bundle(store, enc.version)
        except BundleMismatch as exc:
            args.parser.exit(2, f"m5 index backfill: error: {exc}\n")
        sink = opened.enter_context(closing(open_sink(s)))
        feed = opened.enter_context(closing(open_source(s, [s.embeddings_topic], None))) if args.snapshot else None
        snapshot_root = s.snapshot_dir if args.snapshot else None
        out = backfill(path, store, sink, enc, s, manifest.render_scheme, s.batch, snapshot_root=snapshot_root, feed_source=feed)
    print(f"backfill: {out}")
    return 0


def _snapshot(args) -> int:
    import signal
    import threading

    from indexer.snapshot import Snapshotter
    from m5core.bundle import load_manifest
    from m5core.events import open_source
    from m5core.stores import active_namespace, open_store

    s = settings_from_args(IndexerSettings, args, args.parser)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with closing(open_store(s, active_namespace(s))) as store, closing(open_source(s, [s.embeddings_topic], None)) as source:
        dim = load_manifest(s.bundle, verify=False).dim
        snap = Snapshotter(source, store, s.snapshot_dir, dim, s.index_kind, s.snapshot_interval_s, s.snapshots_keep, s.max_snapshot_age_s)
        snap.run(stop, max_idle_s=2.0 if args.once else None)
    print(f"snapshot: {snap.snapshots[-1]} ({len(snap.index)} vectors)")
    return 0


def _reembed(args) -> int:
    from indexer.reembed import Gates, ReembedRefused, reembed
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from m5core.events import open_sink

    s = settings_from_args(IndexerSettings, args, args.parser)
    manifest = load_manifest(s.bundle)
    enc = OnnxEncoder(s.bundle, "product", threads=s.encode_threads, manifest=manifest)
    qenc = OnnxEncoder(s.bundle, "query", threads=s.encode_threads, manifest=manifest) if args.golden else None
    gates = Gates(min_coverage=args.min_coverage, min_overlap=args.min_overlap, min_recall=args.min_recall)
    try:
        with closing(open_sink(s)) as sink:
            out = reembed(
                s, enc, manifest.render_scheme, qenc, args.golden, gates, s.batch, switch=not args.no_switch, sink=sink, topic=s.embeddings_topic
            )
    except ReembedRefused as exc:
        print(f"reembed refused: {exc}")
        return 1
    print(f"reembed: {out}")
    return 0


def _rollback(args) -> int:
    from indexer.reembed import ReembedRefused, rollback
    from m5core.events import open_sink

    s = settings_from_args(IndexerSettings, args, args.parser)
    try:
        with closing(open_sink(s)) as sink:
            frm, to = rollback(s, sink, s.embeddings_topic)
    except ReembedRefused as exc:
        print(f"rollback refused: {exc}")
        return 1
    print(f"rollback: active namespace {frm} -> {to}")
    return 0

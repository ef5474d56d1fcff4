"""`m5 catalog generate|events`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _locales(text: str) -> list[str]:
    from catalog.vocab import LOCALE_OF

    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in LOCALE_OF]
    if not out or bad:
        raise argparse.ArgumentTypeError(f"unknown locale(s) {bad or text!r}; choose from {','.join(LOCALE_OF)}")
    return out


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _non_negative(text: str) -> float:
    x = float(text)
    if not x >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return x


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="generate a synthetic catalog or a change-event stream", description=__doc__)
    csub = p.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND", required=True)
    g = csub.add_parser("generate", help="write a deterministic multilingual catalog with ground truth")
    g.add_argument("--products", type=_positive, default=5000, help="number of products (default 5000)")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--locales", type=_locales, default=["us", "de", "ae"], help="comma list of us,de,ae")
    g.add_argument("--out", type=Path, required=True, help="output directory")
    g.add_argument("--train-queries-per-product", type=_non_negative, default=None, metavar="R",
                   help="extra training-only queries per product (default 0.2; 0: only the judged evaluation queries)")
    g.set_defaults(func=_generate)
    e = csub.add_parser("events", help="emit change events (upserts, patches, deletes) for a catalog")
    e.add_argument("--catalog", type=Path, required=True, help="catalog directory")
    e.add_argument("--count", type=_positive, default=1000, help="number of events")
    e.add_argument("--rate", type=_non_negative, default=0.0, help="events per second (0: as fast as possible)")
    e.add_argument("--seed", type=int, default=1, help="random seed (same seed, same stream)")
    e.add_argument("--out", type=Path, help="write JSON lines here (default: stdout)")
    e.add_argument("--kafka", metavar="BOOTSTRAP", help="produce to Kafka instead, keyed by ASIN")
    e.add_argument("--local-events-dir", type=Path, help="append to the embedded event log instead (m5 demo)")
    e.add_argument("--topic", default="catalog.changes", help="topic for --kafka / --local-events-dir (default catalog.changes)")
    e.set_defaults(func=_events)


def _generate(args) -> int:
    from catalog.generate import generate_catalog

    extra = {} if args.train_queries_per_product is None else {"train_queries_per_product": args.train_queries_per_product}
    m = generate_catalog(args.out, args.products, args.seed, args.locales, **extra)
    print(f"wrote {m['products']} products, {m['counts'].get('queries', 0)} queries, {m['counts'].get('duplicate_pairs', 0)} "
          f"duplicate pairs to {args.out} in {m['seconds']} s (lexical-gap share {m['lexical_gap_share']:.1%})")
    return 0


def _events(args) -> int:
    from catalog.events import iter_change_events
    from catalog.io import load_catalog

    events = iter_change_events(load_catalog(args.catalog).products(), args.count, args.seed)
    sink = None
    if args.kafka:
        from m5core.events.kafka import KafkaSink

        sink = KafkaSink(args.kafka)
    elif args.local_events_dir:
        from m5core.events.local import LocalSink

        sink = LocalSink(args.local_events_dir)
    out = open(args.out, "w") if args.out else sys.stdout
    t0, n = time.perf_counter(), 0
    for ev in events:
        payload = ev.model_dump_json(exclude_none=True)
        if sink:
            sink.send(args.topic, ev.asin.encode(), payload.encode())
        else:
            out.write(payload + "\n")
        n += 1
        if args.rate > 0:
            time.sleep(max(0.0, t0 + n / args.rate - time.perf_counter()))
    if sink:
        sink.flush()
        sink.close()
    if args.out:
        out.close()
    print(f"emitted {n} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0

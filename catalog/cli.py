"""`m5 catalog generate|events|import`."""

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
    p = sub.add_parser("catalog", help="generate a synthetic catalog, import your own, or emit a change-event stream", description=__doc__)
    csub = p.add_subparsers(dest="catalog_command", metavar="SUBCOMMAND", required=True)
    g = csub.add_parser("generate", help="write a deterministic multilingual catalog with ground truth")
    g.add_argument("--products", type=_positive, default=5000, help="number of products (default 5000)")
    g.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    g.add_argument("--locales", type=_locales, default=["us", "de", "ae"], help="comma list of us,de,ae")
    g.add_argument("--out", type=Path, required=True, help="output directory")
    g.add_argument(
        "--train-queries-per-product",
        type=_non_negative,
        default=None,
        metavar="R",
        help="extra training-only queries per product (default 0.2; 0: only the judged evaluation queries)",
    )
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
    _register_import(csub)


IMPORT_EPILOG = """\
Writes a catalog directory (docs/data_card.md, "Bring your own catalog") that m5 train, m5 eval and
m5 index backfill read. Rows that fail validation go to OUT/rejects.jsonl with their row number,
file and reason; a missing mapped column stops the import before anything is written. The catalog
is built in a temporary directory beside OUT and renamed into place when complete.
"""

ESCI_EPILOG = (
    IMPORT_EPILOG
    + """
ESCI columns read: products product_id, product_title, product_description, product_bullet_point
(one bullet per line), product_brand, product_color (-> attributes.colour), product_locale (us,
es, jp -> en_US, es_ES, ja_JP; marketplace = the region); examples query_id, query, product_id,
product_locale, esci_label (E/S/C/I or Exact/...), split (train -> train, with --valid-share of
them moved to valid by a hash of query_id; test -> test). ESCI has no product types: product_type
and product_line are "unknown" and a missing brand reads "unknown"; change them with
--set product_type=... or --default brand=....

example:
  m5 catalog import esci --products shopping_queries_dataset_products.parquet \\
      --examples shopping_queries_dataset_examples.parquet --subset small --out data/esci
"""
)

GENERIC_EPILOG = (
    IMPORT_EPILOG
    + """
Product fields, required: asin, title, brand, product_type, product_line, locale; optional:
marketplace (default: the locale's region), description, bullet_points (a list, a JSON array or one bullet per
line), attributes (a JSON object column) and attributes.NAME (one column per attribute), price,
stock, version (default 1), updated_at (unix seconds or ISO 8601; default: the import time), and
group (listings of one real-world item: clusters and duplicate pairs). Query fields: query_id,
text, locale (required), split, head, form, product_type; judgement fields: query_id, asin, label.

A map file (YAML or JSON) has up to three sections, each with map/set/default:
  products:
    map: {asin: sku, title: name, brand: maker, attributes.colour: colour, group: item_id}
    set: {locale: fr_FR, product_line: garden}
    default: {brand: unknown}
  queries:
    map: {query_id: qid, text: query}
    set: {locale: fr_FR}
  judgements:
    map: {query_id: qid, asin: sku, label: grade}
Flags are applied on top of the file.

example:
  m5 catalog import generic --products items.csv --ids hash --map asin=sku --map title=name \\
      --map brand=maker --map attributes.colour=colour --set locale=fr_FR --set product_type=chair \\
      --set product_line=furniture --out data/mine
"""
)


def _share(text: str) -> float:
    x = float(text)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return x


def _common_import_flags(a: argparse.ArgumentParser) -> None:
    a.add_argument("--out", type=Path, required=True, help="catalog directory to write (must not exist or be empty, unless --force)")
    a.add_argument("--force", action="store_true", help="replace an existing catalog at --out (only once the new one is complete)")
    a.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a product field's value for every row (repeatable)")
    a.add_argument(
        "--default", action="append", default=[], metavar="FIELD=VALUE", help="a product field's value where its cell is empty (repeatable)"
    )
    a.add_argument(
        "--valid-share",
        type=_share,
        default=None,
        metavar="S",
        help="share of the source's train queries moved to valid by a hash of query_id (default 0.05)",
    )
    a.add_argument(
        "--truncate",
        action="store_true",
        help="cut oversize title, description, bullets and attributes to the schema's bounds instead of rejecting the row",
    )
    a.add_argument("--no-progress", action="store_true", help="no progress bars")


def _with_examples(sub: argparse._SubParsersAction, name: str, **kw) -> argparse.ArgumentParser:
    """A sub-command whose epilog (worked examples) keeps its own line breaks."""
    return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def _register_import(csub: argparse._SubParsersAction) -> None:
    imp = _with_examples(
        csub,
        "import",
        help="import your own catalog (ESCI, or JSONL/CSV/Parquet with a field map)",
        description="Import a catalog from files into a catalog directory. Two layouts: esci, generic.",
        epilog=IMPORT_EPILOG,
    )
    isub = imp.add_subparsers(dest="layout", metavar="LAYOUT", required=True)
    e = _with_examples(
        isub,
        "esci",
        help="the Shopping Queries (ESCI) products and examples tables",
        description="Import the Shopping Queries (ESCI) dataset: products and examples, as Parquet, CSV or JSONL.",
        epilog=ESCI_EPILOG,
    )
    e.add_argument("--products", type=Path, required=True, help="products table (shopping_queries_dataset_products.parquet)")
    e.add_argument("--examples", type=Path, required=True, help="examples table (shopping_queries_dataset_examples.parquet)")
    e.add_argument(
        "--subset",
        choices=["all", "small", "large"],
        default="all",
        help="examples to read: the small (Task 1) or large version, or all rows (default all)",
    )
    _common_import_flags(e)
    e.set_defaults(func=_import)
    g = _with_examples(
        isub,
        "generic",
        help="any JSONL, CSV/TSV or Parquet products table, with a field map",
        description="Import products (and optionally queries and judgements) from JSONL, CSV/TSV or Parquet, "
        "mapping each field to a column or a constant.",
        epilog=GENERIC_EPILOG,
    )
    g.add_argument("--products", type=Path, required=True, help="products table (.jsonl, .csv, .tsv, .parquet; .gz for text)")
    g.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN", help="product field <- source column (repeatable)")
    g.add_argument("--map-file", type=Path, help="YAML/JSON map file (sections products, queries, judgements; see below)")
    g.add_argument(
        "--ids",
        choices=["asin", "hash"],
        default="asin",
        help="asin: the id column holds ASINs (others are rejected); hash: a stable 10-character id derived from it, "
        "the source id kept in id_map.jsonl (default asin)",
    )
    g.add_argument("--queries", type=Path, help="queries table (optional)")
    g.add_argument("--query-map", action="append", default=[], metavar="FIELD=COLUMN", help="query field <- column (repeatable)")
    g.add_argument("--query-set", action="append", default=[], metavar="FIELD=VALUE", help="query field constant (repeatable)")
    g.add_argument("--judgements", type=Path, help="judgements table (optional; may be the queries file)")
    g.add_argument("--judgement-map", action="append", default=[], metavar="FIELD=COLUMN", help="judgement field <- column (repeatable)")
    g.add_argument(
        "--judgement-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="judgement field constant, e.g. label=E for a table of matches only (repeatable)",
    )
    g.add_argument(
        "--negatives-per-group",
        type=int,
        default=1,
        metavar="N",
        help="negative duplicate pairs per multi-listing group, other groups of the same product_type (default 1)",
    )
    _common_import_flags(g)
    g.set_defaults(func=_import)


def _import(args) -> int:
    from catalog import importer as im

    try:
        sets, defaults = im.parse_assignments(args.set, "--set"), im.parse_assignments(args.default, "--default")
        if args.layout == "esci":
            products, queries, judgements = im.esci_sources(args.products, args.examples, args.subset, sets, defaults)
            extra = {}
        else:
            base = im.load_map_file(args.map_file) if args.map_file else {}
            products = im.Source(
                args.products, im.generic_map("products", base.get("products"), im.parse_assignments(args.map, "--map"), sets, defaults)
            )
            queries, judgements = (
                im.Source(
                    path,
                    im.generic_map(kind, base.get(kind), im.parse_assignments(cols, f"--{flag}-map"), im.parse_assignments(consts, f"--{flag}-set")),
                )
                if path
                else None
                for kind, flag, path, cols, consts in (
                    ("queries", "query", args.queries, args.query_map, args.query_set),
                    ("judgements", "judgement", args.judgements, args.judgement_map, args.judgement_set),
                )
            )
            extra = {"ids": args.ids, "negatives_per_cluster": args.negatives_per_group}
        valid_share = im.DEFAULT_VALID_SHARE if args.valid_share is None else args.valid_share
        m = im.import_catalog(
            args.out,
            products,
            queries,
            judgements,
            layout=args.layout,
            valid_share=valid_share,
            truncate=args.truncate,
            force=args.force,
            show_progress=not args.no_progress,
            **extra,
        )
    except im.CatalogImportError as exc:
        print(f"m5 catalog import: error: {exc}", file=sys.stderr)
        return 2
    print(f"imported to {args.out} in {m['seconds']} s:\n{im.summary(m)}")
    if m["counts"]["rejected"]:
        print(f"{m['counts']['rejected']} rows rejected: reasons in {args.out / 'rejects.jsonl'}")
    return 0


def _generate(args) -> int:
    from catalog.generate import generate_catalog

    extra = {} if args.train_queries_per_product is None else {"train_queries_per_product": args.train_queries_per_product}
    m = generate_catalog(args.out, args.products, args.seed, args.locales, **extra)
    print(
        f"wrote {m['products']} products, {m['counts'].get('queries', 0)} queries, {m['counts'].get('duplicate_pairs', 0)} "
        f"duplicate pairs to {args.out} in {m['seconds']} s (lexical-gap share {m['lexical_gap_share']:.1%})"
    )
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

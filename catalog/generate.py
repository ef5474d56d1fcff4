"""Deterministic multilingual catalog generator with ground truth (docs/data_card.md).

Streams products to disk as it makes them; only a compact record per product (type, locale,
canonical attributes, content words) is kept for judging queries, capped at `POOL_CAP` products.
"""

from __future__ import annotations

import random
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import orjson
from tqdm import tqdm

from catalog.vocab import (
    ATTR_NAMES,
    CHOICES,
    COMPLEMENTS,
    DESC_TEMPLATES,
    KEY_ATTRIBUTES,
    LOCALE_OF,
    MATERIALS_OF,
    SELLER_PHRASES,
    SYLLABLES,
    TYPES,
    WORDS,
    format_value,
    word,
)
from m5core.schema import default_marketplace, language_of

GENERATOR_VERSION = "m5-catalog/2"
POOL_CAP = 200_000
P_DUPLICATE = 0.2
P_HARD_NEGATIVE = 0.15
P_COPURCHASE = 0.3
QUERIES_PER_PRODUCT = 1 / 20
P_SPECIFIC_QUERY = 0.5  # queries that state every attribute of their seed item; the rest state one or two
TRAIN_QUERIES_PER_PRODUCT = 0.2  # extra training-only queries (not judged for C/I, never evaluated)
MIN_QUERIES = 1000  # judged queries at least: ~100 test queries, so a 1% difference is not noise from 25 queries
MAX_QUERIES, MAX_TRAIN_QUERIES = 10_000, 10_000  # enough to measure and to train; bounds the judgements at 1M products
EXACT_CAP = 1000  # Exact judgements per query: every true Exact up to this, so recall is not a pooled lower bound
BASE_TS = 1_760_000_000.0
_WORD_RE = re.compile(r"\w+", re.UNICODE)
STOPWORDS = {
    "a",
    "an",
    "the",
    "for",
    "and",
    "of",
    "in",
    "with",
    "by",
    "is",
    "to",
    "you",
    "this",
    "our",
    "will",
    "it",
    "für",
    "und",
    "mit",
    "die",
    "der",
    "das",
    "diese",
    "unsere",
    "sie",
    "von",
    "من",
    "في",
    "هذا",
    "مع",
}


def content_words(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS}


def listing_words(product: dict) -> set[str]:
    """The content words a query must share with a listing not to be a lexical gap: title, description, bullets."""
    return content_words(" ".join([product["title"], product.get("description") or "", *(product.get("bullet_points") or [])]))


def make_asin(i: int, seed: int) -> str:
    """Unique per (i, seed): an affine map coprime with 36^8 scrambles the counter."""
    n = (i * 2654435761 + seed * 7919 + 12345) % 36**8
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(8):
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "B0" + "".join(reversed(out))


def split_of(key: str, seed: int) -> str:
    """80/10/10 by a stable hash, so a cluster or query never straddles splits."""
    h = zlib.crc32(f"{seed}:{key}".encode()) % 10
    return "test" if h == 0 else "valid" if h == 1 else "train"


@dataclass
class Item:
    """A real-world item; each listing of it (duplicates included) shares its cluster."""

    cluster: str
    type: str
    brand: str
    attrs: dict[str, str]  # canonical values
    locale: str


@dataclass(eq=False)
class Compact:
    asin: str
    item: Item
    locale: str
    words: set[str]


def _zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1.0 / (r + 1) ** s for r in range(n)]


class _World:
    def __init__(self, rng: random.Random, locales: list[str]):
        self.rng = rng
        self.locales = locales
        # cumulative weights: random.choices would re-accumulate them on every call (same draws)
        self.locale_cum = list(accumulate({"en_US": 0.5, "de_DE": 0.3, "ar_AE": 0.2}[loc] for loc in locales))
        self.brands = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(400)})
        rng.shuffle(self.brands)
        self.brand_cum = list(accumulate(_zipf_weights(len(self.brands))))
        self.types = list(TYPES)
        self.type_cum = list(accumulate(_zipf_weights(len(self.types), 0.6)))

    def new_item(self, cluster: str) -> Item:
        r = self.rng
        t = r.choices(self.types, cum_weights=self.type_cum)[0]
        attrs = {}
        for name in TYPES[t][3]:
            choices = MATERIALS_OF.get(t, CHOICES[name]) if name == "material" else CHOICES[name]
            attrs[name] = r.choice(choices)
        if "material" in attrs and "material" not in TYPES[t][3]:
            attrs.pop("material")
        return Item(cluster, t, r.choices(self.brands, cum_weights=self.brand_cum)[0], attrs, r.choices(self.locales, cum_weights=self.locale_cum)[0])

    def sibling(self, item: Item, cluster: str) -> Item:
        """Hard negative: same brand and type, a different colour or key attribute."""
        attrs = dict(item.attrs)
        name = next((a for a in ("colour", "size", "clothing_size", "capacity", "weight", "volume", "pack_count", "format") if a in attrs), None)
        if name is None:
            name = next(iter(attrs))
        attrs[name] = self.rng.choice([v for v in CHOICES[name] if v != attrs[name]] or CHOICES[name])
        return Item(cluster, item.type, item.brand, attrs, item.locale)


def _unit_variant(name: str, value: str) -> str:
    """Another seller's units: cm -> inch, g -> kg, l -> ml (same quantity)."""
    if name == "length":
        return f"{float(value) / 2.54:.1f} inch"
    if name == "weight" and value == "1000":
        return "1 kg"
    if name == "capacity" and float(value) < 2:
        return f"{int(float(value) * 1000)} ml"
    return ""


def render_listing(item: Item, locale: str, variant: str, rng: random.Random) -> dict:
    """Title, description, bullets and attributes of one listing of an item in a locale."""
    lang = language_of(locale)
    tname = TYPES[item.type][1][lang]
    attrs_txt = {}
    for name, value in item.attrs.items():
        txt = format_value(name, value, lang)
        if variant == "units":
            txt = _unit_variant(name, value) or txt
        attrs_txt[name] = txt
    colour = attrs_txt.get("colour", "")
    key = next((a for a in KEY_ATTRIBUTES if a in attrs_txt and a != "colour"), None)
    key_txt = f"{ATTR_NAMES.get(key, {}).get(lang, '')} {attrs_txt[key]}".strip() if key else ""
    if lang == "en":
        parts = [item.brand, colour, tname, key_txt]
    elif lang == "de":
        parts = [item.brand, tname, colour, key_txt]
    else:
        parts = [tname, colour, "من", item.brand, key_txt]
    if variant == "reorder":
        parts = [parts[-1], *parts[:-1]] if key_txt else list(reversed(parts))
    title = " ".join(p for p in parts if p)
    if variant == "abbrev":
        title = title.upper()[:60]
    if variant == "seller":
        title = f"{rng.choice(SELLER_PHRASES[lang])} - {title}"
    desc = rng.choice(DESC_TEMPLATES[lang]).format(t=tname)
    if lang == "en" and rng.random() < 0.3:
        # Synonyms appear in some listings' prose, so pre-training can tie them to the canonical words.
        syn_colour = WORDS[item.attrs["colour"]]["syn"] if "colour" in item.attrs else ""
        desc += f" Also sold as {syn_colour} {TYPES[item.type][2]}.".replace("  ", " ")
    bullets = [f"{ATTR_NAMES.get(n, {}).get(lang, n.replace('_', ' '))}: {v}" for n, v in attrs_txt.items()]
    return {"title": title, "description": desc, "bullet_points": bullets, "attributes": attrs_txt}


def _product(asin: str, item: Item, locale: str, listing: dict, version: int, rng: random.Random) -> dict:
    return {
        "asin": asin,
        "marketplace": default_marketplace(locale),
        "locale": locale,
        "product_line": TYPES[item.type][0],
        "product_type": item.type,
        "brand": item.brand,
        **listing,
        "version": version,
        "updated_at": BASE_TS + rng.randint(0, 86_400 * 30),
        "price": round(rng.uniform(3, 200), 2),
        "stock": rng.randint(0, 500),
    }


# ------------------------------------------------------------------------------------------ queries
_SIZE_WORDS = {"S": "small", "M": "medium", "L": "large", "XL": "extra large"}
_COUNT_WORDS = {"1": "single", "2": "twin", "3": "triple", "6": "six", "12": "dozen"}


def _query_text(item: Item, qattrs: dict[str, str], form: str, lang: str, rng: random.Random) -> str:
    t = item.type
    if form == "synonym":  # English synonyms and converted units: no shared content word by design
        words = [WORDS[qattrs["colour"]]["syn"]] if "colour" in qattrs else []
        words.append(TYPES[t][2])
        for name, v in qattrs.items():
            if name == "clothing_size":
                words.append(_SIZE_WORDS[v])
            elif name == "pack_count":
                words.append(_COUNT_WORDS[v] + " pack")
            elif v in WORDS and name != "colour":
                words.append(WORDS[v]["syn"])
        return " ".join(words)
    if form == "cross":  # another language's words than the marketplace's
        other = "de" if lang != "de" else "en"
        words = [word(qattrs["colour"], other)] if "colour" in qattrs else []
        words.append(TYPES[t][1][other])
        words += [format_value(n, v, other) for n, v in qattrs.items() if n != "colour"]
        return " ".join(words)
    words = [word(qattrs["colour"], lang)] if "colour" in qattrs else []
    words.append(TYPES[t][1][lang])
    for name, v in qattrs.items():
        if name != "colour":
            words.append(format_value(name, v, lang))
    text = " ".join(words)
    if form == "misspelled" and len(text) > 4:
        i = rng.randrange(1, len(text) - 2)
        text = text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text


@dataclass
class _Pool:
    """Compact records of the judged products, with postings to find a query's Exacts by set intersection."""

    items: list[Compact] = field(default_factory=list)
    by_type: dict[tuple[str, str], list[Compact]] = field(default_factory=lambda: defaultdict(list))
    postings: dict[tuple[str, str, str, str], set[int]] = field(default_factory=lambda: defaultdict(set))

    def add(self, c: Compact) -> None:
        self.by_type[(c.locale, c.item.type)].append(c)
        for name, value in c.item.attrs.items():
            self.postings[(c.locale, c.item.type, name, value)].add(len(self.items))
        self.items.append(c)

    def exact(self, query_attrs: dict[str, str], qtype: str, locale: str) -> list[Compact]:
        """Products of this locale and type matching every query attribute, in catalog order."""
        if not query_attrs:
            return list(self.by_type.get((locale, qtype), ()))
        sets = sorted((self.postings.get((locale, qtype, k, v), set()) for k, v in query_attrs.items()), key=len)
        return [self.items[i] for i in sorted(sets[0].intersection(*sets[1:]))]


def _judge(
    query_attrs: dict[str, str], qtype: str, locale: str, pool: _Pool, rng: random.Random, complements: bool = True
) -> tuple[list[tuple[str, str]], list[Compact]]:
    out = []
    by_type = pool.by_type
    exact = pool.exact(query_attrs, qtype, locale)
    bucket = by_type.get((locale, qtype), [])
    exact_asins = {c.asin for c in exact}
    subst = [c for c in (rng.choice(bucket) for _ in range(min(60, len(bucket)))) if c.asin not in exact_asins]
    out += [(c.asin, "E") for c in exact[:EXACT_CAP]]
    out += [(c.asin, "S") for c in list({c.asin: c for c in subst}.values())[:20]]
    if not complements:
        return out, exact
    comp = by_type.get((locale, COMPLEMENTS[qtype]), [])
    out += [(c.asin, "C") for c in rng.sample(comp, min(5, len(comp)))]
    others = [(locale, t) for t in TYPES if t not in (qtype, COMPLEMENTS[qtype]) and (locale, t) in by_type]
    for _ in range(10):
        if not others:
            break
        bucket = by_type[rng.choice(others)]
        out.append((rng.choice(bucket).asin, "I"))
    return out, exact


_FORMS = ["plain", "plain", "misspelled", "synonym", "synonym", "synonym", "synonym", "synonym", "cross", "cross", "cross"]


def _make_query(qid: str, pool: _Pool, head_pool: list[Compact], rng: random.Random, complements: bool = True) -> tuple[dict, list[tuple[str, str]]]:
    """One shopping query seeded from a listing's item, and its graded judgements."""
    head = rng.random() < 0.3
    seed_p = rng.choice(head_pool if head else pool.items)
    item, locale = seed_p.item, seed_p.locale
    lang = language_of(locale)
    form = rng.choice(_FORMS)
    if rng.random() < P_SPECIFIC_QUERY:
        qattrs = dict(item.attrs)
    else:
        qattrs = {k: v for k, v in item.attrs.items() if k == "colour"}
        key = next((a for a in KEY_ATTRIBUTES if a in item.attrs and a != "colour"), None)
        if key and (rng.random() < 0.6 or not qattrs):
            qattrs[key] = item.attrs[key]
    if form == "synonym":  # keep only what the synonym vocabulary can say, so the text states every attribute
        qattrs = {k: v for k, v in qattrs.items() if k in ("colour", "clothing_size", "pack_count") or v in WORDS}
    text = _query_text(item, qattrs, form, lang, rng)
    judged, exact = _judge(qattrs, item.type, locale, pool, rng, complements)
    qwords = content_words(text)
    gap = bool(exact) and all(not (qwords & c.words) for c in exact)
    return (
        {
            "query_id": qid,
            "text": text,
            "locale": locale,
            "lexical_gap": gap,
            "head": head,
            "form": form,
            "attributes": qattrs,
            "product_type": item.type,
        },
        judged,
    )


def generate_catalog(
    out_dir: Path | str,
    products: int,
    seed: int = 0,
    locales: Sequence[str] = ("us", "de", "ae"),
    show_progress: bool = True,
    train_queries_per_product: float = TRAIN_QUERIES_PER_PRODUCT,
) -> dict:
    """Write a catalog directory (products, queries, judgements, pairs, clusters, co-purchases).

    Raises:
        ValueError: products < 1 or an unknown locale.
    """
    if products < 1:
        raise ValueError("products: must be at least 1")
    unknown = [loc for loc in locales if loc not in LOCALE_OF]
    if unknown:
        raise ValueError(f"locales: unknown {unknown} (choose from {sorted(LOCALE_OF)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    world = _World(rng, [LOCALE_OF[loc] for loc in locales])
    files = {n: open(out / f"{n}.jsonl", "wb") for n in ("products", "clusters", "duplicate_pairs", "copurchase", "queries", "judgements")}
    pool = _Pool()
    counts = defaultdict(int)
    t0 = time.perf_counter()

    def write(name: str, doc: dict) -> None:
        files[name].write(orjson.dumps(doc) + b"\n")
        counts[name] += 1

    def emit(item: Item, locale: str, variant: str) -> str:
        asin = make_asin(counts["products"], seed)
        listing = render_listing(item, locale, variant, rng)
        write("products", _product(asin, item, locale, listing, rng.randint(1, 5), rng))
        if len(pool.items) < POOL_CAP:
            pool.add(Compact(asin, item, locale, listing_words(listing)))
        return asin

    bar = tqdm(total=products, desc="products", unit="p", disable=not show_progress, mininterval=1.0)
    n_cluster = 0
    recent: list[tuple[str, Item, str]] = []  # (asin, item, split) of recent clusters
    while counts["products"] < products:
        before = counts["products"]
        cid = f"c{n_cluster:08d}"
        n_cluster += 1
        item = world.new_item(cid)
        asins = [emit(item, item.locale, "base")]
        if rng.random() < P_DUPLICATE:
            for _ in range(rng.randint(1, 2)):
                if counts["products"] >= products:
                    break
                variant = rng.choice(["reorder", "abbrev", "seller", "translate", "units"])
                locale = rng.choice(world.locales) if variant == "translate" else item.locale
                asins.append(emit(item, locale, variant))
        split = split_of(cid, seed)
        write("clusters", {"cluster_id": cid, "asins": asins, "split": split})
        pl = TYPES[item.type][0]
        for b in asins[1:]:
            write(
                "duplicate_pairs",
                {"asin_a": asins[0], "asin_b": b, "label": 1, "product_line": pl, "cluster_a": cid, "cluster_b": cid, "split": split},
            )
        if rng.random() < P_HARD_NEGATIVE and counts["products"] < products:
            # The sibling shares the split of its twin so no pair crosses splits.
            sid = f"c{n_cluster:08d}"
            n_cluster += 1
            sib = world.sibling(item, sid)
            s_asin = emit(sib, sib.locale, "base")
            write("clusters", {"cluster_id": sid, "asins": [s_asin], "split": split})
            write(
                "duplicate_pairs",
                {
                    "asin_a": asins[0],
                    "asin_b": s_asin,
                    "label": 0,
                    "product_line": pl,
                    "cluster_a": cid,
                    "cluster_b": sid,
                    "split": split,
                    "hard": True,
                },
            )
        for other_asin, other, other_split in recent[-50:]:
            if TYPES[other.type][0] == pl and other.cluster != cid and other_split == split and rng.random() < 0.02:
                write(
                    "duplicate_pairs",
                    {
                        "asin_a": asins[0],
                        "asin_b": other_asin,
                        "label": 0,
                        "product_line": pl,
                        "cluster_a": cid,
                        "cluster_b": other.cluster,
                        "split": split,
                    },
                )
                break
        recent.append((asins[0], item, split))
        if len(recent) > 200:
            del recent[:100]
        if rng.random() < P_COPURCHASE:
            comp = pool.by_type.get((item.locale, COMPLEMENTS[item.type]))
            if comp:
                write("copurchase", {"asin_a": asins[0], "asin_b": rng.choice(comp).asin})
        bar.update(counts["products"] - before)
    bar.close()

    n_queries = min(MAX_QUERIES, max(MIN_QUERIES, int(products * QUERIES_PER_PRODUCT)))
    n_train = min(MAX_TRAIN_QUERIES, int(products * train_queries_per_product))
    qbar = tqdm(total=n_queries + n_train, desc="queries", unit="q", disable=not show_progress, mininterval=1.0)
    head_pool = pool.items[: max(1, len(pool.items) // 20)]
    gap_count, eval_texts = 0, set()
    for qi in range(n_queries):
        q, judged = _make_query(f"q{qi:07d}", pool, head_pool, rng)
        # Split by the query's text, not its id: a repeated (head) query stays in one split, so none leaks.
        q["split"] = split_of(q["text"], seed)
        gap_count += q["lexical_gap"]
        if q["split"] != "train":
            eval_texts.add(q["text"])
        write("queries", q)
        for asin, label in judged:
            write("judgements", {"query_id": q["query_id"], "asin": asin, "label": label})
        qbar.update()
    # Training-only queries (a query log is plentiful next to the judged evaluation set). Their Exacts and
    # Substitutes are judged in full, so hard-negative mining never takes a true match for a negative;
    # a text that is also a valid/test query is dropped, so no evaluation query is seen in training.
    for qi in range(n_train):
        q, judged = _make_query(f"t{qi:07d}", pool, head_pool, rng, complements=False)
        if q["text"] in eval_texts:
            qbar.update()
            continue
        q["split"] = "train"
        qbar.update()
        write("queries", q)
        counts["train_only_queries"] += 1
        for asin, label in judged:
            write("judgements", {"query_id": q["query_id"], "asin": asin, "label": label})
    qbar.close()
    for f in files.values():
        f.close()
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "products": counts["products"],
        "locales": list(locales),
        "counts": dict(counts),
        "lexical_gap_share": gap_count / n_queries,  # of the judged queries (train-only extras excluded)
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest

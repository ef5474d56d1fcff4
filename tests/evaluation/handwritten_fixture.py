"""A tiny hand-built catalog in the hand-written set's shape (en_US, de_DE and fr_FR; every row split
"test"; queries without `lexical_gap`/`head` flags; open product lines and an "unknown" product type),
and two encoders whose rankings can be worked out by hand: a bag of words over its vocabulary
(`WordEncoder`) and the same thing as a real ONNX bundle (`write_word_bundle`), so that

    "walnut lamp" (en)  Exacts walnut desk lamp, walnut desk lamp dimmable  ranked 1-2 of 3  nDCG@10 1, MAP 1, Exact@10 2/3
    "kettle" (en)       Exact steel kettle                                  ranked 1 of 3    nDCG@10 1, MAP 1, Exact@10 1/3
    "Kocher" (de)       Exact Wasserkocher Edelstahl, no word shared; 12
                        "Kocher Ersatzteil n" listings rank above it         rank 13-14       nDCG@10 0, Recall@100 1, Exact@10 0
    "lampe noyer" (fr)  Exact lampe de bureau en noyer                      ranked 1 of 2    nDCG@10 1, MAP 1, Exact@10 1/2

Duplicate pairs: the two positives share words, the four negatives none, so every AUC is 1.0; by language
"en" (two listings in English) and "de+en" (across; fr has a negative only and no AUC), by product line
"hardlines" (the open line "kitchen" has negatives only)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from m5core.jsonl import write_jsonl
from m5core.schema import render_product

MARKETPLACE = {"en_US": "US", "de_DE": "DE", "fr_FR": "FR"}
_WORD_RE = re.compile(r"\w+", re.UNICODE)


def _product(asin: str, locale: str, title: str, brand: str, product_type: str, product_line: str) -> dict:
    return {
        "asin": asin,
        "marketplace": MARKETPLACE[locale],
        "locale": locale,
        "product_line": product_line,
        "product_type": product_type,
        "brand": brand,
        "title": title,
        "description": "",
        "bullet_points": [],
        "attributes": {},
        "version": 1,
        "updated_at": 0.0,
    }


PRODUCTS = [
    _product("EN00000001", "en_US", "walnut desk lamp", "Lumo", "desk_lamp", "hardlines"),
    _product("EN00000002", "en_US", "steel kettle", "Brava", "unknown", "kitchen"),
    _product("EN00000003", "en_US", "walnut desk lamp dimmable", "Lumo", "desk_lamp", "hardlines"),
    _product("DE00000001", "de_DE", "Walnuss Schreibtischlampe", "Hellwerk", "desk_lamp", "hardlines"),
    _product("DE00000002", "de_DE", "Wasserkocher Edelstahl", "Hellwerk", "kettle", "kitchen"),
    *[_product(f"DE00000{100 + i}", "de_DE", f"Kocher Ersatzteil {i}", "Teilhaus", "spare_part", "kitchen") for i in range(1, 13)],
    _product("FR00000001", "fr_FR", "lampe de bureau en noyer", "Noix", "desk_lamp", "hardlines"),
    _product("FR00000002", "fr_FR", "bouilloire inox", "Inoxa", "kettle", "kitchen"),
]

QUERIES = [
    {"query_id": "hw-en-1", "text": "walnut lamp", "locale": "en_US", "split": "test"},
    {"query_id": "hw-en-2", "text": "kettle", "locale": "en_US", "split": "test"},
    {"query_id": "hw-de-1", "text": "Kocher", "locale": "de_DE", "split": "test"},
    {"query_id": "hw-fr-1", "text": "lampe noyer", "locale": "fr_FR", "split": "test"},
]

JUDGEMENTS = [
    ("hw-en-1", "EN00000001", "E"),
    ("hw-en-1", "EN00000003", "E"),
    ("hw-en-1", "EN00000002", "I"),
    ("hw-en-2", "EN00000002", "E"),
    ("hw-en-2", "EN00000001", "I"),
    ("hw-de-1", "DE00000002", "E"),
    ("hw-de-1", "DE00000101", "I"),
    ("hw-fr-1", "FR00000001", "E"),
    ("hw-fr-1", "FR00000002", "I"),
]

DUPLICATE_PAIRS = [
    ("EN00000001", "EN00000003", 1, "hardlines"),
    ("EN00000001", "EN00000002", 0, "hardlines"),
    ("EN00000003", "EN00000002", 0, "kitchen"),
    ("EN00000001", "DE00000001", 1, "hardlines"),
    ("DE00000001", "EN00000002", 0, "kitchen"),
    ("FR00000001", "FR00000002", 0, "kitchen"),
]

LOCALES = tuple(MARKETPLACE)


def write_catalog(directory: Path, locales: tuple[str, ...] = LOCALES) -> Path:
    """Write the fixture (only the listings, queries and pairs of `locales`) as a catalog directory."""
    directory.mkdir(parents=True, exist_ok=True)
    locale_of = {p["asin"]: p["locale"] for p in PRODUCTS}
    keep = {a for a, loc in locale_of.items() if loc in locales}
    queries = [q for q in QUERIES if q["locale"] in locales]
    qids = {q["query_id"] for q in queries}
    write_jsonl(directory / "products.jsonl", [p for p in PRODUCTS if p["asin"] in keep])
    write_jsonl(directory / "queries.jsonl", queries)
    write_jsonl(directory / "judgements.jsonl", [{"query_id": q, "asin": a, "label": lbl} for q, a, lbl in JUDGEMENTS if q in qids])
    write_jsonl(
        directory / "duplicate_pairs.jsonl",
        [
            {"asin_a": a, "asin_b": b, "label": y, "product_line": pl, "cluster_a": a, "cluster_b": b if y == 0 else a, "split": "test"}
            for a, b, y, pl in DUPLICATE_PAIRS
            if a in keep and b in keep
        ],
    )
    write_jsonl(directory / "clusters.jsonl", [{"cluster_id": a, "asins": [a], "split": "test"} for a in sorted(keep)])
    write_jsonl(directory / "copurchase.jsonl", [])
    (directory / "manifest.json").write_text('{"generator_version": "hand-written test fixture"}')
    return directory


def vocabulary() -> list[str]:
    """Every word of the fixture's listings (plain rendering) and queries."""
    texts = [render_product(p, "plain") for p in PRODUCTS] + [q["text"] for q in QUERIES]
    return sorted({w for t in texts for w in _WORD_RE.findall(t.lower())})


class WordEncoder:
    """Bag of words over the fixture's vocabulary, one dimension each: cosine > 0 exactly when words are shared."""

    def __init__(self) -> None:
        self.index = {w: i + 1 for i, w in enumerate(vocabulary())}  # dimension 0: texts with no known word
        self.dim, self.version = len(self.index) + 1, "words-1"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, dim)
        for i, t in enumerate(texts):
            for w in _WORD_RE.findall(t.lower()):
                if w in self.index:
                    out[i, self.index[w]] += 1.0
            if not out[i].any():
                out[i, 0] = 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True) if len(texts) else out


def write_word_bundle(directory: Path, render_scheme: str = "fields") -> Path:
    """A real bundle (WordLevel tokenizer, ONNX towers: sum of one-hot word vectors, L2-normalised) ranking like WordEncoder.

    Both towers and their fp32 twins are the same graph, so every report variant has a row."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from m5core.bundle import Manifest, TowerSpec, write_manifest

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, "[PAD]": 1} | {w: i + 2 for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))

    dim = len(vocab)
    table = np.eye(dim, dtype=np.float32)  # (vocab, dim): word i -> axis i
    table[:2] = 0.0  # [UNK] (field tokens, punctuation) and [PAD] add nothing
    eps = np.zeros(dim, np.float32)
    eps[0] = 1e-6  # a text of unknown words only still has a direction
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["x"]),  # (b, s, dim)
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),  # (b, s, 1)
            helper.make_node("Mul", ["x", "m3"], ["xm"]),
            helper.make_node("ReduceSum", ["xm", "axis1"], ["s"], keepdims=0),  # (b, dim)
            helper.make_node("Add", ["s", "eps"], ["se"]),
            helper.make_node("LpNormalization", ["se"], ["embedding"], axis=1, p=2),
        ],
        "words",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [
            onnx.numpy_helper.from_array(table, "table"),
            onnx.numpy_helper.from_array(eps, "eps"),
            onnx.numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for name in ("product.int8.onnx", "product.fp32.onnx", "query.int8.onnx", "query.fp32.onnx"):
        onnx.save(model, str(directory / name))
    write_manifest(
        directory,
        Manifest(
            name="words",
            version="words-1",
            created_at=0.0,
            dim=dim,
            render_scheme=render_scheme,
            towers={"product": TowerSpec(onnx="product.int8.onnx"), "query": TowerSpec(onnx="query.int8.onnx")},
        ),
    )
    return directory

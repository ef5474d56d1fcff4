"""Partner toolkit: embed products and queries with a published bundle, and fine-tune on your own pairs.

Embedding needs only the runtime (onnxruntime + tokenizers via m5core.encoder): importing this module
and calling `PartnerBundle.embed_*` never imports torch, so a partner can embed on any CPU box.
Fine-tuning (`finetune_on_pairs`, `m5 partner finetune`) needs the train extra and a starting point with
torch weights: a bundle exported with `export.finetunable` (it carries its product tower's weights), or a
trainer run directory. A fifth of the anchors (by a hash of their text) is held out of training and scored
before and after, so the partner sees what the fine-tune bought on pairs it never trained on.

Labelled pairs, one JSON object per line (blank lines ignored), either shape:
    {"text_a": "...", "text_b": "...", "label": 1}                       product/product (duplicates)
    {"query": "...", "product_asin": "B0...", "label": 1}                query/product from the catalog
    {"query": "...", "product_text": "...", "label": 0}                  query/product text given inline
label 1 = the pair matches, 0 = it does not (used as a hard negative for that anchor).

    from trainer.partner import PartnerBundle, finetune_on_pairs
    b = PartnerBundle(".m5/bundles/current")
    P = b.embed_products(products)          # (n, dim) float32, L2-normalised
    Q = b.embed_queries(["red shoes"])      # same space as P
    new = finetune_on_pairs(".m5/bundles/current", "pairs.jsonl", out=".m5/partner-bundles", strategy="infonce")
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import orjson

from m5core.bundle import MANIFEST, Manifest, load_manifest
from m5core.encoder import OnnxEncoder
from m5core.metrics import roc_auc
from m5core.schema import Product, render_product

Strategy = Literal["infonce", "bce", "triplet"]


class PairsError(ValueError):
    """A partner pairs file that does not follow the documented format (names line and field)."""


class PartnerBundle:
    """Both towers of one bundle; the query tower may be a distilled student in the same space."""

    def __init__(self, bundle_dir: Path | str, threads: int = 1):
        self.dir = Path(bundle_dir).resolve()
        self.manifest: Manifest = load_manifest(self.dir)
        self.version, self.dim = self.manifest.version, self.manifest.dim
        self._threads = threads
        self._towers: dict[str, OnnxEncoder] = {}

    def _tower(self, name: str) -> OnnxEncoder:
        if name not in self._towers:  # ONNX sessions are opened on first use
            self._towers[name] = OnnxEncoder(self.dir, name, threads=self._threads, manifest=self.manifest)
        return self._towers[name]

    def embed_texts(self, texts: list[str], tower: Literal["product", "query"] = "product", batch: int = 256) -> np.ndarray:
        """(len(texts), dim) float32, normalised; batches bound memory, results equal one big call."""
        enc = self._tower(tower)
        parts = [enc.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def embed_products(self, products: Iterable[Product | dict], batch: int = 256) -> np.ndarray:
        """Products rendered with the scheme the bundle was trained on."""
        return self.embed_texts([render_product(p, self.manifest.render_scheme) for p in products], "product", batch)

    def embed_queries(self, queries: list[str], batch: int = 256) -> np.ndarray:
        return self.embed_texts(list(queries), "query", batch)


@dataclass
class PartnerPairs:
    """Parsed pairs: anchors with their positive and negative texts, keyed by anchor text."""

    kind: Literal["products", "search"]
    positives: list[tuple[str, str]] = field(default_factory=list)  # (anchor, positive text)
    negatives: dict[str, list[str]] = field(default_factory=dict)  # anchor -> non-matching texts


def read_pairs(path: Path | str, products: dict[str, dict] | None = None, scheme: str = "fields") -> PartnerPairs:
    """Validate and parse a pairs file; `products` (asin -> product) resolves product_asin rows.

    Raises:
        PairsError: naming the line and the field at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"pairs file {path} does not exist")
    kind = None
    out = PartnerPairs(kind="products")
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise PairsError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise PairsError(f"{path}:{n}: expected a JSON object")
        this = "products" if "text_a" in row else "search" if "query" in row else None
        if this is None:
            raise PairsError(f"{path}:{n}: needs text_a/text_b or query with product_asin|product_text")
        if kind not in (None, this):
            raise PairsError(f"{path}:{n}: mixes {this} rows into a {kind} file (one shape per file)")
        kind = this
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise PairsError(f"{path}:{n}: label must be 0 or 1, got {label!r}")
        if this == "products":
            a, b = row.get("text_a"), row.get("text_b")
            extra = set(row) - {"text_a", "text_b", "label"}
        else:
            a = row.get("query")
            extra = set(row) - {"query", "product_asin", "product_text", "label"}
            if "product_asin" in row:
                if products is None or row["product_asin"] not in products:
                    raise PairsError(f"{path}:{n}: product_asin {row['product_asin']!r} is not in the catalog given")
                b = render_product(products[row["product_asin"]], scheme)
            else:
                b = row.get("product_text")
        if extra:
            raise PairsError(f"{path}:{n}: unknown field(s) {', '.join(sorted(extra))}")
        for name, v in (("text_a" if this == "products" else "query", a), ("text_b" if this == "products" else "product_text", b)):
            if not isinstance(v, str) or not v.strip():
                raise PairsError(f"{path}:{n}: {name} must be a non-empty string")
        if label == 1:
            out.positives.append((a, b))
        else:
            out.negatives.setdefault(a, []).append(b)
    if not out.positives:
        raise PairsError(f"{path}: no pairs with label 1 (at least one matching pair is needed)")
    out.kind = kind or "products"
    return out


HELD_OUT = 0.2
"""Share of anchors held out of a partner fine-tune and scored before and after it."""


def split_held_out(pairs: PartnerPairs, share: float = HELD_OUT) -> tuple[PartnerPairs, list[tuple[str, str, int]]]:
    """(pairs to train on, held-out (anchor, text, label) rows). An anchor is held out by a hash of its text, so
    every row of it is on one side, and the split is the same on every run and machine. A held-out file without
    label-0 rows is scored against each anchor's next neighbour's positive (a shifted pairing)."""
    held = lambda a: zlib.crc32(a.encode()) % 1000 < share * 1000  # noqa: E731
    train = PartnerPairs(pairs.kind, [(a, b) for a, b in pairs.positives if not held(a)], {a: n for a, n in pairs.negatives.items() if not held(a)})
    pos = [(a, b) for a, b in pairs.positives if held(a)]
    rows = [(a, b, 1) for a, b in pos] + [(a, b, 0) for a, ns in pairs.negatives.items() if held(a) for b in ns]
    if pos and not any(label == 0 for *_, label in rows):
        rows += [(a, pos[(i + 1) % len(pos)][1], 0) for i, (a, _) in enumerate(pos) if pos[(i + 1) % len(pos)][1] != pos[i][1]]
    return train, rows


def held_out_auc(model, tok, rows: list[tuple[str, str, int]], anchor_len: int, text_len: int) -> float | None:
    """ROC AUC of the cosine over the held-out rows (None when they lack either label)."""
    import torch

    from trainer.finetune import embed_texts

    labels = [label for *_, label in rows]
    if len(set(labels)) < 2:
        return None
    a = embed_texts(model, tok, [r[0] for r in rows], anchor_len, torch.device("cpu"))
    b = embed_texts(model, tok, [r[1] for r in rows], text_len, torch.device("cpu"))
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return round(roc_auc((a * b).sum(1), labels), 4)


def load_start(source: Path):
    """A bundle exported with its fine-tunable weights, or a trainer run directory -> (tower, TrainConfig, tokenizer file).

    Raises:
        PairsError: a bundle without fine-tunable weights (saying how to export one), or a directory that is neither.
    """
    import torch

    from trainer.config import TrainConfig
    from trainer.model import EmbeddingModel, encoder_from_state
    from trainer.pipeline import load_tower

    if (source / MANIFEST).is_file():
        from trainer.export import load_finetunable

        manifest = load_manifest(source)
        if manifest.finetune is None:
            raise PairsError(
                f"bundle {manifest.version} carries no fine-tunable weights (a serving-only bundle): export one with "
                "`m5 train export --set export.finetunable=true ...` (or `m5 train all` with that setting)"
            )
        return load_finetunable(source, manifest), TrainConfig.model_validate(manifest.training_config), source / manifest.tokenizer
    for f in ("config.json", "tokenizer.json"):
        if not (source / f).is_file():
            raise PairsError(f"{source} is neither a bundle ({MANIFEST}) nor a trainer run directory ({f} is missing)")
    cfg = TrainConfig.model_validate_json((source / "config.json").read_text())
    if (source / "finetuned.pt").is_file():
        return load_tower(source / "finetuned.pt"), cfg, source / "tokenizer.json"
    saved = torch.load(source / "pretrained.pt", map_location="cpu", weights_only=False)  # our own run directory
    return EmbeddingModel(cfg.model, encoder_from_state(saved)), cfg, source / "tokenizer.json"


def finetune_on_pairs(
    source: Path | str,
    pairs_path: Path | str,
    out: Path | str,
    strategy: Strategy = "infonce",
    steps: int = 100,
    name: str = "partner",
    catalog: Path | str | None = None,
    work_dir: Path | str | None = None,
) -> Path:
    """Continue fine-tuning a bundle's (or a run's) model on partner pairs and publish an int8 bundle into `out`.

    The query tower of the new bundle is the fine-tuned tower itself (a student distilled for the old
    product tower would no longer share its space). The parity gate runs on the partner's pairs. The held-out
    anchors' AUC before and after is in the new bundle's `metrics.partner`.

    Args:
        source: a bundle with fine-tunable weights (`export.finetunable`), or a trainer run directory.
        strategy: the loss; label-0 rows become hard negatives of their anchor.
    """
    import json

    import torch
    from tokenizers import Tokenizer

    from trainer.export import publish_bundle
    from trainer.finetune import PairSet, finetune

    source = Path(source)
    model, cfg, tok_path = load_start(source)
    tok = Tokenizer.from_file(str(tok_path))
    work = Path(work_dir) if work_dir else Path(out) / f".{name}-run"
    work.mkdir(parents=True, exist_ok=True)
    cfg = cfg.model_copy(
        update={
            "name": name,
            "run_dir": work,
            "model": cfg.model.model_copy(update={"vocab_size": tok.get_vocab_size()}),
            "finetune": cfg.finetune.model_copy(update={"loss": strategy, "steps": steps, "hard_negatives": False}),
        }
    )
    products = None
    if catalog is not None:
        from catalog.io import load_catalog

        products = {p["asin"]: p for p in load_catalog(catalog).products()}
    pairs, held = split_held_out(read_pairs(pairs_path, products, cfg.pretrain.scheme))
    if not pairs.positives:
        raise PairsError(f"{pairs_path}: every matching pair fell in the held-out fifth; give more pairs")
    anchor_len = cfg.finetune.max_query_len if pairs.kind == "search" else cfg.finetune.max_product_len
    lens = (anchor_len, cfg.finetune.max_product_len)
    before = held_out_auc(model, tok, held, *lens)

    texts = sorted({b for _, b in pairs.positives} | {t for ts in pairs.negatives.values() for t in ts})
    key = {t: f"p{i}" for i, t in enumerate(texts)}
    product_texts = {key[t]: t for t in texts}
    anchors = [a for a, _ in pairs.positives]
    known = {}
    for a, b in pairs.positives:
        known.setdefault(a, set()).add(key[b])
    s = PairSet("partner", anchors, [key[b] for _, b in pairs.positives], anchors, known, anchor_len)
    s.hard = [key[pairs.negatives[a][0]] if pairs.negatives.get(a) else None for a in anchors]
    model, metrics = finetune(cfg, None, tok, None, {}, torch.device("cpu"), sets=[s], product_texts=product_texts, model=model)
    model = model.cpu().eval()
    report = {"held_out_rows": len(held), "held_out_auc_before": before, "held_out_auc_after": held_out_auc(model, tok, held, *lens)}
    uniq = sorted(known)[: cfg.export.validation_size]
    validation = {"product_texts": texts, "query_texts": uniq, "asins": [key[t] for t in texts], "relevant": [known[a] for a in uniq]}
    return publish_bundle(
        Path(out),
        name,
        model,
        model,
        tok_path,
        cfg.pretrain.scheme,
        {"finetune": metrics, "partner": report, "partner_pairs": len(pairs.positives), "strategy": strategy, "base": str(source)},
        json.loads(cfg.model_dump_json()),
        validation=validation,
        gate={"min_cosine": cfg.export.min_cosine, "max_drop": cfg.export.max_metric_drop},
        query_distilled=False,
        max_lengths=(cfg.finetune.max_product_len, cfg.finetune.max_query_len),
    )


__all__ = ["PairsError", "PartnerBundle", "PartnerPairs", "finetune_on_pairs", "held_out_auc", "load_start", "read_pairs", "split_held_out"]

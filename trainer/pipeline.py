"""`m5 train all`: tokenizer -> MLM pre-training -> fine-tuning -> distillation -> int8 bundle."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from catalog.io import load_catalog
from m5core.schema import render_product
from trainer.config import TrainConfig
from trainer.distill import distill, query_like_texts
from trainer.export import publish_bundle
from trainer.finetune import embed_texts, finetune
from trainer.pretrain import pretrain
from trainer.tokenizer import train_tokenizer

log = logging.getLogger(__name__)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def validation_set(catalog, products: dict[str, dict], scheme: str, size: int) -> dict:
    """Product texts and judged queries of the validation split, for the parity gate."""
    judg = catalog.judgements()
    queries = catalog.queries("valid")[:size] or catalog.queries()[:size]
    relevant = [{a for a, lbl in judg.get(q["query_id"], {}).items() if lbl == "E" and a in products} for q in queries]
    asins = sorted({a for q in queries for a in judg.get(q["query_id"], {}) if a in products})
    extra = [a for a in products if a not in set(asins)][: max(0, size * 4 - len(asins))]
    asins += extra
    return {"product_texts": [render_product(products[a], scheme) for a in asins], "query_texts": [q["text"] for q in queries],
            "asins": asins, "relevant": relevant}


def train_all(cfg: TrainConfig, resume: bool = True) -> Path:
    """Run the whole pipeline and publish a bundle; returns its directory."""
    t0 = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(cfg.model_dump_json(indent=2))
    catalog = load_catalog(cfg.catalog)
    products = {p["asin"]: p for p in catalog.products()}
    scheme = cfg.pretrain.scheme
    texts = [render_product(p, scheme) for p in products.values()]
    tok_path = run / "tokenizer.json"
    tok = train_tokenizer(texts + [q["text"] for q in catalog.queries("train")], cfg.model.vocab_size, tok_path)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": tok.get_vocab_size()})})
    device = _device(cfg)
    mlm, pre_metrics = pretrain(cfg, list(products.values()), tok, resume=resume)
    encoder = mlm.encoder.to(device)
    model, ft_metrics = finetune(cfg, encoder, tok, catalog, products, device)
    model = model.cpu().eval()
    query_tower, distilled, d_metrics = model, False, {}
    if cfg.distill.enabled:
        q_texts = query_like_texts([q["text"] for q in catalog.queries("train")], [p["title"] for p in products.values()],
                                   20_000, cfg.pretrain.seed)
        query_tower, d_metrics = distill(cfg, model, tok, q_texts, torch.device("cpu"))
        distilled = True
    val = validation_set(catalog, products, scheme, cfg.export.validation_size)
    metrics = {"pretrain": pre_metrics, "finetune": ft_metrics, "distill": d_metrics,
               "train_seconds": round(time.perf_counter() - t0, 1)}
    bundle = publish_bundle(
        cfg.out, cfg.name, model, query_tower, tok_path, scheme, metrics, json.loads(cfg.model_dump_json()),
        validation=val, gate={"min_cosine": cfg.export.min_cosine, "max_drop": cfg.export.max_metric_drop},
        query_distilled=distilled, max_lengths=(cfg.finetune.max_product_len, cfg.finetune.max_query_len),
    )
    log.info("bundle %s in %.0f s", bundle, time.perf_counter() - t0)
    return bundle


__all__ = ["embed_texts", "train_all"]

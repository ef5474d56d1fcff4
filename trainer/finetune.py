"""Partner fine-tuning: a two-tower model (shared weights) on query->product and duplicate pairs,
with in-batch negatives and hard negatives mined from the model's own nearest neighbours."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from m5core.metrics import roc_auc
from m5core.schema import render_product
from trainer.config import TrainConfig
from trainer.data import encode_batch
from trainer.losses import make_loss
from trainer.model import EmbeddingModel
from trainer.tokenizer import special_ids

log = logging.getLogger(__name__)


@dataclass
class PairSet:
    """Anchor/positive texts of one task; `known` holds every positive id per anchor (never mined)."""

    name: str
    anchors: list[str]
    positives: list[str]
    anchor_keys: list[str]
    known: dict[str, set[str]] = field(default_factory=dict)
    anchor_len: int = 128
    hard: list[str | None] = field(default_factory=list)


def build_pairs(catalog, products: dict[str, dict], cfg: TrainConfig, scheme: str) -> list[PairSet]:
    """Training pairs of the train split only (validation/test clusters and queries never leak in)."""
    f = cfg.finetune
    sets = []
    text = {a: render_product(p, scheme) for a, p in products.items()}
    if "search" in f.tasks:
        judg = catalog.judgements()
        anchors, pos, keys, known = [], [], [], {}
        for q in catalog.queries("train"):
            exact = [a for a, lbl in judg.get(q["query_id"], {}).items() if lbl == "E" and a in text]
            known[q["query_id"]] = set(exact) | {a for a, lbl in judg.get(q["query_id"], {}).items() if lbl == "S"}
            for a in exact[:8]:
                anchors.append(q["text"])
                pos.append(a)
                keys.append(q["query_id"])
        sets.append(PairSet("search", anchors, pos, keys, known, f.max_query_len))
    if "duplicates" in f.tasks:
        anchors, pos, keys, known = [], [], [], {}
        for c in catalog.clusters():
            if c["split"] != "train" or len(c["asins"]) < 2:
                continue
            for b in c["asins"][1:]:
                anchors.append(c["asins"][0])
                pos.append(b)
                keys.append(c["asins"][0])
            known[c["asins"][0]] = set(c["asins"])
        sets.append(PairSet("duplicates", [text[a] for a in anchors], pos, keys, known, f.max_product_len))
    if "copurchase" in f.tasks:
        cp = [(d["asin_a"], d["asin_b"]) for d in catalog.copurchase() if d["asin_a"] in text and d["asin_b"] in text]
        sets.append(
            PairSet("copurchase", [text[a] for a, _ in cp], [b for _, b in cp], [a for a, _ in cp], {a: {a, b} for a, b in cp}, f.max_product_len)
        )
    for s in sets:
        s.hard = [None] * len(s.anchors)
    return [s for s in sets if s.anchors]


@torch.no_grad()
def embed_texts(model: EmbeddingModel, tok: Tokenizer, texts: list[str], max_len: int, device, batch: int = 256) -> np.ndarray:
    model.eval()
    specials, pad = special_ids(tok), tok.token_to_id("[PAD]")
    out = []
    for i in range(0, len(texts), batch):
        enc = encode_batch(tok, texts[i : i + batch], max_len, specials, pad)
        out.append(model(torch.from_numpy(enc.ids).to(device), torch.from_numpy(enc.attn).to(device)).float().cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float32)


def mine_hard_negatives(model, tok, pairs: PairSet, asins: list[str], product_vecs: np.ndarray, device) -> int:
    """For each anchor, its nearest product that is not a known positive: the negatives in-batch sampling misses."""
    uniq = sorted(set(pairs.anchors))
    vecs = embed_texts(model, tok, uniq, pairs.anchor_len, device)
    scores = vecs @ product_vecs.T
    top = np.argsort(-scores, axis=1)[:, :20]
    best = {}
    for text, row in zip(uniq, top):
        best[text] = row
    n = 0
    for i, (text, key) in enumerate(zip(pairs.anchors, pairs.anchor_keys)):
        known = pairs.known.get(key, set())
        pick = next((asins[j] for j in best[text] if asins[j] not in known), None)
        pairs.hard[i] = pick
        n += pick is not None
    return n


def task_schedule(names: list[str], weights: dict[str, float], seed: int, steps: int) -> list[int]:
    """Which task each step trains, drawn by weight: a pure function of the seed, so a rerun repeats it."""
    w = np.array([weights.get(n, 1.0) for n in names], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError(f"finetune.task_weights: every task of {names} weighs 0")
    return np.random.default_rng([seed, 7]).choice(len(names), size=steps, p=w / w.sum()).tolist()


def false_negative_mask(s: PairSet, keep: list[int], hard: list[str]) -> np.ndarray:
    """(batch, batch + hard) True where a column's product is another known positive of the row's anchor."""
    cols = [s.positives[i] for i in keep] + hard
    mask = np.zeros((len(keep), len(cols)), dtype=bool)
    for r, i in enumerate(keep):
        known = s.known.get(s.anchor_keys[i], ())
        for c, asin in enumerate(cols):
            mask[r, c] = c != r and asin in known
    return mask


def finetune(
    cfg: TrainConfig,
    encoder,
    tok: Tokenizer,
    catalog,
    products: dict[str, dict],
    device,
    sets: list[PairSet] | None = None,
    product_texts: dict[str, str] | None = None,
    model: EmbeddingModel | None = None,
) -> tuple[EmbeddingModel, dict]:
    """Two-tower fine-tuning. `sets`/`product_texts` replace the catalog's tasks (partner pairs);
    `model` continues from an already fine-tuned tower instead of a fresh head on `encoder`."""
    f = cfg.finetune
    scheme = cfg.pretrain.scheme
    torch.manual_seed(f.seed)
    model = (model or EmbeddingModel(cfg.model, encoder)).to(device)
    model.train()
    loss_fn = make_loss(f.loss, f.temperature, f.margin).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=f.lr, weight_decay=0.01)
    sets = sets if sets is not None else build_pairs(catalog, products, cfg, scheme)
    if not sets or f.steps == 0:
        return model, {"finetune_steps": 0}
    asins = list(product_texts if product_texts is not None else products)
    ptext = product_texts if product_texts is not None else {a: render_product(p, scheme) for a, p in products.items()}
    specials, pad = special_ids(tok), tok.token_to_id("[PAD]")
    rng = np.random.default_rng(f.seed)
    run = Path(cfg.run_dir)
    metrics_f = open(run / "finetune_metrics.jsonl", "a")
    plan = task_schedule([x.name for x in sets], f.task_weights, f.seed, f.steps)
    bar = tqdm(range(f.steps), desc="finetune", unit="step", mininterval=2.0)
    t0 = time.perf_counter()
    for step in bar:
        if f.hard_negatives and step % f.mine_every == 0 and step > 0:
            pvecs = embed_texts(model, tok, [ptext[a] for a in asins], f.max_product_len, device)
            for s in sets:
                mine_hard_negatives(model, tok, s, asins, pvecs, device)
        s = sets[plan[step]]
        idx = rng.choice(len(s.anchors), size=min(f.batch, len(s.anchors)), replace=False)
        # One positive per anchor text in a batch, or in-batch "negatives" would be true positives.
        seen, keep = set(), []
        for i in idx:
            if s.anchors[i] not in seen and s.positives[i] not in seen:
                seen.update((s.anchors[i], s.positives[i]))
                keep.append(i)
        a = encode_batch(tok, [s.anchors[i] for i in keep], s.anchor_len, specials, pad)
        p = encode_batch(tok, [ptext[s.positives[i]] for i in keep], f.max_product_len, specials, pad)
        ea = model(torch.from_numpy(a.ids).to(device), torch.from_numpy(a.attn).to(device))
        ep = model(torch.from_numpy(p.ids).to(device), torch.from_numpy(p.attn).to(device))
        hard = [s.hard[i] for i in keep if s.hard[i] is not None]
        en = None
        if hard and (f.loss == "infonce" or len(hard) == len(keep)):
            n = encode_batch(tok, [ptext[h] for h in hard], f.max_product_len, specials, pad)
            en = model(torch.from_numpy(n.ids).to(device), torch.from_numpy(n.attn).to(device))
        fn = None
        if f.mask_false_negatives:
            fn = torch.from_numpy(false_negative_mask(s, keep, hard if en is not None else [])).to(device)
        loss = loss_fn(ea, ep, en, fn)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(task=s.name, loss=f"{float(loss):.3f}")
        metrics_f.write(json.dumps({"step": step + 1, "task": s.name, "loss": float(loss)}) + "\n")
    metrics_f.close()
    return model, {"finetune_steps": f.steps, "finetune_seconds": round(time.perf_counter() - t0, 1)}


class CrossEncoder(nn.Module):
    """Both products in one input, `[CLS] a [SEP] b [SEP]`: attention across the pair, one score out.

    More accurate for duplicate detection than two towers but nothing to index, so it is a scorer
    (re-ranking, labelling), never exported into a bundle.
    """

    def __init__(self, c, encoder=None):
        super().__init__()
        self.embed = EmbeddingModel(c.model_copy(update={"proj_dim": 0}), encoder)
        self.score = nn.Linear(c.hidden, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.embed.pooled(input_ids, attention_mask)  # (batch, hidden)
        return self.score(self.embed.added(pooled)).squeeze(-1)  # (batch,) logits


def encode_pairs(tok: Tokenizer, a: list[str], b: list[str], max_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs -> (ids, mask) (batch, seq): the tokenizer's pair template inserts the [SEP]."""
    tok.enable_truncation(max_len)
    encs = tok.encode_batch(list(zip(a, b)))
    seq = max(len(e.ids) for e in encs)
    ids = np.full((len(encs), seq), pad_id, dtype=np.int64)
    mask = np.zeros((len(encs), seq), dtype=np.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


def finetune_cross_encoder(
    cfg: TrainConfig, encoder, tok: Tokenizer, pairs: list[tuple[str, str, int]], device, eval_pairs: list[tuple[str, str, int]] = ()
) -> tuple[CrossEncoder, dict]:
    """BCE on labelled (text_a, text_b, label) pairs; returns the scorer and its ROC-AUC on eval_pairs."""
    f = cfg.finetune
    torch.manual_seed(f.seed)
    model = CrossEncoder(cfg.model, encoder).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=f.lr, weight_decay=0.01)
    pad = tok.token_to_id("[PAD]")
    rng = np.random.default_rng(f.seed)
    bar = tqdm(range(f.steps), desc="finetune[cross]", unit="step", mininterval=2.0)
    for _ in bar:
        idx = rng.choice(len(pairs), size=min(f.batch, len(pairs)), replace=False)
        ids, mask = encode_pairs(tok, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx], 2 * f.max_product_len, pad)
        labels = torch.tensor([float(pairs[i][2]) for i in idx], device=device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)), labels
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{float(loss):.3f}")
    metrics = {"cross_encoder_steps": f.steps}
    if eval_pairs:
        scores = score_pairs(model, tok, [a for a, _, _ in eval_pairs], [b for _, b, _ in eval_pairs], 2 * f.max_product_len, device)
        labels = [y for _, _, y in eval_pairs]
        if 0 < sum(labels) < len(labels):  # AUC needs both classes
            metrics["duplicate_auc"] = roc_auc(scores, labels)
    return model, metrics


@torch.no_grad()
def score_pairs(model: CrossEncoder, tok: Tokenizer, a: list[str], b: list[str], max_len: int, device, batch: int = 64) -> np.ndarray:
    model.eval()
    pad = tok.token_to_id("[PAD]")
    out = []
    for i in range(0, len(a), batch):
        ids, mask = encode_pairs(tok, a[i : i + batch], b[i : i + batch], max_len, pad)
        out.append(model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)).float().cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros(0, np.float32)

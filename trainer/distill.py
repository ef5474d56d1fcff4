"""Distil the fine-tuned query tower into a small student that stays in the product tower's space.

Queries must embed in well under a millisecond on one CPU thread; products are embedded offline
and can afford the larger tower. The student learns to reproduce the teacher's query embedding
(cosine loss), so its vectors are searched against the teacher's product vectors unchanged, and the
teacher's ranking of a bank of product vectors (KL between the two score distributions): a small
cosine error pointed the wrong way reorders the top 10, so the ranking is taught directly.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from trainer.config import TrainConfig
from trainer.data import encode_batch
from trainer.model import EmbeddingModel
from trainer.tokenizer import special_ids


def query_like_texts(queries: list[str], titles: list[str], n: int, seed: int) -> list[str]:
    """Training texts for the student: real queries plus short spans of titles (query-shaped)."""
    rng = random.Random(seed)
    out = list(queries)
    while len(out) < n and titles:
        words = rng.choice(titles).split()
        k = rng.randint(1, min(5, len(words)))
        i = rng.randint(0, len(words) - k)
        out.append(" ".join(words[i:i + k]))
    return out


def distill(cfg: TrainConfig, teacher: EmbeddingModel, tok: Tokenizer, texts: list[str], device,
            product_texts: list[str] | None = None) -> tuple[EmbeddingModel, dict]:
    """product_texts: the catalog's rendered products; a sample of them, embedded by the teacher, is the
    bank whose ranking the student learns (none given: cosine loss only)."""
    from trainer.finetune import embed_texts

    d = cfg.distill
    student_cfg = cfg.model.model_copy(update={"layers": d.layers, "hidden": d.hidden, "heads": d.heads,
                                               "intermediate": d.intermediate, "proj_dim": cfg.model.dim, "added_layers": 0})
    torch.manual_seed(cfg.pretrain.seed)
    student = EmbeddingModel(student_cfg).to(device)
    # Start from the teacher's token embeddings where the widths match: a warm start for free.
    if d.hidden == cfg.model.hidden:
        student.encoder.tok.weight.data.copy_(teacher.encoder.tok.weight.data)
    teacher.eval()
    opt = torch.optim.AdamW(student.parameters(), lr=d.lr)
    specials, pad = special_ids(tok), tok.token_to_id("[PAD]")
    rng = np.random.default_rng(cfg.pretrain.seed)
    t0 = time.perf_counter()
    bank = None
    if product_texts and d.rank_weight > 0 and d.rank_bank > 0:
        pick = rng.choice(len(product_texts), size=min(d.rank_bank, len(product_texts)), replace=False)
        bank = torch.from_numpy(embed_texts(teacher, tok, [product_texts[i] for i in pick], cfg.finetune.max_product_len,
                                            device)).to(device)  # (bank, dim)
        teacher.eval()
    bar = tqdm(range(d.steps), desc="distill", unit="step", mininterval=2.0)
    for _ in bar:
        batch = [texts[i] for i in rng.choice(len(texts), size=min(d.batch, len(texts)), replace=False)]
        enc = encode_batch(tok, batch, cfg.finetune.max_query_len, specials, pad)
        ids, attn = torch.from_numpy(enc.ids).to(device), torch.from_numpy(enc.attn).to(device)
        with torch.no_grad():
            target = teacher(ids, attn)
        out = student(ids, attn)
        loss = (1 - (out * target).sum(-1)).mean()
        if bank is not None:
            t_scores = (target @ bank.T / d.rank_temperature).log_softmax(-1)  # (batch, bank)
            s_scores = (out @ bank.T / d.rank_temperature).log_softmax(-1)
            loss = loss + d.rank_weight * F.kl_div(s_scores, t_scores, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{float(loss):.4f}")
    student.eval()
    return student, {"distill_final_loss": float(loss), "distill_seconds": round(time.perf_counter() - t0, 1),
                     "student": {"layers": d.layers, "hidden": d.hidden}, "rank_bank": 0 if bank is None else len(bank)}

"""Distil the fine-tuned query tower into a small student that stays in the product tower's space.

Queries must embed in well under a millisecond on one CPU thread; products are embedded offline
and can afford the larger tower. The student learns to reproduce the teacher's query embedding
(cosine loss), so its vectors are searched against the teacher's product vectors unchanged, and the
teacher's ranking of a bank of product vectors (KL between the two score distributions): a small
cosine error pointed the wrong way reorders the top 10, so the ranking is taught directly.
"""

from __future__ import annotations

import copy
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from trainer.checkpoint import select_layers, spaced_layers
from trainer.config import TrainConfig
from trainer.data import encode_batch
from trainer.model import EmbeddingModel
from trainer.tokenizer import special_ids


def query_like_texts(queries: list[str], titles: list[str], n: int, seed: int, words: list[str] | None = None, word_share: float = 0.0) -> list[str]:
    """Training texts for the student: real queries, short spans of titles (query-shaped) and, for `word_share` of
    the rest, a few words drawn from the tokenizer's vocabulary: a catalog shows the student only its own words, and
    a shallow student copies the teacher on words it never saw worse than on ones it did (hand-written English lost
    most, docs/benchmarks.md)."""
    rng = random.Random(seed)
    out = list(queries)
    n_words = int(max(0, n - len(out)) * word_share) if words else 0
    out += [" ".join(rng.choices(words, k=rng.randint(1, 5))) for _ in range(n_words)]
    while len(out) < n and titles:
        title = rng.choice(titles).split()
        k = rng.randint(1, min(5, len(title)))
        i = rng.randint(0, len(title) - k)
        out.append(" ".join(title[i : i + k]))
    return out


def vocabulary_words(tok: Tokenizer) -> list[str]:
    """The tokenizer's whole words (no continuation pieces, specials or single characters), in id order."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return [w for w, _ in vocab if len(w) > 1 and not w.startswith("##") and not w.startswith("[") and not w.isdigit()]


def warm_start(student: EmbeddingModel, teacher: EmbeddingModel) -> str:
    """Copy what fits from the teacher: its embeddings where the widths match, then evenly spaced layers (the last
    among them), each with its feed-forward cut to the student's width by `narrow_feed_forward` when that is
    narrower, and the projection where its shape matches too (a shallow copy of the teacher starts close to it)."""
    s, t = student.encoder, teacher.encoder
    if s.config.hidden_size != t.config.hidden_size:
        return "none"
    s.embeddings.load_state_dict(t.embeddings.state_dict())
    if s.config.num_attention_heads != t.config.num_attention_heads or s.config.intermediate_size > t.config.intermediate_size:
        return "embeddings"
    picked = spaced_layers(len(t.encoder.layer), len(s.encoder.layer))
    for i, j in enumerate(picked):
        s.encoder.layer[i].load_state_dict(narrow_feed_forward(t.encoder.layer[j].state_dict(), s.config.intermediate_size))
    if (
        isinstance(student.proj, torch.nn.Linear)
        and isinstance(teacher.proj, torch.nn.Linear)
        and student.proj.weight.shape == teacher.proj.weight.shape
    ):
        student.proj.load_state_dict(teacher.proj.state_dict())
    ffn = t.config.intermediate_size
    narrowed = f", feed-forward {ffn} -> {s.config.intermediate_size}" if s.config.intermediate_size < ffn else ""
    return f"embeddings + teacher layers {picked}{narrowed}"


def narrow_feed_forward(layer: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """A BertLayer's weights with only the `width` feed-forward neurons that carry the most weight, ranked by
    |input weights| x |output weights|: most of a layer's batch-1 cost is its feed-forward (two thirds of the
    multiply-adds at MiniLM's 384 -> 1536), and distillation recovers what the dropped neurons added."""
    w_in, b_in, w_out = layer["intermediate.dense.weight"], layer["intermediate.dense.bias"], layer["output.dense.weight"]
    if width >= w_in.shape[0]:
        return layer
    keep = (w_in.norm(dim=1) * w_out.norm(dim=0)).topk(width).indices.sort().values  # (width,)
    return {
        **layer,
        "intermediate.dense.weight": w_in[keep].clone(),  # (width, hidden)
        "intermediate.dense.bias": b_in[keep].clone(),
        "output.dense.weight": w_out[:, keep].clone(),  # (hidden, width)
    }


def distill(
    cfg: TrainConfig, teacher: EmbeddingModel, tok: Tokenizer, texts: list[str], device, product_texts: list[str] | None = None
) -> tuple[EmbeddingModel, dict]:
    """The query student. product_texts: the catalog's rendered products; a sample of them, embedded by the
    teacher, is the bank whose ranking the student learns (none given: cosine loss only)."""
    d = cfg.distill
    student_cfg = cfg.model.model_copy(
        update={
            "init": "none",
            "layers": d.layers,
            "hidden": d.hidden,
            "heads": d.heads,
            "intermediate": d.intermediate,
            "added_layers": 0,
            # the teacher's output width; no projection when it has none and the widths match
            "proj_dim": 0 if not cfg.model.proj_dim and d.hidden == cfg.model.hidden else cfg.model.dim,
        }
    )
    torch.manual_seed(cfg.pretrain.seed)
    student = EmbeddingModel(student_cfg).to(device)
    warm = warm_start(student, teacher)
    if warm != "none" and d.freeze_word_embeddings:
        student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    rng = np.random.default_rng(cfg.pretrain.seed)
    bank = ranking_bank(teacher, tok, product_texts, cfg.finetune.max_product_len, d, rng, device)
    from trainer.finetune import embed_texts

    # Each text's teacher vector once, not once per batch that draws it: a step is then the student's work alone
    # (600 steps drew 77k texts from ~20k; the 6-layer teacher's forward was most of a 1-layer student's step).
    t0 = time.perf_counter()
    targets = embed_texts(teacher, tok, texts, cfg.finetune.max_query_len, device)  # (n, dim)
    teacher_seconds = round(time.perf_counter() - t0, 1)
    m = train_student(student, teacher, tok, texts, targets, bank, cfg.finetune.max_query_len, d.steps, d.batch, d.lr, d, rng, device, "distill")
    return student, {"warm_start": warm, "teacher_embed_seconds": teacher_seconds, **m, "student": {"layers": d.layers, "hidden": d.hidden}}


def distill_products(
    cfg: TrainConfig, teacher: EmbeddingModel, tok: Tokenizer, product_texts: list[str], query_texts: list[str], device
) -> tuple[EmbeddingModel, dict]:
    """A shallower product tower for the indexer's throughput: the teacher cut to `distill.product_layers` evenly
    spaced layers (its last kept, so the output space starts where the teacher's is), trained to reproduce the
    teacher's product vectors and its ranking against a bank of query vectors. Queries keep searching it as they
    searched the teacher."""
    from trainer.finetune import embed_texts

    d = cfg.distill
    student = copy.deepcopy(teacher).to(device)
    keep = spaced_layers(len(teacher.encoder.encoder.layer), d.product_layers)
    select_layers(student.encoder, keep)
    student.config = student.config.model_copy(update={"layers": len(keep)})
    rng = np.random.default_rng(cfg.pretrain.seed + 1)
    t0 = time.perf_counter()
    targets = embed_texts(teacher, tok, product_texts, cfg.finetune.max_product_len, device)  # (n, dim), each text once
    teacher_seconds = round(time.perf_counter() - t0, 1)
    bank = ranking_bank(teacher, tok, query_texts, cfg.finetune.max_query_len, d, rng, device)
    m = train_student(
        student,
        teacher,
        tok,
        product_texts,
        targets,
        bank,
        cfg.finetune.max_product_len,
        d.product_steps,
        d.product_batch,
        d.product_lr,
        d,
        rng,
        device,
        "distill[product]",
    )
    return student, {"teacher_layers_kept": keep, "teacher_embed_seconds": teacher_seconds, **m}


def ranking_bank(model: EmbeddingModel, tok: Tokenizer, texts: list[str] | None, max_len: int, d, rng, device) -> np.ndarray | None:
    """`d.rank_bank` of the texts embedded by `model`: what a student's ranking is taught against (None: cosine only)."""
    from trainer.finetune import embed_texts

    if not texts or d.rank_weight <= 0 or d.rank_bank <= 0:
        return None
    pick = rng.choice(len(texts), size=min(d.rank_bank, len(texts)), replace=False)
    return embed_texts(model, tok, [texts[i] for i in pick], max_len, device)  # (bank, dim)


def train_student(
    student: EmbeddingModel,
    teacher: EmbeddingModel,
    tok: Tokenizer,
    texts: list[str],
    targets: np.ndarray | None,
    bank: np.ndarray | None,
    max_len: int,
    steps: int,
    batch: int,
    lr: float,
    d,
    rng,
    device,
    desc: str,
) -> dict:
    """Cosine to the teacher's vector plus KL between the two score distributions over `bank`: a small cosine
    error pointed the wrong way reorders the top 10, so the ranking is taught directly.

    targets: the teacher's vectors of `texts`, when they were computed once up front (long texts); else per batch."""
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr)
    specials, pad = special_ids(tok), tok.token_to_id("[PAD]")
    bank_t = None if bank is None else torch.from_numpy(bank).to(device)
    t0 = time.perf_counter()
    loss = torch.zeros(())
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=2.0)
    for _ in bar:
        idx = rng.choice(len(texts), size=min(batch, len(texts)), replace=False)
        enc = encode_batch(tok, [texts[i] for i in idx], max_len, specials, pad)
        ids, attn = torch.from_numpy(enc.ids).to(device), torch.from_numpy(enc.attn).to(device)
        if targets is not None:
            target = torch.from_numpy(targets[idx]).to(device)
        else:
            with torch.no_grad():
                target = teacher(ids, attn)
        out = student(ids, attn)
        loss = (1 - (out * target).sum(-1)).mean()
        if bank_t is not None:
            t_scores = (target @ bank_t.T / d.rank_temperature).log_softmax(-1)  # (batch, bank)
            s_scores = (out @ bank_t.T / d.rank_temperature).log_softmax(-1)
            loss = loss + d.rank_weight * F.kl_div(s_scores, t_scores, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{float(loss):.4f}")
    student.eval()
    return {"distill_final_loss": float(loss), "distill_seconds": round(time.perf_counter() - t0, 1), "rank_bank": 0 if bank is None else len(bank)}

"""A BERT-style encoder in one file: embeddings, pre-LN transformer blocks, MLM head, embedding head.

`EmbeddingModel` is what the bundle exports: (input_ids, attention_mask) -> pooled, projected,
L2-normalised embedding, so the ONNX runtime side only tokenizes and runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer.config import ModelConfig


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.heads = c.heads
        self.ln1 = nn.LayerNorm(c.hidden)
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden)
        self.proj = nn.Linear(c.hidden, c.hidden)
        self.ln2 = nn.LayerNorm(c.hidden)
        self.mlp = nn.Sequential(nn.Linear(c.hidden, c.intermediate), nn.GELU(), nn.Linear(c.intermediate, c.hidden))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape  # (batch, seq, hidden)
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5) + bias  # (batch, heads, seq, seq)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, h)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.ln2(x)))


class Encoder(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.tok = nn.Embedding(c.vocab_size, c.hidden)
        self.pos = nn.Embedding(c.max_position, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.ln = nn.LayerNorm(c.hidden)
        self.checkpointing = False
        self.apply(_init)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.drop(self.tok(ids) + self.pos(pos))
        # Additive attention bias: padded keys get a large negative score. (batch, 1, 1, seq)
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * -1e4
        for blk in self.blocks:
            x = checkpoint(blk, x, bias, use_reentrant=False) if self.checkpointing and self.training else blk(x, bias)
        return self.ln(x)  # (batch, seq, hidden)


class MLMModel(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.encoder = Encoder(c)
        self.head = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU(), nn.LayerNorm(c.hidden))
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, ids, mask, labels):
        h = self.head(self.encoder(ids, mask))
        logits = h @ self.encoder.tok.weight.T + self.bias  # tied decoder, (batch, seq, vocab)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return loss, logits


class EmbeddingModel(nn.Module):
    """Encoder -> pooling -> optional added layers -> projection -> L2 norm."""

    def __init__(self, c: ModelConfig, encoder: Encoder | None = None):
        super().__init__()
        self.config = c
        self.encoder = encoder or Encoder(c)
        self.added = nn.Sequential(*[nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU()) for _ in range(c.added_layers)])
        self.proj = nn.Linear(c.hidden, c.proj_dim, bias=False) if c.proj_dim else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids, attention_mask)
        if self.config.pooling == "cls":
            pooled = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        e = self.proj(self.added(pooled))
        return F.normalize(e, dim=-1)  # (batch, dim)


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)

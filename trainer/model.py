"""Models on Hugging Face `transformers` BERT: the masked-LM model for pre-training and the tower we export.

`EmbeddingModel` is what the bundle exports: (input_ids, attention_mask) -> pooled, projected,
L2-normalised embedding, so the ONNX runtime side only tokenizes and runs. The backbone is a
`transformers.BertModel`, built fresh from `ModelConfig` (`--init none`) or loaded from a
checkpoint directory (trainer/checkpoint.py), so every layer is a well-kept implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from trainer.config import ModelConfig

# Eager attention traces into plain ONNX ops (MatMul/Softmax) that ONNX Runtime fuses and quantises;
# training speed on CPU is the same at our sequence lengths.
ATTENTION = "eager"


def bert_config(c: ModelConfig) -> BertConfig:
    """A BertConfig with our dimensions (the from-scratch path; a checkpoint brings its own)."""
    return BertConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden,
        num_hidden_layers=c.layers,
        num_attention_heads=c.heads,
        intermediate_size=c.intermediate,
        max_position_embeddings=c.max_position,
        hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout,
        pad_token_id=0,
        type_vocab_size=2,
        attn_implementation=ATTENTION,
    )


def new_encoder(c: ModelConfig) -> BertModel:
    return BertModel(bert_config(c), add_pooling_layer=False)


class MLMModel(nn.Module):
    """BertForMaskedLM behind the (ids, mask, labels) -> (loss, logits) call the pre-training loop makes."""

    def __init__(self, mlm: BertForMaskedLM):
        super().__init__()
        self.mlm = mlm

    @property
    def encoder(self) -> BertModel:
        return self.mlm.bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
        """Logits of the masked positions only: the vocabulary projection of every position costs more than the
        encoder itself at a 30k+ vocabulary, and only ~15% of positions are predicted."""
        h = self.mlm.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (batch, seq, hidden)
        chosen = labels != -100
        logits = self.mlm.cls(h[chosen])  # (masked, vocab)
        if not len(logits):  # nothing masked in this batch: a zero loss that still reaches every parameter
            return h.sum() * 0.0, logits
        return F.cross_entropy(logits, labels[chosen]), logits


class EmbeddingModel(nn.Module):
    """BertModel -> pooling -> optional added layers -> projection -> L2 norm."""

    def __init__(self, c: ModelConfig, encoder: BertModel | None = None):
        super().__init__()
        self.config = c
        self.encoder = encoder if encoder is not None else new_encoder(c)
        self.added = nn.Sequential(*[nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU()) for _ in range(c.added_layers)])
        self.proj = nn.Linear(c.hidden, c.proj_dim, bias=False) if c.proj_dim else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.added(self.pooled(input_ids, attention_mask))), dim=-1)  # (batch, dim)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The additive (batch, 1, 1, seq) mask given ready-made: transformers' own mask builder traces into ~65 shape
        # ops, a quarter of a 1-layer query tower's graph and of its batch-1 latency.
        additive = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        h = self.encoder(input_ids=input_ids, attention_mask=additive).last_hidden_state  # (batch, seq, hidden)
        if self.config.pooling == "cls":
            return h[:, 0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (batch, hidden)


def encoder_state(encoder: BertModel) -> dict:
    """What a later stage needs to rebuild the backbone exactly: its HF config and weights."""
    return {"bert_config": encoder.config.to_dict(), "state": encoder.state_dict()}


def encoder_from_state(saved: dict, load: bool = True) -> BertModel:
    """The backbone of `encoder_state`; load=False builds the architecture only (weights come with a tower)."""
    cfg = BertConfig.from_dict(saved["bert_config"])
    cfg._attn_implementation = ATTENTION
    enc = BertModel(cfg, add_pooling_layer=False)
    if load:
        enc.load_state_dict(saved["state"])
    return enc

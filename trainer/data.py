"""Training data: product text per language, temperature sampling, masking, padded batches.

Batches are a pure function of (seed, step): a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from m5core.schema import language_of, render_product


def language_probs(counts: dict[str, int], alpha: float) -> dict[str, float]:
    """Multinomial sampling with temperature: p_l ~ n_l^alpha (alpha < 1 lifts rare languages)."""
    w = {k: float(n) ** alpha for k, n in counts.items() if n > 0}
    z = sum(w.values())
    return {k: v / z for k, v in w.items()}


def seq_len_for_step(step: int, total: int, schedule: list[tuple[int, float]]) -> int:
    """The first shares of steps at the first lengths, e.g. 90% at 128 then 10% at 512."""
    edge = 0.0
    for length, share in schedule:
        edge += share * total
        if step < edge:
            return length
    return schedule[-1][0]


def mask_tokens(
    ids: np.ndarray,
    attn: np.ndarray,
    word_starts: np.ndarray,
    special: np.ndarray,
    prob: float,
    whole_word: bool,
    mask_id: int,
    vocab_size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: of the chosen positions 80% [MASK], 10% random token, 10% kept.

    Args:
        ids, attn: (batch, seq) token ids and attention mask.
        word_starts: (batch, seq) True where a token starts a word (whole-word masking groups the rest).
        special: (batch, seq) True on [CLS]/[SEP]/[PAD]/field tokens: never masked.
    Returns:
        (input_ids, labels) with labels -100 where nothing is predicted.
    """
    candidates = (attn == 1) & ~special
    if whole_word:
        word_id = np.cumsum(word_starts, axis=1)  # (batch, seq): tokens of one word share an id
        chosen_word = rng.random((ids.shape[0], ids.shape[1] + 1)) < prob
        chosen = np.take_along_axis(chosen_word, word_id, axis=1) & candidates
    else:
        chosen = (rng.random(ids.shape) < prob) & candidates
    labels = np.where(chosen, ids, -100)
    r = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (r < 0.8)] = mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand] = rng.integers(0, vocab_size, size=int(rand.sum()))
    return inputs, labels


@dataclass
class Encoded:
    ids: np.ndarray  # (batch, seq) int64
    attn: np.ndarray
    word_starts: np.ndarray
    special: np.ndarray


def encode_batch(tok: Tokenizer, texts: list[str], max_len: int, special_ids: set[int], pad_id: int) -> Encoded:
    tok.enable_truncation(max_len)
    encs = tok.encode_batch(texts)
    seq = max(len(e.ids) for e in encs)
    b = len(encs)
    ids = np.full((b, seq), pad_id, dtype=np.int64)
    attn = np.zeros((b, seq), dtype=np.int64)
    starts = np.zeros((b, seq), dtype=bool)
    for i, e in enumerate(encs):
        n = len(e.ids)
        ids[i, :n] = e.ids
        attn[i, :n] = 1
        prev = None
        for j, w in enumerate(e.word_ids):
            starts[i, j] = w is None or w != prev
            prev = w
    special = np.isin(ids, list(special_ids))
    return Encoded(ids, attn, starts, special)


class PretrainCorpus:
    """Product texts grouped by language, sampled with temperature alpha."""

    def __init__(self, products: list[dict], scheme: str, alpha: float):
        self.by_lang: dict[str, list[str]] = defaultdict(list)
        for p in products:
            self.by_lang[language_of(p["locale"])].append(render_product(p, scheme))
        self.langs = sorted(self.by_lang)
        probs = language_probs({k: len(v) for k, v in self.by_lang.items()}, alpha)
        self.probs = np.array([probs[k] for k in self.langs])

    def batch(self, seed: int, step: int, size: int) -> tuple[list[str], list[str]]:
        rng = np.random.default_rng([seed, step])
        langs = rng.choice(len(self.langs), size=size, p=self.probs)
        texts = [self.by_lang[self.langs[li]][rng.integers(len(self.by_lang[self.langs[li]]))] for li in langs]
        return texts, [self.langs[li] for li in langs]

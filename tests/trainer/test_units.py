"""Pure pieces of the trainer: config validation, masking, language sampling, schedules, losses."""

import numpy as np
import pytest
import torch

from trainer.config import ConfigError, load_config
from trainer.data import PretrainCorpus, language_probs, mask_tokens, seq_len_for_step
from trainer.finetune import PairSet, false_negative_mask, task_schedule
from trainer.losses import make_loss


@pytest.mark.parametrize(
    "over,key",
    [
        ({"pretrain": {"zero_stage": 4}}, "pretrain.zero_stage"),
        ({"pretrain": {"alpha": -0.5}}, "pretrain.alpha"),
        ({"pretrain": {"zero_stge": 1}}, "pretrain.zero_stge"),
        ({"model": {"hidden": 100, "heads": 3}}, "heads"),
        ({"finetune": {"loss": "hinge"}}, "finetune.loss"),
        ({"pretrain": {"seq_schedule": [[128, 0.5]]}}, "seq_schedule"),
        ({"finetune": {"task_weights": {"serch": 1.0}}}, "task_weights"),
        ({"finetune": {"task_weights": {"search": -1.0}}}, "task_weights.search"),
    ],
)
def test_bad_config_fails_before_training_naming_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, "tiny", over)


def test_fp16_on_cpu_is_refused_and_deepspeed_json_follows_config():
    cfg = load_config(None, "tiny", {"pretrain": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match="fp16"):
        cfg.deepspeed_config(cuda=False)
    ds = load_config(None, "tiny", {"pretrain": {"zero_stage": 2, "micro_batch": 8, "grad_accum": 4}}).deepspeed_config(cuda=False)
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 4


def _batch(rng, b=64, s=40):
    ids = rng.integers(20, 1000, (b, s))
    attn = np.ones((b, s), dtype=np.int64)
    attn[:, 30:] = 0
    special = np.zeros((b, s), bool)
    special[:, 0] = special[:, 29] = True
    special |= attn == 0
    starts = rng.random((b, s)) < 0.5
    starts[:, 0] = True
    return ids, attn, starts, special


def test_subword_masking_rate_and_specials():
    rng = np.random.default_rng(0)
    ids, attn, starts, special = _batch(rng)
    inputs, labels = mask_tokens(ids, attn, starts, special, 0.15, False, 4, 1000, rng)
    chosen = labels != -100
    assert not (chosen & special).any()
    rate = chosen.sum() / (~special).sum()
    assert 0.12 < rate < 0.18
    assert 0.7 < (inputs[chosen] == 4).mean() < 0.9  # ~80% [MASK]
    assert (labels[chosen] == ids[chosen]).all()


def test_whole_word_masking_masks_every_piece_of_a_word():
    rng = np.random.default_rng(1)
    ids, attn, starts, special = _batch(rng)
    _, labels = mask_tokens(ids, attn, starts, special, 0.2, True, 4, 1000, rng)
    chosen = labels != -100
    word = np.cumsum(starts, axis=1)
    for i in range(len(ids)):
        for w in np.unique(word[i][chosen[i]]):
            piece = (word[i] == w) & ~special[i]
            assert chosen[i][piece].all()


def test_language_sampling_with_temperature_lifts_rare_languages():
    counts = {"en": 800, "de": 150, "ar": 50}
    flat, hot = language_probs(counts, 1.0), language_probs(counts, 0.3)
    assert flat["ar"] == pytest.approx(0.05)
    assert hot["ar"] > 0.15
    assert hot["en"] < flat["en"]
    products = [
        {"locale": loc, "title": "t", "brand": "b", "product_type": "x"}
        for loc, n in (("en_US", 800), ("de_DE", 150), ("ar_AE", 50))
        for _ in range(n)
    ]
    corpus = PretrainCorpus(products, "plain", 0.3)
    langs = [lang for step in range(40) for lang in corpus.batch(0, step, 64)[1]]
    assert abs(langs.count("ar") / len(langs) - hot["ar"]) < 0.03
    assert corpus.batch(7, 3, 16) == corpus.batch(7, 3, 16)  # a batch is a pure function of (seed, step)


def test_sequence_length_schedule():
    lens = [seq_len_for_step(s, 100, [(128, 0.9), (512, 0.1)]) for s in range(100)]
    assert lens.count(128) == 90
    assert lens[-1] == 512
    assert lens[89] == 128


@pytest.mark.parametrize("name", ["infonce", "bce", "triplet"])
def test_losses_score_true_pairs_better_than_shuffled(name):
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(32, 16), dim=-1)
    aligned = torch.nn.functional.normalize(a + 0.1 * torch.randn(32, 16), dim=-1)
    shuffled = aligned[torch.randperm(32)]
    loss = make_loss(name, 0.05, 0.2)
    assert loss(a, aligned) < loss(a, shuffled)


def test_infonce_ignores_masked_false_negatives():
    """A masked column (another Exact of the same query) neither helps nor hurts: the loss equals the loss
    computed without that column, and the unmasked loss is higher because the column scores well."""
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    p = a.clone()
    p[1] = a[0]  # row 0's anchor matches column 1 as well as its own positive
    loss = make_loss("infonce", 0.05, 0.2)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1] = True
    masked = loss(a, p, None, mask)
    unmasked = loss(a, p)
    logits = a @ p.T / 0.05
    by_hand = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[0, [0, 2, 3]][None], torch.tensor([0])),
            *(torch.nn.functional.cross_entropy(logits[i][None], torch.tensor([i])) for i in range(1, 4)),
        ]
    ).mean()
    assert torch.isclose(masked, by_hand)
    assert unmasked > masked


@pytest.mark.parametrize("name", ["bce", "triplet"])
def test_pair_losses_skip_a_shuffled_negative_that_is_a_known_positive(name):
    a = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    loss = make_loss(name, 0.05, 0.2)
    everything_known = ~torch.eye(3, dtype=torch.bool)
    assert float(loss(a, a, None, everything_known)) == 0.0
    assert torch.isfinite(loss(a, a, None, torch.zeros(3, 3, dtype=torch.bool)))


def test_false_negative_mask_marks_other_known_positives_only():
    s = PairSet("search", ["red shoes", "red shoes", "blue hat"], ["A", "B", "C"], ["q1", "q1", "q2"], {"q1": {"A", "B"}, "q2": {"C"}})
    m = false_negative_mask(s, [0, 1, 2], ["B"])  # columns: A, B, C, hard B
    assert m.tolist() == [[False, True, False, True], [True, False, False, True], [False, False, False, False]]


def test_task_schedule_follows_weights_and_repeats():
    plan = task_schedule(["search", "duplicates"], {"search": 3.0}, seed=0, steps=4000)
    assert plan == task_schedule(["search", "duplicates"], {"search": 3.0}, seed=0, steps=4000)
    assert abs(plan.count(0) / 4000 - 0.75) < 0.03
    assert set(task_schedule(["search", "duplicates"], {"duplicates": 0.0}, 0, 100)) == {0}
    with pytest.raises(ValueError, match="task_weights"):
        task_schedule(["search"], {"search": 0.0}, 0, 10)


def test_narrowed_feed_forward_keeps_the_neurons_that_carry_the_layer():
    """A layer whose dropped neurons carry nothing (zero output weights) computes the same with half its
    feed-forward width; the neurons kept are the ones with weight, in their original order."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    from trainer.distill import narrow_feed_forward

    torch.manual_seed(0)
    wide_cfg = BertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    wide = BertLayer(wide_cfg).eval()
    dead = torch.arange(64) % 2 == 1  # every other neuron carries nothing
    with torch.no_grad():
        wide.output.dense.weight[:, dead] = 0.0
    narrow = BertLayer(BertConfig(**{**wide_cfg.to_dict(), "intermediate_size": 32})).eval()
    state = narrow_feed_forward(wide.state_dict(), 32)
    narrow.load_state_dict(state)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(narrow(x)[0], wide(x)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["intermediate.dense.weight"], wide.state_dict()["intermediate.dense.weight"][~dead])
    assert narrow_feed_forward(wide.state_dict(), 64)["intermediate.dense.weight"].shape == (64, 32)

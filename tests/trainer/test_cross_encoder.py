"""The cross-encoder's pair input and its AUC helper."""

import torch

from trainer.config import ModelConfig
from trainer.finetune import CrossEncoder, encode_pairs
from trainer.tokenizer import train_tokenizer


def test_pair_input_is_cls_a_sep_b_sep_and_scores_one_logit_per_pair():
    tok = train_tokenizer(["red bottle steel", "blue kettle glass"] * 50, 1000)
    ids, mask = encode_pairs(tok, ["red bottle", "blue"], ["steel", "kettle glass"], 32, tok.token_to_id("[PAD]"))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert ids[0, 0] == cls
    assert (ids[0] == sep).sum() == 2
    assert mask[1].sum() == len(tok.encode("blue", "kettle glass").ids)
    c = ModelConfig(vocab_size=tok.get_vocab_size() + 1000, layers=1, hidden=32, heads=2, intermediate=64, proj_dim=16)
    model = CrossEncoder(c).eval()
    assert model(torch.from_numpy(ids), torch.from_numpy(mask)).shape == (2,)

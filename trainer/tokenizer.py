"""WordPiece tokenizer trained on the catalog (Hugging Face `tokenizers`), saved into the bundle."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from m5core.schema import FIELD_TOKENS

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FIELD_TOKENS]


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: Path | None = None) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
    return tok


def special_ids(tok: Tokenizer) -> set[int]:
    return {tok.token_to_id(t) for t in SPECIALS}

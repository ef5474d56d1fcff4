"""Tokenizers (Hugging Face `tokenizers`), saved into the run and the bundle.

From scratch: a WordPiece vocabulary trained on the catalog. From a checkpoint: its own vocabulary
plus our field tokens and, optionally, the catalog's frequent words that the starting vocabulary
splits into many pieces (German compounds, Arabic words): each new id records the old pieces it
replaces, so its embedding can start as their mean (trainer/checkpoint.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from m5core.schema import FIELD_TOKENS

BASE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIALS = [*BASE_SPECIALS, *FIELD_TOKENS]
# A field token in a pretrained vocabulary starts at the embedding of the word it stands for.
FIELD_SEEDS = {
    "[TITLE]": "title",
    "[BRAND]": "brand",
    "[TYPE]": "type",
    "[DESC]": "description",
    "[BULLET]": "feature",
    "[ATTR]": "attribute",
    "[VAL]": "value",
}
# Scripts written without spaces (kana, CJK ideographs): one pre-token per character, so a run of them
# becomes several pieces instead of one over-long word that WordPiece would turn into a single [UNK].
UNSPACED = Regex(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
MIN_SPLIT = 3  # a word the starting vocabulary cuts into this many pieces or more is an extension candidate


def _pre_tokenizer(base=None):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(UNSPACED, "isolated"), base or pre_tokenizers.BertPreTokenizer()])


def _bert_template(tok: Tokenizer) -> None:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: Path | None = None) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    _bert_template(tok)
    if path is not None:
        save(tok, path)
    return tok


def save(tok: Tokenizer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def load_base(directory: Path) -> Tokenizer:
    """A checkpoint's tokenizer: tokenizer.json as saved, or a BERT WordPiece built from vocab.txt."""
    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    else:
        cfg_path = directory / "tokenizer_config.json"
        lower = json.loads(cfg_path.read_text()).get("do_lower_case", True) if cfg_path.is_file() else True
        tok = Tokenizer(models.WordPiece.from_file(str(directory / "vocab.txt"), unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lower)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        _bert_template(tok)
    missing = [t for t in BASE_SPECIALS if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"model.init: the tokenizer of {directory} lacks {', '.join(missing)}: not a BERT WordPiece vocabulary")
    tok.no_padding()
    tok.no_truncation()
    return tok


def tokenizer_from_checkpoint(directory: Path, texts: list[str], extend: int, path: Path | None = None) -> tuple[Tokenizer, dict[int, list[int]]]:
    """The checkpoint's tokenizer + field tokens + up to `extend` catalog words, appended after its vocabulary.

    Returns:
        (tokenizer, new id -> the starting vocabulary's ids for the text it replaces).
    """
    base = load_base(directory)
    base.pre_tokenizer = _pre_tokenizer(base.pre_tokenizer)
    rows = {field: base.encode(seed, add_special_tokens=False).ids for field, seed in FIELD_SEEDS.items()}
    words = extension_candidates(base, split_words(base, texts), extend) if extend > 0 else []
    tok, ids = append_tokens(base, list(FIELD_TOKENS), words)
    new_rows = {ids[f]: rows[f] for f in FIELD_TOKENS} | {ids[w]: pieces for w, pieces in words}
    if path is not None:
        save(tok, path)
    return tok, new_rows


def append_tokens(tok: Tokenizer, specials: list[str], words: list[tuple[str, list[int]]]) -> tuple[Tokenizer, dict[str, int]]:
    """Specials (never split, never masked) and whole words appended to the WordPiece vocabulary with ids after
    every existing one: the ids the starting embedding matrix grows into, so old rows keep their meaning."""
    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    next_id = max([*vocab.values(), *(t["id"] for t in doc.get("added_tokens", []))]) + 1
    ids = {}
    for token in [*specials, *(w for w, _ in words)]:
        vocab[token] = ids[token] = next_id
        next_id += 1
    for token in specials:
        doc.setdefault("added_tokens", []).append(
            {"id": ids[token], "content": token, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        )
    return Tokenizer.from_str(json.dumps(doc)), ids


def split_words(tok: Tokenizer, texts: Iterable[str]) -> Counter:
    """Frequency of each normalised pre-token (word) of the texts; field tokens are not words."""
    counts: Counter = Counter()
    fields = set(FIELD_TOKENS)
    for text in texts:
        for f in fields:
            text = text.replace(f, " ")
        norm = tok.normalizer.normalize_str(text) if tok.normalizer else text
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm))
    return counts


def extension_candidates(tok: Tokenizer, counts: Counter, limit: int, min_count: int = 3) -> list[tuple[str, list[int]]]:
    """Words cut into MIN_SPLIT+ pieces, by the tokens they would save over the corpus (count x (pieces - 1))."""
    vocab = tok.get_vocab()
    scored = []
    for word, n in counts.items():
        if n < min_count or word in vocab or len(word) > 40:
            continue
        pieces = tok.model.tokenize(word)
        if len(pieces) >= MIN_SPLIT and not any(p.value == "[UNK]" for p in pieces):
            scored.append((n * (len(pieces) - 1), word, [p.id for p in pieces]))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [(w, ids) for _, w, ids in scored[:limit]]


def special_ids(tok: Tokenizer) -> set[int]:
    return {i for i in (tok.token_to_id(t) for t in SPECIALS) if i is not None}

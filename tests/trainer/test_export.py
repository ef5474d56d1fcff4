"""ONNX export of a tower: the graph equals the torch model (fp32) and tracks it after int8 quantisation."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from trainer.config import ModelConfig
from trainer.export import export_onnx, quantize_onnx
from trainer.model import EmbeddingModel


def test_onnx_matches_torch_and_int8_stays_within_tolerance(tmp_path):
    torch.manual_seed(0)
    c = ModelConfig(vocab_size=1000, layers=2, hidden=64, heads=2, intermediate=128, proj_dim=32, dropout=0.0)
    model = EmbeddingModel(c).eval()
    export_onnx(model, tmp_path / "t.fp32.onnx")
    quantize_onnx(tmp_path / "t.fp32.onnx", tmp_path / "t.int8.onnx")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, (6, 21)).astype(np.int64)  # other batch and seq than the export trace (2, 8)
    mask = np.ones_like(ids)
    mask[3:, 15:] = 0  # padded rows: pooling must ignore them
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()  # (6, 32)
    out = {}
    for q in ("fp32", "int8"):
        sess = ort.InferenceSession(str(tmp_path / f"t.{q}.onnx"), providers=["CPUExecutionProvider"])
        (out[q],) = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
    assert out["fp32"].shape == (6, 32)
    np.testing.assert_allclose(out["fp32"], ref, atol=1e-4)
    assert float((out["int8"] * ref).sum(1).min()) > 0.98
    assert (tmp_path / "t.int8.onnx").stat().st_size < 0.6 * (tmp_path / "t.fp32.onnx").stat().st_size


def _tiny_tower_onnx(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    c = ModelConfig(vocab_size=1000, layers=3, hidden=64, heads=2, intermediate=128, proj_dim=0, dropout=0.0)
    export_onnx(EmbeddingModel(c).eval(), tmp_path / "product.fp32.onnx")
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(1000)}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    texts = [" ".join(f"w{(i * 7 + j) % 60 + 2}" for j in range(5 + i % 9)) for i in range(24)]
    return tmp_path / "product.fp32.onnx", texts


def _staged_manifest():
    from m5core.bundle import Manifest, TowerSpec

    return Manifest(version="t", created_at=0.0, dim=64, towers={"product": TowerSpec(onnx="product.int8.onnx", max_length=32)})


def test_the_fp32_ladder_climbs_embeddings_then_feed_forward_outputs_first_layer_first(tmp_path):
    from trainer.export import fp32_ladder

    src, _ = _tiny_tower_onnx(tmp_path)
    ladder = fp32_ladder(src)
    assert all("embeddings" in n for n in ladder[0])
    assert ladder[1:4] == [[f"/encoder/encoder/layer.{i}/output/dense/MatMul"] for i in range(3)]
    assert ladder[4:7] == [[f"/encoder/encoder/layer.{i}/intermediate/dense/MatMul"] for i in range(3)]
    assert len(ladder) == 10
    assert all(len(g) >= 4 for g in ladder[7:])  # then each layer's attention MatMuls


def test_quantisation_keeps_layers_fp32_only_until_the_target_cosine(tmp_path):
    from trainer.export import fp32_ladder, quantize_within

    src, texts = _tiny_tower_onnx(tmp_path)
    ladder, manifest = fp32_ladder(src), _staged_manifest()
    easy = quantize_within(tmp_path, manifest, "product", ladder, texts, target_cosine=0.5)
    assert easy["kept_fp32"] == []
    assert easy["cosine_mean"] >= 0.5
    strict = quantize_within(tmp_path, manifest, "product", ladder, texts, target_cosine=1.01)  # unreachable: every rung climbed
    assert strict["rungs"] == 10
    assert "/encoder/encoder/layer.2/attention/self/query/MatMul" in strict["kept_fp32"]
    assert strict["cosine_mean"] > 0.9999  # everything fp32: the int8 file computes what fp32 does


def test_projection_keeps_cosines_of_vectors_that_live_in_fewer_dims():
    """Towers whose outputs span 3 directions of 16: projected to 3 dims, every query . product cosine is unchanged,
    both towers share the map, and the configs say the new width."""
    from trainer.export import project_towers

    torch.manual_seed(0)
    c = ModelConfig(vocab_size=200, layers=1, hidden=32, heads=2, intermediate=64, proj_dim=16, dropout=0.0)
    query, product = EmbeddingModel(c).eval(), EmbeddingModel(c).eval()
    basis = torch.linalg.qr(torch.randn(16, 3))[0]  # (16, 3) orthonormal
    with torch.no_grad():
        for tower in (query, product):
            tower.proj.weight.copy_(basis @ torch.randn(3, 32))  # rank 3
    ids = torch.randint(5, 200, (12, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        q0, p0 = query(ids[:4], mask[:4]), product(ids[4:], mask[4:])
    kept = project_towers(query, product, q0.numpy(), p0.numpy(), 3)
    with torch.no_grad():
        q1, p1 = query(ids[:4], mask[:4]), product(ids[4:], mask[4:])
    assert q1.shape == (4, 3)
    assert p1.shape == (8, 3)
    assert query.config.proj_dim == product.config.proj_dim == 3
    assert kept["dense_dims"] == 3
    assert kept["from"] == 16
    assert kept["energy_kept"] > 0.9999
    np.testing.assert_allclose((q1 @ p1.T).numpy(), (q0 @ p0.T).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="dense_dims: 16 must be below"):
        project_towers(query, product, q1.numpy(), p1.numpy(), 16)


def test_export_with_dense_dims_serves_the_projected_width(trained_bundle, test_catalog, tmp_path):
    from m5core.bundle import load_manifest
    from m5core.encoder import OnnxEncoder
    from trainer.config import ConfigError, load_config
    from trainer.pipeline import run_stage

    run = trained_bundle.parent / "run"
    over = {"catalog": str(test_catalog), "out": str(tmp_path), "run_dir": str(run), "export": {"dense_dims": 16, "lexical_dims": 48}}
    run_stage(load_config(None, "test", over), "export")
    m = load_manifest(tmp_path / "current")
    assert m.dense_dim == 16
    assert m.dim == 64
    assert m.metrics["projection"]["dense_dims"] == 16
    for tower in ("product", "query"):
        v = OnnxEncoder(tmp_path / "current", tower).embed(["garden hose 20m"])
        assert v.shape == (1, 64)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="dense_dims: 32 must be below the towers' width 32"):
        run_stage(load_config(None, "test", {**over, "export": {"dense_dims": 32}}), "export")

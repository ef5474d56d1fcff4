"""ONNX export of a tower: the graph equals the torch model (fp32) and tracks it after int8 quantisation."""

import numpy as np
import onnxruntime as ort
import torch

from trainer.config import ModelConfig
from trainer.export import export_onnx, quantize_int8
from trainer.model import EmbeddingModel


def test_onnx_matches_torch_and_int8_stays_within_tolerance(tmp_path):
    torch.manual_seed(0)
    c = ModelConfig(vocab_size=1000, layers=2, hidden=64, heads=2, intermediate=128, proj_dim=32, dropout=0.0)
    model = EmbeddingModel(c).eval()
    export_onnx(model, tmp_path / "t.fp32.onnx")
    quantize_int8(tmp_path / "t.fp32.onnx", tmp_path / "t.int8.onnx")
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

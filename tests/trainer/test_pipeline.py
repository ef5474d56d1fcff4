"""DeepSpeed resume, checkpoint refusal, the parity gate, and bundles the runtime loads."""

import json

import numpy as np
import pytest

from m5core.bundle import load_manifest
from m5core.encoder import OnnxEncoder
from trainer.config import load_config


def _cfg(tmp_path, catalog, **over):
    base = {"catalog": str(catalog), "out": str(tmp_path / "bundles"), "run_dir": str(tmp_path / "run")}
    return load_config(None, "test", {**base, **over})


def _pretrain(cfg, catalog):
    from catalog.io import load_catalog
    from m5core.schema import render_product
    from trainer.pretrain import pretrain
    from trainer.tokenizer import train_tokenizer

    products = list(load_catalog(catalog).products())
    tok = train_tokenizer([render_product(p, "fields") for p in products], 2000)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": tok.get_vocab_size()})})
    return pretrain(cfg, products, tok)


def _losses(run):
    return {d["step"]: d["loss"] for d in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_resume_continues_from_the_saved_step_with_the_same_batches(tmp_path, test_catalog):
    straight = _cfg(tmp_path / "a", test_catalog, pretrain={"steps": 8, "save_every": 4})
    _pretrain(straight, test_catalog)
    first_half = _cfg(tmp_path / "b", test_catalog, pretrain={"steps": 4, "save_every": 4})
    _pretrain(first_half, test_catalog)
    resumed = _cfg(tmp_path / "b", test_catalog, pretrain={"steps": 8, "save_every": 4})
    _pretrain(resumed, test_catalog)
    a, b = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "b" / "run")
    assert sorted(b) == list(range(1, 9))  # steps 5..8 came after the resume, none repeated
    # Same weights, optimizer state, RNG and batches: the losses agree to float noise (a fresh start
    # at step 5 would be several percent higher).
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], rel=3e-3), step


def test_mismatched_and_corrupt_checkpoints_are_refused(tmp_path, test_catalog):
    from trainer.pretrain import CheckpointError

    _pretrain(_cfg(tmp_path, test_catalog, pretrain={"steps": 2, "save_every": 2}), test_catalog)
    bigger = _cfg(tmp_path, test_catalog, pretrain={"steps": 4}, model={"hidden": 96, "heads": 2})
    with pytest.raises(CheckpointError, match="refusing"):
        _pretrain(bigger, test_catalog)
    states = next((tmp_path / "run" / "checkpoints").rglob("mp_rank_00_model_states.pt"))
    states.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        _pretrain(_cfg(tmp_path, test_catalog, pretrain={"steps": 4, "save_every": 2}), test_catalog)


def test_bundle_loads_and_int8_tracks_fp32(trained_bundle, test_catalog):
    from catalog.io import load_catalog
    from m5core.schema import render_product

    m = load_manifest(trained_bundle)
    assert m.towers["query"].distilled_from
    assert m.metrics["parity"]["product_cosine_mean"] >= 0.99
    assert m.metrics["distill"]["rank_bank"] > 0  # the student was taught the teacher's ranking of real products
    texts = [render_product(p, m.render_scheme) for _, p in zip(range(40), load_catalog(test_catalog).products())]
    int8 = OnnxEncoder(trained_bundle, "product")
    fp32 = OnnxEncoder(
        trained_bundle,
        "product",
        manifest=m.model_copy(update={"towers": {"product": m.towers["product"].model_copy(update={"onnx": "product.fp32.onnx"})}}),
    )
    a, b = int8.embed(texts), fp32.embed(texts)
    assert a.shape == (40, m.dim)
    assert float((a * b).sum(1).mean()) > 0.99
    single = np.stack([int8.embed([t])[0] for t in texts[:5]])
    assert float((single * a[:5]).sum(1).min()) > 0.99  # batched ~ single (int8 scales per batch)
    q = OnnxEncoder(trained_bundle, "query").embed(["red running shoes"])
    assert q.shape == (1, m.dim)
    assert abs(float(np.linalg.norm(q)) - 1) < 1e-4


def test_parity_gate_refuses_a_broken_int8_and_publishes_nothing(tmp_path, test_catalog, monkeypatch):
    import trainer.export as export
    from trainer.export import ParityError
    from trainer.pipeline import train_all

    def broken(src, dst, *_, **__):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src))
        for init in model.graph.initializer:  # garbage weights: the int8 model no longer tracks fp32
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim == 2:
                init.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).standard_normal(arr.shape).astype(np.float32), init.name))
        onnx.save(model, str(dst))

    monkeypatch.setattr(export, "quantize_onnx", broken)
    cfg = _cfg(tmp_path, test_catalog, pretrain={"steps": 2}, finetune={"steps": 2}, distill={"steps": 2})
    with pytest.raises(ParityError, match="parity gate"):
        train_all(cfg, resume=False)
    out = tmp_path / "bundles"
    assert not (out / "current").exists()
    assert [p.name for p in out.iterdir()] == []

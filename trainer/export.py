"""ONNX export, int8 dynamic quantisation, the parity gate, and atomic bundle publishing."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from m5core.bundle import Manifest, TowerSpec, write_manifest
from m5core.encoder import OnnxEncoder
from trainer.model import EmbeddingModel

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The int8 bundle drifted too far from fp32: it is not published."""


def export_onnx(model: EmbeddingModel, path: Path, opset: int = 17) -> None:
    model = model.eval().cpu()
    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    torch.onnx.export(
        model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}},
        opset_version=opset, dynamo=False,
    )


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs every tensor at INFO on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.setLevel(level)


def recall_at_10(query_vecs: np.ndarray, product_vecs: np.ndarray, asins: list[str], relevant: list[set[str]]) -> float:
    top = np.argsort(-(query_vecs @ product_vecs.T), axis=1)[:, :10]
    vals = [len({asins[j] for j in row} & rel) / min(10, len(rel)) for row, rel in zip(top, relevant) if rel]
    return float(np.mean(vals)) if vals else 0.0


def parity_check(staging: Path, manifest: Manifest, product_texts: list[str], query_texts: list[str],
                 asins: list[str], relevant: list[set[str]], min_cosine: float, max_drop: float) -> dict:
    """Compare the fp32 and int8 ONNX towers: embedding cosine and the retrieval metric.

    Raises:
        ParityError: mean cosine below min_cosine, or recall@10 down more than max_drop (relative).
    """
    out = {}
    vecs = {}
    for q in ("fp32", "int8"):
        m = manifest.model_copy(update={"towers": {t: s.model_copy(update={"onnx": s.onnx.replace(".int8.", f".{q}.")})
                                                   for t, s in manifest.towers.items()}})
        prod = OnnxEncoder(staging, "product", threads=2, manifest=m)
        query = OnnxEncoder(staging, "query", threads=2, manifest=m)
        vecs[q] = (batched(prod, product_texts), batched(query, query_texts))
    for i, tower in enumerate(("product", "query")):
        cos = (vecs["fp32"][i] * vecs["int8"][i]).sum(1)
        out[f"{tower}_cosine_mean"] = float(cos.mean())
        out[f"{tower}_cosine_min"] = float(cos.min())
    r32 = recall_at_10(vecs["fp32"][1], vecs["fp32"][0], asins, relevant)
    r8 = recall_at_10(vecs["int8"][1], vecs["int8"][0], asins, relevant)
    out.update({"recall_at_10_fp32": r32, "recall_at_10_int8": r8})
    problems = [f"{t} tower mean cosine {out[f'{t}_cosine_mean']:.4f} < {min_cosine}" for t in ("product", "query")
                if out[f"{t}_cosine_mean"] < min_cosine]
    if r32 > 0 and (r32 - r8) / r32 > max_drop:
        problems.append(f"recall@10 fell from {r32:.4f} to {r8:.4f} (more than {max_drop:.0%})")
    if problems:
        raise ParityError("int8 bundle refused by the parity gate: " + "; ".join(problems))
    return out


def batched(enc: OnnxEncoder, texts: list[str], batch: int = 64) -> np.ndarray:
    return np.concatenate([enc.embed(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def publish_bundle(out_dir: Path, name: str, product: EmbeddingModel, query: EmbeddingModel, tokenizer_path: Path,
                   scheme: str, metrics: dict, training_config: dict, validation: dict, gate: dict,
                   query_distilled: bool, max_lengths: tuple[int, int]) -> Path:
    """Export both towers, quantise, gate, then move the bundle into place and repoint `current`."""
    version = f"{name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"
    out_dir = Path(out_dir)
    staging = out_dir / f".staging-{version}"
    staging.mkdir(parents=True)
    try:
        shutil.copy(tokenizer_path, staging / "tokenizer.json")
        for tower, model in (("product", product), ("query", query)):
            export_onnx(model, staging / f"{tower}.fp32.onnx")
            quantize_int8(staging / f"{tower}.fp32.onnx", staging / f"{tower}.int8.onnx",
                          per_channel=training_config.get("export", {}).get("per_channel", True))
        pc, qc = product.config, query.config
        manifest = Manifest(
            name=name, version=version, created_at=time.time(), dim=pc.dim, pooling=pc.pooling, render_scheme=scheme,
            towers={"product": TowerSpec(onnx="product.int8.onnx", layers=pc.layers, hidden=pc.hidden, max_length=max_lengths[0]),
                    "query": TowerSpec(onnx="query.int8.onnx", layers=qc.layers, hidden=qc.hidden, max_length=max_lengths[1],
                                       distilled_from=f"product tower of {version}" if query_distilled else None)},
            metrics=metrics, training_config=training_config,
        )
        parity = parity_check(staging, manifest, **validation, **gate)
        manifest.metrics["parity"] = parity
        if not training_config.get("export", {}).get("keep_fp32", True):
            for f in staging.glob("*.fp32.onnx"):
                f.unlink()
        write_manifest(staging, manifest)
        final = out_dir / version
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    link_current(out_dir, final)
    log.info("published bundle %s (%s)", version, parity)
    return final


def link_current(out_dir: Path, bundle: Path) -> None:
    """Atomically repoint `current` (symlink replaced by rename, never missing for a reader)."""
    tmp = out_dir / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(bundle.name)
    os.replace(tmp, out_dir / "current")

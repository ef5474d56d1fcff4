"""ONNX export, int8 dynamic quantisation, the parity gate, and atomic bundle publishing."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from m5core.bundle import DuplicateThreshold, FinetuneRef, LexicalRef, Manifest, TowerSpec, pinned_version, write_manifest
from m5core.encoder import OnnxEncoder, embed_in_batches
from m5core.lexical import FILE as LEXICAL_FILE
from m5core.lexical import LexicalBlock
from m5core.metrics import threshold_at_precision
from trainer.model import EmbeddingModel, encoder_from_state

log = logging.getLogger(__name__)


QUANTIZE_SAMPLE = 128  # validation texts that choose which layers stay fp32 (the gate then checks all of them)


class ParityError(RuntimeError):
    """The int8 bundle drifted too far from fp32: it is not published."""


def export_onnx(model: EmbeddingModel, path: Path, opset: int = 17) -> None:
    model = model.eval().cpu()
    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    torch.onnx.export(
        model,
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


def project_towers(query: EmbeddingModel, product: EmbeddingModel, query_vecs: np.ndarray, product_vecs: np.ndarray, dims: int) -> dict:
    """Append to both towers one shared linear map onto the top `dims` principal directions of their own
    vectors (uncentred: the second moment of the unit query and product vectors, each set weighted alike).

    A served vector's length is what every search pays for; the dense part's last directions carry little
    of its cosine (99.4% of the energy in 256 of MiniLM's 384), and the lexical block gains those dims
    (docs/benchmarks.md, "Session 8"). One map for both towers keeps query . product a cosine in one space.
    -> what was kept, for the manifest."""
    width = product_vecs.shape[1]
    if query_vecs.shape[1] != width or not 0 < dims < width:
        raise ValueError(f"export.dense_dims: {dims} must be below the towers' width {width}")
    second = product_vecs.T @ product_vecs / len(product_vecs) + query_vecs.T @ query_vecs / len(query_vecs)  # (width, width)
    eigval, eigvec = np.linalg.eigh(second)
    top = eigvec[:, ::-1][:, :dims]  # (width, dims), largest first
    for tower in {id(query): query, id(product): product}.values():
        old = tower.proj.weight.detach().numpy() if isinstance(tower.proj, torch.nn.Linear) else np.eye(width, dtype=np.float32)
        proj = torch.nn.Linear(old.shape[1], dims, bias=False)
        with torch.no_grad():
            proj.weight.copy_(torch.from_numpy((top.T @ old).astype(np.float32)))  # (dims, hidden)
        tower.proj = proj
        tower.config = tower.config.model_copy(update={"proj_dim": dims})
    return {"dense_dims": dims, "from": width, "energy_kept": round(float(eigval[::-1][:dims].sum() / eigval.sum()), 4)}


def quantize_onnx(src: Path, dst: Path, per_channel: bool = True, keep_fp32: tuple[str, ...] = ()) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor at INFO, and a pre-processing hint, on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=list(keep_fp32))
    finally:
        root.setLevel(level)


def fp32_ladder(onnx_path: Path) -> list[list[str]]:
    """Groups of nodes to keep fp32, safest-first: the embedding lookups (no compute cost), then each layer's
    feed-forward output, its feed-forward input, its attention, first layer first.

    Feed-forward outputs read GELU activations 4x wider than the hidden state whose outliers one per-tensor
    uint8 scale flattens: on fine-tuned MiniLM layers they hold most of int8's error, and an early layer's error
    travels through every later one."""
    import onnx

    nodes = onnx.load(str(onnx_path), load_external_data=False).graph.node
    layer = lambda n: int(m.group(1)) if (m := re.search(r"layer\.(\d+)/", n)) else -1  # noqa: E731
    matmuls = [n.name for n in nodes if n.op_type == "MatMul" and layer(n.name) >= 0]
    depth = max((layer(n) for n in matmuls), default=-1) + 1
    groups = [[n.name for n in nodes if n.op_type == "Gather" and "embeddings" in n.name]]
    for kind in (
        lambda n: n.endswith("/output/dense/MatMul") and "/attention/" not in n,
        lambda n: "/intermediate/" in n,
        lambda n: "/attention/" in n,
    ):
        groups += [[n for n in matmuls if layer(n) == i and kind(n)] for i in range(depth)]
    return [g for g in groups if g]


def kept(ladder: list[list[str]], rungs: int) -> list[str]:
    return [n for g in ladder[:rungs] for n in g]


def quantize_within(
    staging: Path, manifest: Manifest, tower: str, ladder: list[list[str]], texts: list[str], target_cosine: float, per_channel: bool = True
) -> dict:
    """int8 where it is safe: quantise every MatMul and embedding of STAGING/TOWER.fp32.onnx, then climb `ladder`
    until the mean cosine to fp32 on `texts` reaches `target_cosine`. Returns the rungs climbed and the cosine;
    the gate judges the result."""
    reference = embed_in_batches(OnnxEncoder(staging, tower, manifest=weights_of(manifest, "fp32")), texts, 64)
    int8 = weights_of(manifest, "int8")
    for rungs in range(len(ladder) + 1):
        quantize_onnx(staging / f"{tower}.fp32.onnx", staging / f"{tower}.int8.onnx", per_channel, tuple(kept(ladder, rungs)))
        cosine = float((embed_in_batches(OnnxEncoder(staging, tower, manifest=int8), texts, 64) * reference).sum(1).mean())
        if cosine >= target_cosine:
            break
    return {"rungs": rungs, "kept_fp32": kept(ladder, rungs), "cosine_mean": round(cosine, 5)}


def gate_or_keep_more_fp32(
    staging: Path, manifest: Manifest, validation: dict, gate: dict, quantization: dict, ladders: dict[str, list[list[str]]], per_channel: bool
) -> dict:
    """The parity gate, unchanged; while it refuses, climb one more rung of `fp32_ladder` in each tower that has one
    left and ask again. The retrieval metric, not only the cosine, decides how much stays fp32; a bundle that
    fails with every rung climbed (all fp32) is refused: the int8 path is broken, not merely lossy.

    Raises:
        ParityError: the gate's refusal at the last step.
    """
    while True:
        try:
            return parity_check(staging, manifest, **validation, **gate)
        except ParityError:
            grown = False
            for tower, ladder in ladders.items():
                rungs = quantization[tower]["rungs"]
                if rungs < len(ladder):
                    quantize_onnx(staging / f"{tower}.fp32.onnx", staging / f"{tower}.int8.onnx", per_channel, tuple(kept(ladder, rungs + 1)))
                    quantization[tower] = {**quantization[tower], "rungs": rungs + 1, "kept_fp32": kept(ladder, rungs + 1), "raised_by_gate": True}
                    grown = True
            if not grown:
                raise
            log.info("parity gate refused; fp32 rungs now %s", {t: q["rungs"] for t, q in quantization.items()})


def weights_of(manifest: Manifest, quantization: str) -> Manifest:
    """The same bundle with its towers read from the `fp32` or `int8` files the export leaves side by side."""
    return manifest.model_copy(update={"towers": {t: s.model_copy(update={"onnx": f"{t}.{quantization}.onnx"}) for t, s in manifest.towers.items()}})


def recall_at_10(query_vecs: np.ndarray, product_vecs: np.ndarray, asins: list[str], relevant: list[set[str]]) -> float:
    top = np.argsort(-(query_vecs @ product_vecs.T), axis=1)[:, :10]
    vals = [len({asins[j] for j in row} & rel) / min(10, len(rel)) for row, rel in zip(top, relevant) if rel]
    return float(np.mean(vals)) if vals else 0.0


def parity_check(
    staging: Path,
    manifest: Manifest,
    product_texts: list[str],
    query_texts: list[str],
    asins: list[str],
    relevant: list[set[str]],
    min_cosine: float,
    max_drop: float,
) -> dict:
    """Compare the fp32 and int8 ONNX towers: embedding cosine and the retrieval metric.

    Raises:
        ParityError: mean cosine below min_cosine, or recall@10 down more than max_drop (relative).
    """
    out = {}
    vecs = {}
    for q in ("fp32", "int8"):
        m = weights_of(manifest, q)
        prod = OnnxEncoder(staging, "product", threads=2, manifest=m)
        query = OnnxEncoder(staging, "query", threads=2, manifest=m)
        vecs[q] = (embed_in_batches(prod, product_texts, 64), embed_in_batches(query, query_texts, 64))
    for i, tower in enumerate(("product", "query")):
        cos = (vecs["fp32"][i] * vecs["int8"][i]).sum(1)
        out[f"{tower}_cosine_mean"] = float(cos.mean())
        out[f"{tower}_cosine_min"] = float(cos.min())
    r32 = recall_at_10(vecs["fp32"][1], vecs["fp32"][0], asins, relevant)
    r8 = recall_at_10(vecs["int8"][1], vecs["int8"][0], asins, relevant)
    out.update({"recall_at_10_fp32": r32, "recall_at_10_int8": r8})
    problems = [
        f"{t} tower mean cosine {out[f'{t}_cosine_mean']:.4f} < {min_cosine}" for t in ("product", "query") if out[f"{t}_cosine_mean"] < min_cosine
    ]
    if r32 > 0 and (r32 - r8) / r32 > max_drop:
        problems.append(f"recall@10 fell from {r32:.4f} to {r8:.4f} (more than {max_drop:.0%})")
    if problems:
        raise ParityError("int8 bundle refused by the parity gate: " + "; ".join(problems))
    return out


def publish_bundle(
    out_dir: Path,
    name: str,
    product: EmbeddingModel,
    query: EmbeddingModel,
    tokenizer_path: Path,
    scheme: str,
    metrics: dict,
    training_config: dict,
    validation: dict,
    gate: dict,
    query_distilled: bool,
    max_lengths: tuple[int, int],
    lexical: LexicalBlock | None = None,
    duplicate_pairs: list[tuple[str, str, int]] | None = None,
) -> Path:
    """Export both towers, quantise, gate, then move the bundle into place and repoint `current`.

    The gate compares the dense towers (the lexical block is the same arithmetic in fp32 and int8, and
    would only dilute a difference); the block is added after it.
    """
    prefix = f"{name}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    version = f"{prefix}-staging{os.urandom(3).hex()}"  # until the content is known: the final version is its digest
    out_dir = Path(out_dir)
    staging = out_dir / f".staging-{version}"
    staging.mkdir(parents=True)
    try:
        shutil.copy(tokenizer_path, staging / "tokenizer.json")
        pc, qc = product.config, query.config
        manifest = Manifest(
            name=name,
            version=version,
            created_at=time.time(),
            dim=pc.dim,
            pooling=pc.pooling,
            render_scheme=scheme,
            towers={
                "product": TowerSpec(onnx="product.int8.onnx", layers=pc.layers, hidden=pc.hidden, max_length=max_lengths[0]),
                "query": TowerSpec(
                    onnx="query.int8.onnx",
                    layers=qc.layers,
                    hidden=qc.hidden,
                    max_length=max_lengths[1],
                    distilled_from="this bundle's product tower" if query_distilled else None,
                ),
            },
            metrics=metrics,
            training_config=training_config,
        )
        export_cfg = training_config.get("export", {})
        per_channel = export_cfg.get("per_channel", True)
        quantization, ladders = {}, {}
        for tower, model, texts in (("product", product, validation["product_texts"]), ("query", query, validation["query_texts"])):
            export_onnx(model, staging / f"{tower}.fp32.onnx")
            ladders[tower] = fp32_ladder(staging / f"{tower}.fp32.onnx")
            quantization[tower] = quantize_within(
                staging, manifest, tower, ladders[tower], texts[:QUANTIZE_SAMPLE], export_cfg.get("int8_target_cosine", 0.995), per_channel
            )
        parity = gate_or_keep_more_fp32(staging, manifest, validation, gate, quantization, ladders, per_channel)
        manifest.metrics["parity"] = parity
        manifest.metrics["quantization"] = quantization
        if lexical is not None:
            lexical.save(staging / LEXICAL_FILE)
            manifest.lexical = LexicalRef(file=LEXICAL_FILE, dims=lexical.dims)
            manifest.dim = pc.dim + lexical.dims
        manifest.duplicates = calibrate_duplicates(staging, manifest, duplicate_pairs or [], export_cfg.get("duplicate_precision", 0.9))
        if export_cfg.get("finetunable", False):
            manifest.finetune = save_finetunable(product, staging)
        if not export_cfg.get("keep_fp32", True):
            for f in staging.glob("*.fp32.onnx"):
                f.unlink()
        manifest = write_manifest(staging, manifest)
        version = pinned_version(prefix, manifest)
        write_manifest(staging, manifest.model_copy(update={"version": version}))
        final = out_dir / version
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    link_current(out_dir, final)
    log.info("published bundle %s (%s)", version, parity)
    return final


def save_finetunable(product: EmbeddingModel, bundle_dir: Path) -> FinetuneRef:
    """The served product tower's weights into the bundle, for `m5 partner finetune --bundle` (safetensors: loading a
    bundle someone handed you runs no code, as a pickle would)."""
    from safetensors.torch import save_file

    ref = FinetuneRef()
    save_file({k: v.detach().contiguous().clone() for k, v in product.state_dict().items()}, str(bundle_dir / ref.weights))
    os.chmod(bundle_dir / ref.weights, 0o644)  # safetensors writes 0600; a bundle is read by other users (the service's)
    meta = {"config": product.config.model_dump(mode="json"), "bert_config": product.encoder.config.to_dict()}
    (bundle_dir / ref.config).write_text(json.dumps(meta, default=str, indent=1))
    return ref


def load_finetunable(bundle_dir: Path, manifest: Manifest) -> EmbeddingModel:
    """The tower `save_finetunable` stored; the bundle's files were checked against its manifest by load_manifest."""
    from safetensors.torch import load_file

    from trainer.config import ModelConfig

    ref = manifest.finetune
    meta = json.loads((bundle_dir / ref.config).read_text())
    model = EmbeddingModel(
        ModelConfig.model_validate(meta["config"]), encoder_from_state({"bert_config": meta["bert_config"], "state": {}}, load=False)
    )
    model.load_state_dict(load_file(str(bundle_dir / ref.weights)))
    return model.eval()


def calibrate_duplicates(bundle_dir: Path, manifest: Manifest, pairs: list[tuple[str, str, int]], precision: float) -> DuplicateThreshold | None:
    """The served duplicate threshold: cosine of the bundle's own served product vectors (int8 tower and lexical
    block, as the indexer stores them) on the validation pairs, the lowest that keeps `precision`. None without
    pairs of both kinds, or when no threshold reaches the precision (logged: the bundle then serves no default)."""
    labels = [y for _, _, y in pairs]
    if not pairs or 0 in (sum(labels), len(labels) - sum(labels)):
        log.warning("no duplicate threshold: the validation split has no labelled duplicate pairs of both kinds")
        return None
    enc = OnnxEncoder(bundle_dir, "product", manifest=manifest)
    a, b = enc.embed([p[0] for p in pairs]), enc.embed([p[1] for p in pairs])  # (n, dim) each
    found = threshold_at_precision(np.einsum("nd,nd->n", a, b).tolist(), labels, precision)
    if found is None:
        log.warning("no duplicate threshold: no cosine reaches precision %.2f on %d validation pairs", precision, len(pairs))
        return None
    threshold, prec, rec = found
    log.info("duplicate threshold %.4f: precision %.3f, recall %.3f on %d validation pairs", threshold, prec, rec, len(pairs))
    return DuplicateThreshold(
        threshold=round(threshold, 6),
        precision=round(prec, 4),
        recall=round(rec, 4),
        target_precision=precision,
        pairs=len(pairs),
        positives=sum(labels),
    )


def link_current(out_dir: Path, bundle: Path) -> None:
    """Atomically repoint `current` (symlink replaced by rename, never missing for a reader)."""
    tmp = out_dir / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(bundle.name)
    os.replace(tmp, out_dir / "current")

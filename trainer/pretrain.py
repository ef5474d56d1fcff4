"""Masked-LM pre-training with DeepSpeed (CPU + gloo here, unchanged under the launcher on GPUs)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from trainer import checkpoint
from trainer.config import ConfigError, TrainConfig
from trainer.data import PretrainCorpus, encode_batch, mask_tokens, seq_len_for_step
from trainer.model import MLMModel, bert_config
from trainer.tokenizer import special_ids

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


def init_distributed() -> None:
    """A single process needs the rendezvous variables a launcher would set; a launcher's (WORLD_SIZE > 1) stand."""
    if torch.distributed.is_initialized():
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        # Always a fresh port: a parent that trained in-process passes its MASTER_PORT to every child it
        # starts while its own rendezvous store still listens there (m5 demo under pytest hit EADDRINUSE).
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, ranks in all); (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_index(batch: int, rank: int, world: int) -> int:
    """The corpus batch a rank trains on as its `batch`-th: ranks interleave, so none shares one."""
    return batch * world + rank


def build_mlm(cfg: TrainConfig, new_rows: dict[int, list[int]] | None = None) -> MLMModel:
    """A fresh BERT (init none) or the starting checkpoint, cut to cfg.model.layers, vocabulary grown to the tokenizer's."""
    from transformers import BertForMaskedLM

    torch.manual_seed(cfg.pretrain.seed)
    sp = checkpoint.resolve(cfg.model.init)
    if sp is None:
        return MLMModel(BertForMaskedLM(bert_config(cfg.model)))
    return MLMModel(checkpoint.load_mlm(sp, cfg.model.layers, cfg.model.vocab_size, new_rows or {}))


def pretrain(
    cfg: TrainConfig, products: list[dict], tok: Tokenizer, resume: bool = True, new_rows: dict[int, list[int]] | None = None
) -> tuple[MLMModel, dict]:
    """Run (or resume) MLM pre-training; returns the model and a metrics dict (MLM accuracy per language).

    new_rows: token ids the tokenizer added to a checkpoint's vocabulary -> the old ids they replace.
    """
    model = build_mlm(cfg, new_rows)
    if cfg.pretrain.steps == 0:
        return model, {"pretrain_steps": 0}
    import deepspeed

    init_distributed()
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    p = cfg.pretrain
    ds_config = cfg.deepspeed_config(cuda)
    run = Path(cfg.run_dir)
    ckpt_dir = run / "checkpoints"
    run.mkdir(parents=True, exist_ok=True)
    (run / "deepspeed.json").write_text(json.dumps(ds_config, indent=2))
    if p.activation_checkpointing:
        model.mlm.gradient_checkpointing_enable()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    start = 0
    if resume and (ckpt_dir / "latest").exists():
        start = load_checkpoint(engine, ckpt_dir, cfg)
        log.info("resumed pre-training at step %d", start)
    corpus = PretrainCorpus(products, p.scheme, p.alpha)
    specials, pad, mask_id = special_ids(tok), tok.token_to_id("[PAD]"), tok.token_to_id("[MASK]")
    device = engine.device
    # Under the `deepspeed` launcher each rank trains on batches of its own (`shard_index`: one rank reads exactly the
    # batches it always did) and DeepSpeed averages the gradients; rank 0 alone writes the metrics.
    rank, world = rank_and_world()
    metrics_f = open(run / "metrics.jsonl", "a") if rank == 0 else None
    bar = tqdm(range(start, p.steps), desc="pretrain", unit="step", initial=start, total=p.steps, mininterval=2.0, disable=rank != 0)
    t0, seen, losses = time.perf_counter(), 0, []
    for step in bar:
        seq = seq_len_for_step(step, p.steps, p.seq_schedule)
        for micro in range(p.grad_accum):
            texts, _ = corpus.batch(p.seed, shard_index(step * p.grad_accum + micro, rank, world), p.micro_batch)
            enc = encode_batch(tok, texts, seq, specials, pad)
            rng = np.random.default_rng([p.seed, step, micro, 7])
            inputs, labels = mask_tokens(
                enc.ids, enc.attn, enc.word_starts, enc.special, p.mask_prob, p.masking == "whole_word", mask_id, cfg.model.vocab_size, rng
            )
            loss, _ = engine(torch.from_numpy(inputs).to(device), torch.from_numpy(enc.attn).to(device), torch.from_numpy(labels).to(device))
            engine.backward(loss)
            engine.step()
            seen += len(texts) * world  # every rank trains on as many
        losses.append(float(loss))
        rate = seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", seq=seq, samples_s=f"{rate:.0f}")
        if metrics_f is not None:
            metrics_f.write(json.dumps({"step": step + 1, "loss": losses[-1], "seq": seq, "samples_per_s": rate}) + "\n")
        if (step + 1) % p.save_every == 0 or step + 1 == p.steps:
            save_checkpoint(engine, ckpt_dir, cfg, step + 1)  # every rank: DeepSpeed saves its own shard
    if metrics_f is not None:
        metrics_f.close()
    model = engine.module
    acc = mlm_accuracy(model, corpus, tok, cfg, device) if rank == 0 else {}
    return model, {
        "mlm_accuracy": acc,
        "pretrain_samples_per_s": seen / max(1e-9, time.perf_counter() - t0),
        "final_loss": losses[-1] if losses else None,
        "world_size": world,
    }


def save_checkpoint(engine, ckpt_dir: Path, cfg: TrainConfig, step: int) -> None:
    """Client state carries the full config and its hash so a resume rebuilds exactly."""
    engine.save_checkpoint(
        str(ckpt_dir),
        tag=f"step{step}",
        client_state={
            "step": step,
            "config": json.loads(cfg.model_dump_json()),
            "config_hash": cfg.hash(),
            "model_args": cfg.model.model_dump(),
            # dropout draws from torch's RNG: without it a resumed run diverges
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    )


def load_checkpoint(engine, ckpt_dir: Path, cfg: TrainConfig) -> int:
    """Refuse a checkpoint made with other model dimensions instead of loading it half-way."""
    tag = (ckpt_dir / "latest").read_text().strip()
    state_files = list((ckpt_dir / tag).glob("mp_rank_00_model_states.pt"))
    if not state_files:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} is incomplete (no model states)")
    try:
        saved = torch.load(state_files[0], map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means corrupt
        raise CheckpointError(f"checkpoint {state_files[0]} is corrupt: {exc}") from exc
    if saved.get("model_args") != cfg.model.model_dump():
        raise CheckpointError(
            f"checkpoint {ckpt_dir / tag} was made with model {saved.get('model_args')}, "
            f"this run has {cfg.model.model_dump()}: refusing to resume (use a new run_dir)"
        )
    _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if client is None:
        raise CheckpointError(f"checkpoint {ckpt_dir / tag} could not be loaded")
    torch.set_rng_state(client["torch_rng"])
    if client.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(client["cuda_rng"])
    return int(client["step"])


@torch.no_grad()
def mlm_accuracy(model: MLMModel, corpus: PretrainCorpus, tok: Tokenizer, cfg: TrainConfig, device, batches: int = 4) -> dict:
    """Masked-token accuracy per language on held-out draws (seed offset)."""
    model.eval()
    specials, pad, mask_id = special_ids(tok), tok.token_to_id("[PAD]"), tok.token_to_id("[MASK]")
    hits: dict[str, int] = {}
    total: dict[str, int] = {}
    for b in range(batches):
        texts, langs = corpus.batch(cfg.pretrain.seed + 10_000, b, 64)
        enc = encode_batch(tok, texts, 128, specials, pad)
        rng = np.random.default_rng([b, 99])
        inputs, labels = mask_tokens(enc.ids, enc.attn, enc.word_starts, enc.special, 0.15, False, mask_id, cfg.model.vocab_size, rng)
        _, logits = model(torch.from_numpy(inputs).to(device), torch.from_numpy(enc.attn).to(device), torch.from_numpy(labels).to(device))
        pred = logits.argmax(-1).cpu().numpy()  # (masked,) in row-major order of the labels
        masked = labels != -100
        row_of = np.nonzero(masked)[0]
        right = pred == labels[masked]
        for i, lang in enumerate(langs):
            hits[lang] = hits.get(lang, 0) + int(right[row_of == i].sum())
            total[lang] = total.get(lang, 0) + int(masked[i].sum())
    model.train()
    out = {k: hits[k] / max(1, total[k]) for k in sorted(total)}
    out["all"] = sum(hits.values()) / max(1, sum(total.values()))
    return out


__all__ = ["CheckpointError", "ConfigError", "pretrain"]

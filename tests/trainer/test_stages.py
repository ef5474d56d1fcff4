"""Stages run one by one from the CLI, the cross-encoder strategy, the report."""

import pytest

from m5cli.main import main
from trainer.config import ConfigError, load_config


def _args(tmp_path, catalog, *extra):
    return ["--preset", "test", "--catalog", str(catalog), "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "b"), *extra]


def test_stage_without_its_input_names_the_command_to_run_first(tmp_path, test_catalog, capsys):
    assert main(["train", "finetune", *_args(tmp_path, test_catalog)]) == 2
    assert "run `m5 train tokenizer`" in capsys.readouterr().err


def test_unknown_key_fails_before_any_work(tmp_path, test_catalog, capsys):
    assert main(["train", "all", *_args(tmp_path, test_catalog, "--set", "pretrain.zero_stage=4")]) == 2
    assert "pretrain.zero_stage" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cross_encoder_cannot_be_exported():
    cfg = load_config(None, "test", {"finetune": {"towers": "cross_encoder"}})
    from trainer.pipeline import train_all

    with pytest.raises(ConfigError, match="finetune.towers"):
        train_all(cfg)


def test_stages_one_by_one_and_the_cross_encoder_scorer(tmp_path, test_catalog):
    """Stages on their own: tokenizer, pretrain (2 steps), then the cross-encoder on duplicate pairs.

    At this size (1 layer x 64, 2 MLM steps) its AUC is near chance; quality is a report figure, not a test."""
    from trainer.pipeline import run_stage

    cfg = load_config(
        None,
        "test",
        {
            "catalog": str(test_catalog),
            "run_dir": str(tmp_path / "run"),
            "pretrain": {"steps": 2},
            "finetune": {"towers": "cross_encoder", "steps": 4, "batch": 16},
        },
    )
    run_stage(cfg, "tokenizer")
    run_stage(cfg, "pretrain")
    run_stage(cfg, "finetune")
    import json

    m = json.loads((tmp_path / "run" / "stage_metrics.json").read_text())["finetune"]
    assert 0.0 <= m["duplicate_auc"] <= 1.0
    assert m["cross_encoder_steps"] == 4
    assert (tmp_path / "run" / "cross_encoder.pt").is_file()
    assert (tmp_path / "run" / "loss.png").is_file()


def test_report_tables(trained_bundle):
    from trainer.report import build_report

    text = build_report([trained_bundle], latency_iters=20)
    assert "## MLM accuracy per language" in text
    assert "| query | int8 |" in text
    assert "| product | fp32 |" in text
    assert "| query, full tower | int8 |" in text  # a short query through the fine-tuned tower


@pytest.mark.parametrize("name", ["handwritten", "handwritten_dev"])
def test_the_hand_written_sets_are_refused_as_training_catalogs(tmp_path, name):
    from pathlib import Path

    from trainer.pipeline import run_stage

    catalog = Path(__file__).resolve().parents[2] / "evaluation" / name
    cfg = load_config(preset="test", overrides={"catalog": str(catalog), "run_dir": str(tmp_path / "run"), "out": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="hand-written evaluation set; it is never used for training"):
        run_stage(cfg, "tokenizer")
    assert not (tmp_path / "run" / "tokenizer.json").exists()

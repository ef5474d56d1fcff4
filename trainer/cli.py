"""`m5 train all|pretrain`: every knob from a YAML/JSON config, a preset, and `--set section.key=value`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _override(text: str) -> tuple[list[str], object]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pre-train, fine-tune, distil and export an int8 bundle (needs the train extra)")
    tsub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True)
    for name, helptext in (("all", "tokenizer -> MLM pre-training -> fine-tuning -> distillation -> int8 bundle"),
                           ("config", "print the resolved config and its DeepSpeed JSON, then exit")):
        c = tsub.add_parser(name, help=helptext, description=helptext)
        c.add_argument("--config", type=Path, help="YAML or JSON config file (unknown keys are errors)")
        c.add_argument("--preset", default="default", help="tiny | default | test | m5-500m | m5-1.5b")
        c.add_argument("--catalog", type=Path, help="catalog directory (overrides the config)")
        c.add_argument("--out", type=Path, help="bundles directory; the new bundle becomes OUT/current")
        c.add_argument("--run-dir", type=Path, help="checkpoints, metrics and logs of this run")
        c.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run dir")
        c.add_argument("--set", dest="overrides", action="append", type=_override, default=[], metavar="SECTION.KEY=VALUE",
                       help="override one knob, e.g. --set pretrain.zero_stage=2")
        c.set_defaults(func=_run, train_command=name)


def _run(args) -> int:
    import json
    import sys

    from trainer.config import ConfigError, load_config

    over: dict = {}
    for keys, value in args.overrides:
        d = over
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    for flag in ("catalog", "out", "run_dir"):
        if getattr(args, flag) is not None:
            over[flag] = str(getattr(args, flag))
    try:
        cfg = load_config(args.config, args.preset, over)
        if args.train_command == "config":
            print(cfg.model_dump_json(indent=2))
            print(json.dumps(cfg.deepspeed_config(cuda=False), indent=2))
            return 0
    except ConfigError as exc:
        print(f"m5 train: error: {exc}", file=sys.stderr)
        return 2
    from trainer.pipeline import train_all

    bundle = train_all(cfg, resume=not args.no_resume)
    print(f"bundle: {bundle}")
    return 0

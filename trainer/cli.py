"""`m5 train ...`: every knob from a YAML/JSON config, a preset, and `--set section.key=value`.

Stages run alone read the earlier stages' artefacts from --run-dir, so `tokenizer`, `pretrain`,
`finetune`, `distill`, `export` in sequence equal `all`. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.cli import add_scope_flag

_STAGES = {
    "all": "tokenizer -> MLM pre-training -> fine-tuning -> distillation -> int8 bundle",
    "tokenizer": "train the WordPiece tokenizer on the catalog into RUN_DIR/tokenizer.json",
    "pretrain": "DeepSpeed masked-LM pre-training (resumes from RUN_DIR/checkpoints unless --no-resume)",
    "finetune": "fine-tune the pre-trained encoder (two-tower, or cross-encoder scorer) on the catalog's tasks",
    "distill": "distil the fine-tuned query tower into the small student",
    "export": "export ONNX, quantise int8, run the parity gate, publish into OUT and repoint OUT/current",
    "config": "print the resolved config and its DeepSpeed JSON, then exit",
}


def _override(text: str) -> tuple[list[str], object]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pre-train, fine-tune, distil and export an int8 bundle (needs the train extra)")
    tsub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND", required=True)
    for name, helptext in _STAGES.items():
        c = tsub.add_parser(name, help=helptext, description=helptext)
        c.add_argument("--config", type=Path, help="YAML or JSON config file (unknown keys are errors)")
        c.add_argument("--preset", default="default", help="tiny | default | scratch | test | m5-500m | m5-1.5b (trainer/config.py PRESETS)")
        c.add_argument("--catalog", type=Path, help="catalog directory (overrides the config)")
        c.add_argument("--out", type=Path, help="bundles directory; the new bundle becomes OUT/current")
        c.add_argument("--run-dir", type=Path, help="checkpoints, metrics and logs of this run")
        c.add_argument(
            "--init",
            help="starting point (model.init): none (pre-train from scratch), minilm (the packaged "
            "all-MiniLM-L6-v2), or a local BERT-family checkpoint directory",
        )
        c.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the run dir")
        c.add_argument(
            "--set",
            dest="overrides",
            action="append",
            type=_override,
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one knob, e.g. --set pretrain.zero_stage=2",
        )
        c.set_defaults(func=_run, train_command=name)

    r = tsub.add_parser(
        "report",
        help="markdown tables: MLM accuracy, duplicate AUC, search metrics vs baselines, fp32 vs int8",
        description="Tables in the brief's appendix style from bundles (and optionally an eval on a catalog).",
    )
    r.add_argument("bundles", type=Path, nargs="+", help="bundle directories (e.g. .m5/bundles/current)")
    r.add_argument("--catalog", type=Path, help="also evaluate search/duplicates on this catalog's test split")
    r.add_argument("--baselines", action="store_true", help="include BM25 (and MiniLM when installed) rows")
    r.add_argument("--latency-iters", type=int, default=300, help="batch-1 calls per tower for p50/p99 (0: skip)")
    add_scope_flag(r)
    r.add_argument("--out", type=Path, help="write the markdown here as well as to stdout")
    hw = r.add_mutually_exclusive_group()
    hw.add_argument(
        "--handwritten",
        type=Path,
        metavar="DIR",
        help="hand-written set shown beside --catalog (default $M5_HANDWRITTEN_DIR, else evaluation/handwritten/)",
    )
    hw.add_argument("--no-handwritten", action="store_true", help="show --catalog only")
    r.set_defaults(func=_report)

    pp = tsub.add_parser(
        "partner",
        help="fine-tune a bundle's (or a run's) model on partner pairs (JSONL) and publish a bundle",
        description="Pairs format: docs/trainer.md#partner-toolkit ({text_a,text_b,label} or {query, product_asin|product_text, label}).",
    )
    pp.add_argument("pairs", type=Path, help="JSONL of labelled pairs")
    _partner_arguments(pp)

    # The same command where a partner team looks for it: `m5 partner finetune --bundle B --pairs F --out O`.
    partner = sub.add_parser("partner", help="partner toolkit: fine-tune a published bundle on your own labelled pairs")
    psub = partner.add_subparsers(dest="partner_command", metavar="SUBCOMMAND", required=True)
    pf = psub.add_parser(
        "finetune",
        help="fine-tune a bundle exported with export.finetunable on labelled pairs; publish a partner bundle",
        description="Pairs format: docs/trainer.md#partner-toolkit. A fifth of the anchors is held out and scored before and after.",
    )
    pf.add_argument("--pairs", type=Path, required=True, help="JSONL of labelled pairs")
    _partner_arguments(pf)


def _partner_arguments(pp: argparse.ArgumentParser) -> None:
    start = pp.add_mutually_exclusive_group(required=True)
    start.add_argument("--bundle", type=Path, help="bundle exported with `--set export.finetunable=true` (carries its weights)")
    start.add_argument("--run-dir", type=Path, help="trainer run directory holding finetuned.pt")
    pp.add_argument("--out", type=Path, required=True, help="bundles directory for the partner bundle")
    pp.add_argument("--strategy", choices=("infonce", "bce", "triplet"), default="infonce", help="loss")
    pp.add_argument("--steps", type=int, default=100, help="optimizer steps")
    pp.add_argument("--name", default="partner", help="bundle name (prefix of its version)")
    pp.add_argument("--catalog", type=Path, help="catalog that resolves product_asin rows")
    pp.set_defaults(func=_partner)


def _run(args) -> int:
    import json
    import sys

    from trainer.checkpoint import InitError
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
    if args.init is not None:
        over.setdefault("model", {})["init"] = args.init
    try:
        cfg = load_config(args.config, args.preset, over)
        if args.train_command == "config":
            print(cfg.model_dump_json(indent=2))
            print(json.dumps(cfg.deepspeed_config(cuda=False), indent=2))
            return 0
        if args.train_command == "all":
            from trainer.pipeline import train_all

            bundle = train_all(cfg, resume=not args.no_resume)
            if bundle is not None:  # rank 0 publishes; the other ranks of a `deepspeed` launch only pre-train
                print(f"bundle: {bundle}")
            return 0
        from trainer.pipeline import StageError, run_stage

        try:
            result = run_stage(cfg, args.train_command, resume=not args.no_resume)
        except StageError as exc:
            print(f"m5 train {args.train_command}: error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.train_command}: done ({result if isinstance(result, Path) else cfg.run_dir})")
        return 0
    except (ConfigError, InitError) as exc:
        print(f"m5 train: error: {exc}", file=sys.stderr)
        return 2


def _report(args) -> int:
    from trainer.report import build_report

    handwritten = False if args.no_handwritten else (args.handwritten or True)
    text = build_report(
        args.bundles, catalog=args.catalog, baselines=args.baselines, latency_iters=args.latency_iters, scope=args.scope, handwritten=handwritten
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


def _partner(args) -> int:
    import sys

    from m5core.bundle import BundleError, load_manifest
    from trainer.partner import PairsError, finetune_on_pairs

    try:
        bundle = finetune_on_pairs(args.bundle or args.run_dir, args.pairs, args.out, args.strategy, args.steps, args.name, args.catalog)
    except (PairsError, BundleError) as exc:
        print(f"m5 partner finetune: error: {exc}", file=sys.stderr)
        return 2
    report = load_manifest(bundle).metrics.get("partner", {})
    print(
        f"held-out pairs: {report.get('held_out_rows')}, AUC before {report.get('held_out_auc_before')} -> after {report.get('held_out_auc_after')}"
    )
    print(f"bundle: {bundle}")
    return 0

"""`python -m train`: one open-set training run. Bad input -> one-line error, exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import yaml

from cli_errors import OneLineErrorParser
from train.config import TrainConfig
from cli_errors import UserError

HELP = {
    "method": "softmax | rpl | arpl | sla (default arpl)",
    "dataset": "mnist5k | digits | npz:PATH | folder:PATH | cifar10:PATH | cifar100:PATH",
    "out": "run directory (checkpoint, config.json, metrics.json, plots)",
    "known": "known classes, e.g. 0,1,2,3,4,5 (indices or names); default: drawn with --split-seed",
    "num_known": "how many known classes --split-seed draws when --known is not given",
    "split_seed": "which random open-set split (and train/val/test partition)",
    "seed": "seed for weights, batch order and augmentation",
    "device": "cpu | cuda",
    "arch": "small_cnn | resnet18",
    "width": "channel width multiplier of the backbone",
    "augment": "none | affine | affine-flip (default: affine, affine-flip for RGB)",
    "score": "served unknown score: mls | msp (| distance for rpl/arpl); default mls",
    "temperature": "softmax temperature T of the reciprocal-point losses",
    "open_space_weight": "lambda of the open-space term (rpl/arpl)",
    "points_per_class": "reciprocal points per class (M)",
    "detector": "served unknown score from a post-hoc detector on the embedding: none (the head's "
                "--score) | knn | fusion | mahalanobis | vim | energy | msp | mls",
    "knn_k": "knn / fusion: score by the cosine distance to the k-th nearest bank embedding",
    "bank_size": "knn / fusion: feature-bank rows kept in the model (seeded subsample of the "
                 "training split)",
    "accept_rate": "threshold accepts this fraction of known validation images",
    "sla_task": "method of the single-pass head SLA distils into: softmax | rpl | arpl",
    "sla_transform": "SLA transformations: rotation (M = 4) | permutation (M = 6, RGB input)",
    "sla_temperature": "SLA self-distillation temperature T",
    "sla_aggregate_loss": "SLA: also train the aggregated prediction s with CE(s, y) "
                          "(the official code's --with-training-agg)",
    "teacher": "run directory of a trained teacher: distil this run from it with RKD",
    "rkd_distance_weight": "weight of the RKD distance-wise loss",
    "rkd_angle_weight": "weight of the RKD angle-wise loss",
    "imbalance": "long-tailed training split: rho = n_max / n_min (>= 1; 1 = as loaded)",
    "imbalance_order": "class names most frequent first, e.g. 9,8,...,0 (default: known-class order)",
    "loss": "ce | cb-softmax | cb-sigmoid | cb-focal (class-balanced; reciprocal heads: cb-softmax)",
    "cb_beta": "effective-number beta of the class-balanced loss, in [0, 1)",
    "focal_gamma": "focusing gamma of cb-focal",
    "min_steps": "train at least this many SGD steps: a small (long-tailed) training set runs "
                 "more epochs than --epochs (0 = exactly --epochs)",
    "logit_adjust": "tau of logit-adjusted CE, CE(l + tau log prior, y) (0 = off; any method)",
    "drs": "deferred re-sampling: class-balanced batches from --drs-start of the training",
    "drs_start": "fraction of the epochs trained on the natural distribution before --drs",
    "m2m": "M2m: translate majority seeds into minority samples (imbalanced training data)",
    "m2m_g": "run directory of the plain-CE classifier g (default: train it into OUT/g first)",
    "m2m_start_epoch": "epochs of plain training before re-sampling + generation start",
    "m2m_beta": "beta of M2m's seed distribution and acceptance 1 - beta^(N_k0 - N_k)",
    "m2m_lambda": "lambda: weight of f's seed-class logit in the generation objective",
    "m2m_gamma": "accept a sample only when g gives the target class >= gamma",
    "m2m_eta": "L2 step size of the generation",
    "m2m_steps": "normalised-gradient steps per generation (T)",
}


def build_parser(prog: str = "python -m train", description: str | None = __doc__) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file of defaults (keys as below, with underscores)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if str(field.type) == "bool":  # --flag / --no-flag
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=HELP.get(field.name))
            continue
        kind = next((t for t in (int, float) if t.__name__ in str(field.type)), str)
        parser.add_argument(flag, type=kind, default=field.default, help=HELP.get(field.name))
    return parser


def config_file_args(path: str) -> list[str]:
    """A YAML file of defaults as `--flag value` pairs, so argparse type-checks them too."""
    try:
        with open(path, encoding="utf-8") as fh:
            defaults = yaml.safe_load(fh) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"--config {path}: cannot read ({exc})") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(defaults, dict):
        raise UserError(f"--config {path}: expected a mapping of settings, got {type(defaults).__name__}")
    unknown = sorted(str(key) for key in defaults if key not in names)
    if unknown:
        raise UserError(f"--config {path}: unknown keys {unknown}")
    args = []
    for key, value in defaults.items():
        if isinstance(value, bool):  # `m2m: true` -> --m2m, false -> --no-m2m
            args.append(("--" if value else "--no-") + key.replace("_", "-"))
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def parse_config(argv: list[str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> tuple[TrainConfig, dict]:
    """(config, the parser's other arguments); command-line flags override --config values."""
    parser = parser or build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    first, _ = parser.parse_known_args(argv)
    if first.config:
        argv = config_file_args(first.config) + argv
    args = vars(parser.parse_args(argv))
    args.pop("config")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in args.items() if k in names})
    return config, {k: v for k, v in args.items() if k not in names}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, _ = parse_config(argv)
        from train.run import run  # heavy imports after argument checks

        metrics = run(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary = {k: metrics[k] for k in ("closed_acc", "balanced_acc", "auroc", "oscr", "threshold",
                                       "known_accept_rate", "unknown_reject_rate", "train_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"run written to {cfg.out}")
    return 0

"""`python -m train`: one open-set training run. Bad input -> one-line error, exit code 2."""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from cli_errors import OneLineErrorParser, UserError
from train.distributed import context, shutdown
from train.config import OLD_NAMES, SETTING_NAMES, SETTINGS, TrainConfig, from_flat


def build_parser(prog: str = "python -m train", description: str | None = __doc__) -> argparse.ArgumentParser:
    """One flag per setting of train/config.py, with its default and help from there."""
    parser = OneLineErrorParser(prog=prog, description=description)
    parser.add_argument("--config", help="YAML file of defaults (keys as below, with underscores)")
    for item in SETTINGS:
        flags = ["--" + name.replace("_", "-") for name in (item.name, *item.old_names)]
        if item.type is bool:  # --flag / --no-flag
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction,
                                default=item.default, help=item.help)
        else:
            parser.add_argument(*flags, type=item.type, default=item.default, help=item.help)
    return parser


def config_file_args(path: str) -> list[str]:
    """A YAML file of defaults as `--flag value` pairs, so argparse type-checks them too."""
    try:
        with open(path, encoding="utf-8") as fh:
            defaults = yaml.safe_load(fh) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"--config {path}: cannot read ({exc})") from None
    if not isinstance(defaults, dict):
        raise UserError(f"--config {path}: expected a mapping of settings, got {type(defaults).__name__}")
    defaults = {OLD_NAMES.get(key, key): value for key, value in defaults.items()}
    unknown = sorted(str(key) for key in defaults if key not in SETTING_NAMES)
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
    config = from_flat({k: v for k, v in args.items() if k in SETTING_NAMES})
    return config, {k: v for k, v in args.items() if k not in SETTING_NAMES}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, _ = parse_config(argv)
        from train.run import run

        metrics = run(cfg)
    except UserError as exc:
        # one write: on an unbuffered stderr (PYTHONUNBUFFERED, python -u) print() writes the text
        # and its newline apart, and torchrun's ranks share one stderr: two lines interleaved
        sys.stderr.write(f"error: {exc}\n")
        sys.stderr.flush()
        shutdown()  # every rank raised the same error (torchrun): leave together
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    main_rank = context().is_main
    shutdown()
    if not main_rank:  # under torchrun, rank 0 reports
        return 0
    summary = {k: metrics[k] for k in ("closed_acc", "balanced_acc", "auroc", "oscr", "threshold",
                                       "known_accept_rate", "unknown_reject_rate", "train_seconds")}
    print(json.dumps(summary, indent=2))
    print(f"run written to {cfg.out}")
    return 0

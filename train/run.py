"""One training run as a pipeline: config -> data/split -> build -> fit -> evaluate -> write.

Each stage is its own module: train/config.py (settings and their checks), train/run_data.py,
train/build.py, train/fitting.py, train/run_evaluation.py, and rundir.py, which owns the run
directory's files. M2m's steering classifier is a run of its own, trained first when needed.
Under torchrun (train/distributed.py) the same pipeline runs on every process.
"""
from __future__ import annotations

from pathlib import Path

import torch

from data.image_files import FileImages
from rundir import Checkpoint, RunDirectory, RunDirError
from train.batches import release_loaders
from train.build import build_model
from cli_errors import UserError
from train.config import OLD_NAMES, TrainConfig
from train.fitting import fit_model, load_teacher
from train.plots import plot_run
from train.distributed import context, world_size_from_env
from train.run_data import RunData, load_run_data
from train.run_evaluation import Evaluation, evaluate_run


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train and evaluate one model; write checkpoint, config, metrics, split and plots to
    cfg.out. Under torchrun every process trains and rank 0 alone evaluates and writes."""
    cfg, data = checked(cfg)  # bad settings or data fail here, before anything is written
    ctx = context(cfg.device)
    out = RunDirectory(cfg.out)
    ctx.on_main(lambda: create(out))
    asked = cfg  # config.json: the settings as asked for (a steering run left to train: null)
    cfg, steering_seconds = with_steering_run(cfg, progress)
    torch.manual_seed(cfg.seed)
    device = ctx.device(cfg.device)
    teacher = load_teacher(cfg, data)
    spec, model = build_model(cfg, data, progress and ctx.is_main)
    try:
        fitted = fit_model(cfg, data, model, device, teacher, progress, ctx)

        def evaluate_and_write() -> dict:
            result = evaluate_run(cfg, data, model, spec, fitted, device)
            metrics = result.metrics
            metrics["machine"].update(world_size=ctx.world_size, backend=ctx.backend,
                                      per_process_batch=cfg.batch_size // ctx.world_size)
            if "m2m" in metrics:
                metrics["m2m"]["g_train_seconds"] = steering_seconds
                print_m2m_summary(metrics["m2m"]["per_class"])
            write(out, asked, cfg, data, model, result)
            return metrics

        return ctx.on_main(evaluate_and_write)  # rank 0's metrics (or its error) on every rank
    finally:
        release_loaders()  # a streamed dataset's DataLoader workers


def checked(cfg: TrainConfig) -> tuple[TrainConfig, RunData]:
    """The config validated (also for the torchrun world size) and resolved, and its data."""
    cfg.validate()
    cfg.check_world_size(world_size_from_env())
    is_main = context(cfg.device).is_main
    data = load_run_data(cfg, progress=is_main)
    if isinstance(data.dataset.images, FileImages) and (cfg.long_tail.m2m.enabled or cfg.long_tail.drs):
        raise UserError(f"--m2m and --drs draw from the whole training split in memory, but the "
                        f"images exceed --cache-mb {cfg.images.cache_mb:g}: raise it above "
                        f"{data.dataset.images.cache.image_bytes * len(data.dataset.images) / 2**20:.0f}")
    skipped = data.dataset.skipped
    if skipped and is_main:
        print(f"skipped {len(skipped)} unreadable image file(s) of "
              f"{len(skipped) + len(data.dataset.labels)} (listed in {cfg.out}/skipped.txt; "
              f"--strict stops instead)", flush=True)
    cfg = cfg.resolved(data.input_shape[0])
    cfg.detector.check_bank(len(data.split.train))
    if cfg.method == "sla":
        cfg.sla.check_input(data.input_shape)
    return cfg, data


def create(out: RunDirectory) -> None:
    try:
        out.create()
    except RunDirError as exc:
        raise UserError(f"--out {exc}") from None


def write(out: RunDirectory, asked: TrainConfig, cfg: TrainConfig, data: RunData,
          model: torch.nn.Module, result: Evaluation) -> None:
    """The run directory (rundir.py) and the plots."""
    metrics = result.metrics
    checkpoint = Checkpoint(
        model_spec=result.spec.to_dict(), state_dict=model.state_dict(),
        class_names=data.known_names, input_shape=list(data.input_shape), method=cfg.method,
        threshold=result.threshold, threshold_rule=metrics["threshold_rule"],
        temperature=cfg.temperature, head_threshold=result.head_threshold,
        aggregated_threshold=metrics.get("aggregated", {}).get("threshold"), macs=metrics["macs"],
        resize_policy=cfg.images.resize)
    out.write(checkpoint, asked.to_dict(), metrics, data.split)
    out.write_skipped(data.dataset.skipped)
    plot_run(out.path, cfg, metrics, result.test_known["unknown_score"],
             result.test_unknown["unknown_score"], result.threshold)


def with_steering_run(cfg: TrainConfig, progress: bool) -> tuple[TrainConfig, float | None]:
    """--m2m without --m2m-generator-run: train the plain-CE steering classifier (M2m's g) on
    the same data into OUT/g first; (config pointing at it, its training seconds)."""
    m2m = cfg.long_tail.m2m
    if not m2m.enabled or m2m.generator_run is not None:
        return cfg, None
    steering_dir = str(Path(cfg.out) / "g")
    if context(cfg.device).is_main:
        print(f"m2m: training the steering classifier g (plain CE, same data) into "
              f"{steering_dir}", flush=True)
    steering = cfg.override(method="softmax", loss="ce", m2m=False, out=steering_dir,
                            logit_adjust=0.0, drs=False, score=None, temperature=None)
    seconds = run(steering, progress)["train_seconds"]
    return cfg.override(m2m_generator_run=steering_dir), seconds


def print_m2m_summary(per_class: dict[str, dict]) -> None:
    """One line per class that M2m generated samples for."""
    for name, row in per_class.items():
        if row["generated"]:
            print(f"m2m: class {name} (n={row['train_count']}): generated {row['generated']}, "
                  f"accepted {row['accepted']} ({row['accepted'] / row['generated']:.0%})", flush=True)


# settings that do not change what a run computes (where it goes; how its files are read)
NO_EFFECT = ("out", "workers", "cache_mb", "strict")
# settings a run written before them ran with, where that differs from today's default
LEGACY_DEFAULTS = {"detector": "none"}


def finished_run(cfg: TrainConfig) -> dict | None:
    """The metrics of a finished run of exactly this configuration in cfg.out, else None
    (settings left to defaults, None in `cfg`, match whatever the run resolved them to;
    the --sla-* settings count only for --method sla, where they change the training)."""
    directory = RunDirectory(cfg.out)
    try:
        saved, metrics = directory.read_config(), directory.read_metrics()
    except RunDirError:
        return None
    if isinstance(saved.get("sla"), dict):  # nested: every setting written
        saved = TrainConfig.from_dict(saved).flat()
    else:  # the flat config.json of a run before the sections: only the settings it knew
        saved = {OLD_NAMES.get(k, k): v for k, v in saved.items()}
    wanted = {k: v for k, v in cfg.flat().items() if v is not None and k not in NO_EFFECT
              and (cfg.method == "sla" or not k.startswith("sla_"))}
    defaults = {**TrainConfig().flat(), **LEGACY_DEFAULTS}  # a setting newer than the run
    return metrics if all(saved.get(k, defaults[k]) == v for k, v in wanted.items()) else None

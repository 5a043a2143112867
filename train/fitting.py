"""The fit stage of a run: the batch hook (M2m or DRS), an RKD teacher, and the timed loop."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from models.sla import transform_views
from train.build import build_loss
from train.checkpoints import load_fitting_classifier
from train.config import TrainConfig
from train.distributed import SINGLE, Context, rank_seed
from train.drs import DeferredResampling
from train.loop import fit
from train.m2m import MajorToMinor, load_steering
from train.run_data import RunData


@dataclass
class Fitted:
    """What the fit stage leaves for evaluation: the model is trained in place."""
    history: list[dict]
    seconds: float
    epochs: int
    teacher: nn.Module | None = None
    m2m: MajorToMinor | None = None


def epochs_for(cfg: TrainConfig, n_train: int) -> int:
    """--epochs, or more when that is fewer than --min-steps SGD steps (a small training set:
    at rho = 100 on mnist5k, 30 epochs are only ~270 steps)."""
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))


def batch_hook(cfg: TrainConfig, model: nn.Module, data: RunData, epochs: int,
               device: torch.device, seed: int) -> MajorToMinor | DeferredResampling | None:
    """M2m (its steering run must exist: train/run.py trains it first) or DRS re-sampling;
    `seed` is per process under torchrun, so the ranks re-draw different batches."""
    lt = cfg.long_tail
    if lt.m2m.enabled:
        steering = load_steering(lt.m2m.generator_run, data.known_names, data.input_shape)
        return MajorToMinor(steering.to(device), model, *data.in_memory("train"), lt.m2m,
                            cfg.augment, seed)
    if lt.drs:
        return DeferredResampling(*data.in_memory("train"), round(lt.drs_start * epochs),
                                  cfg.augment, seed)
    return None


def load_teacher(cfg: TrainConfig, data: RunData) -> nn.Module | None:
    """RKD's frozen teacher (--teacher), checked to fit this run's classes and input. Load it
    before the student is built: rebuilding it draws from the global RNG, and the student's
    initial weights have always come after that draw."""
    if cfg.rkd.teacher is None:
        return None
    teacher, _ = load_fitting_classifier(cfg.rkd.teacher, "--teacher", data.known_names,
                                         data.input_shape)
    return teacher


def fit_model(cfg: TrainConfig, data: RunData, model: nn.Module, device: torch.device,
              teacher: nn.Module | None = None, progress: bool = True,
              ctx: Context = SINGLE) -> Fitted:
    """Train `model` in place with the method's loss (distilled from `teacher` with --teacher),
    on every process of a torchrun job; time only the loop."""
    epochs = epochs_for(cfg, len(data.split.train))
    hook = batch_hook(cfg, model, data, epochs, device, rank_seed(cfg.seed, ctx.rank))
    views = partial(transform_views, transform=cfg.sla.transform) if cfg.method == "sla" else None
    started = time.perf_counter()
    history = fit(model, build_loss(cfg, data.class_counts), data.tensors("train"),
                  data.tensors("val"), epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  momentum=cfg.momentum, weight_decay=cfg.weight_decay, augmentation=cfg.augment,
                  seed=cfg.seed, device=device, progress=progress, teacher=teacher,
                  batch_hook=hook, views=views, ctx=ctx, head_epochs=cfg.transfer.head_epochs)
    if isinstance(hook, MajorToMinor):  # the generation counts of every process
        ctx.sum(hook.generated)
        ctx.sum(hook.accepted)
    return Fitted(history, time.perf_counter() - started, epochs, teacher,
                  hook if isinstance(hook, MajorToMinor) else None)

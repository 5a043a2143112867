"""One training run: data -> open-set split -> fit -> calibrate -> evaluate -> run directory."""
from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from models import DETECTORS, AggregatedClassifier, ModelSpec, build_classifier
from models import linear_head, reciprocal_points
from models.backbones import BACKBONES
from models.complexity import count_macs
from models.sla import NUM_VIEWS, transform_views
from train.augment import AUGMENTATIONS
from train.calibration import accept_rate, threshold_for_accept_rate
from train.checkpoints import load_run_classifier
from train.config import TrainConfig
from data.datasets import ImageSet, load_dataset
from train.drs import DeferredResampling
from train.detector_suite import add_suite_scores, fit_detector, knn_sweep
from cli_errors import UserError
from train.evaluate import open_set_metrics, predict, view_accuracy
from train.loop import fit
from train.losses import LOSSES, TASKS, RelationalDistillationLoss, SelfLabelAugmentationLoss
from train.losses.logit_adjusted import LogitAdjustedLoss
from train.losses.class_balanced import (CLASS_BALANCED, SIGMOID_LOSSES, build_class_balanced,
                                         init_sigmoid_bias)
from train.m2m import M2mSettings, MajorToMinor, load_g
from train.metrics import closed_set_accuracy, long_tail_metrics
from train.plots import plot_per_class_recall, plot_roc, plot_score_histogram
from data.splits import (OpenSetSplit, draw_known_classes, long_tail_subset, open_set_split,
                          parse_known)

SCORES_OF_HEAD = {"linear": linear_head.SCORES, "reciprocal": reciprocal_points.SCORES}
DEFAULT_SCORE = "mls"  # max logit; for reciprocal heads -max_k l_k, from the point distances


def task_of(cfg: TrainConfig) -> str:
    """The single-head method that trains the head this run ships (SLA distils into one)."""
    return cfg.sla_task if cfg.method == "sla" else cfg.method


def resolve(cfg: TrainConfig, in_channels: int) -> TrainConfig:
    """Fill the settings left to the method's or the data's defaults (written to config.json)."""
    return dataclasses.replace(
        cfg,
        score=DEFAULT_SCORE if cfg.score is None else cfg.score,
        temperature=(LOSSES[task_of(cfg)].default_temperature if cfg.temperature is None
                     else cfg.temperature),
        augment=("affine-flip" if in_channels == 3 else "affine") if cfg.augment is None
        else cfg.augment,
    )


def validate(cfg: TrainConfig) -> None:
    """Reject bad settings before any work, with a message naming the setting."""
    if cfg.method not in LOSSES:
        raise UserError(f"unknown method {cfg.method!r}; choose from {', '.join(LOSSES)}")
    if cfg.arch not in BACKBONES:
        raise UserError(f"unknown arch {cfg.arch!r}; choose from {', '.join(BACKBONES)}")
    if cfg.augment is not None and cfg.augment not in AUGMENTATIONS:
        raise UserError(f"unknown augment {cfg.augment!r}; choose from {', '.join(AUGMENTATIONS)}")
    if cfg.sla_task not in TASKS:
        raise UserError(f"unknown --sla-task {cfg.sla_task!r}; choose from {', '.join(TASKS)}")
    if cfg.sla_transform not in NUM_VIEWS:
        raise UserError(f"unknown --sla-transform {cfg.sla_transform!r}; "
                        f"choose from {', '.join(NUM_VIEWS)}")
    scores = SCORES_OF_HEAD[LOSSES[task_of(cfg)].head]
    if cfg.score is not None and cfg.score not in scores:
        raise UserError(f"--score {cfg.score!r} is not defined for {task_of(cfg)}; "
                        f"choose from {', '.join(scores)}")
    if cfg.detector != "none" and cfg.detector not in DETECTORS:
        raise UserError(f"unknown --detector {cfg.detector!r}; choose from none, {', '.join(DETECTORS)}")
    if cfg.knn_k > cfg.bank_size > 0:
        raise UserError(f"--knn-k {cfg.knn_k} is larger than the feature bank (--bank-size "
                        f"{cfg.bank_size})")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                "knn_k": cfg.knn_k, "bank_size": cfg.bank_size,
                "width": cfg.width, "points_per_class": cfg.points_per_class,
                "sla_temperature": cfg.sla_temperature}
    if cfg.temperature is not None:
        positive["temperature"] = cfg.temperature
    for name, value in positive.items():
        if not value > 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    non_negative = {"feature_scale": cfg.feature_scale, "weight_decay": cfg.weight_decay,
                    "open_space_weight": cfg.open_space_weight, "momentum": cfg.momentum,
                    "rkd_distance_weight": cfg.rkd_distance_weight,
                    "rkd_angle_weight": cfg.rkd_angle_weight}
    for name, value in non_negative.items():
        if not value >= 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if not 0 < cfg.accept_rate <= 1:
        raise UserError(f"--accept-rate must be in (0, 1], got {cfg.accept_rate}")
    if not (0 < cfg.val_fraction < 1 and 0 < cfg.test_fraction < 1
            and cfg.val_fraction + cfg.test_fraction < 1):
        raise UserError("--val-fraction and --test-fraction must be in (0, 1) with sum < 1")
    if cfg.batch_size < 2:
        raise UserError(f"--batch-size must be >= 2 (batch norm), got {cfg.batch_size}")
    if cfg.seed < 0 or cfg.split_seed < 0:
        raise UserError("--seed and --split-seed must be >= 0")
    validate_long_tail(cfg)
    check_device(cfg.device)


def validate_long_tail(cfg: TrainConfig) -> None:
    """The --imbalance, --loss and --m2m settings."""
    if not cfg.imbalance >= 1:
        raise UserError(f"--imbalance must be >= 1 (n_max / n_min), got {cfg.imbalance}")
    if cfg.loss != "ce" and cfg.loss not in CLASS_BALANCED:
        raise UserError(f"unknown loss {cfg.loss!r}; choose from ce, {', '.join(CLASS_BALANCED)}")
    if cfg.loss in SIGMOID_LOSSES and LOSSES[task_of(cfg)].head != "linear":
        raise UserError(f"--loss {cfg.loss} needs the linear head (--method softmax); "
                        f"{cfg.method} takes --loss ce or cb-softmax")
    for name, value in {"cb_beta": cfg.cb_beta, "m2m_beta": cfg.m2m_beta}.items():
        if not 0 <= value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    if not 0 <= cfg.m2m_gamma <= 1:
        raise UserError(f"--m2m-gamma must be in [0, 1], got {cfg.m2m_gamma}")
    non_negative = {"focal_gamma": cfg.focal_gamma, "m2m_lambda": cfg.m2m_lambda,
                    "m2m_eta": cfg.m2m_eta, "m2m_steps": cfg.m2m_steps}
    for name, value in non_negative.items():
        if not value >= 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if not 0 <= cfg.logit_adjust < math.inf:
        raise UserError(f"--logit-adjust must be finite and >= 0, got {cfg.logit_adjust}")
    if cfg.logit_adjust > 0 and cfg.loss != "ce":
        raise UserError(f"--logit-adjust replaces the CE term; it cannot be combined with --loss {cfg.loss}")
    if not 0 <= cfg.drs_start < 1:
        raise UserError(f"--drs-start must be in [0, 1), got {cfg.drs_start}")
    if cfg.drs and cfg.m2m:
        raise UserError("--drs and --m2m both re-sample batches; M2m already includes the re-sampling")
    if cfg.min_steps < 0:
        raise UserError(f"--min-steps must be >= 0, got {cfg.min_steps}")
    if cfg.m2m_g is not None and not cfg.m2m:
        raise UserError("--m2m-g is only used with --m2m")
    if cfg.m2m and not 0 <= cfg.m2m_start_epoch < cfg.epochs:
        raise UserError(f"--m2m-start-epoch must be in 0..{cfg.epochs - 1} (--epochs {cfg.epochs}), "
                        f"got {cfg.m2m_start_epoch}")


def check_device(name: str) -> None:
    """cpu, cuda or cuda:N where that device exists."""
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise UserError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but torch sees no CUDA device")
    if index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")


def build_loss(cfg: TrainConfig, class_counts: list[int] | None = None) -> torch.nn.Module:
    """The method's loss from a resolved config: the task (its classification term class-balanced
    with --loss cb-*, which needs the training class counts), wrapped by SLA and/or RKD."""
    task = LOSSES[task_of(cfg)]
    classification = (None if cfg.loss == "ce" else
                      build_class_balanced(cfg.loss, class_counts, cfg.cb_beta, cfg.focal_gamma))
    if cfg.logit_adjust > 0:
        classification = LogitAdjustedLoss(class_counts, cfg.logit_adjust)
    if task.head == "reciprocal":
        loss = task(temperature=cfg.temperature, open_space_weight=cfg.open_space_weight,
                    classification=classification)
    else:
        loss = task(temperature=cfg.temperature, classification=classification)
    if cfg.method == "sla":
        loss = SelfLabelAugmentationLoss(loss, cfg.sla_transform, cfg.sla_temperature,
                                         cfg.sla_aggregate_loss)
    if cfg.teacher is not None:
        loss = RelationalDistillationLoss(loss, cfg.rkd_distance_weight, cfg.rkd_angle_weight)
    return loss


def check_sla_input(cfg: TrainConfig, input_shape: tuple[int, ...]) -> None:
    """Rotations need square images; channel permutations need colour."""
    channels, height, width = input_shape
    if cfg.sla_transform == "rotation" and height != width:
        raise UserError(f"--sla-transform rotation needs square images, got {height}x{width}")
    if cfg.sla_transform == "permutation" and channels != 3:
        raise UserError(f"--sla-transform permutation needs RGB images, got {channels} channel(s)")


def long_tail_train(cfg: TrainConfig, split: OpenSetSplit, labels: np.ndarray,
                    class_names: list[str]) -> OpenSetSplit:
    """The split with its training part made long-tailed (--imbalance), val/test untouched."""
    if cfg.imbalance == 1:
        return split
    order = split.known_classes
    if cfg.imbalance_order:
        items = [item.strip() for item in cfg.imbalance_order.split(",")]
        missing = [item for item in items if item not in class_names]
        if missing:
            raise UserError(f"--imbalance-order names {missing}, which are not classes of the dataset")
        order = tuple(class_names.index(item) for item in items)
    if sorted(order) != sorted(split.known_classes):
        raise UserError(f"--imbalance-order must list exactly the known classes "
                        f"{[class_names[c] for c in split.known_classes]}, got {cfg.imbalance_order!r}")
    train = long_tail_subset(split.train, labels, cfg.imbalance, order, cfg.split_seed)
    return dataclasses.replace(split, train=train)


def m2m_hook(cfg: TrainConfig, model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor],
             class_names: list[str], input_shape: list[int], device: torch.device,
             progress: bool) -> tuple[MajorToMinor, str, float | None]:
    """The M2m batch hook with g loaded from --m2m-g, or trained first into OUT/g (plain CE)."""
    g_dir, g_seconds = cfg.m2m_g, None
    if g_dir is None:
        g_dir = str(Path(cfg.out) / "g")
        print(f"m2m: training g (plain CE, same data) into {g_dir}", flush=True)
        g_cfg = dataclasses.replace(cfg, method="softmax", loss="ce", m2m=False, out=g_dir,
                                    logit_adjust=0.0, drs=False,
                                    score=None, temperature=None)
        g_seconds = run(g_cfg, progress)["train_seconds"]
    g = load_g(g_dir, class_names, input_shape).to(device)
    settings = M2mSettings(cfg.m2m_start_epoch, cfg.m2m_beta, cfg.m2m_lambda, cfg.m2m_gamma,
                           cfg.m2m_eta, cfg.m2m_steps)
    return MajorToMinor(g, model, *train, settings, cfg.augment, cfg.seed), g_dir, g_seconds


def model_spec(cfg: TrainConfig, data: ImageSet, num_known: int, train_images: np.ndarray) -> ModelSpec:
    pixels = train_images.astype(np.float32) / 255  # N x C x H x W
    return ModelSpec(
        arch=cfg.arch, in_channels=data.images.shape[1], num_classes=num_known,
        head=LOSSES[task_of(cfg)].head, width=cfg.width,
        variant=task_of(cfg) if LOSSES[task_of(cfg)].head == "reciprocal" else "arpl",
        points_per_class=cfg.points_per_class, feature_scale=cfg.feature_scale,
        score=cfg.score, sla_transform=cfg.sla_transform if cfg.method == "sla" else "none",
        mean=tuple(float(m) for m in pixels.mean(axis=(0, 2, 3))),
        std=tuple(float(s) + 1e-6 for s in pixels.std(axis=(0, 2, 3))),
    )


def epochs_for(cfg: TrainConfig, n_train: int) -> int:
    """--epochs, or more when that is fewer than --min-steps SGD steps (a small training set:
    at rho = 100 on mnist5k, 30 epochs are only ~270 steps)."""
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))


def head_score_rates(known: np.ndarray, unknown: np.ndarray, threshold: float) -> dict:
    """The head's own score at its own validation threshold (what `export --head-score` serves)."""
    return {"threshold": threshold, "known_accept_rate": accept_rate(known, threshold),
            "unknown_reject_rate": 1 - accept_rate(unknown, threshold) if len(unknown) else None}


def check_bank(cfg: TrainConfig, n_train: int) -> None:
    """k-NN (served, or in the suite every run fits) needs k bank rows, and the bank is at
    most the training split."""
    if cfg.knn_k > n_train:
        raise UserError(f"--knn-k {cfg.knn_k} is larger than the feature bank: the training "
                        f"split has {n_train} images")


def attach_detector(cfg: TrainConfig, spec: ModelSpec, model: torch.nn.Module,
                    train: dict[str, np.ndarray], train_labels: np.ndarray,
                    val: dict[str, np.ndarray]) -> ModelSpec:
    """Fit --detector on the known training (and validation) images and make it the model's
    served unknown_score; returns the spec that rebuilds the model with it."""
    if cfg.detector == "none":
        return spec
    bank_size = min(cfg.bank_size, len(train_labels))
    model.detector = fit_detector(cfg.detector, train, train_labels, val, cfg.knn_k, bank_size,
                                  cfg.seed, cfg.temperature).to(next(model.parameters()).device)
    return dataclasses.replace(spec, detector=cfg.detector, knn_k=cfg.knn_k, bank_size=bank_size)


# settings a run written before them ran with, where that differs from today's default
LEGACY_DEFAULTS = {"detector": "none"}


def finished_run(cfg: TrainConfig) -> dict | None:
    """The metrics of a finished run of exactly this configuration in cfg.out, else None
    (settings left to defaults, None in `cfg`, match whatever the run resolved them to;
    the --sla-* settings count only for --method sla, where they change the training)."""
    out = Path(cfg.out)
    try:
        saved = json.loads((out / "config.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    wanted = {k: v for k, v in cfg.to_dict().items() if v is not None and k != "out"
              and (cfg.method == "sla" or not k.startswith("sla_"))}
    defaults = TrainConfig().to_dict()  # a setting newer than the run: it ran with the default
    defaults.update(LEGACY_DEFAULTS)  # ... except where the default changed since
    return metrics if all(saved.get(k, defaults[k]) == v for k, v in wanted.items()) else None


def aggregated_metrics(model: torch.nn.Module, cfg: TrainConfig, images: np.ndarray,
                       split: OpenSetSplit, labels: np.ndarray, device: torch.device) -> dict:
    """The open-set figures of SLA+AG inference, with its own validation-calibrated threshold."""
    score = cfg.score if cfg.score in linear_head.SCORES else DEFAULT_SCORE
    aggregated = AggregatedClassifier(model, cfg.sla_transform, score)
    val = predict(aggregated, images[split.val], device)
    threshold = threshold_for_accept_rate(val["unknown_score"], cfg.accept_rate)
    result = open_set_metrics(predict(aggregated, images[split.test_known], device),
                              labels[split.test_known],
                              predict(aggregated, images[split.test_unknown], device), threshold)
    val_acc = float((val["logits"].argmax(1) == labels[split.val]).mean())
    views = view_accuracy(model, cfg.sla_transform, images[split.test_known], labels[split.test_known],
                          device)
    return {**result, "val_acc": val_acc, "view_acc": views, "score": score,
            "passes": NUM_VIEWS[cfg.sla_transform]}


def run(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train and evaluate one model; write checkpoint, config, metrics and plots to cfg.out."""
    validate(cfg)
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {cfg.out}: cannot create directory ({exc.strerror})") from None
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)

    data = load_dataset(cfg.dataset)
    cfg = resolve(cfg, data.images.shape[1])
    known = (parse_known(cfg.known, data.class_names) if cfg.known
             else draw_known_classes(data.num_classes, cfg.num_known, cfg.split_seed))
    split = open_set_split(data.labels, known, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    split = long_tail_train(cfg, split, data.labels, list(data.class_names))
    labels = split.relabel(data.labels)
    input_shape = tuple(data.images.shape[1:])  # C, H, W
    check_bank(cfg, len(split.train))
    class_counts = np.bincount(labels[split.train], minlength=len(known)).tolist()
    known_names = [data.class_names[c] for c in known]
    if cfg.method == "sla":
        check_sla_input(cfg, input_shape)
    teacher = None
    if cfg.teacher is not None:
        teacher, _ = load_run_classifier(cfg.teacher, "--teacher", known_names, input_shape)
    spec = model_spec(cfg, data, len(known), data.images[split.train])
    model = build_classifier(spec)
    if cfg.loss in SIGMOID_LOSSES:
        init_sigmoid_bias(model.head.fc)

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(data.images[idx]), torch.from_numpy(labels[idx])

    epochs = epochs_for(cfg, len(split.train))
    hook = None
    if cfg.m2m:
        hook, g_dir, g_seconds = m2m_hook(cfg, model, tensors(split.train), known_names,
                                          list(input_shape), device, progress)
    elif cfg.drs:
        hook = DeferredResampling(*tensors(split.train), round(cfg.drs_start * epochs), cfg.augment,
                                  cfg.seed)
    started = time.perf_counter()
    history = fit(model, build_loss(cfg, class_counts), tensors(split.train), tensors(split.val),
                  epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                  weight_decay=cfg.weight_decay, augmentation=cfg.augment, seed=cfg.seed,
                  device=device, progress=progress, teacher=teacher, batch_hook=hook,
                  views=(partial(transform_views, transform=cfg.sla_transform)
                         if cfg.method == "sla" else None))
    train_seconds = time.perf_counter() - started

    train_pred = predict(model, data.images[split.train], device)
    spec = attach_detector(cfg, spec, model, train_pred, labels[split.train],
                           predict(model, data.images[split.val], device))
    val = predict(model, data.images[split.val], device)
    threshold = threshold_for_accept_rate(val["unknown_score"], cfg.accept_rate)
    head_threshold = threshold_for_accept_rate(val[f"score:{spec.score}"], cfg.accept_rate)
    test_known = predict(model, data.images[split.test_known], device)
    test_unknown = predict(model, data.images[split.test_unknown], device)
    add_suite_scores(train_pred, labels[split.train], val, [test_known, test_unknown],
                     cfg.knn_k, cfg.bank_size, cfg.seed, cfg.temperature)
    metrics = open_set_metrics(test_known, labels[split.test_known], test_unknown, threshold)
    metrics["head"] = head_score_rates(test_known[f"score:{spec.score}"],
                                       test_unknown[f"score:{spec.score}"], head_threshold)
    served = spec.score if spec.detector == "none" else spec.detector
    metrics.update({
        "method": cfg.method, "task": task_of(cfg), "score": served, "head_score": spec.score,
        "detector": spec.detector, "knn_k": cfg.knn_k,
        "bank_size": min(cfg.bank_size, len(split.train)),  # the suite's k-NN bank
        "dataset": data.name,
        "known_classes": known_names,
        "unknown_classes": [n for i, n in enumerate(data.class_names) if i not in known],
        "threshold_rule": f"accepts {cfg.accept_rate:.0%} of known validation images",
        "best_val_acc": max(h["val_acc"] for h in history),
        "input_shape": list(input_shape), "macs": count_macs(model, input_shape),
        "n_train": len(split.train), "n_val": len(split.val),
        "n_test_known": len(split.test_known), "n_test_unknown": len(split.test_unknown),
        "train_seconds": train_seconds, "augment": cfg.augment, "epochs_run": epochs,
        "sgd_steps": epochs * math.ceil(len(split.train) / cfg.batch_size),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "device": str(device)},
        "history": history,
    })
    metrics.update(long_tail_metrics(test_known["logits"].argmax(1), labels[split.test_known],
                                     np.array(class_counts), known_names))
    metrics.update({"imbalance": cfg.imbalance, "loss": cfg.loss})
    if len(split.test_unknown):
        metrics["knn_sweep"] = knn_sweep(train_pred, labels[split.train], test_known, test_unknown,
                                         cfg.seed)
    if cfg.m2m:
        metrics["m2m"] = {"g": g_dir, "g_train_seconds": g_seconds,
                          "start_epoch": cfg.m2m_start_epoch,
                          "per_class": hook.summary(known_names, class_counts)}
        print_m2m_summary(metrics["m2m"]["per_class"])

    if cfg.method == "sla":  # SLA+AG: M passes through the joint head, its own threshold
        metrics["aggregated"] = aggregated_metrics(model, cfg, data.images, split, labels, device)
    if teacher is not None:
        teacher_known = predict(teacher, data.images[split.test_known], device)
        metrics["teacher"] = {
            "run": cfg.teacher, "macs": count_macs(teacher, input_shape),
            "closed_acc": closed_set_accuracy(teacher_known["logits"].argmax(1),
                                              labels[split.test_known])}

    torch.save({
        "model_spec": spec.to_dict(), "state_dict": model.state_dict(),
        "class_names": list(metrics["known_classes"]), "threshold": threshold,
        "head_threshold": head_threshold,  # for an export that serves the head's own score
        "input_shape": list(input_shape), "macs": metrics["macs"],  # C, H, W
        "threshold_rule": metrics["threshold_rule"], "method": cfg.method,
        "temperature": cfg.temperature,
        "aggregated_threshold": metrics.get("aggregated", {}).get("threshold"),
    }, out / "model.pt")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{cfg.method} ({served}) on {data.name}"
    if metrics["auroc"] is not None:  # closed-set runs have no unknowns to draw
        plot_roc(test_known["unknown_score"], test_unknown["unknown_score"], metrics["auroc"],
                 out / "roc.png", title)
    plot_score_histogram(test_known["unknown_score"], test_unknown["unknown_score"], threshold,
                         out / "unknown_scores.png", title)
    variant = cfg.method + ("" if cfg.loss == "ce" else f" + {cfg.loss}") + (" + M2m" if cfg.m2m else "")
    plot_per_class_recall(metrics["per_class_recall"], metrics["train_counts"],
                          out / "per_class_recall.png", f"{variant} on {data.name}, rho "
                          f"{cfg.imbalance:g}: balanced acc {metrics['balanced_acc']:.3f}")
    return metrics


def print_m2m_summary(per_class: dict[str, dict]) -> None:
    """One line per class that M2m generated samples for."""
    for name, row in per_class.items():
        if row["generated"]:
            print(f"m2m: class {name} (n={row['train_count']}): generated {row['generated']}, "
                  f"accepted {row['accepted']} ({row['accepted'] / row['generated']:.0%})", flush=True)

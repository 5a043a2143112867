"""The evaluate stage of a run: fit the served detector, calibrate thresholds on validation,
score the test split with every detector, and gather the run's metrics.json."""
from __future__ import annotations

import dataclasses
import math
import platform
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from data.image_files import FileImages
from models import AggregatedClassifier, ModelSpec
from models import linear_head
from models.complexity import count_macs
from models.sla import NUM_VIEWS
from train.calibration import accept_rate, threshold_for_accept_rate
from train.config import DEFAULT_SCORE, TrainConfig
from train.detector_suite import add_suite_scores, fit_detector, knn_sweep
from train.evaluate import open_set_metrics, predict, view_accuracy
from train.fitting import Fitted
from train.metrics import closed_set_accuracy, long_tail_metrics
from train.run_data import RunData


@dataclass
class Evaluation:
    metrics: dict
    spec: ModelSpec  # with the fitted detector, as the checkpoint rebuilds the model
    threshold: float  # on the served unknown_score
    head_threshold: float  # on the head's own score
    test_known: dict[str, np.ndarray]  # predict() outputs, for the plots
    test_unknown: dict[str, np.ndarray]


def attach_detector(cfg: TrainConfig, spec: ModelSpec, model: nn.Module,
                    train: dict[str, np.ndarray], train_labels: np.ndarray,
                    val: dict[str, np.ndarray]) -> ModelSpec:
    """Fit --detector on the known training (and validation) images and make it the model's
    served unknown_score; returns the spec that rebuilds the model with it."""
    detector = cfg.detector
    if detector.name == "none":
        return spec
    bank_size = min(detector.bank_size, len(train_labels))
    model.detector = fit_detector(detector.name, train, train_labels, val, detector.knn_k,
                                  bank_size, cfg.seed, cfg.temperature).to(
                                      next(model.parameters()).device)
    return dataclasses.replace(spec, detector=detector.name, knn_k=detector.knn_k,
                               bank_size=bank_size)


def head_score_rates(known: np.ndarray, unknown: np.ndarray, threshold: float) -> dict:
    """The head's own score at its own validation threshold (what `export --head-score` serves)."""
    return {"threshold": threshold, "known_accept_rate": accept_rate(known, threshold),
            "unknown_reject_rate": 1 - accept_rate(unknown, threshold) if len(unknown) else None}


def aggregated_metrics(model: nn.Module, cfg: TrainConfig, data: RunData,
                       device: torch.device) -> dict:
    """The open-set figures of SLA+AG inference, with its own validation-calibrated threshold."""
    score = cfg.score if cfg.score in linear_head.SCORES else DEFAULT_SCORE
    aggregated = AggregatedClassifier(model, cfg.sla.transform, score)
    val = predict(aggregated, data.images("val"), device)
    threshold = threshold_for_accept_rate(val["unknown_score"], cfg.accept_rate)
    result = open_set_metrics(predict(aggregated, data.images("test_known"), device),
                              data.part_labels("test_known"),
                              predict(aggregated, data.images("test_unknown"), device), threshold)
    val_acc = float((val["logits"].argmax(1) == data.part_labels("val")).mean())
    views = view_accuracy(model, cfg.sla.transform, data.images("test_known"),
                          data.part_labels("test_known"), device)
    return {**result, "val_acc": val_acc, "view_acc": views, "score": score,
            "passes": NUM_VIEWS[cfg.sla.transform]}


def evaluate_run(cfg: TrainConfig, data: RunData, model: nn.Module, spec: ModelSpec,
                 fitted: Fitted, device: torch.device) -> Evaluation:
    """Detector, thresholds, every score on the test split, and the method's extra figures."""
    train_pred = predict(model, data.images("train"), device)
    train_labels = data.part_labels("train")
    spec = attach_detector(cfg, spec, model, train_pred, train_labels,
                           predict(model, data.images("val"), device))
    val = predict(model, data.images("val"), device)
    threshold = threshold_for_accept_rate(val["unknown_score"], cfg.accept_rate)
    head_threshold = threshold_for_accept_rate(val[f"score:{spec.score}"], cfg.accept_rate)
    known = predict(model, data.images("test_known"), device)
    unknown = predict(model, data.images("test_unknown"), device)
    add_suite_scores(train_pred, train_labels, val, [known, unknown], cfg.detector.knn_k,
                     cfg.detector.bank_size, cfg.seed, cfg.temperature)
    metrics = open_set_metrics(known, data.part_labels("test_known"), unknown, threshold)
    metrics["head"] = head_score_rates(known[f"score:{spec.score}"],
                                       unknown[f"score:{spec.score}"], head_threshold)
    metrics.update(run_facts(cfg, data, spec, model, fitted, device))
    metrics.update(long_tail_metrics(known["logits"].argmax(1), data.part_labels("test_known"),
                                     np.array(data.class_counts), data.known_names))
    if len(unknown["logits"]):
        metrics["knn_sweep"] = knn_sweep(train_pred, train_labels, known, unknown, cfg.seed)
    metrics.update(method_figures(cfg, data, model, fitted, device))
    return Evaluation(metrics, spec, threshold, head_threshold, known, unknown)


def run_facts(cfg: TrainConfig, data: RunData, spec: ModelSpec, model: nn.Module,
              fitted: Fitted, device: torch.device) -> dict:
    """What was trained, on what, for how long, on which machine."""
    split = data.split
    return {
        "method": cfg.method, "task": cfg.task,
        "score": spec.score if spec.detector == "none" else spec.detector,  # the served one
        "head_score": spec.score, "detector": spec.detector, "knn_k": cfg.detector.knn_k,
        "bank_size": min(cfg.detector.bank_size, len(split.train)),  # the suite's k-NN bank
        "dataset": data.dataset.name, "known_classes": data.known_names,
        "unknown_classes": data.unknown_names,
        "threshold_rule": f"accepts {cfg.accept_rate:.0%} of known validation images",
        "best_val_acc": max(h["val_acc"] for h in fitted.history),
        "input_shape": list(data.input_shape), "macs": count_macs(model, data.input_shape),
        "n_train": len(split.train), "n_val": len(split.val),
        "n_test_known": len(split.test_known), "n_test_unknown": len(split.test_unknown),
        "train_seconds": fitted.seconds, "augment": cfg.augment, "epochs_run": fitted.epochs,
        "sgd_steps": fitted.epochs * math.ceil(len(split.train) / cfg.batch_size),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "device": str(device)},
        "history": fitted.history,
        "imbalance": cfg.long_tail.imbalance, "loss": cfg.long_tail.loss,
        "resize": cfg.images.resize, "unreadable_files": len(data.dataset.skipped),
        "streamed": isinstance(data.dataset.images, FileImages), "workers": cfg.images.workers,
        "pretrained": cfg.transfer.pretrained, "head_epochs": cfg.transfer.head_epochs,
    }


def method_figures(cfg: TrainConfig, data: RunData, model: nn.Module, fitted: Fitted,
                   device: torch.device) -> dict:
    """M2m's per-class generation counts, SLA+AG's figures, the RKD teacher's."""
    figures = {}
    if fitted.m2m is not None:
        figures["m2m"] = {"g": cfg.long_tail.m2m.generator_run,
                          "start_epoch": cfg.long_tail.m2m.start_epoch,
                          "per_class": fitted.m2m.summary(data.known_names, data.class_counts)}
    if cfg.method == "sla":  # SLA+AG: M passes through the joint head, its own threshold
        figures["aggregated"] = aggregated_metrics(model, cfg, data, device)
    if fitted.teacher is not None:
        teacher_known = predict(fitted.teacher, data.images("test_known"), device)
        figures["teacher"] = {
            "run": cfg.rkd.teacher, "macs": count_macs(fitted.teacher, data.input_shape),
            "closed_acc": closed_set_accuracy(teacher_known["logits"].argmax(1),
                                              data.part_labels("test_known"))}
    return figures

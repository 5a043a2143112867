"""Shared fixtures: seeded RNGs, a tiny model per head type, a tiny seeded problem."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import ModelSpec, build_classifier  # noqa: E402
from train.config import TrainConfig  # noqa: E402


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def tiny_spec(method: str) -> ModelSpec:
    head = "linear" if method in ("softmax", "sla") else "reciprocal"  # sla: --sla-task softmax
    variant = method if method in ("rpl", "arpl") else "arpl"
    defaults = TrainConfig()  # the project's default head settings, on a tiny backbone
    return ModelSpec(arch="small_cnn", in_channels=1, num_classes=3, head=head, width=0.25,
                     variant=variant, points_per_class=defaults.reciprocal.points_per_class,
                     feature_scale=defaults.reciprocal.feature_scale,
                     sla_transform=defaults.sla.transform if method == "sla" else "none")


def training_inputs(method: str, images: torch.Tensor) -> torch.Tensor:
    """What the training loop feeds the model for `method` (SLA: its M transformed views)."""
    from models.sla import transform_views

    return transform_views(images, TrainConfig().sla.transform) if method == "sla" else images


@pytest.fixture
def tiny_problem():
    """Three linearly separable classes of 8x8 grey images: class k lights up column block k."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(8)  # 24
    images = 0.1 * torch.rand(24, 1, 8, 8, generator=generator)
    for i, k in enumerate(labels.tolist()):
        images[i, 0, :, 2 * k:2 * k + 3] += 0.8
    return images.clamp(0, 1), labels


@pytest.fixture
def tiny_model():
    return lambda method: build_classifier(tiny_spec(method))


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """One tiny trained run per method (digits, 8x8, 1 epoch) and its exported .onnx."""
    from export.onnx_export import export_onnx
    from train.cli import main as train_main

    root = tmp_path_factory.mktemp("runs")
    made = {}
    for method in ("softmax", "rpl", "arpl"):
        run_dir = root / method
        assert train_main(["--method", method, "--dataset", "digits", "--epochs", "1",
                           "--width", "0.25", "--batch-size", "128", "--out", str(run_dir)]) == 0
        report = export_onnx(run_dir, root / f"{method}.onnx", model_version="7")
        made[method] = (run_dir, root / f"{method}.onnx", report)
    return made

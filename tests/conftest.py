"""Fixtures: seeded RNGs, a tiny model per head type, a tiny seeded problem, tiny trained runs;
and which tests are slow. Plain helpers live in tests/helpers.py."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from models import build_classifier
# re-exported: tests import these from conftest
from tests.helpers import ROOT, TINY_RUN, tiny_spec, training_inputs, write_png  # noqa: F401

# `make test-fast` skips tests marked slow (pyproject.toml: starts TorchServe, trains past a few
# steps, or runs for seconds). Tests mark themselves; every test of the `server` fixture is
# marked here (test_serving.py: it trains 15 epochs and starts a real TorchServe), and of `ops`
# (test_operations.py: a real TorchServe under load).
SLOW_FIXTURES = {"server", "ops"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


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
    """One tiny trained run per method (TINY_RUN) and its exported .onnx."""
    from export.onnx_export import export_onnx
    from train.cli import main as train_main

    root = tmp_path_factory.mktemp("runs")
    made = {}
    for method in ("softmax", "rpl", "arpl"):
        run_dir = root / method
        assert train_main([*TINY_RUN, "--method", method, "--out", str(run_dir)]) == 0
        report = export_onnx(run_dir, root / f"{method}.onnx", model_version="7")
        made[method] = (run_dir, root / f"{method}.onnx", report)
    return made


@pytest.fixture
def folder(tmp_path):
    """An image folder for the batch scorers: 6 PNGs (one in a sub-folder) and a corrupt one."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        write_png(root / f"img{i}.png", 40 * i)
    write_png(root / "sub" / "nested.png", 255)
    (root / "broken.png").write_bytes(b"definitely not a png")
    return root

"""The CLI end to end: a tiny real run, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from train.cli import main


def test_tiny_run_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    code = main(["--method", "arpl", "--dataset", "digits", "--epochs", "2", "--width", "0.25",
                 "--batch-size", "128", "--known", "0,1,2,3,4,5", "--out", str(out)])
    assert code == 0
    for name in ("model.pt", "config.json", "metrics.json", "roc.png", "unknown_scores.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("closed_acc", "auroc", "oscr", "threshold", "train_seconds",
                "known_accept_rate", "unknown_reject_rate"):
        assert isinstance(metrics[key], float), key
    assert metrics["known_classes"] == ["0", "1", "2", "3", "4", "5"]
    assert metrics["unknown_classes"] == ["6", "7", "8", "9"]
    assert metrics["closed_acc"] > 0.5  # two epochs on digits already beat chance (1/6) by far
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "arpl" and config["epochs"] == 2


def test_softmax_run_reports_msp_and_mls(tmp_path):
    out = tmp_path / "run"
    assert main(["--method", "softmax", "--dataset", "digits", "--epochs", "1", "--width", "0.25",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["scores"]) == {"msp", "mls"}
    assert metrics["auroc"] == metrics["scores"]["mls"]["auroc"]  # MLS is served by default


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})


def bad_inputs(tmp_path):
    np.savez(tmp_path / "noxy.npz", images=np.zeros((3, 4, 4)))
    (tmp_path / "empty").mkdir()
    return [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--known", "0,1,12"], "--known names class '12'"),
        (["--dataset", f"folder:{tmp_path / 'empty'}"], "no images found"),
        (["--dataset", f"folder:{tmp_path / 'missing'}"], "not a directory"),
        (["--dataset", f"npz:{tmp_path / 'noxy.npz'}"], "missing array(s) ['x', 'y']"),
        (["--method", "svm"], "unknown method 'svm'"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--epochs", "many"], "invalid int value"),
    ]


def test_bad_input_gives_one_line_error_and_exit_2(tmp_path):
    for args, message in bad_inputs(tmp_path):
        result = run_cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("error: ")

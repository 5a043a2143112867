"""The CLIs end to end: tiny real runs, and one-line errors with exit code 2."""
import subprocess
import sys
import time

import numpy as np
import pytest

from export.archive import main as archive_main
from export.cli import main as export_main
from export.compare import main as compare_main
from rundir import RunDirectory
from tests.conftest import ROOT
from tests.helpers import TINY_RUN, exit_code, fake_run, open_set_figures, read_json
from train.cli import main


def test_tiny_run_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    start = time.perf_counter()
    code = main([*TINY_RUN, "--method", "arpl", "--epochs", "2",
                 "--known", "0,1,2,3,4,5", "--out", str(out)])
    elapsed = time.perf_counter() - start
    assert code == 0
    for name in ("model.pt", "config.json", "metrics.json", "split.npz", "roc.png",
                 "unknown_scores.png"):
        assert (out / name).is_file(), name
    metrics = read_json(out / "metrics.json")
    # the figures again, from the saved model on the saved test split
    model, checkpoint = RunDirectory(out).load_classifier()
    assert metrics["threshold"] == checkpoint.threshold
    expected = open_set_figures(model, out, checkpoint.threshold)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-6)
    assert expected["known_accept_rate"] > 0.5  # the 95% validation threshold carries over
    assert expected["closed_acc"] > 0.5  # two epochs on digits already beat chance (1/6) by far
    assert 0 < metrics["train_seconds"] < elapsed
    assert metrics["known_classes"] == ["0", "1", "2", "3", "4", "5"]
    assert metrics["unknown_classes"] == ["6", "7", "8", "9"]
    config = read_json(out / "config.json")
    assert config["method"] == "arpl" and config["epochs"] == 2


def test_softmax_run_reports_the_detector_suite(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY_RUN, "--method", "softmax", "--out", str(out)]) == 0
    metrics = read_json(out / "metrics.json")
    assert set(metrics["scores"]) == {"msp", "mls", "energy", "knn", "mahalanobis", "vim", "fusion"}
    assert metrics["score"] == "knn"  # the default served detector
    assert metrics["auroc"] == metrics["scores"]["knn"]["auroc"]
    assert metrics["knn_sweep"][f"k1_bank{metrics['bank_size']}"] == metrics["auroc"]


def test_detector_none_serves_the_head_score(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY_RUN, "--method", "softmax", "--detector", "none", "--score", "msp",
                 "--out", str(out)]) == 0
    metrics = read_json(out / "metrics.json")
    assert metrics["score"] == "msp" and metrics["auroc"] == metrics["scores"]["msp"]["auroc"]


@pytest.fixture
def bad_files(tmp_path):
    """The files the bad inputs below name, under tmp_path (`{tmp}` in their arguments)."""
    np.savez(tmp_path / "noxy.npz", images=np.zeros((3, 4, 4)))
    np.save(tmp_path / "plain.npy", np.zeros((3, 4, 4)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "extra.yaml").write_text("epochs: 3\nlearning_rate: 0.1\n")
    (tmp_path / "typed.yaml").write_text("epochs: 2.5\n")
    fake_run(tmp_path / "g3", ["0", "1", "2"], [1, 8, 8])
    fake_run(tmp_path / "g28", [str(i) for i in range(10)], [1, 28, 28])
    return tmp_path


LONG_TAIL_M2M = ["--dataset", "digits", "--num-known", "10", "--imbalance", "10", "--m2m"]
# (arguments, the whole stderr line without "error: "); digits, as mnist5k takes seconds to load
TRAIN_BAD_INPUTS = [
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--batch-size", "1"], "--batch-size must be >= 2 (batch norm), got 1"),
    (["--split-seed", "-1"], "--seed and --split-seed must be >= 0"),
    (["--dataset", "digits", "--num-known", "11"], "--num-known must be 2..10, got 11"),
    (["--dataset", "digits", "--known", "0,1,0"], "--known needs at least 2 distinct classes, got '0,1,0'"),
    (["--dataset", "npz:{tmp}/plain.npy"],
     "npz:{tmp}/plain.npy: a single .npy array, not an .npz archive with x and y"),
    (["--config", "{tmp}/extra.yaml"], "--config {tmp}/extra.yaml: unknown keys ['learning_rate']"),
    (["--config", "{tmp}/typed.yaml"],
     "argument --epochs: invalid int value: '2.5' (see python -m train --help)"),
    (["--config", "{tmp}/none.yaml"],
     "--config {tmp}/none.yaml: cannot read ([Errno 2] No such file or directory: '{tmp}/none.yaml')"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'; choose from mnist5k, digits, npz:PATH, "
                                "cifar10:PATH, cifar100:PATH, folder:PATH, list:PATH"),
    (["--dataset", "digits", "--known", "0,1,12"],
     "--known names class '12', which the dataset does not have (classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
    (["--dataset", "folder:{tmp}/empty"],
     "folder:{tmp}/empty: no images found (expected one sub-folder per class holding .bmp, .gif, "
     ".jpeg, .jpg, .png, .tif, .tiff, .webp files)"),
    (["--dataset", "folder:{tmp}/missing"], "folder:{tmp}/missing: not a directory"),
    (["--dataset", "npz:{tmp}/noxy.npz"],
     "npz:{tmp}/noxy.npz: missing array(s) ['x', 'y']; found ['images']"),
    (["--method", "svm"], "unknown method 'svm'; choose from softmax, rpl, arpl, sla"),
    (["--epochs", "0"], "--epochs must be > 0, got 0"),
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many' (see python -m train --help)"),
    (["--imbalance", "0.5"], "--imbalance must be >= 1 (n_max / n_min), got 0.5"),
    (["--cb-beta", "1"], "--cb-beta must be in [0, 1), got 1.0"),
    (["--cb-beta", "-0.1"], "--cb-beta must be in [0, 1), got -0.1"),
    (["--loss", "ldam"], "unknown loss 'ldam'; choose from ce, cb-softmax, cb-sigmoid, cb-focal"),
    (["--dataset", "digits", "--imbalance", "10", "--known", "0,1,2", "--imbalance-order", "2,1"],
     "--imbalance-order must list exactly the known classes ['0', '1', '2'], got '2,1'"),
    (["--dataset", "digits", "--imbalance", "10", "--imbalance-order", "x"],
     "--imbalance-order names ['x'], which are not classes of the dataset"),
    (["--method", "rpl", "--loss", "cb-focal"],
     "--loss cb-focal needs the linear head (--method softmax); rpl takes --loss ce or cb-softmax"),
    ([*LONG_TAIL_M2M, "--m2m-generator-run", "{tmp}/g3"],
     "--m2m-generator-run {tmp}/g3: trained on classes ['0', '1', '2'], this run has "
     "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']"),
    ([*LONG_TAIL_M2M, "--m2m-generator-run", "{tmp}/g28"],
     "--m2m-generator-run {tmp}/g28: input shape [1, 28, 28], this run has [1, 8, 8]"),
    ([*LONG_TAIL_M2M, "--m2m-generator-run", "{tmp}/empty"],
     "--m2m-generator-run {tmp}/empty: not a run directory (no model.pt)"),
]
OTHER_BAD_INPUTS = [  # (main, arguments, message) of the export-side CLIs
    (export_main, ["{tmp}", "--out", "{tmp}/x.onnx"], "{tmp}: not a run directory (no model.pt)"),
    (export_main, ["{tmp}", "--out", "{tmp}/x.onnx", "--calibration-images", "0"],
     "--calibration-images must be >= 1"),
    (export_main, ["{tmp}", "--out", "{tmp}/x.onnx", "--tolerance", "x"],
     "argument --tolerance: invalid float value: 'x' (see python -m export --help)"),
    (archive_main, ["{tmp}/none.onnx", "--name", "m", "--store", "{tmp}/store"],
     "{tmp}/none.onnx: no such model file"),
    (archive_main, ["{tmp}/plain.npy", "--name", "m", "--ort-threads", "0"],
     "--ort-threads and --top-k must be >= 1"),
    (archive_main, ["{tmp}/plain.npy"],
     "the following arguments are required: --name (see python -m export.archive --help)"),
    (compare_main, ["{tmp}/none.onnx", "{tmp}/plain.npy"], "{tmp}/none.onnx: no such model file"),
]


def case_id(args: list[str]) -> str:
    return " ".join(args).replace("{tmp}/", "")


@pytest.mark.parametrize(("args", "message"), TRAIN_BAD_INPUTS,
                         ids=[case_id(args) for args, _ in TRAIN_BAD_INPUTS])
def test_bad_train_input_is_one_line_and_exit_2(args, message, bad_files, capsys):
    argv = [arg.format(tmp=bad_files) for arg in args]
    assert exit_code(main, [*argv, "--out", str(bad_files / "out")]) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=bad_files)}\n"


@pytest.mark.parametrize(("cli", "args", "message"), OTHER_BAD_INPUTS,
                         ids=[f"{main.__module__} {case_id(args)}" for main, args, _ in OTHER_BAD_INPUTS])
def test_bad_export_input_is_one_line_and_exit_2(cli, args, message, bad_files, capsys):
    assert exit_code(cli, [arg.format(tmp=bad_files) for arg in args]) == 2
    assert capsys.readouterr().err == f"error: {message.format(tmp=bad_files)}\n"
    assert not (bad_files / "x.onnx").exists() and not (bad_files / "store").exists()


@pytest.mark.parametrize(("module", "args", "message"), [
    ("train", ["--epochs", "many"],
     "error: argument --epochs: invalid int value: 'many' (see python -m train --help)"),
    ("export", ["{tmp}", "--out", "{tmp}/x.onnx"], "error: {tmp}: not a run directory (no model.pt)"),
], ids=["train", "export"])
def test_entry_points_exit_2_with_one_line_and_no_traceback(module, args, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", module, *[a.format(tmp=tmp_path) for a in args]],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert (result.returncode, result.stderr) == (2, message.format(tmp=tmp_path) + "\n")


def test_config_file_supplies_defaults_and_flags_win(tmp_path):
    from train.cli import parse_config

    (tmp_path / "c.yaml").write_text("epochs: 7\nknown: [0, 2, 4]\nlr: 0.2\n")
    cfg, _ = parse_config(["--config", str(tmp_path / "c.yaml"), "--lr", "0.01"])
    assert (cfg.epochs, cfg.known, cfg.lr) == (7, "0,2,4", 0.01)

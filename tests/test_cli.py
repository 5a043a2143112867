"""The CLI end to end: a tiny real run, and one-line errors with exit code 2."""
import dataclasses
import json
import math
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
    for key in ("closed_acc", "auroc", "oscr", "known_accept_rate", "unknown_reject_rate"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert math.isfinite(metrics["threshold"]) and metrics["train_seconds"] > 0
    assert metrics["known_accept_rate"] > 0.5  # the 95% validation threshold carries over
    assert metrics["known_classes"] == ["0", "1", "2", "3", "4", "5"]
    assert metrics["unknown_classes"] == ["6", "7", "8", "9"]
    assert metrics["closed_acc"] > 0.5  # two epochs on digits already beat chance (1/6) by far
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "arpl" and config["epochs"] == 2


def test_softmax_run_reports_the_detector_suite(tmp_path):
    out = tmp_path / "run"
    assert main(["--method", "softmax", "--dataset", "digits", "--epochs", "1", "--width", "0.25",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["scores"]) == {"msp", "mls", "energy", "knn", "mahalanobis", "vim", "fusion"}
    assert metrics["score"] == "knn"  # the default served detector
    assert metrics["auroc"] == metrics["scores"]["knn"]["auroc"]
    assert metrics["knn_sweep"][f"k1_bank{metrics['bank_size']}"] == metrics["auroc"]


def test_detector_none_serves_the_head_score(tmp_path):
    out = tmp_path / "run"
    assert main(["--method", "softmax", "--dataset", "digits", "--epochs", "1", "--width", "0.25",
                 "--detector", "none", "--score", "msp", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["score"] == "msp" and metrics["auroc"] == metrics["scores"]["msp"]["auroc"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})


def fake_run(path, class_names, input_shape):
    """A run directory whose model.pt was trained on other data (for --m2m-g)."""
    import torch

    from models import build_classifier
    from tests.conftest import tiny_spec

    path.mkdir()
    torch.save({"model_spec": tiny_spec("softmax").to_dict(), "method": "softmax",
                "state_dict": build_classifier(tiny_spec("softmax")).state_dict(),
                "class_names": class_names, "input_shape": input_shape}, path / "model.pt")
    return str(path)


def bad_inputs(tmp_path):
    np.savez(tmp_path / "noxy.npz", images=np.zeros((3, 4, 4)))
    np.save(tmp_path / "plain.npy", np.zeros((3, 4, 4)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "extra.yaml").write_text("epochs: 3\nlearning_rate: 0.1\n")
    (tmp_path / "typed.yaml").write_text("epochs: 2.5\n")
    lt_digits = ["--dataset", "digits", "--num-known", "10", "--imbalance", "10", "--m2m"]
    return [
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        (["--split-seed", "-1"], "--seed and --split-seed must be >= 0"),
        (["--num-known", "11"], "--num-known must be 2..10"),
        (["--known", "0,1,0"], "at least 2 distinct classes"),
        (["--dataset", f"npz:{tmp_path / 'plain.npy'}"], "not an .npz archive"),
        (["--config", str(tmp_path / "extra.yaml")], "unknown keys ['learning_rate']"),
        (["--config", str(tmp_path / "typed.yaml")], "invalid int value: '2.5'"),
        (["--config", str(tmp_path / "none.yaml")], "cannot read"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--known", "0,1,12"], "--known names class '12'"),
        (["--dataset", f"folder:{tmp_path / 'empty'}"], "no images found"),
        (["--dataset", f"folder:{tmp_path / 'missing'}"], "not a directory"),
        (["--dataset", f"npz:{tmp_path / 'noxy.npz'}"], "missing array(s) ['x', 'y']"),
        (["--method", "svm"], "unknown method 'svm'"),
        (["--epochs", "0"], "--epochs must be > 0"),
        (["--epochs", "many"], "invalid int value"),
        (["--imbalance", "0.5"], "--imbalance must be >= 1"),
        (["--cb-beta", "1"], "--cb-beta must be in [0, 1)"),
        (["--cb-beta", "-0.1"], "--cb-beta must be in [0, 1)"),
        (["--loss", "ldam"], "unknown loss 'ldam'"),
        (["--dataset", "digits", "--imbalance", "10", "--known", "0,1,2", "--imbalance-order", "2,1"],
         "--imbalance-order must list exactly the known classes ['0', '1', '2']"),
        (["--dataset", "digits", "--imbalance", "10", "--imbalance-order", "x"],
         "--imbalance-order names ['x']"),
        (["--method", "rpl", "--loss", "cb-focal"], "--loss cb-focal needs the linear head"),
        (lt_digits + ["--m2m-g", fake_run(tmp_path / "g3", ["0", "1", "2"], [1, 8, 8])],
         "trained on classes ['0', '1', '2']"),
        (lt_digits + ["--m2m-g", fake_run(tmp_path / "g28", [str(i) for i in range(10)], [1, 28, 28])],
         "input shape [1, 28, 28], this run has [1, 8, 8]"),
        (lt_digits + ["--m2m-g", str(tmp_path / "empty")], "not a run directory (no model.pt)"),
    ]


def test_bad_input_gives_one_line_error_and_exit_2(tmp_path):
    for args, message in bad_inputs(tmp_path):
        result = run_cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("error: ")


def test_config_file_supplies_defaults_and_flags_win(tmp_path):
    from train.cli import parse_config

    (tmp_path / "c.yaml").write_text("epochs: 7\nknown: [0, 2, 4]\nlr: 0.2\n")
    cfg, _ = parse_config(["--config", str(tmp_path / "c.yaml"), "--lr", "0.01"])
    assert (cfg.epochs, cfg.known, cfg.lr) == (7, "0,2,4", 0.01)


def test_tiny_protocol_writes_the_table(tmp_path):
    from train.protocol import main as protocol_main

    out = tmp_path / "protocol"
    assert protocol_main(["--dataset", "digits", "--splits", "2", "--epochs", "1", "--width",
                          "0.25", "--batch-size", "128", "--out", str(out)]) == 0
    table = (out / "protocol.md").read_text()
    for row in ("softmax (msp)", "softmax (mls)", "softmax (knn)", "rpl (knn)", "arpl (knn)"):
        assert f"| {row} |" in table
    saved = json.loads((out / "protocol.json").read_text())
    summary = saved["summary"]
    aurocs = summary["arpl (knn)"]["auroc"]["values"]
    assert len(aurocs) == 2 and summary["arpl (knn)"]["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert (out / "protocol.png").is_file() and (out / "split1" / "rpl" / "metrics.json").is_file()
    # the detector table: every suite detector, and the paired count recomputed from the runs
    assert "| method (served) | msp | mls | energy | knn | mahalanobis | vim | fusion |" in table
    runs = {(r["method"], r["split_seed"]): r["scores"] for r in saved["per_run"]}
    wins = sum(runs[("arpl", s)]["knn"]["auroc"] > runs[("softmax", s)]["msp"]["auroc"] for s in (0, 1))
    assert f"- arpl (knn) above softmax (msp) on {wins}/2 (split, seed) pairs" in table
    k1 = [r["knn_sweep"]["k1_bank64"] for r in saved["per_run"] if r["method"] == "arpl"]
    assert saved["knn_sweep"]["arpl"]["k1_bank64"] == pytest.approx(np.mean(k1))
    assert (out / "protocol_knn_bank.png").is_file()


def test_protocol_with_two_training_seeds(tmp_path):
    from train.protocol import main as protocol_main

    out = tmp_path / "seeds"
    assert protocol_main(["--dataset", "digits", "--splits", "1", "--epochs", "1", "--width",
                          "0.25", "--batch-size", "128", "--methods", "softmax",
                          "--train-seeds", "0,3", "--out", str(out)]) == 0
    runs = json.loads((out / "protocol.json").read_text())["runs"]["softmax (msp)"]
    assert [r["seed"] for r in runs] == [0, 3]
    assert (out / "seed3" / "split0" / "softmax" / "metrics.json").is_file()
    assert protocol_main(["--train-seeds", "0,x", "--out", str(out)]) == 2


def test_closed_set_protocol_with_sla_rows_and_resume(tmp_path, capsys):
    from train.protocol import main as protocol_main

    out = tmp_path / "closed"
    args = ["--dataset", "digits", "--num-known", "10", "--methods", "softmax,sla", "--splits", "2",
            "--seed-per-split", "--epochs", "1", "--width", "0.25", "--batch-size", "128",
            "--out", str(out)]
    assert protocol_main(args) == 0
    summary = json.loads((out / "protocol.json").read_text())
    assert set(summary["summary"]) == {"softmax (knn)", "sla-softmax+SD (knn)", "sla-softmax+AG (mls)"}
    assert summary["summary"]["softmax (knn)"]["auroc"]["mean"] is None  # closed set
    assert [r["seed"] for r in summary["runs"]["sla-softmax+SD (knn)"]] == [0, 1]
    assert "| sla-softmax+AG (mls) |" in (out / "protocol.md").read_text()
    # the validation accuracy of each selected checkpoint rides along, for choosing settings
    sla = [json.loads((out / f"split{s}" / "sla" / "metrics.json").read_text()) for s in (0, 1)]
    assert summary["summary"]["sla-softmax+SD (knn)"]["val_acc"]["values"] == [
        m["best_val_acc"] for m in sla]
    assert summary["summary"]["sla-softmax+AG (mls)"]["val_acc"]["values"] == [
        m["aggregated"]["val_acc"] for m in sla]
    first = (out / "split1" / "sla" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert protocol_main([*args, "--resume"]) == 0  # nothing retrained, same table
    assert (out / "split1" / "sla" / "metrics.json").stat().st_mtime_ns == first
    assert json.loads((out / "protocol.json").read_text())["summary"] == summary["summary"]
    assert protocol_main([*args, "--resume", "--sla-temperature", "2"]) == 0  # a new config: retrains
    assert (out / "split1" / "sla" / "metrics.json").stat().st_mtime_ns != first


def test_finished_run_matches_configs_and_treats_newer_settings_as_defaults(tmp_path):
    from train.config import TrainConfig
    from train.run import finished_run

    cfg = TrainConfig(out=str(tmp_path), epochs=3)
    assert finished_run(cfg) is None  # nothing there yet
    saved = {k: v for k, v in cfg.to_dict().items() if k not in ("imbalance", "m2m")}  # older run
    (tmp_path / "config.json").write_text(json.dumps({**saved, "out": "elsewhere", "score": "mls"}))
    (tmp_path / "metrics.json").write_text('{"closed_acc": 0.5}')
    assert finished_run(cfg) == {"closed_acc": 0.5}
    assert finished_run(dataclasses.replace(cfg, epochs=4)) is None
    assert finished_run(dataclasses.replace(cfg, imbalance=10.0)) is None
    assert finished_run(dataclasses.replace(cfg, score="msp")) is None
    # SLA's settings change only SLA runs: a plain run is reused across them, an SLA run is not
    assert finished_run(dataclasses.replace(cfg, sla_temperature=4.0)) == {"closed_acc": 0.5}
    sla = dataclasses.replace(cfg, method="sla", out=str(tmp_path / "sla"))
    (tmp_path / "sla").mkdir()
    (tmp_path / "sla" / "config.json").write_text(json.dumps(sla.to_dict()))
    (tmp_path / "sla" / "metrics.json").write_text('{"closed_acc": 0.7}')
    assert finished_run(sla) == {"closed_acc": 0.7}
    assert finished_run(dataclasses.replace(sla, sla_temperature=4.0)) is None


def test_finished_run_before_the_detector_suite_served_its_head_score(tmp_path):
    from train.config import TrainConfig
    from train.run import finished_run

    cfg = TrainConfig(out=str(tmp_path))
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("detector", "knn_k", "bank_size")}
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "metrics.json").write_text('{"closed_acc": 0.5}')
    assert finished_run(cfg) is None  # today's default serves k-NN; that run did not
    assert finished_run(dataclasses.replace(cfg, detector="none")) == {"closed_acc": 0.5}


def test_longtail_cells_name_their_method():
    from pathlib import Path

    from train.config import TrainConfig
    from train.longtail import variant_config

    cfg = variant_config(TrainConfig(method="softmax"), "arpl:la-drs", 100.0, 2, Path("o"), None)
    assert (cfg.method, cfg.logit_adjust, cfg.drs, cfg.loss, cfg.m2m) == ("arpl", 1.0, True, "ce", False)
    assert (cfg.imbalance, cfg.seed, cfg.split_seed) == (100.0, 2, 2)
    assert cfg.out == str(Path("o") / "rho100" / "seed2" / "arpl-la-drs")
    plain = variant_config(TrainConfig(method="softmax"), "cb-softmax", 10.0, 0, Path("o"), None)
    assert (plain.method, plain.loss, plain.logit_adjust, plain.drs) == ("softmax", "cb-softmax", 0.0, False)

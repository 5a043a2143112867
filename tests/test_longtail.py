"""Long-tailed splits, long-tail metrics, and tiny end-to-end runs with --imbalance / --loss / --m2m
(the long-tail study: tests/test_studies.py)."""
import json

import numpy as np
import pytest

from train.cli import main
from cli_errors import UserError
from train.metrics import balanced_accuracy, long_tail_metrics, per_class_recall, shot_groups
from data.splits import long_tail_counts, long_tail_subset, open_set_split

LABELS = np.repeat(np.arange(10), 50)


def test_long_tail_counts_follow_the_exponential_profile():
    # n_i = floor(350 * (1/rho)^(i/9)), the mnist5k-LT training counts
    assert long_tail_counts(350, 100, 10) == [350, 209, 125, 75, 45, 27, 16, 9, 5, 3]
    assert long_tail_counts(350, 10, 10) == [350, 270, 209, 162, 125, 97, 75, 58, 45, 35]
    assert long_tail_counts(500, 100, 3) == [500, 50, 5]  # n_min = n_max / rho exactly
    assert long_tail_counts(40, 1, 4) == [40, 40, 40, 40]
    assert long_tail_counts(10, 1000, 3) == [10, 1, 1]  # never below one image


def test_long_tail_counts_reject_rho_below_one():
    with pytest.raises(UserError, match="--imbalance must be >= 1"):
        long_tail_counts(350, 0.5, 10)


def test_long_tail_subset_keeps_the_counts_in_the_given_order():
    split = open_set_split(LABELS, tuple(range(10)), 0)  # 35 training images per class
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # class 9 most frequent
    kept = long_tail_subset(split.train, LABELS, 10, order, seed=0)
    counts = np.bincount(LABELS[kept], minlength=10)
    assert counts[order].tolist() == long_tail_counts(35, 10, 10)
    assert set(kept) <= set(split.train)
    again = long_tail_subset(split.train, LABELS, 10, order, seed=0)
    other = long_tail_subset(split.train, LABELS, 10, order, seed=1)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)
    with pytest.raises(UserError, match="must list each training class once"):
        long_tail_subset(split.train, LABELS, 10, [0, 1, 2], seed=0)


def test_balanced_accuracy_and_per_class_recall_by_hand():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    assert per_class_recall(predictions, labels, 3).tolist() == [0.75, 0.5, 1.0]
    assert balanced_accuracy(predictions, labels, 3) == pytest.approx(0.75)
    assert np.mean(predictions == labels) == pytest.approx(6 / 8)  # plain accuracy differs when
    assert balanced_accuracy(predictions[:6], labels[:6], 3) == pytest.approx(0.625)  # unbalanced


def test_shot_groups_on_mnist5k_long_tails_are_never_empty():
    rho100 = shot_groups(long_tail_counts(350, 100, 10))
    assert rho100 == {"many": [0, 1, 2], "medium": [3, 4], "few": [5, 6, 7, 8, 9]}
    rho10 = shot_groups(long_tail_counts(350, 10, 10))
    assert rho10 == {"many": [0, 1, 2, 3, 4], "medium": [5, 6, 7, 8], "few": [9]}


def test_long_tail_metrics_group_accuracy_is_mean_recall_of_its_classes():
    labels = np.repeat(np.arange(3), 10)
    predictions = labels.copy()
    predictions[20:25] = 0  # class 2 (the few-shot one): recall 0.5
    metrics = long_tail_metrics(predictions, labels, np.array([200, 50, 5]), ["a", "b", "c"])
    assert metrics["balanced_acc"] == pytest.approx(0.5 / 3 + 2 / 3)
    assert metrics["per_class_recall"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert metrics["shot_groups"]["few"] == {"classes": ["c"], "acc": 0.5}
    assert metrics["shot_groups"]["many"]["acc"] == 1.0
    assert metrics["train_counts"] == {"a": 200, "b": 50, "c": 5}


def test_imbalanced_run_writes_long_tail_metrics_and_keeps_test_balanced(tmp_path):
    args = ["--method", "softmax", "--dataset", "digits", "--epochs", "1", "--width", "0.25",
            "--batch-size", "64", "--num-known", "10"]
    assert main(args + ["--imbalance", "10", "--imbalance-order", "9,8,7,6,5,4,3,2,1,0",
                        "--loss", "cb-focal", "--out", str(tmp_path / "lt")]) == 0
    metrics = json.loads((tmp_path / "lt" / "metrics.json").read_text())
    counts = metrics["train_counts"]
    assert counts["9"] == max(counts.values()) and counts["0"] == min(counts.values())
    assert counts["9"] / counts["0"] == pytest.approx(10, rel=0.1)
    assert metrics["loss"] == "cb-focal" and metrics["imbalance"] == 10
    recall = metrics["per_class_recall"]
    assert len(recall) == 10  # balanced accuracy is the mean per-class recall
    assert metrics["balanced_acc"] == pytest.approx(sum(recall.values()) / 10, abs=1e-12)
    assert (tmp_path / "lt" / "per_class_recall.png").is_file()
    assert main(args + ["--out", str(tmp_path / "flat")]) == 0
    flat = json.loads((tmp_path / "flat" / "metrics.json").read_text())
    assert metrics["n_train"] < flat["n_train"]  # only training shrinks
    assert (metrics["n_val"], metrics["n_test_known"]) == (flat["n_val"], flat["n_test_known"])


def test_m2m_run_trains_g_first_and_logs_generation_per_class(tmp_path, capsys):
    out = tmp_path / "m2m"
    assert main(["--method", "softmax", "--dataset", "digits", "--epochs", "2", "--width", "0.25",
                 "--batch-size", "64", "--num-known", "10", "--imbalance", "20", "--m2m",
                 "--m2m-start-epoch", "1", "--m2m-steps", "2", "--m2m-gamma", "0",
                 "--out", str(out)]) == 0
    assert (out / "g" / "model.pt").is_file()  # g trained with plain CE on the same data
    g_config = json.loads((out / "g" / "config.json").read_text())
    long_tail = g_config["long_tail"]
    assert (g_config["method"], long_tail["loss"], long_tail["m2m"]["enabled"],
            long_tail["imbalance"]) == ("softmax", "ce", False, 20)
    metrics = json.loads((out / "metrics.json").read_text())
    per_class = metrics["m2m"]["per_class"]
    assert per_class["0"]["generated"] == 0  # the head class is never a generation target
    assert per_class["9"]["generated"] > 0 and per_class["9"]["train_count"] == min(
        row["train_count"] for row in per_class.values())
    for row in per_class.values():
        assert 0 <= row["accepted"] <= row["generated"]
    assert sum(row["accepted"] for row in per_class.values()) > 0  # gamma 0: only the coin
    g_metrics = json.loads((out / "g" / "metrics.json").read_text())
    assert metrics["m2m"]["g"] == str(out / "g")
    assert metrics["m2m"]["g_train_seconds"] == g_metrics["train_seconds"]
    config = json.loads((out / "config.json").read_text())  # as asked: g left to the run
    assert config["long_tail"]["m2m"]["generator_run"] is None
    assert "m2m: class 9" in capsys.readouterr().out


def test_m2m_is_a_switch_on_the_command_line_and_in_yaml(tmp_path):
    from train.cli import parse_config

    assert parse_config([])[0].long_tail.m2m.enabled is False
    assert parse_config(["--m2m"])[0].long_tail.m2m.enabled is True
    (tmp_path / "c.yaml").write_text("m2m: true\ncb_beta: 0.99\n")
    cfg, _ = parse_config(["--config", str(tmp_path / "c.yaml")])
    assert (cfg.long_tail.m2m.enabled, cfg.long_tail.cb_beta) == (True, 0.99)
    switched_off, _ = parse_config(["--config", str(tmp_path / "c.yaml"), "--no-m2m"])
    assert switched_off.long_tail.m2m.enabled is False

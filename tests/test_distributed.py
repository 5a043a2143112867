"""Training under torchrun (train/distributed.py): shards, the world-size checks, and real
2-process jobs on tiny data against a 1-process run with the same settings."""
import json
import os
import subprocess
import sys

import pytest
import torch

from cli_errors import UserError
from export.cli import main as export_main
from handlers.predictor import Predictor
from tests.conftest import ROOT
from train.cli import main as train_main
from train.config import TrainConfig
from train.distributed import SINGLE, Context, epoch_order, shard_report

TINY = ["--dataset", "digits", "--epochs", "3", "--width", "0.25", "--batch-size", "64"]
# 1 vs 2 processes at these settings, seeds 0 and 1: |d acc| <= 0.01, |d AUROC| <= 0.01 measured;
# the seed-to-seed spread of one process is as large, so the test allows 0.03
TOLERANCE = 0.03


def test_ranks_train_disjoint_shards_that_change_every_epoch():
    shards = {}
    for epoch in (0, 1):
        parts = [epoch_order(101, epoch, 7, Context(rank, 2), torch.Generator()) for rank in (0, 1)]
        assert [len(part) for part in parts] == [50, 50]  # drop_last: 1 of 101 skipped
        assert shard_report(parts, 101) == {"per_rank": [50, 50], "shared": 0, "skipped": 1}
        shards[epoch] = parts[0]
    assert not torch.equal(shards[0], shards[1])


def test_one_process_keeps_its_single_process_order():
    got = epoch_order(10, 3, 7, SINGLE, torch.Generator().manual_seed(5))
    assert torch.equal(got, torch.randperm(10, generator=torch.Generator().manual_seed(5)))


def test_shard_report_counts_shared_and_skipped_images():
    report = shard_report([torch.tensor([0, 1, 2]), torch.tensor([2, 3])], 6)
    assert report == {"per_rank": [3, 2], "shared": 1, "skipped": 2}


@pytest.mark.parametrize("changes, world, message", [
    ({"batch_size": 63}, 2, "--batch-size 63 is the global batch: it must split evenly over the 2 processes"),
    ({"batch_size": 4}, 4, "--batch-size 4 leaves 1 image(s) per process; BatchNorm needs >= 2"),
    ({"device": "cuda:1"}, 2, "--device cuda:1 under torchrun: pass --device cuda"),
])
def test_settings_that_do_not_split_over_the_processes_are_refused(changes, world, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig().override(**changes).check_world_size(world)
    TrainConfig().override(**changes).check_world_size(1)  # one process: no constraint


# failures of torchrun's own rendezvous / gloo connections on a loaded shared machine (a port
# taken between torchrun choosing it and binding it, a peer connection reset), never ours
LAUNCH_ERRORS = ("EADDRINUSE", "address already in use", "DistNetworkError",
                 "RendezvousConnectionError", "Connection reset by peer", "Connection refused",
                 "Connection closed by peer")


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone` on this machine; one retry when the launch itself failed
    (LAUNCH_ERRORS, and no `error:` line of ours)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "train", *args]
    for _ in range(2):
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
        launch_failed = (result.returncode != 0 and "\nerror: " not in "\n" + result.stderr
                         and any(text in result.stderr for text in LAUNCH_ERRORS))
        if not launch_failed:
            break
    return result


def failure(result: subprocess.CompletedProcess) -> str:
    """The lines of a failed job that say why (the workers' own, before torchrun's report)."""
    keys = ("rror", "terminate", "what()", "abort", "Exception", "exitcode")
    return "\n".join(line for line in result.stderr.splitlines() if any(k in line for k in keys))[-3000:]


@pytest.mark.slow
def test_two_processes_train_one_model_like_one_process(tmp_path):
    result = torchrun(*TINY, "--out", str(tmp_path / "ddp"))
    assert result.returncode == 0, failure(result)
    assert result.stdout.count("run written to") == 1  # rank 0 reports, rank 1 stays quiet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # one run directory
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert (metrics["machine"]["world_size"], metrics["machine"]["backend"]) == (2, "gloo")
    assert metrics["machine"]["per_process_batch"] == 32
    n_train = metrics["n_train"]
    for epoch in metrics["history"]:  # disjoint shards covering all but n_train % 2 images,
        assert epoch["shards"] == {"per_rank": [n_train // 2] * 2, "shared": 0,  # one model
                                   "skipped": n_train % 2, "replicas_equal": True}

    assert export_main([str(tmp_path / "ddp"), "--out", str(tmp_path / "ddp.onnx")]) == 0
    predictor = Predictor(tmp_path / "ddp.onnx")
    assert predictor.info.class_names == tuple(metrics["known_classes"])

    assert train_main([*TINY, "--out", str(tmp_path / "one")]) == 0
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert single["machine"]["world_size"] == 1 and "shards" not in single["history"][0]
    assert abs(metrics["closed_acc"] - single["closed_acc"]) <= TOLERANCE
    assert abs(metrics["auroc"] - single["auroc"]) <= TOLERANCE


@pytest.mark.slow
def test_m2m_under_two_processes_sums_the_generation_counts(tmp_path):
    result = torchrun("--method", "softmax", "--dataset", "digits", "--epochs", "2", "--width",
                      "0.25", "--num-known", "10", "--imbalance", "10", "--m2m",
                      "--m2m-start-epoch", "1", "--m2m-steps", "1", "--m2m-gamma", "0",
                      "--detector", "none", "--out", str(tmp_path / "m2m"))
    assert result.returncode == 0, failure(result)
    metrics = json.loads((tmp_path / "m2m" / "metrics.json").read_text())
    counts = list(metrics["train_counts"].values())
    # one M2m epoch sees n_train - n_train % 2 images over both ranks, each slot a class drawn
    # uniformly and generated with probability 1 - N_k / N_max: the expected total of both
    seen = metrics["n_train"] - metrics["n_train"] % 2
    expected = seen / len(counts) * sum(1 - n / max(counts) for n in counts)
    generated = sum(row["generated"] for row in metrics["m2m"]["per_class"].values())
    assert generated == pytest.approx(expected, rel=0.15)  # one rank's counts alone: ~half
    assert (tmp_path / "m2m" / "g" / "model.pt").is_file()  # the steering run, also by rank 0


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    # checked before the process group starts
    (["--batch-size", "3", "--out", "{tmp}/run"],
     "--batch-size 3 is the global batch: it must split evenly over the 2 processes"),
    # found by rank 0 alone (it creates the run directory) and broadcast to the other rank
    (["--out", "{tmp}/file/run"], "--out {tmp}/file/run: cannot create directory (Not a directory)"),
])
def test_a_bad_setting_stops_every_rank_with_one_line_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "file").write_text("")
    result = torchrun("--dataset", "digits", *[arg.format(tmp=tmp_path) for arg in args])
    assert result.returncode != 0
    # each rank's one line and exit code 2 (torchrun adds its own failure report)
    assert result.stderr.count(f"error: {message.format(tmp=tmp_path)}\n") == 2
    assert "exitcode  : 2" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

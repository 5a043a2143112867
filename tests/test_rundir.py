"""The run directory (rundir.py) and the nested training config that it stores."""
import json

import numpy as np
import pytest
import torch

from cli_errors import UserError
from data.datasets import load_dataset
from data.splits import open_set_split
from models import build_classifier
from rundir import Checkpoint, RunDirectory, RunDirError, ScaledPixels
from tests.conftest import tiny_spec
from train.config import SETTINGS, TrainConfig, from_flat
from train.run import finished_run


def checkpoint(**changes) -> Checkpoint:
    model = build_classifier(tiny_spec("arpl"))
    values = dict(model_spec=tiny_spec("arpl").to_dict(), state_dict=model.state_dict(),
                  class_names=["a", "b", "c"], input_shape=[1, 8, 8], method="arpl",
                  threshold=0.25, threshold_rule="test")
    return Checkpoint(**{**values, **changes})


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path):
    written = checkpoint(head_threshold=0.5)
    RunDirectory(tmp_path).write_checkpoint(written)
    classifier, read = RunDirectory(tmp_path).load_classifier()
    assert (read.threshold, read.head_threshold, read.class_names) == (0.25, 0.5, ["a", "b", "c"])
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(classifier(images)["logits"], written.classifier()(images)["logits"])
    assert not classifier.training


@pytest.mark.parametrize("damage, message", [
    (lambda path: None, "not a run directory (no model.pt)"),
    (lambda path: (path / "model.pt").write_text("not a checkpoint"), "cannot load model.pt"),
    (lambda path: torch.save({"model_spec": {}}, path / "model.pt"),
     "the checkpoint lacks state_dict, class_names, input_shape, method, threshold, "
     "threshold_rule (re-run training)"),
])
def test_a_bad_run_directory_names_what_is_wrong(tmp_path, damage, message):
    damage(tmp_path)
    with pytest.raises(RunDirError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunDirectory(tmp_path).read_checkpoint()
    assert issubclass(RunDirError, UserError)  # every CLI turns it into one line, exit 2


def test_split_round_trip_and_the_images_it_selects(tmp_path):
    data = load_dataset("digits")
    split = open_set_split(data.labels, (0, 1, 2, 3, 4, 5), 3)
    directory = RunDirectory(tmp_path)
    directory.write(checkpoint(), {"dataset": "digits"}, {"closed_acc": 1.0}, split)
    read = directory.read_split()
    assert read.known_classes == split.known_classes
    for part in ("train", "val", "test_known", "test_unknown"):
        assert np.array_equal(getattr(read, part), getattr(split, part))
    images = directory.split_images()
    assert np.array_equal(images["test_known"], data.images[split.test_known] / np.float32(255))
    assert np.array_equal(images["test_labels"], split.relabel(data.labels)[split.test_known])
    assert len(images["test_unknown"]) == len(split.test_unknown) > 0


class Recorded:
    """uint8 images that record how many each read asks for."""

    def __init__(self, images: np.ndarray):
        self.images, self.reads = images, []

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        self.reads.append(len(indices))
        return self.images[indices]


def test_the_test_split_is_scaled_a_slice_at_a_time(runs):
    from export.quantize import evaluate

    data = load_dataset("digits")
    recorded, indices = Recorded(data.images), np.arange(10, 310)
    pixels = ScaledPixels(recorded, indices)
    batch = pixels[100:164]
    assert batch.dtype == np.float32 and recorded.reads == [64]
    assert np.array_equal(batch, data.images[110:174] / np.float32(255))
    assert len(pixels) == 300 and np.array_equal(np.asarray(pixels), data.images[10:310] / np.float32(255))
    # the int8 gate's evaluation reads the test split batch by batch, never all of it at once
    _, onnx, _ = runs["arpl"]
    split = {"test_known": ScaledPixels(recorded, indices[:200]), "test_labels": data.labels[10:210] % 3,
             "test_unknown": ScaledPixels(recorded, indices[200:])}
    recorded.reads.clear()
    figures = evaluate(onnx, split, batch_size=64)
    assert recorded.reads == [64, 64, 64, 8, 64, 36] and 0 <= figures["closed_acc"] <= 1
    recorded.reads.clear()
    assert evaluate(onnx, split) == pytest.approx(figures)  # 8 x 8 grey: the default batch is 256
    assert recorded.reads == [200, 100]


def test_a_run_without_split_npz_or_a_config_that_redraws_it_is_named(tmp_path):
    RunDirectory(tmp_path).write(checkpoint(), {"dataset": "digits"}, {})
    with pytest.raises(RunDirError, match="no split.npz"):
        RunDirectory(tmp_path).read_split()


def test_flat_names_are_the_flags_and_round_trip():
    cfg = TrainConfig().override(sla_task="rpl", m2m=True, m2m_generator_run="g", m2m_lambda=0.3,
                                 detector="vim", teacher="t", imbalance=10.0, points_per_class=2)
    assert (cfg.sla.task, cfg.long_tail.m2m.enabled, cfg.long_tail.m2m.generator_run) == ("rpl", True, "g")
    assert (cfg.long_tail.m2m.seed_weight, cfg.detector.name, cfg.rkd.teacher) == (0.3, "vim", "t")
    assert (cfg.long_tail.imbalance, cfg.reciprocal.points_per_class) == (10.0, 2)
    assert from_flat(cfg.flat()) == cfg and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert len({item.name for item in SETTINGS}) == len(SETTINGS)  # one place per flag
    with pytest.raises(TypeError, match="unknown settings"):
        cfg.override(m2m_g="old name")


def write_config(path, config: dict, metrics: dict) -> None:
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_finished_run_matches_configs_and_treats_newer_settings_as_defaults(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), epochs=3)
    assert finished_run(cfg) is None  # nothing there yet
    write_config(tmp_path, cfg.override(out="elsewhere", score="mls").to_dict(), {"closed_acc": 0.5})
    assert finished_run(cfg) == {"closed_acc": 0.5}
    assert finished_run(cfg.override(epochs=4)) is None
    assert finished_run(cfg.override(imbalance=10.0)) is None
    assert finished_run(cfg.override(score="msp")) is None
    # SLA's settings change only SLA runs: a plain run is reused across them, an SLA run is not
    assert finished_run(cfg.override(sla_temperature=4.0)) == {"closed_acc": 0.5}
    sla = cfg.override(method="sla", out=str(tmp_path / "sla"))
    write_config(tmp_path / "sla", sla.to_dict(), {"closed_acc": 0.7})
    assert finished_run(sla) == {"closed_acc": 0.7}
    assert finished_run(sla.override(sla_temperature=4.0)) is None


def test_finished_run_reads_the_flat_config_of_older_runs(tmp_path):
    cfg = TrainConfig(out=str(tmp_path))
    old = {k: v for k, v in cfg.flat().items() if k not in ("detector", "knn_k", "bank_size",
                                                            "m2m_generator_run")}
    write_config(tmp_path, {**old, "m2m_g": None}, {"closed_acc": 0.5})
    assert finished_run(cfg) is None  # today's default serves k-NN; that run did not
    assert finished_run(cfg.override(detector="none")) == {"closed_acc": 0.5}


@pytest.mark.parametrize("name, content, message", [
    ("split.npz", b"not a zip", "cannot read split.npz"),
    ("config.json", b"[]", "config.json is not a JSON object"),
])
def test_damaged_split_or_config_is_a_run_dir_error(tmp_path, name, content, message):
    RunDirectory(tmp_path).write(checkpoint(), {"dataset": "digits"}, {"known_classes": ["0"]})
    (tmp_path / name).write_bytes(content)
    with pytest.raises(RunDirError, match=message):
        RunDirectory(tmp_path).read_split()


def test_a_run_before_split_npz_redraws_its_split_from_config(tmp_path):
    data = load_dataset("digits")
    split = open_set_split(data.labels, (1, 3, 5, 7), 2)
    config = {"dataset": "digits", "split_seed": 2, "val_fraction": 0.1, "test_fraction": 0.2}
    RunDirectory(tmp_path).write(checkpoint(), config, {"known_classes": ["1", "3", "5", "7"]})
    read = RunDirectory(tmp_path).read_split()
    assert read.known_classes == (1, 3, 5, 7) and np.array_equal(read.test_known, split.test_known)


def test_the_old_m2m_flag_name_still_works(tmp_path):
    from train.cli import parse_config

    cfg, _ = parse_config(["--m2m", "--m2m-g", "runs/g"])
    assert cfg.long_tail.m2m.generator_run == "runs/g"
    (tmp_path / "old.yaml").write_text("m2m: true\nm2m_g: runs/h\n")
    cfg, _ = parse_config(["--config", str(tmp_path / "old.yaml")])
    assert cfg.long_tail.m2m.generator_run == "runs/h"
    assert TrainConfig.from_dict({"m2m_g": "runs/g"}).long_tail.m2m.generator_run == "runs/g"


def test_a_config_section_that_is_not_a_mapping_is_named():
    with pytest.raises(UserError, match="config section 'rkd' must be a mapping, got 3"):
        TrainConfig.from_dict({"sla": {"task": "rpl"}, "rkd": 3})


def test_the_train_cli_names_out_and_writes_nothing_for_bad_data(tmp_path, capsys):
    from train.cli import main

    (tmp_path / "file").write_text("")
    assert main(["--dataset", "digits", "--out", str(tmp_path / "file" / "run")]) == 2
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'file' / 'run'}: cannot create "
                                       "directory (Not a directory)\n")
    assert main(["--dataset", f"npz:{tmp_path / 'missing.npz'}", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()  # the data stage fails before the run directory exists

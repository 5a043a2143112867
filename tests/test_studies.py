"""The study driver and its three studies (protocol, long tail, RKD): tiny real studies on
digits (1-2 epochs), the one summary rule, and --resume."""
import re
from pathlib import Path

import numpy as np
import pytest

from studies import longtail, protocol, rkd
from studies.detectors import detector_table
from studies.driver import stats_text, summarise, summarise_runs
from train.config import TrainConfig

from tests.helpers import TINY_RUN as TINY
from tests.helpers import read_json as read


# -- the one summary rule ------------------------------------------------------------------

def test_summary_rule_counts_only_the_runs_that_define_a_figure():
    stats = summarise([0.5, None, 0.7])  # e.g. a val acc that one (older) run never recorded
    assert stats["mean"] == pytest.approx(0.6) and stats["n"] == 2
    assert stats["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert stats["values"] == [0.5, None, 0.7]
    assert stats_text(stats) == "0.6000 +- 0.1414 (n=2/3)"
    assert stats_text(stats, 3, spread=False) == "0.600 (n=2/3)"
    assert summarise([None, None]) == {"mean": None, "std": None, "n": 0, "values": [None, None]}
    assert stats_text(summarise([None, None])) == "n/a"
    assert summarise([0.9]) == {"mean": 0.9, "std": 0.0, "n": 1, "values": [0.9]}
    assert stats_text(summarise([0.25, 0.75])) == "0.5000 +- 0.3536"


def test_every_study_table_writes_an_undefined_figure_the_same_way():
    runs = [{"val_acc": None, "closed_acc": 0.9, "auroc": None, "oscr": None},
            {"val_acc": 0.8, "closed_acc": 0.7, "auroc": None, "oscr": None}]
    table = protocol.markdown({"softmax (mls)": summarise_runs(runs, protocol.FIGURES)}, 2)
    assert "| softmax (mls) | 0.8000 +- 0.1414 | n/a | n/a | 0.8000 +- 0.0000 (n=1/2) |" in table
    figures = {"balanced_acc": 0.5, "many": 0.9, "medium": None, "few": 0.1, "closed_acc": 0.6,
               "auroc": None, "train_seconds": 10.0}
    summary = {"10": {"ce": summarise_runs([figures], longtail.FIGURES)}}
    assert ("| 10 | ce | 0.5000 +- 0.0000 | 0.900 | n/a | 0.100 | n/a | 10 | 1.0x |"
            in longtail.markdown(summary, {}, 1))
    per_run = [{"method": "softmax", "split_seed": s, "seed": 0, "score": "knn",
                "scores": {"knn": {"auroc": 0.8 + s / 10}, "vim": {"auroc": [0.7, None][s]}}}
               for s in (0, 1)]
    per_run.append({"method": "rpl", "split_seed": 0, "seed": 0, "score": "knn",
                    "scores": {"knn": {"auroc": 0.95}, "distance": {"auroc": 0.9}}})
    table = detector_table(per_run, "softmax", "knn")
    assert "| softmax (knn) | **0.8500 +- 0.0707** | 0.7000 +- 0.0000 (n=1/2) | n/a |" in table
    assert "| rpl (knn) | **0.9500 +- 0.0000** | n/a | 0.9000 +- 0.0000 |" in table
    assert "- rpl (knn) above softmax (knn) on 1/1 (split, seed) pairs, mean +0.1500" in table


# -- the open-set protocol -----------------------------------------------------------------

@pytest.mark.slow
def test_tiny_protocol_writes_the_table(tmp_path):
    out = tmp_path / "protocol"
    assert protocol.main([*TINY, "--splits", "2", "--out", str(out)]) == 0
    table = (out / "protocol.md").read_text()
    for row in ("softmax (msp)", "softmax (mls)", "softmax (knn)", "rpl (knn)", "arpl (knn)"):
        assert f"| {row} |" in table
    saved = read(out / "protocol.json")
    summary = saved["summary"]
    aurocs = summary["arpl (knn)"]["auroc"]["values"]
    assert len(aurocs) == 2 and summary["arpl (knn)"]["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert summary["arpl (knn)"]["auroc"]["n"] == 2
    assert (out / "protocol.png").is_file() and (out / "split1" / "rpl" / "metrics.json").is_file()
    # the detector table: every suite detector, and the paired count recomputed from the runs
    assert "| method (served) | msp | mls | energy | knn | mahalanobis | vim | fusion |" in table
    runs = {(r["method"], r["split_seed"]): r["scores"] for r in saved["per_run"]}
    wins = sum(runs[("arpl", s)]["knn"]["auroc"] > runs[("softmax", s)]["msp"]["auroc"] for s in (0, 1))
    assert f"- arpl (knn) above softmax (msp) on {wins}/2 (split, seed) pairs" in table
    k1 = [r["knn_sweep"]["k1_bank64"] for r in saved["per_run"] if r["method"] == "arpl"]
    assert saved["knn_sweep"]["arpl"]["k1_bank64"] == pytest.approx(np.mean(k1))
    assert (out / "protocol_knn_bank.png").is_file()


@pytest.mark.slow
def test_protocol_with_two_training_seeds(tmp_path):
    out = tmp_path / "seeds"
    assert protocol.main([*TINY, "--splits", "1", "--methods", "softmax", "--train-seeds", "0,3",
                          "--out", str(out)]) == 0
    runs = read(out / "protocol.json")["runs"]["softmax (msp)"]
    assert [r["seed"] for r in runs] == [0, 3]
    assert (out / "seed3" / "split0" / "softmax" / "metrics.json").is_file()
    assert "over 2 runs (splits x training seeds)" in (out / "protocol.md").read_text()


def test_protocol_rejects_bad_flags_in_one_line(tmp_path, capsys):
    for args, message in [(["--train-seeds", "0,x"], "--train-seeds must be a comma-separated"),
                          (["--train-seeds", "-1"], "--train-seeds must be >= 0"),
                          (["--methods", "softmax,mixup"], "unknown method(s) ['mixup']"),
                          (["--splits", "0"], "--splits must be > 0")]:
        assert protocol.main([*args, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_closed_set_protocol_with_sla_rows_and_resume(tmp_path, capsys):
    out = tmp_path / "closed"
    args = [*TINY, "--num-known", "10", "--methods", "softmax,sla", "--splits", "2",
            "--seed-per-split", "--out", str(out)]
    assert protocol.main(args) == 0
    summary = read(out / "protocol.json")
    assert set(summary["summary"]) == {"softmax (knn)", "sla-softmax+SD (knn)", "sla-softmax+AG (mls)"}
    assert summary["summary"]["softmax (knn)"]["auroc"]["mean"] is None  # closed set
    assert summary["summary"]["softmax (knn)"]["auroc"]["n"] == 0
    assert [r["seed"] for r in summary["runs"]["sla-softmax+SD (knn)"]] == [0, 1]
    table = (out / "protocol.md").read_text()
    assert "| sla-softmax+AG (mls) |" in table and "AUROC of every detector" not in table
    # the validation accuracy of each selected checkpoint rides along, for choosing settings
    sla = [read(out / f"split{s}" / "sla" / "metrics.json") for s in (0, 1)]
    assert summary["summary"]["sla-softmax+SD (knn)"]["val_acc"]["values"] == [
        m["best_val_acc"] for m in sla]
    assert summary["summary"]["sla-softmax+AG (mls)"]["val_acc"]["values"] == [
        m["aggregated"]["val_acc"] for m in sla]
    first = (out / "split1" / "sla" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert protocol.main([*args, "--resume"]) == 0  # nothing retrained, same table
    assert (out / "split1" / "sla" / "metrics.json").stat().st_mtime_ns == first
    assert read(out / "protocol.json")["summary"] == summary["summary"]
    assert protocol.main([*args, "--resume", "--sla-temperature", "2"]) == 0  # a new config: retrains
    assert (out / "split1" / "sla" / "metrics.json").stat().st_mtime_ns != first


# -- the long-tail study -------------------------------------------------------------------

def test_longtail_cells_name_their_method():
    cfg = longtail.variant_config(TrainConfig(method="softmax"), "arpl:la-drs", 100.0, 2, Path("o"), None)
    lt = cfg.long_tail
    assert (cfg.method, lt.logit_adjust, lt.drs, lt.loss, lt.m2m.enabled) == ("arpl", 1.0, True, "ce", False)
    assert (lt.imbalance, cfg.seed, cfg.split_seed) == (100.0, 2, 2)
    assert cfg.out == str(Path("o") / "rho100" / "seed2" / "arpl-la-drs")
    plain = longtail.variant_config(TrainConfig(method="softmax"), "cb-softmax", 10.0, 0, Path("o"), None)
    assert (plain.method, plain.long_tail.loss, plain.long_tail.logit_adjust, plain.long_tail.drs) == \
        ("softmax", "cb-softmax", 0.0, False)


def test_longtail_m2m_cells_steer_with_the_same_seeds_ce_run():
    extra = {"rhos": "10", "seeds": 2, "variants": "ce,m2m"}
    grid = longtail.cells(TrainConfig(method="softmax", out="o"), extra)
    ce = {c.labels["seed"]: c.cfg.out for c in grid if c.labels["variant"] == "ce"}
    m2m = {c.labels["seed"]: c.cfg.long_tail.m2m for c in grid if c.labels["variant"] == "m2m"}
    assert {s: (m.enabled, m.generator_run) for s, m in m2m.items()} == {s: (True, ce[s]) for s in (0, 1)}
    first = longtail.cells(TrainConfig(method="softmax", out="o"), {**extra, "variants": "m2m,ce"})
    assert first[0].cfg.long_tail.m2m.generator_run is None  # no CE run yet: trains its own
    rpl = longtail.cells(TrainConfig(method="rpl", out="o"), {**extra, "variants": "ce,m2m"})
    assert rpl[1].cfg.long_tail.m2m.generator_run is None  # g must be a softmax run


@pytest.mark.slow
def test_tiny_longtail_study_writes_the_table(tmp_path):
    out = tmp_path / "study"
    assert longtail.main(["--dataset", "digits", "--seeds", "2", "--rhos", "10", "--epochs", "2",
                          "--width", "0.25", "--batch-size", "64", "--variants", "ce,cb-softmax,m2m",
                          "--m2m-start-epoch", "1", "--m2m-steps", "1", "--out", str(out)]) == 0
    table = (out / "longtail.md").read_text()
    for variant in ("ce", "cb-softmax", "m2m"):
        assert f"| 10 | {variant} |" in table
    report = read(out / "longtail.json")
    values = report["summary"]["10"]["cb-softmax"]["balanced_acc"]["values"]
    assert len(values) == 2 and report["summary"]["10"]["cb-softmax"]["balanced_acc"]["mean"] == \
        pytest.approx(np.mean(values))
    multiples = report["m2m_time_multiple"]["10"]
    seconds = {(r["seed"], r["variant"]): r["train_seconds"] for r in report["runs"]}
    assert multiples["values"] == pytest.approx([seconds[(s, "m2m")] / seconds[(s, "ce")] for s in (0, 1)])
    assert f"| {multiples['mean']:.1f}x |" in next(line for line in table.splitlines()
                                                   if line.startswith("| 10 | m2m |"))
    m2m = read(out / "rho10" / "seed1" / "m2m" / "metrics.json")
    assert m2m["m2m"]["g"] == str(out / "rho10" / "seed1" / "ce")  # the same seed's CE run is g
    assert not (out / "rho10" / "seed1" / "m2m" / "g").exists()
    assert (out / "longtail.png").is_file()


def test_longtail_study_rejects_bad_variants_before_training(tmp_path, capsys):
    assert longtail.main(["--variants", "ce,mixup", "--out", str(tmp_path)]) == 2
    assert "unknown variant(s) ['mixup']" in capsys.readouterr().err
    assert longtail.main(["--method", "rpl", "--variants", "ce,cb-focal", "--out", str(tmp_path)]) == 2
    assert "needs the linear head" in capsys.readouterr().err
    assert longtail.main(["--rhos", "10,x", "--out", str(tmp_path)]) == 2
    assert "--rhos must be a comma-separated list" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_longtail_study_with_method_cells_pairs_against_the_softmax_baseline(tmp_path):
    out = tmp_path / "cells"
    args = ["--dataset", "digits", "--num-known", "4", "--seeds", "1", "--rhos", "10", "--epochs",
            "1", "--width", "0.25", "--variants", "softmax:cb-softmax,arpl:la-drs", "--out", str(out)]
    assert longtail.main(args) == 0
    report = read(out / "longtail.json")
    base, ours = ({r["method"]: r for r in report["per_run"]}[f"rho 10 {v}"]
                  for v in ("softmax:cb-softmax", "arpl:la-drs"))
    best = max(base["scores"], key=lambda name: base["scores"][name]["auroc"])
    won = int(ours["scores"]["knn"]["auroc"] > base["scores"][best]["auroc"])
    assert (f"- rho 10 arpl:la-drs (knn) above rho 10 softmax:cb-softmax ({best}) on {won}/1"
            in (out / "longtail.md").read_text())
    config = read(out / "rho10" / "seed0" / "arpl-la-drs" / "config.json")
    assert (config["method"], config["long_tail"]["logit_adjust"], config["long_tail"]["drs"]) == \
        ("arpl", 1.0, True)
    stamp = (out / "rho10" / "seed0" / "arpl-la-drs" / "model.pt").stat().st_mtime_ns
    assert longtail.main(args + ["--resume"]) == 0  # finished cells are reused, not retrained
    assert (out / "rho10" / "seed0" / "arpl-la-drs" / "model.pt").stat().st_mtime_ns == stamp


# -- the RKD study -------------------------------------------------------------------------

RKD_ARGS = ["--dataset", "digits", "--num-known", "10", "--method", "softmax", "--epochs", "1",
            "--seeds", "1", "--width", "0.25", "--teacher-width", "0.5", "--batch-size", "128",
            "--bench-batch", "8", "--bench-seconds", "0.02"]


@pytest.mark.slow
def test_rkd_study_writes_its_table_and_resumes(tmp_path):
    out = tmp_path / "study"
    args = [*RKD_ARGS, "--out", str(out)]
    assert rkd.main(args) == 0
    report = read(out / "rkd.json")
    assert set(report["table"]) == {"teacher", "scratch", "rkd"}
    teacher, student = (read(out / "seed0" / role / "metrics.json") for role in ("teacher", "rkd"))
    assert report["summary"]["macs_ratio"] == pytest.approx(student["macs"] / teacher["macs"])
    assert report["summary"]["macs_ratio"] < 0.34  # half the width: about a quarter of the MACs
    assert report["table"]["rkd"]["values"] == [student["closed_acc"]]
    # the speed-up in the table is the ratio of the two throughputs in the JSON
    speed = report["summary"]["onnx_images_per_s"]
    text = (out / "rkd.md").read_text()
    written = re.search(r"teacher ([\d,]+) img/s, RKD student ([\d,]+) img/s \(([\d.]+)x\)", text)
    assert written.group(1, 2) == (f"{speed['teacher']:,.0f}", f"{speed['rkd']:,.0f}")
    assert written.group(3) == f"{speed['rkd'] / speed['teacher']:.2f}"
    assert (out / "rkd.png").is_file() and (out / "teacher.onnx").is_file()
    config = read(out / "seed0" / "rkd" / "config.json")
    assert config["rkd"]["teacher"] == str(out / "seed0" / "teacher") and config["width"] == 0.25
    stamp = (out / "seed0" / "teacher" / "model.pt").stat().st_mtime_ns
    assert rkd.main([*args, "--resume"]) == 0
    assert (out / "seed0" / "teacher" / "model.pt").stat().st_mtime_ns == stamp
    assert rkd.main([*RKD_ARGS, "--seeds", "0", "--out", str(tmp_path / "x")]) == 2


# -- --resume, every study -----------------------------------------------------------------

RESUMABLE = {
    "protocol": (protocol.main, [*TINY, "--methods", "softmax", "--splits", "2"], "split1/softmax"),
    "longtail": (longtail.main, [*TINY, "--num-known", "4", "--variants", "ce", "--rhos", "10",
                                 "--seeds", "2"], "rho10/seed1/ce"),
    "rkd": (rkd.main, RKD_ARGS, "seed0/scratch"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", RESUMABLE)
def test_resume_trains_only_the_unfinished_cells(name, tmp_path, monkeypatch):
    import train.run

    study_main, args, unfinished = RESUMABLE[name]
    out = tmp_path / name
    assert study_main([*args, "--out", str(out)]) == 0
    (out / unfinished / "metrics.json").unlink()  # as if the study was stopped in that run
    trained = []
    real_run = train.run.run
    monkeypatch.setattr(train.run, "run", lambda cfg, *a, **k: trained.append(cfg.out) or real_run(cfg))
    assert study_main([*args, "--out", str(out), "--resume"]) == 0
    assert trained == [str(out / unfinished)]
    assert (out / unfinished / "metrics.json").is_file() and (out / f"{name}.md").is_file()

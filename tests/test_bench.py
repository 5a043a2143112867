"""loadtest/bench.py's pure parts: the interleaved round order, per-round ratios and their
spread, the phase table, the --rounds floor and the Markdown table. No server is started."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loadtest import bench
from rundir import RunDirectory

# the ratios `make bench` reported before the rounds were interleaved (ratios(), front_ratios())
EARLIER_RATIOS = {
    "server_vs_stock_req_per_s", "server_vs_stock_p99", "server_vs_stock_batch1_req_per_s",
    "server_vs_stock_batch1_p99", "server_int8_vs_stock_req_per_s", "server_int8_vs_stock_p99",
    "multi_image_vs_raw_batch64", "batch_scorer_vs_raw_batch64",
    *(f"kserve_vs_torchserve_{label}" for label in (
        "single_req_per_s", "single_p99", "single_default_batching_req_per_s",
        "single_default_batching_p99", "64_images_per_s", "64_p99", "64_json_images_per_s",
        "64_json_p99"))}


def run(req_per_s: float, p99_ms: float = 10.0, images: int = 1) -> dict:
    return {"req_per_s": req_per_s, "images_per_s": req_per_s * images, "p50_ms": p99_ms / 2,
            "p95_ms": p99_ms * 0.9, "p99_ms": p99_ms, "errors": 0}


def measured_rounds() -> dict[str, list[dict]]:
    """Three rounds; ours single / stock b16 per round = 4, 2, 2 (median 2), while the ratio of
    the phases' medians would be 100 / 45: only a per-round pairing gives 2."""
    measured = {phase: [run(50.0), run(50.0), run(50.0)] for phase in
                bench.phase_loads("m", 1, "k", [b"png"] * 64, 8)}
    measured["server_single_image"] = [run(100.0, 8.0), run(200.0, 30.0), run(90.0, 12.0)]
    measured["stock_single_image"] = [run(25.0, 16.0), run(100.0, 20.0), run(45.0, 48.0)]
    measured["server_multi_image_64"] = [run(r, images=64) for r in (10.0, 5.0, 8.0)]  # 640, 320, 512
    measured["kserve_64"] = [run(r, images=64) for r in (10.0, 10.0, 10.0)]
    return measured


def test_round_order_alternates_forward_and_reversed():
    phases = ["a", "b", "c"]
    orders = [bench.round_order(phases, round_) for round_ in range(4)]
    assert orders == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"], ["c", "b", "a"]]
    # over an even number of rounds every phase's mean position is the middle
    assert {p: sum(order.index(p) for order in orders) / 4 for p in phases} == {"a": 1, "b": 1, "c": 1}


def test_phase_loads_holds_every_phase_once_on_its_server():
    loads = bench.phase_loads("m", 18080, "secret", [bytes([i]) for i in range(130)], 8)
    assert list(loads) == ["server_single_image", "stock_single_image", "stock_single_image_batch1",
                           "server_int8_single_image", "server_multi_image_64", "kserve_single",
                           "kserve_single_default_batching", "kserve_64", "kserve_64_json"]
    port, path, requests, clients, images = loads["stock_single_image_batch1"]
    assert (port, path, clients, images) == (18080, "/predictions/m-stock-b1", 8, 1)
    assert requests[0][1]["Authorization"] == "Bearer secret"
    assert loads["kserve_single_default_batching"][0] == bench.KSERVE_PORT + 1
    port, path, requests, clients, images = loads["kserve_64"]
    assert (port, path, clients, images) == (bench.KSERVE_PORT, "/v2/models/m/infer",
                                             bench.MULTI_IMAGE_CLIENTS, 64)
    assert len(requests) == 2  # 130 PNGs: two full groups of 64, the 2 left over unused
    assert len(loads["server_multi_image_64"][2]) == 2


def test_ratios_are_paired_per_round_then_spread():
    ratios = bench.ratio_spreads(measured_rounds(), raw_batch64=1280.0, scorer_images_per_s=1152.0)
    assert set(ratios) == EARLIER_RATIOS
    ours = ratios["server_vs_stock_req_per_s"]
    assert ours["rounds"] == [4.0, 2.0, 2.0]
    assert (ours["median"], ours["min"], ours["max"], ours["spread"]) == (2.0, 2.0, 4.0, 1.0)
    assert ratios["server_vs_stock_p99"]["rounds"] == [0.5, 1.5, 0.25]
    assert ratios["server_vs_stock_p99"]["median"] == 0.5
    raw = ratios["multi_image_vs_raw_batch64"]
    assert raw["rounds"] == [0.5, 0.25, 0.4] and raw["median"] == 0.4
    assert raw["spread"] == pytest.approx(0.25 / 0.4)
    # the KServe side is compared with ours 64: same phase, measured once per round
    assert ratios["kserve_vs_torchserve_64_images_per_s"]["rounds"] == [1.0, 2.0, 1.25]
    assert ratios["batch_scorer_vs_raw_batch64"]["rounds"] == [0.9]  # in-process, once


def test_a_phase_nothing_answered_gives_nan_not_a_crash():
    measured = measured_rounds()
    measured["stock_single_image"][0] = run(0.0)
    assert math.isnan(bench.ratio_spreads(measured, 1.0, 1.0)["server_vs_stock_req_per_s"]["rounds"][0])


def test_phase_medians_are_over_rounds():
    medians = bench.phase_medians(measured_rounds())
    assert medians["server_single_image"]["req_per_s"] == 100.0
    assert medians["server_single_image"]["p99_ms"] == 12.0
    assert medians["server_multi_image_64"]["images_per_s"] == 512.0


def test_time_split_sums_counters_over_rounds():
    before = {"m:OpenSetBatches": 10.0, "m:OpenSetPredictions": 80.0, "m:OpenSetHandlerMs": 30.0,
              "m-stock:OpenSetBatches": 99.0}
    after = {"m:OpenSetBatches": 20.0, "m:OpenSetPredictions": 160.0, "m:OpenSetHandlerMs": 60.0,
             "m-stock:OpenSetBatches": 500.0}
    delta = bench.counter_delta(before, after, "m")
    assert delta == {"OpenSetBatches": 10.0, "OpenSetPredictions": 80.0, "OpenSetHandlerMs": 30.0}
    summed = {k: 2 * v for k, v in delta.items()}  # two rounds alike
    split = bench.time_split(summed, client_p50_ms=11.0)
    assert split["mean_batch_size"] == 8.0 and split["handler_ms_per_batch"] == 3.0
    assert split["outside_handler_ms_p50"] == 8.0


@pytest.mark.parametrize("rounds", ["2", "0"])
def test_fewer_than_three_rounds_refused(rounds, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--rounds", rounds])
    assert exit_info.value.code == 2
    assert f"--rounds must be at least 3 for a median and a spread, not {rounds}" in capsys.readouterr().err


def test_defaults_are_four_rounds_of_eight_seconds():
    args = bench.parse_args([])
    assert (args.rounds, args.seconds, args.resnet_size) == (4, 8.0, 64)


@pytest.mark.parametrize("size", ["31", "129", "0"])
def test_resnet_size_outside_its_range_is_one_line(size, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--resnet-size", size])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--resnet-size must be 32..128, not {size}" in err


def noise_pngs(side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [bench.png_bytes(rng.integers(0, 256, (3, side, side), dtype=np.uint8)) for _ in range(64)]


def test_64_noise_pngs_fit_max_request_size_up_to_the_largest_size_and_160_px_is_refused():
    bench.check_request_size("m", noise_pngs(bench.MAX_RESNET_SIZE))  # 4.2 MB of 6.5: no error
    over = (r"^m: a 64-image JSON request of its images is 6,5\d\d,\d{3} bytes, over "
            r"config.properties' max_request_size \(6,553,500\)")
    with pytest.raises(bench.BenchError, match=over):
        bench.check_request_size("m", noise_pngs(160))


def test_resnet_size_with_a_trained_run_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--resnet-size", "64", "--resnet-run-dir", "runs/x"])
    assert exit_info.value.code == 2
    assert "a --resnet-run-dir has its own size" in capsys.readouterr().err
    assert bench.parse_args(["--resnet-run-dir", "runs/x"]).resnet_size == bench.DEFAULT_RESNET_SIZE


def test_random_weight_resnet_is_the_imagenet_backbone_at_the_size(tmp_path):
    checkpoint = RunDirectory(bench.resnet_run(tmp_path / "r", 48)).read_checkpoint()
    assert checkpoint.model_spec["arch"] == "imagenet_resnet18"
    assert checkpoint.input_shape == [3, 48, 48] and checkpoint.resize_policy == "center-crop"
    out = checkpoint.classifier()(torch.zeros(2, 3, 48, 48))
    assert out["logits"].shape == (2, 10)


def test_markdown_table_has_one_row_per_ratio():
    ratios = bench.ratio_spreads(measured_rounds(), 1280.0, 1152.0)
    lines = bench.markdown_table(ratios).splitlines()
    assert lines[:2] == ["| ratio | median | min..max | spread |", "|---|---|---|---|"]
    assert len(lines) == 2 + len(ratios)
    assert "| server_vs_stock_req_per_s | 2 | 2..4 | 100% |" in lines
    assert "| multi_image_vs_raw_batch64 | 0.4 | 0.25..0.5 | 62% |" in lines
    text = bench.text_table(ratios).splitlines()
    assert len(text) == 1 + len(ratios) and text[1].split() == ["server_vs_stock_req_per_s", "2", "2..4",
                                                                "100%"]


def test_markdown_report_has_the_headline_and_names_unsettled_warmups():
    result = {"ratios": bench.ratio_spreads(measured_rounds(), 1280.0, 1152.0),
              "warmup": {"server_single_image": {"settled": True}, "kserve_64": {"settled": False}}}
    report = bench.markdown_report({"smallcnn": result}, rounds=4, seconds=8.0, concurrency=8)
    assert "## smallcnn\n" in report and "over 4 interleaved rounds" in report
    result["model"] = {"arch": "imagenet_resnet18", "input_shape": [3, 64, 64], "weights": "random"}
    report = bench.markdown_report({"resnet18": result}, rounds=4, seconds=8.0, concurrency=8)
    assert "## resnet18: imagenet_resnet18 at 3 x 64 x 64, weights: random\n" in report
    assert ("fp32 server vs the stock path at equal batching (batchSize 16): req/s 2x (2..4), "
            "p99 0.5x (0.25..1.5).") in report
    assert "Warm-up not settled within 20 s: kserve_64." in report


def test_plots_read_the_round_structure(tmp_path):
    result = {"phases": measured_rounds(), "batch_scorer_images_per_s": 1152.0,
              "raw_onnxruntime_images_per_s": {"batch1": 900.0, "batch64": 1280.0}}
    bench.plot({"smallcnn": result, "resnet18": result}, tmp_path / "bench.png")
    bench.plot_fronts({"smallcnn": result}, tmp_path / "fronts.png")
    assert (tmp_path / "bench.png").stat().st_size > 0 and (tmp_path / "fronts.png").stat().st_size > 0

"""Export round trips for every head type, the metadata, dynamic batches, bad model files."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.cli import main as export_main
from export.onnx_export import ExportError, export_onnx
from handlers.contract import ModelFileError, load_model


@pytest.mark.parametrize("method", ["softmax", "rpl", "arpl"])
def test_parity_below_1e4_for_every_method(runs, method):
    import torch

    from export.onnx_export import load_run

    run_dir, path, report = runs[method]
    model, _, _ = load_run(run_dir)  # independent of the export's own check
    session, info = load_model(path)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images)
    got = session.run(list(info.output_names), {"images": images.numpy()})
    for ours, theirs in zip(got, expected):
        assert np.abs(ours - theirs.numpy()).max() < 1e-4
    expected = ["logits", "unknown_score"] + (["distances"] if method != "softmax" else [])
    assert report["outputs"] == expected


@pytest.mark.parametrize("method", ["softmax", "arpl"])
def test_metadata_reads_back_as_written(runs, method):
    run_dir, path, _ = runs[method]
    _, info = load_model(path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert info.class_names == tuple(metrics["known_classes"])
    assert (info.channels, info.height, info.width) == (1, 8, 8)
    assert info.method == method and info.score == "mls" and info.model_version == "7"
    assert info.threshold == pytest.approx(metrics["threshold"])
    assert "95%" in info.threshold_rule
    assert info.metrics["auroc"] == pytest.approx(metrics["auroc"])
    assert info.metrics["closed_acc"] == pytest.approx(metrics["closed_acc"])


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_sizes(runs, batch):
    _, path, _ = runs["arpl"]
    session, info = load_model(path)
    images = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    logits, score, distances = session.run(list(info.output_names), {"images": images})
    assert logits.shape == (batch, 6) and score.shape == (batch,) and distances.shape == (batch, 6)
    assert np.allclose(score, -logits.max(1), atol=1e-5)  # served score: -max logit


def test_export_cli_writes_report_and_rejects_non_runs(runs, tmp_path, capsys):
    run_dir, _, _ = runs["rpl"]
    assert export_main([str(run_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    report = json.loads((tmp_path / "m.export.json").read_text())
    assert report["parity_batches"] == [1, 32]
    assert export_main([str(tmp_path), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a run directory (no model.pt)" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_int8_export_is_checked_against_fp32(runs, tmp_path):
    run_dir, _, _ = runs["arpl"]
    assert export_main([str(run_dir), "--out", str(tmp_path / "m.onnx"), "--int8",
                        "--calibration-images", "64", "--max-acc-drop", "1",
                        "--max-auroc-drop", "1"]) == 0
    report = json.loads((tmp_path / "m.export.json").read_text())["int8"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the fp32 figures come from the run's own test split, rebuilt from its config
    assert report["fp32"]["auroc"] == pytest.approx(metrics["auroc"], abs=1e-4)
    assert report["fp32"]["closed_acc"] == pytest.approx(metrics["closed_acc"], abs=1e-6)
    assert report["auroc_drop"] == pytest.approx(report["fp32"]["auroc"] - report["int8"]["auroc"])
    _, info = load_model(tmp_path / "m.int8.onnx")
    assert info.method == "arpl"
    # an impossible bound refuses the int8 file and keeps the fp32 one
    assert export_main([str(run_dir), "--out", str(tmp_path / "n.onnx"), "--int8",
                        "--calibration-images", "64", "--max-acc-drop", "-1"]) == 2
    assert (tmp_path / "n.onnx").exists() and not (tmp_path / "n.int8.onnx").exists()


def test_parity_failure_is_loud(runs, tmp_path):
    run_dir, _, _ = runs["softmax"]
    with pytest.raises(ExportError, match="disagree beyond"):
        export_onnx(run_dir, tmp_path / "m.onnx", tolerance=-1.0)
    assert not (tmp_path / "m.onnx").exists()


def test_corrupt_file_is_rejected(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        load_model(tmp_path / "bad.onnx")


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "none.onnx")


def test_file_without_metadata_is_rejected(runs, tmp_path):
    proto = onnx.load(str(runs["softmax"][1]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelFileError, match="has no open-set metadata"):
        load_model(tmp_path / "bare.onnx")


def _graph_with_outputs(outputs, metadata):
    node = helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0)
    nodes = [node] + [helper.make_node("Identity", ["pooled"], [name]) for name, _ in outputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 1, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model


def test_outputs_that_break_the_contract_are_rejected(runs, tmp_path):
    metadata = {p.key: p.value for p in onnx.load(str(runs["softmax"][1])).metadata_props}
    onnx.save(_graph_with_outputs([("scores", ["b", 1])], metadata), str(tmp_path / "a.onnx"))
    with pytest.raises(ModelFileError, match="output 'logits' missing"):
        load_model(tmp_path / "a.onnx")
    onnx.save(_graph_with_outputs([("logits", ["b", 1]), ("unknown_score", ["b", 1])], metadata),
              str(tmp_path / "b.onnx"))
    with pytest.raises(ModelFileError, match="output 'unknown_score' is .* expected float32 of rank 1"):
        load_model(tmp_path / "b.onnx")


def test_broken_metadata_json_is_rejected(runs, tmp_path):
    proto = onnx.load(str(runs["softmax"][1]))
    for prop in proto.metadata_props:
        if prop.key == "threshold":
            prop.value = "{not json"
    onnx.save(proto, str(tmp_path / "j.onnx"))
    with pytest.raises(ModelFileError, match="metadata 'threshold' is not valid JSON"):
        load_model(tmp_path / "j.onnx")


def test_fixed_batch_and_nan_threshold_are_refused(runs, tmp_path):
    proto = onnx.load(str(runs["softmax"][1]))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "fixed.onnx"))
    with pytest.raises(ModelFileError, match="batch axis is fixed"):
        load_model(tmp_path / "fixed.onnx")
    proto = onnx.load(str(runs["softmax"][1]))
    for prop in proto.metadata_props:
        if prop.key == "threshold":
            prop.value = json.dumps({"value": float("nan")})
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with pytest.raises(ModelFileError, match="not a finite number"):
        load_model(tmp_path / "nan.onnx")

"""Export round trips for every head type, the metadata, dynamic batches, bad model files."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export.cli import main as export_main
from export.onnx_export import ExportError, export_onnx
from handlers.contract import ModelFileError, load_model
from tests.helpers import onnx_model, open_set_figures, read_json


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
    expected = ["logits", "unknown_score"] + (["reciprocal_score", "distances"]
                                              if method != "softmax" else [])
    assert report["outputs"] == expected and list(info.output_names) == expected


@pytest.mark.parametrize("method", ["softmax", "arpl"])
def test_metadata_reads_back_as_written(runs, method):
    run_dir, path, _ = runs[method]
    _, info = load_model(path)
    metrics = read_json(run_dir / "metrics.json")
    assert info.class_names == tuple(metrics["known_classes"])
    assert (info.channels, info.height, info.width) == (1, 8, 8)
    assert info.method == method and info.model_version == "7"
    assert info.score == metrics["score"]  # the deciding score (detector or head score)
    assert info.score_selection["unknown_score"] == info.score
    assert info.score_selection["head_score"] == metrics["head_score"]
    assert info.threshold == pytest.approx(metrics["threshold"])
    assert "95%" in info.threshold_rule
    assert info.metrics["auroc"] == pytest.approx(metrics["auroc"])
    assert info.metrics["closed_acc"] == pytest.approx(metrics["closed_acc"])


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch_sizes(runs, batch):
    _, path, _ = runs["arpl"]
    session, info = load_model(path)
    images = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    logits, score, reciprocal, distances = session.run(list(info.output_names), {"images": images})
    assert logits.shape == (batch, 6) and score.shape == (batch,) and distances.shape == (batch, 6)
    assert reciprocal.shape == (batch,)
    assert np.allclose(reciprocal, -logits.max(1), atol=1e-5)  # the head's score: -max logit
    singles = [session.run(["unknown_score"], {"images": images[i:i + 1]})[0][0]
               for i in range(batch)]
    assert np.allclose(score, singles, atol=1e-5)  # the deciding score, whichever detector


def test_export_cli_writes_the_report(runs, tmp_path):  # its bad inputs: test_cli.py
    run_dir, _, _ = runs["rpl"]
    assert export_main([str(run_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    report = read_json(tmp_path / "m.export.json")
    assert report["parity_batches"] == [1, 32]
    assert report["bytes"] == (tmp_path / "m.onnx").stat().st_size


@pytest.mark.slow  # calibrates and evaluates int8 twice, and times both models
def test_int8_export_is_checked_against_fp32(runs, tmp_path):
    run_dir, _, _ = runs["arpl"]
    assert export_main([str(run_dir), "--out", str(tmp_path / "m.onnx"), "--int8",
                        "--calibration-images", "64", "--max-acc-drop", "1",
                        "--max-auroc-drop", "1"]) == 0
    report = read_json(tmp_path / "m.export.json")["int8"]
    metrics = read_json(run_dir / "metrics.json")
    # the fp32 figures come from the run's own test split, rebuilt from its config
    assert report["fp32"]["auroc"] == pytest.approx(metrics["auroc"], abs=1e-4)
    assert report["fp32"]["closed_acc"] == pytest.approx(metrics["closed_acc"], abs=1e-6)
    # the int8 figures again, from the int8 file on that split
    int8 = open_set_figures(onnx_model(tmp_path / "m.int8.onnx"), run_dir, threshold=0.0)
    assert report["int8"]["auroc"] == pytest.approx(int8["auroc"], abs=1e-9)
    assert report["int8"]["closed_acc"] == pytest.approx(int8["closed_acc"], abs=1e-9)
    assert report["auroc_drop"] == pytest.approx(report["fp32"]["auroc"] - int8["auroc"])
    assert report["int8_bytes"] == (tmp_path / "m.int8.onnx").stat().st_size
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


def metadata_of(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _graph_with_outputs(outputs, metadata):
    node = helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0)  # b x 1
    flat = helper.make_node("ReduceMean", ["images"], ["flat"], axes=[1, 2, 3], keepdims=0)  # b
    nodes = [node, flat] + [helper.make_node("Identity", ["flat" if len(shape) == 1 else "pooled"],
                                             [name]) for name, shape in outputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 1, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model


def test_outputs_that_break_the_contract_are_rejected(runs, tmp_path):
    metadata = metadata_of(runs["softmax"][1])
    onnx.save(_graph_with_outputs([("scores", ["b", 1])], metadata), str(tmp_path / "a.onnx"))
    with pytest.raises(ModelFileError, match="output 'logits' missing"):
        load_model(tmp_path / "a.onnx")
    onnx.save(_graph_with_outputs([("logits", ["b", 1]), ("unknown_score", ["b", 1])], metadata),
              str(tmp_path / "b.onnx"))
    with pytest.raises(ModelFileError, match="output 'unknown_score' is .* expected float32 of rank 1"):
        load_model(tmp_path / "b.onnx")


def test_reciprocal_score_output_is_checked_and_ordered(runs, tmp_path):
    metadata = metadata_of(runs["softmax"][1])
    ok = [("logits", ["b", 1]), ("unknown_score", ["b"])]
    onnx.save(_graph_with_outputs([*ok, ("reciprocal_score", ["b", 1])], metadata),
              str(tmp_path / "rank.onnx"))
    with pytest.raises(ModelFileError,
                       match="output 'reciprocal_score' is .* expected float32 of rank 1"):
        load_model(tmp_path / "rank.onnx")
    # outputs listed out of contract order still come back in contract order
    one_class = dict(metadata, class_names=json.dumps(["a"]))  # the graph's logits are b x 1
    onnx.save(_graph_with_outputs([("distances", ["b", 1]), ("reciprocal_score", ["b"]), *ok],
                                  one_class), str(tmp_path / "order.onnx"))
    _, info = load_model(tmp_path / "order.onnx")
    assert info.output_names == ("logits", "unknown_score", "reciprocal_score", "distances")


def test_reciprocal_score_of_the_wrong_type_is_refused(runs, tmp_path):
    metadata = metadata_of(runs["softmax"][1])
    model = _graph_with_outputs([("logits", ["b", 1]), ("unknown_score", ["b"])], metadata)
    model.graph.node.append(helper.make_node("Cast", ["unknown_score"], ["reciprocal_score"],
                                             to=TensorProto.DOUBLE))
    model.graph.output.append(helper.make_tensor_value_info("reciprocal_score",
                                                            TensorProto.DOUBLE, ["b"]))
    onnx.save(model, str(tmp_path / "double.onnx"))
    with pytest.raises(ModelFileError, match=r"output 'reciprocal_score' is tensor\(double\)"):
        load_model(tmp_path / "double.onnx")


def test_score_selection_metadata_is_optional_and_read(runs, tmp_path):
    proto = onnx.load(str(runs["arpl"][1]))
    [written] = [p for p in proto.metadata_props if p.key == "score_selection"]
    assert load_model(runs["arpl"][1])[1].score_selection == json.loads(written.value)
    written.value = json.dumps("k-NN, picked by hand")  # a plain JSON string is allowed
    onnx.save(proto, str(tmp_path / "s.onnx"))
    assert load_model(tmp_path / "s.onnx")[1].score_selection == "k-NN, picked by hand"
    written.value = "[1, 2]"
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelFileError, match="score_selection must be a JSON object or string"):
        load_model(tmp_path / "bad.onnx")
    proto.metadata_props.remove(written)  # optional: files without it still load
    onnx.save(proto, str(tmp_path / "none.onnx"))
    assert load_model(tmp_path / "none.onnx")[1].score_selection is None


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


def test_int8_keeps_the_detector_in_float(tmp_path):
    """The k-NN detector's MatMul against its feature bank and its TopK are not quantized."""
    import torch
    from onnx import numpy_helper

    from export.quantize import quantize_int8
    from models import ModelSpec, build_classifier
    from models.export_wrapper import ContractModel

    spec = ModelSpec(arch="small_cnn", in_channels=1, num_classes=3, head="reciprocal", width=0.25,
                     points_per_class=4, feature_scale=8.0, detector="knn", knn_k=1, bank_size=16)
    classifier = build_classifier(spec).eval()
    embed_dim = classifier.backbone.embed_dim
    classifier.detector.fit({"embedding": torch.randn(40, embed_dim)}, torch.arange(40) % 3, {}, 0)
    model = ContractModel(classifier).eval()
    names = model.output_names
    torch.onnx.export(model, (torch.rand(2, 1, 8, 8),), str(tmp_path / "knn.onnx"),
                      input_names=["images"], output_names=names,
                      dynamic_axes={n: {0: "batch"} for n in ["images", *names]},
                      opset_version=17, dynamo=False)
    calibration = np.random.default_rng(0).random((32, 1, 8, 8), dtype=np.float32)
    quantize_int8(tmp_path / "knn.onnx", tmp_path / "knn.int8.onnx", calibration)

    graph = onnx.load(str(tmp_path / "knn.int8.onnx")).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    by_name = {node.name: node for node in graph.node}
    detector_matmul = by_name["/classifier/detector/MatMul"]
    assert not any(producer.get(i) == "DequantizeLinear" for i in detector_matmul.input)
    assert by_name["/classifier/detector/TopK"].input[0] == detector_matmul.output[0]
    bank = [numpy_helper.to_array(initializers[i]) for i in detector_matmul.input
            if i in initializers]
    assert len(bank) == 1 and bank[0].dtype == np.float32
    assert np.array_equal(bank[0], classifier.detector.bank.numpy().T)  # the bank, untouched
    # the backbone and the head are still quantized
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert convs and all(producer.get(node.input[1]) == "DequantizeLinear" for node in convs)
    head_matmul = by_name["/classifier/head/MatMul"]
    assert all(producer.get(i) == "DequantizeLinear" for i in head_matmul.input)
    quantization = json.loads(metadata_of(tmp_path / "knn.int8.onnx")["quantization"])
    assert "/classifier/detector/MatMul" in quantization["float_nodes"]
    assert all("/detector/" in name for name in quantization["float_nodes"])


def test_head_score_export_leaves_the_bank_out(runs, tmp_path):
    import torch

    run_dir, served_path, _ = runs["arpl"]
    checkpoint = torch.load(run_dir / "model.pt", weights_only=True)
    metrics = read_json(run_dir / "metrics.json")
    assert checkpoint["model_spec"]["detector"] == "knn"
    report = export_onnx(run_dir, tmp_path / "head.onnx", head_score=True)
    session, info = load_model(tmp_path / "head.onnx")
    assert info.score == "mls" and info.threshold == pytest.approx(checkpoint["head_threshold"])
    assert info.metrics["auroc"] == pytest.approx(metrics["scores"]["mls"]["auroc"])
    images = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    logits, score, reciprocal = session.run(["logits", "unknown_score", "reciprocal_score"],
                                            {"images": images})
    assert np.allclose(score, -logits.max(1), atol=1e-5) and np.array_equal(score, reciprocal)
    bank_bytes = checkpoint["state_dict"]["detector.bank"].numel() * 4
    assert report["bytes"] == (tmp_path / "head.onnx").stat().st_size
    assert (served_path.stat().st_size - report["bytes"]) >= bank_bytes  # the bank is gone
    assert info.metrics["known_accept_rate"] == pytest.approx(metrics["head"]["known_accept_rate"])
    assert info.metrics["unknown_reject_rate"] == pytest.approx(metrics["head"]["unknown_reject_rate"])


@pytest.mark.slow  # times both models for a second or more each
def test_compare_reports_sizes_speeds_and_ratios(runs, tmp_path):  # bad inputs: test_cli.py
    from export.compare import main as compare_main

    served = runs["arpl"][1]
    export_onnx(runs["arpl"][0], tmp_path / "head.onnx", head_score=True)
    assert compare_main([str(served), str(tmp_path / "head.onnx"), "--rounds", "1",
                         "--out", str(tmp_path / "cost.json")]) == 0
    report = read_json(tmp_path / "cost.json")
    assert report["a"]["score"] == "knn" and report["b"]["score"] == "mls"
    assert report["a"]["bytes"] == served.stat().st_size
    assert report["b"]["bytes"] == (tmp_path / "head.onnx").stat().st_size
    assert report["size_ratio"] == pytest.approx(report["a"]["bytes"] / report["b"]["bytes"])
    assert report["speed_ratio_batch64"] == pytest.approx(
        report["a"]["images_per_s_batch64"] / report["b"]["images_per_s_batch64"])

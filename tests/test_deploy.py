"""deploy/: the committed KServe manifests are fresh, typed and say what the fronts need; a stale or
mistyped one is caught; the TorchServe storage layout; one-line errors (exit 2) for bad input."""
from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from deploy import manifests, torchserve_layout
from handlers.server import read_properties
from tests.helpers import exit_code


def committed(name: str) -> dict:
    return yaml.safe_load((manifests.OUT / name).read_text())


def one_line(text: str) -> bool:
    return text.count("\n") == 1 and text.startswith("error: ")


def test_committed_manifests_match_the_generator(capsys):
    assert manifests.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(manifests.MANIFESTS))
def test_manifests_round_trip_through_the_typed_models(name):
    data = committed(name)
    service = manifests.from_dict(data)
    assert manifests.to_dict(service) == data
    assert service.spec.predictor.scale_metric == "concurrency"  # a typed object, not a dict


def test_kserve_manifest_runs_the_predictor_on_the_downloaded_model():
    data = committed("openset-kserve.yaml")
    assert (data["apiVersion"], data["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert data["metadata"]["name"] == "openset-kserve"
    annotations = data["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"  # concurrency scaling
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert (annotations["prometheus.kserve.io/port"], annotations["prometheus.kserve.io/path"]) == \
        ("8080", "/metrics")
    assert annotations["prometheus.io/scrape"] == "true"
    predictor = data["spec"]["predictor"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", manifests.SCALE_TARGET)
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 4)
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container"  # KServe reads STORAGE_URI only from this one
    assert container["command"] == ["python", "-m", "handlers.kserve_server", "run"]
    args = container["args"]
    assert args[args.index("--model") + 1] == "/mnt/models/model.onnx"
    assert args[args.index("--name") + 1] == "opensetmnist"
    assert args[args.index("--host") + 1] == "0.0.0.0"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["STORAGE_URI"].endswith("/model.onnx") and env["PROTOCOL"] == "v2"
    assert [(port["name"], port["containerPort"]) for port in container["ports"]] == [("http1", 8080)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/models/opensetmnist/ready", "port": 8080}
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "1Gi"}
    assert container["securityContext"]["runAsNonRoot"] is True


def test_torchserve_manifest_uses_the_pytorch_runtime_over_the_layout():
    data = committed("openset-torchserve.yaml")
    assert data["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    predictor = data["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["minReplicas"] == 1
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "pytorch"} and model["protocolVersion"] == "v1"
    assert model["storageUri"].startswith("gs://")


@pytest.mark.parametrize("edit, message", [
    (lambda spec: spec["predictor"].update(scaleMetrics="concurrency"), "has no field scaleMetrics"),
    (lambda spec: spec["predictor"].update(minReplicas="1"), "expected int"),
    (lambda spec: spec["predictor"]["containers"][0].update(args="--model"), "expected a list"),
])
def test_a_field_the_models_do_not_have_is_refused(edit, message):
    data = committed("openset-kserve.yaml")
    edit(data["spec"])
    with pytest.raises(manifests.SchemaError, match=message):
        manifests.from_dict(data)


def test_check_names_a_stale_or_missing_file(tmp_path, capsys):
    assert manifests.main(["--out", str(tmp_path)]) == 0
    assert manifests.main(["--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / "openset-torchserve.yaml"
    stale.write_text(stale.read_text().replace("scaleTarget: ", "scaleTarget: 1"))
    capsys.readouterr()
    assert manifests.main(["--check", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert one_line(error) and "openset-torchserve.yaml" in error
    stale.unlink()
    assert manifests.main(["--check", "--out", str(tmp_path)]) == 1
    assert "openset-torchserve.yaml" in capsys.readouterr().err


def test_manifests_bad_argument_is_one_line(capsys):
    assert exit_code(manifests.main, ["--chek"]) == 2
    assert one_line(capsys.readouterr().err)


def test_torchserve_layout(runs, tmp_path):
    assert torchserve_layout.main([str(runs["arpl"][1]), "--out", str(tmp_path), "--ort-threads", "2"]) == 0
    properties = read_properties(tmp_path / "config" / "config.properties")
    assert properties["inference_address"] == "http://0.0.0.0:8085"
    assert properties["metrics_address"] == "http://0.0.0.0:8082"
    assert properties["enable_envvars_config"] == "true"
    assert properties["model_store"] == "/mnt/models/model-store"
    assert properties["metrics_mode"] == "prometheus"
    assert properties["disable_token_authorization"] == "true"
    assert properties["enable_model_api"] == "false"
    model = json.loads(properties["model_snapshot"])["models"]["opensetmnist"]["1"]
    repo = json.loads(read_properties(torchserve_layout.REPO_CONFIG)["models"])["opensetmnist"]["1"]
    assert model["marName"] == "opensetmnist.mar" and model["defaultVersion"] is True
    assert model["batchSize"] == 1  # the kserve envelope answers one request per batch
    for key in ("minWorkers", "maxWorkers", "maxBatchDelay", "responseTimeout"):
        assert model[key] == repo[key]
    with zipfile.ZipFile(tmp_path / "model-store" / "opensetmnist.mar") as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        assert yaml.safe_load(archive.read("model-config.yaml"))["handler"]["ort_threads"] == 2
    assert manifest["model"]["modelName"] == "opensetmnist"


def test_torchserve_layout_bad_inputs_are_one_line(tmp_path, capsys):
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a protobuf")
    for argv in ([str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "a")],
                 [str(not_onnx), "--out", str(tmp_path / "b")],
                 [str(not_onnx), "--out", str(tmp_path / "c"), "--ort-threads", "0"]):
        assert exit_code(torchserve_layout.main, argv) == 2
        assert one_line(capsys.readouterr().err)
    assert not any((tmp_path / out).exists() for out in "abc")

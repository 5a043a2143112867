"""End to end against a real TorchServe on 127.0.0.1, started and stopped by this module.

The server runs from a temporary working directory (its key_file.json and logs land there)
with TMPDIR pointed there too (TorchServe's pid file), on ports 18080-18082, with the repo's
config.properties otherwise unchanged. A second model built from a corrupt .onnx is loaded
beside the real one to show that it is refused without a crash loop.
"""
from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from export.archive import build_archive
from export.onnx_export import export_onnx
from handlers import resize
from handlers.remote_client import RemoteScorer
from handlers.server import (KeyFileError, read_inference_key, read_properties, start, stop,
                             write_config)
from tests.conftest import ROOT
from tests.helpers import json_answer
from train.cli import main as train_main
from data.datasets import load_dataset

MODEL, BROKEN = "digits", "broken"
KNOWN = (0, 1, 2, 3, 4, 5)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def serving_config(store: Path, workdir: Path) -> Path:
    """The repo's config.properties on ports 18080-18082, serving MODEL (with the repo's
    settings for opensetmnist, but a 150 ms batch window so that batches form) and BROKEN."""
    [(version, settings)] = json.loads(
        read_properties(ROOT / "config.properties")["models"])["opensetmnist"].items()
    models = {MODEL: {version: {**settings, "marName": f"{MODEL}.mar", "maxBatchDelay": 150}}}
    return write_config(ROOT / "config.properties", workdir / "config.properties",
                        {"model_store": str(store), "models": json.dumps(models),
                         "load_models": f"{MODEL}={MODEL}.mar,{BROKEN}={BROKEN}.mar"},
                        port_offset=10000)


def corrupt_copy(store: Path, model: Path) -> None:
    """BROKEN.mar: a proper archive whose .onnx bytes were then damaged (as on a bad disk)."""
    build_archive(model, BROKEN, "1", store, ort_threads=1)
    good = (store / f"{BROKEN}.mar").read_bytes()
    with zipfile.ZipFile(io.BytesIO(good)) as source, \
            zipfile.ZipFile(store / f"{BROKEN}.mar", "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, data[:100] if item.filename.endswith(".onnx") else data)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if Path("/tmp/.ts.sock.9000").exists():
        pytest.fail("another TorchServe seems to be running (/tmp/.ts.sock.9000); `make stop` first")
    tmp = tmp_path_factory.mktemp("serving")
    run_dir, store = tmp / "run", tmp / "store"
    assert train_main(["--dataset", "digits", "--known", ",".join(map(str, KNOWN)),
                       "--epochs", "15", "--width", "0.5", "--out", str(run_dir)]) == 0
    export_onnx(run_dir, tmp / "model.onnx")  # training records the resize policy
    build_archive(tmp / "model.onnx", MODEL, "1", store, ort_threads=1)
    corrupt_copy(store, tmp / "model.onnx")
    env = {"TMPDIR": str(tmp)}
    try:
        info = start(serving_config(store, tmp), tmp, env=env, timeout=120)
        yield {**info, "workdir": tmp}
    finally:
        stop(tmp, env=env)  # also when start() timed out: never leave a server behind


def call(server, body: bytes | None, content_type: str = "application/octet-stream",
         token: bool = True, model: str = MODEL, headers: dict | None = None):
    request = urllib.request.Request(f"{server['inference']}/predictions/{model}", data=body,
                                     method="POST", headers={"Content-Type": content_type,
                                                             **(headers or {})})
    if token:
        request.add_header("Authorization", f"Bearer {server['key']}")
    return json_answer(request)


def digits_png(classes, count: int) -> list[bytes]:
    data = load_dataset("digits")
    chosen = [i for i in range(len(data.labels)) if data.labels[i] in classes][-count:]
    return [png_bytes(data.images[i, 0]) for i in chosen]


def onnx_scores(server, pngs: list[bytes]) -> dict[str, np.ndarray]:
    """The served .onnx's own reciprocal_score and unknown_score on these PNGs, computed here."""
    session = ort.InferenceSession(str(server["workdir"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(png)), np.float32) / 255
                       for png in pngs])[:, None]
    names = ["reciprocal_score", "unknown_score"]
    return dict(zip(names, session.run(names, {"images": pixels})))


def metric(server, name: str) -> float:
    """A handler counter of MODEL on the Prometheus page (0 before its first report)."""
    with urllib.request.urlopen(f"{server['metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{ModelName="{MODEL}".*}} ([0-9.eE+-]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_known_digit_gets_the_contract_fields(server):
    png = digits_png(KNOWN, 1)[0]
    status, answer = call(server, png, "image/png")
    assert status == 200
    assert {"label", "known", "class_index", "unknown_score", "reciprocal_score", "threshold",
            "probabilities", "model"} <= set(answer)
    assert answer["model"]["name"] == MODEL and answer["model"]["method"] == "arpl"
    assert answer["label"] in [str(k) for k in KNOWN] + ["unknown"]
    # both scores are the served .onnx's own outputs on these pixels
    expected = onnx_scores(server, [png])
    assert answer["reciprocal_score"] == pytest.approx(float(expected["reciprocal_score"][0]),
                                                       abs=1e-5)
    assert answer["unknown_score"] == pytest.approx(float(expected["unknown_score"][0]), abs=1e-5)
    session = ort.InferenceSession(str(server["workdir"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert answer["model"]["score"] == json.loads(
        session.get_modelmeta().custom_metadata_map["score"])


def non_square_jpeg() -> bytes:
    """60x40 RGB: a known digit in the centre square, coloured bars left and right, so the
    centre crop (the digit) and the letterbox (all of it, squeezed) feed different pixels."""
    digit = load_dataset("digits").images[0, 0]  # 8 x 8 uint8, a 0
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, 10:50] = np.kron(digit, np.ones((5, 5), np.uint8))[..., None]
    pixels[:, :10], pixels[:, 50:] = (255, 200, 0), (0, 120, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_non_square_jpeg_is_resized_by_the_recorded_policy(server):
    session = ort.InferenceSession(str(server["workdir"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    spec = meta["input_spec"]
    policy = spec["resize"]["policy"]
    jpeg = non_square_jpeg()
    status, answer = call(server, jpeg, "image/jpeg")
    assert status == 200, answer
    top_k = [meta["class_names"].index(item["label"]) for item in answer["probabilities"]]

    def expected(policy: str) -> np.ndarray:
        """unknown_score, reciprocal_score and the answer's top-k probabilities, from the .onnx
        itself on training's own read of the JPEG by `policy`."""
        pixels = resize.read_8bit(Image.open(io.BytesIO(jpeg)), spec["channels"], spec["height"],
                                  spec["width"], policy)[None] / np.float32(255)
        logits, unknown, reciprocal = session.run(
            ["logits", "unknown_score", "reciprocal_score"], {"images": pixels})
        scaled = logits[0].astype(np.float64) / meta.get("temperature", 1.0)
        probabilities = np.exp(scaled - scaled.max()) / np.exp(scaled - scaled.max()).sum()
        return np.array([unknown[0], reciprocal[0], *probabilities[top_k]])

    served = np.array([answer["unknown_score"], answer["reciprocal_score"],
                       *[item["probability"] for item in answer["probabilities"]]])
    assert np.allclose(served, expected(policy), atol=1e-4)
    [other] = [p for p in resize.POLICIES if p != policy]
    assert np.abs(served - expected(other)).max() > 1e-2  # the other policy answers otherwise


def test_unknown_digits_score_higher_than_known_ones(server):
    pngs = digits_png(KNOWN, 20) + digits_png((6, 7, 8, 9), 20)
    served = np.array([call(server, png, "image/png")[1]["unknown_score"] for png in pngs])
    assert served == pytest.approx(onnx_scores(server, pngs)["unknown_score"], abs=1e-5)
    assert served[20:].mean() > served[:20].mean()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"}])
def test_missing_or_wrong_token_is_refused(server, headers):
    status, answer = call(server, digits_png(KNOWN, 1)[0], "image/png", token=False,
                          headers=headers)
    # TorchServe 0.12 raises InvalidKeyException, a ModelException, which its HTTP handler
    # answers with 400 (not 401), in its own error body
    assert status == 400
    assert answer == {"code": 400, "type": "InvalidKeyException",
                      "message": "Token Authorization failed. Token either incorrect, expired, "
                                 "or not provided correctly"}


@pytest.mark.parametrize("body,content_type,code", [
    (b"\x00\x01garbage bytes", "application/octet-stream", "not_an_image"),
    (b"", "application/octet-stream", "empty_body"),
    (json.dumps({"pixels": np.zeros((5, 5)).tolist()}).encode(), "application/json", "wrong_size"),
    (b'{"pixels": [[NaN, 0], [0, 0]]}', "application/json", "non_finite"),
])
def test_bad_input_gets_400_with_json_error(server, body, content_type, code):
    status, answer = call(server, body, content_type)
    assert status == 400
    assert answer["code"] == code and answer["error"]


def test_threshold_override_by_header_and_json(server):
    png = digits_png(KNOWN, 1)[0]
    status, answer = call(server, png, "image/png", headers={"X-Threshold": "1e6"})
    assert status == 200 and answer["threshold"] == 1e6 and answer["known"] is True
    body = json.dumps({"image": base64.b64encode(png).decode(), "threshold": -1e6}).encode()
    status, answer = call(server, body, "application/json")
    assert status == 200 and answer["known"] is False and answer["label"] == "unknown"


def test_json_list_is_answered_in_order(server):
    pngs = digits_png(KNOWN, 3)
    single = [call(server, png, "image/png")[1]["unknown_score"] for png in pngs]
    body = json.dumps([{"image": base64.b64encode(png).decode()} for png in pngs]).encode()
    status, answers = call(server, body, "application/json")
    assert status == 200 and len(answers) == 3
    assert np.allclose([a["unknown_score"] for a in answers], single, atol=1e-4)


def test_mixed_batch_answers_each_request(server):
    good = digits_png(KNOWN, 4)
    bodies = [(good[0], "image/png"), (b"not an image", "application/octet-stream"),
              (good[1], "image/png"), (good[2], "image/png"), (good[3], "image/png")]
    with ThreadPoolExecutor(len(bodies)) as pool:  # together, inside one 150 ms batch window
        results = list(pool.map(lambda b: call(server, *b), bodies))
    assert [status for status, _ in results] == [200, 400, 200, 200, 200]
    assert results[1][1]["code"] == "not_an_image"
    assert all("unknown_score" in answer for status, answer in results if status == 200)


def test_corrupt_model_is_refused_without_crash_loop(server):
    status, answer = call(server, digits_png(KNOWN, 1)[0], "image/png", model=BROKEN)
    assert status == 503 and answer["code"] == "model_unavailable"
    assert "not a loadable ONNX model" in answer["error"]
    model_log = (server["workdir"] / "logs" / "model_log.log").read_text()
    assert "OPEN-SET MODEL REFUSED" in model_log
    assert "Retry worker" not in (server["workdir"] / "logs" / "ts_log.log").read_text()


def test_metrics_and_health_after_all_of_it(server):
    before = {name: metric(server, name) for name in ("OpenSetPredictions",
                                                      "OpenSetUnknownPredictions")}
    pngs = digits_png(KNOWN, 3) + digits_png((6, 7, 8, 9), 3)
    answers = [call(server, png, "image/png")[1] for png in pngs]
    expected = {"OpenSetPredictions": before["OpenSetPredictions"] + len(pngs),
                "OpenSetUnknownPredictions": before["OpenSetUnknownPredictions"]
                + sum(not answer["known"] for answer in answers)}
    deadline = time.monotonic() + 10  # the worker reports its metrics after it answers
    while time.monotonic() < deadline and \
            any(metric(server, name) != value for name, value in expected.items()):
        time.sleep(0.2)
    assert {name: metric(server, name) for name in expected} == expected
    request = urllib.request.Request(f"{server['inference']}/ping",
                                     headers={"Authorization": f"Bearer {server['key']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "Healthy"
    with urllib.request.urlopen(f"{server['metrics']}/metrics", timeout=10) as response:
        assert "OpenSetHandlerLatency" in response.read().decode()


def test_batch_scorer_remote_mode_matches_local(server, tmp_path, runs):
    from handlers.batch_score import score
    from handlers.predictor import Predictor

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, png in enumerate(digits_png(KNOWN + (6, 7), 10)):
        (folder / f"{i:02d}.png").write_bytes(png)
    (folder / "zz_broken.png").write_bytes(b"broken")
    predictor = Predictor(server["workdir"] / "model.onnx")
    local = score(folder, tmp_path / "local.jsonl", predictor, batch_size=4, progress=False)
    remote = score(folder, tmp_path / "remote.jsonl", predictor, batch_size=4, concurrency=2,
                   remote=RemoteScorer(server["inference"], MODEL, server["key"]), progress=False)
    assert local["images"] == remote["images"] == 11 and remote["errors"] == 1
    rows = [[json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("local", "remote")]
    assert len(rows[0]) == len(rows[1]) == 11
    for mine, theirs in zip(*rows):
        assert mine["id"] == theirs["id"] and mine["label"] == theirs["label"]
        if not mine["error"]:
            assert abs(mine["unknown_score"] - theirs["unknown_score"]) < 1e-4
            assert abs(mine["reciprocal_score"] - theirs["reciprocal_score"]) < 1e-4


def test_batch_scorer_reports_an_unreachable_server(tmp_path, runs):
    from handlers.batch_score import score
    from handlers.predictor import Predictor

    (tmp_path / "a.png").write_bytes(digits_png(KNOWN, 1)[0])
    summary = score(tmp_path, tmp_path / "o.jsonl", Predictor(runs["arpl"][1]),
                    remote=RemoteScorer("http://127.0.0.1:9", MODEL, None, retries=1),
                    progress=False)
    assert summary["errors"] == 1
    assert "server unreachable" in (tmp_path / "o.jsonl").read_text()


def test_serving_config_changes_only_what_it_names(tmp_path):
    path = serving_config(tmp_path / "store", tmp_path)
    original, served = read_properties(ROOT / "config.properties"), read_properties(path)
    assert served.pop("inference_address") == "http://127.0.0.1:18080"
    assert served.pop("management_address") == "http://127.0.0.1:18081"
    assert served.pop("metrics_address") == "http://127.0.0.1:18082"
    assert served.pop("model_store") == str(tmp_path / "store")
    assert served.pop("load_models") == f"{MODEL}={MODEL}.mar,{BROKEN}={BROKEN}.mar"
    repo_model = json.loads(original["models"])["opensetmnist"]["1"]
    assert json.loads(served.pop("models")) == {MODEL: {"1": {
        **repo_model, "marName": f"{MODEL}.mar", "maxBatchDelay": 150}}}
    assert served == {key: original[key] for key in served}  # every other line as it was
    assert set(served) == set(original) - {"inference_address", "management_address",
                                           "metrics_address", "model_store", "load_models",
                                           "models"}


def test_write_config_keeps_comments_and_appends_new_properties(tmp_path):
    source = tmp_path / "source.properties"
    source.write_text("# a comment with inference_address=x\ninference_address=http://h:8080\n"
                      "\nmodel_store = store\nnumber_of_netty_threads=4\n")
    write_config(source, tmp_path / "out.properties", {"model_store": "/m", "job_queue_size": "9"},
                 port_offset=5)
    assert (tmp_path / "out.properties").read_text() == (
        "# a comment with inference_address=x\ninference_address=http://h:8085\n"
        "\nmodel_store=/m\nnumber_of_netty_threads=4\njob_queue_size=9\n")


def test_inference_key_is_read_from_torchserve_key_file(tmp_path):
    key_file = tmp_path / "key_file.json"
    assert read_inference_key(key_file) is None  # no file: no token
    key_file.write_text(json.dumps({"management": {"key": "m-1", "expiration time": "x"},
                                    "inference": {"key": "i-2", "expiration time": "x"},
                                    "API": {"key": "a-3"}}))
    assert read_inference_key(key_file) == "i-2"
    for text in ("not json", '{"inference": "i-2"}', '{"management": {"key": "m-1"}}',
                 '{"inference": {"key": 7}}'):
        key_file.write_text(text)
        with pytest.raises(KeyFileError, match="not TorchServe's key_file.json"):
            read_inference_key(key_file)

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
from handlers.server import start, stop
from tests.conftest import ROOT
from train.cli import main as train_main
from data.datasets import load_dataset

MODEL, BROKEN = "digits", "broken"
KNOWN = (0, 1, 2, 3, 4, 5)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def serving_config(store: Path, workdir: Path) -> Path:
    text = (ROOT / "config.properties").read_text()
    for port in ("8080", "8081", "8082"):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:1{port}")
    text = text.replace("model_store=model_store", f"model_store={store}")
    text = re.sub(r"load_models=.*", f"load_models={MODEL}={MODEL}.mar,{BROKEN}={BROKEN}.mar", text)
    text = text.replace('"opensetmnist"', f'"{MODEL}"').replace("opensetmnist.mar", f"{MODEL}.mar")
    text = text.replace('"maxBatchDelay": 5', '"maxBatchDelay": 150')  # make batches form
    path = workdir / "config.properties"
    path.write_text(text)
    return path


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
    export_onnx(run_dir, tmp / "model.onnx")
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
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"raw": text.decode(errors="replace")}


def digits_png(classes, count: int) -> list[bytes]:
    data = load_dataset("digits")
    chosen = [i for i in range(len(data.labels)) if data.labels[i] in classes][-count:]
    return [png_bytes(data.images[i, 0]) for i in chosen]


def test_known_digit_gets_the_contract_fields(server):
    png = digits_png(KNOWN, 1)[0]
    status, answer = call(server, png, "image/png")
    assert status == 200
    assert {"label", "known", "class_index", "unknown_score", "reciprocal_score", "threshold",
            "probabilities", "model"} <= set(answer)
    assert answer["model"]["name"] == MODEL and answer["model"]["method"] == "arpl"
    assert answer["label"] in [str(k) for k in KNOWN] + ["unknown"]
    # both scores are the served .onnx's own outputs on these pixels
    session = ort.InferenceSession(str(server["workdir"] / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    pixels = (np.asarray(Image.open(io.BytesIO(png)), np.float32) / 255)[None, None]
    reciprocal, deciding = session.run(["reciprocal_score", "unknown_score"], {"images": pixels})
    assert answer["reciprocal_score"] == pytest.approx(float(reciprocal[0]), abs=1e-5)
    assert answer["unknown_score"] == pytest.approx(float(deciding[0]), abs=1e-5)
    assert answer["model"]["score"] == json.loads(
        session.get_modelmeta().custom_metadata_map["score"])


def test_unknown_digits_score_higher_than_known_ones(server):
    known = [call(server, png, "image/png")[1]["unknown_score"] for png in digits_png(KNOWN, 20)]
    unknown = [call(server, png, "image/png")[1]["unknown_score"]
               for png in digits_png((6, 7, 8, 9), 20)]
    assert np.mean(unknown) > np.mean(known)


def test_missing_token_is_refused(server):
    status, answer = call(server, digits_png(KNOWN, 1)[0], "image/png", token=False)
    assert status in (400, 401)
    assert "InvalidKeyException" in json.dumps(answer)


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
    call(server, digits_png(KNOWN, 1)[0], "image/png")
    request = urllib.request.Request(f"{server['inference']}/ping",
                                     headers={"Authorization": f"Bearer {server['key']}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "Healthy"
    with urllib.request.urlopen(f"{server['metrics']}/metrics", timeout=10) as response:
        text = response.read().decode()
    predictions = re.search(rf'OpenSetPredictions{{ModelName="{MODEL}".*}} ([0-9.]+)', text)
    assert predictions and float(predictions.group(1)) >= 1
    assert "OpenSetUnknownPredictions" in text and "OpenSetHandlerLatency" in text


def test_batch_scorer_remote_mode_matches_local(server, tmp_path, runs):
    from handlers.batch_score import RemoteScorer, score
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
    from handlers.batch_score import RemoteScorer, score
    from handlers.predictor import Predictor

    (tmp_path / "a.png").write_bytes(digits_png(KNOWN, 1)[0])
    summary = score(tmp_path, tmp_path / "o.jsonl", Predictor(runs["arpl"][1]),
                    remote=RemoteScorer("http://127.0.0.1:9", MODEL, None, retries=1),
                    progress=False)
    assert summary["errors"] == 1
    assert "server unreachable" in (tmp_path / "o.jsonl").read_text()

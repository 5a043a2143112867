"""The KServe front (OIP v2): the tensor mapping and the binary-request parser on their own, then a
real `python -m handlers.kserve_server` on 127.0.0.1 (HTTP and gRPC) driven by tritonclient,
the independent OIP client, and by raw HTTP for the malformed bodies a client library never sends.
Answers must equal the in-process Predictor's."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from kserve import InferInput
from kserve.errors import InvalidInput
from PIL import Image

from handlers import oip
from handlers.decode import InputError
from handlers.kserve_predictor import UnknownRate
from handlers.kserve_server import binary_request
from handlers.predictor import Predictor
from tests.helpers import ROOT

MODEL_NAME = "digits"


def pngs(count: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """`count` random 8x8 grey PNGs and their pixels (N x 1 x 8 x 8 in [0, 1])."""
    values = np.random.default_rng(seed).integers(0, 256, (count, 8, 8), dtype=np.uint8)
    encoded = []
    for value in values:
        buffer = io.BytesIO()
        Image.fromarray(value).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded, values[:, None].astype(np.float32) / 255


def length_prefixed(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


@pytest.fixture(scope="module")
def predictor(runs):
    return Predictor(runs["arpl"][1], name=MODEL_NAME)


# --- the tensor mapping ------------------------------------------------------------------

def test_fp32_json_binary_and_nested_data_read_the_same(predictor):
    _, pixels = pngs(3)
    shape = [3, 1, 8, 8]
    flat = InferInput("images", shape, "FP32", data=pixels.ravel().tolist())
    nested = InferInput("images", shape, "FP32", data=pixels.tolist())
    raw = InferInput("images", shape, "FP32")
    raw._raw_data = pixels.astype("<f4").tobytes()
    for tensor in (flat, nested, raw):
        images, threshold = oip.read_request([tensor], None, predictor)
        np.testing.assert_array_equal(images, pixels)
        assert threshold is None


def test_bytes_base64_and_raw_decode_like_the_rest_front(predictor):
    encoded, pixels = pngs(2)
    as_json = InferInput("image_bytes", [2], "BYTES", data=[base64.b64encode(e).decode() for e in encoded])
    raw = InferInput("image_bytes", [2], "BYTES")
    raw._raw_data = length_prefixed(encoded)
    for tensor in (as_json, raw):
        images, _ = oip.read_request([tensor], {"threshold": "0.25"}, predictor)
        np.testing.assert_allclose(images, pixels, atol=1e-6)
    assert oip.read_request([as_json], {"threshold": 0.25}, predictor)[1] == 0.25


@pytest.mark.parametrize("tensor, parameters, code", [
    (InferInput("images", [1, 1, 8, 8], "FP64", data=[0.5] * 64), None, "wrong_datatype"),
    (InferInput("images", [1, 1, 8, 8], "FP32", data=[0.5] * 63), None, "shape_mismatch"),
    (InferInput("images", [1, 1, 9, 8], "FP32", data=[0.5] * 72), None, "wrong_size"),
    (InferInput("images", [1, 64], "FP32", data=[0.5] * 64), None, "wrong_shape"),
    (InferInput("images", [0, 1, 8, 8], "FP32", data=[]), None, "wrong_shape"),
    (InferInput("images", [300, 1, 8, 8], "FP32", data=[0.5] * 300 * 64), None, "too_many_images"),
    (InferInput("images", [1, 1, 8, 8], "FP32", data=[float("nan")] * 64), None, "non_finite"),
    (InferInput("images", [1, 1, 8, 8], "FP32", data=[2.0] * 64), None, "out_of_range"),
    (InferInput("images", [1, 1, 8, 8], "FP32", data=["a"] * 64), None, "bad_data"),
    (InferInput("images", [1, 1, 8, 8], "FP32", data=[0.5] * 64), {"threshold": "high"}, "bad_threshold"),
    (InferInput("image_bytes", [1], "BYTES", data=["@@not base64@@"]), None, "bad_base64"),
    (InferInput("image_bytes", [1], "BYTES", data=[base64.b64encode(b"text").decode()]), None,
     "not_an_image"),
    (InferInput("image_bytes", [2], "BYTES", data=[""]), None, "shape_mismatch"),
    (InferInput("image_bytes", [1], "BYTES", data=[""]), None, "empty_body"),
    (InferInput("image_bytes", [1], "FP32", data=[1.0]), None, "wrong_datatype"),
    (InferInput("pixels", [1], "FP32", data=[1.0]), None, "unknown_input"),
])
def test_bad_tensors_are_input_errors_with_a_code(predictor, tensor, parameters, code):
    with pytest.raises(InputError) as error:
        oip.read_request([tensor], parameters, predictor)
    assert error.value.code == code


def test_truncated_raw_bytes_and_two_inputs_are_refused(predictor):
    encoded, _ = pngs(1)
    raw = InferInput("image_bytes", [1], "BYTES")
    raw._raw_data = length_prefixed(encoded)[:-3]
    with pytest.raises(InputError, match="truncated"):
        oip.read_request([raw], None, predictor)
    one = InferInput("image_bytes", [1], "BYTES", data=[base64.b64encode(encoded[0]).decode()])
    with pytest.raises(InputError, match="exactly one input") as error:
        oip.read_request([one, one], None, predictor)
    assert error.value.code == "wrong_inputs"


def test_outputs_match_the_predictor_answers_and_follow_the_threshold(predictor):
    _, pixels = pngs(16, seed=3)
    outputs = predictor.run(pixels)
    threshold = float(np.median(outputs.unknown_score))  # half known, half unknown
    arrays = oip.output_arrays(predictor, outputs, threshold)
    answers = predictor.answers(outputs, [threshold] * 16)
    assert arrays["label"].tolist() == [a["label"] for a in answers]
    assert arrays["known"].tolist() == [a["known"] for a in answers]
    assert 0 < arrays["known"].sum() < 16
    assert arrays["predicted_class"].tolist() == [a["predicted_class"] for a in answers]
    np.testing.assert_array_equal(arrays["reciprocal_score"], outputs.reciprocal_score)
    assert [o["name"] for o in oip.output_types(predictor)] == list(arrays)
    assert oip.input_types(predictor)[0]["shape"] == [-1, 1, 8, 8]


def test_unknown_rate_is_a_sliding_window():
    rate = UnknownRate(window=4)
    assert rate.add(np.array([True, True, False, False])) == 0.5
    assert rate.add(np.array([False, False])) == 0.0  # the two True fell out of the window
    assert rate.add(np.array([True])) == 0.25


# --- the binary-request parser -----------------------------------------------------------

def test_binary_request_keeps_bytes_elements_raw():
    encoded, _ = pngs(2)
    payload = length_prefixed(encoded)
    header = json.dumps({"id": "7", "inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": len(payload)}}],
                         "parameters": {"threshold": 0.5}}).encode()
    request = binary_request(header + payload, {"inference-header-content-length": str(len(header))}, "m")
    assert request.id == "7" and request.parameters == {"threshold": 0.5}
    assert request.inputs[0]._raw_data == payload


@pytest.mark.parametrize("header, tail, message", [  # tail None: no length header, all JSON
    (b"not json", None, "not valid JSON"),
    (b'{"inputs": []}', None, '"inputs"'),
    (b'{"inputs": [{"name": "x"}]}', None, '"name", "datatype" and "shape"'),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES"}]}', None, "neither"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", '
     b'"parameters": {"binary_data_size": 10}}]}', b"xx", "only 2 bytes left"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', b"xx", "2 bytes after"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', b"", None),
    (b'[1]', None, "JSON object"),
])
def test_malformed_binary_requests_are_invalid_input(header, tail, message):
    headers = {} if tail is None else {"inference-header-content-length": str(len(header))}
    body = header + (tail or b"")
    if message is None:  # the well-formed control
        assert binary_request(body, headers, "m").inputs[0].name == "x"
        return
    with pytest.raises(InvalidInput, match=message):
        binary_request(body, headers, "m")
    if tail is not None:  # a length header that does not fit the body
        with pytest.raises(InvalidInput, match="inference-header-content-length"):
            binary_request(body, {"inference-header-content-length": str(len(body) + 1)}, "m")


# --- a real server -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(runs, tmp_path_factory):
    """`python -m handlers.kserve_server start` in a scratch directory; stopped after."""
    workdir = tmp_path_factory.mktemp("kserve")
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "handlers.kserve_server"]
    started = subprocess.run(
        [*command, "start", "--model", str(runs["arpl"][1]), "--name", MODEL_NAME,
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--threads", "1",
         "--max-body-mb", "1"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    assert "/v2/models/digits/infer" in started.stdout  # the printed example call
    yield {"http": f"127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "workdir": workdir,
           "port": http_port}
    stopped = subprocess.run([*command, "stop"], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=60)
    assert "stopped" in stopped.stdout


def post(port: int, path: str, body: bytes, content_type: str | None = "application/json"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type} if content_type else {}
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    status, payload = response.status, response.read()
    connection.close()
    return status, payload


@pytest.mark.slow
def test_metadata_and_health_through_tritonclient(served, predictor):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served["http"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    metadata = client.get_model_metadata(MODEL_NAME)
    assert metadata["versions"] == ["7"] and metadata["platform"] == "onnxruntime"
    assert metadata["inputs"] == oip.input_types(predictor)
    assert metadata["outputs"] == oip.output_types(predictor)


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False])
def test_fp32_and_bytes_inference_equal_the_in_process_predictor(served, predictor, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served["http"])
    encoded, pixels = pngs(5, seed=1)
    expected = predictor.answers(predictor.run(pixels))
    images = triton.InferInput("images", [5, 1, 8, 8], "FP32")
    images.set_data_from_numpy(pixels, binary_data=binary)
    as_bytes = triton.InferInput("image_bytes", [5], "BYTES")
    as_bytes.set_data_from_numpy(np.array(encoded if binary else [base64.b64encode(e) for e in encoded],
                                          dtype=object), binary_data=binary)
    for tensor in (images, as_bytes):
        result = client.infer(MODEL_NAME, [tensor])
        assert [v.decode() for v in result.as_numpy("label")] == [a["label"] for a in expected]
        assert result.as_numpy("known").tolist() == [a["known"] for a in expected]
        np.testing.assert_allclose(result.as_numpy("unknown_score"), [a["unknown_score"] for a in expected],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.as_numpy("reciprocal_score"),
                                   [a["reciprocal_score"] for a in expected], rtol=1e-5, atol=1e-6)
        assert result.as_numpy("logits").shape == (5, len(predictor.info.class_names))
        assert result.get_response()["model_version"] == "7"


@pytest.mark.slow
def test_threshold_parameter_and_requested_outputs(served, predictor):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served["http"])
    _, pixels = pngs(8, seed=2)
    scores = predictor.run(pixels).unknown_score
    images = triton.InferInput("images", [8, 1, 8, 8], "FP32")
    images.set_data_from_numpy(pixels)
    for threshold in (float(scores.min()) - 1, float(scores.max()) + 1):
        result = client.infer(MODEL_NAME, [images], parameters={"threshold": threshold},
                              outputs=[triton.InferRequestedOutput("known")])
        assert result.as_numpy("known").tolist() == [threshold > scores.max()] * 8
        assert result.as_numpy("label") is None  # only what was asked for
        assert result.get_response()["parameters"]["threshold"] == threshold


GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

address, pngs = sys.argv[1], [bytes.fromhex(h) for h in sys.argv[2:]]
client = triton_grpc.InferenceServerClient(address)
tensor = triton_grpc.InferInput("image_bytes", [len(pngs)], "BYTES")
tensor.set_data_from_numpy(np.array(pngs, dtype=object))
result = client.infer("digits", [tensor], parameters={"threshold": "-1e9"})
report = {"known": result.as_numpy("known").tolist(),
          "label": [v.decode() for v in result.as_numpy("label")],
          "threshold": result.get_response().parameters["threshold"].string_param,
          "metadata_inputs": [i.name for i in client.get_model_metadata("digits").inputs]}
bad = triton_grpc.InferInput("images", [1, 1, 8, 8], "FP32")
bad.set_data_from_numpy(np.full((1, 1, 8, 8), np.nan, np.float32))
for name, call in (("nan", lambda: client.infer("digits", [bad])),
                   ("double_param", lambda: client.infer("digits", [tensor], parameters={"threshold": -1.0})),
                   ("no_model", lambda: client.infer("nope", [tensor]))):
    try:
        call()
        report[name] = "answered"
    except InferenceServerException as error:
        report[name] = [str(error.status()), error.message()]
print(json.dumps(report))
"""


@pytest.mark.slow
def test_grpc_answers_like_http(served, predictor):
    """tritonclient.grpc in its own interpreter: its protos and kserve's share the `inference`
    package name, and one process cannot register both."""
    encoded, pixels = pngs(3, seed=4)
    expected = predictor.answers(predictor.run(pixels), [-1e9] * 3)
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, served["grpc"], *(e.hex() for e in encoded)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["known"] == [False] * 3 and float(report["threshold"]) == -1e9
    assert report["label"] == [a["label"] for a in expected] == ["unknown"] * 3
    assert report["metadata_inputs"] == ["images", "image_bytes"]
    assert report["nan"][0] == "StatusCode.INVALID_ARGUMENT" and "NaN" in report["nan"][1]
    assert report["double_param"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "no double_param" in report["double_param"][1]
    assert report["no_model"][0] == "StatusCode.NOT_FOUND"


def v2_request(inputs: list[dict], **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


PNG = pngs(1)[0][0]
BAD_BODIES = [  # (body, content type, text in the error)
    (b"not json at all", "application/json", "not valid JSON"),
    (b"not json at all", None, "not valid JSON"),
    (b'{"inputs": 3}', "application/json", "inputs"),
    (b'{"inputs": [{"name": "images"}]}', "application/json", "shape"),
    (v2_request([{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 10}]),
     "application/json", "needs 64 values"),
    (v2_request([{"name": "images", "shape": [1, 1, 8, 8], "datatype": "INT8", "data": [1] * 64}]),
     "application/json", "must be FP32"),
    (v2_request([{"name": "images", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [-1] * 64}]),
     "application/json", "[0, 1]"),
    (v2_request([{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]), "application/json",
     "unknown input 'pixels'"),
    (v2_request([{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]),
     "application/json", "not valid base64"),
    (v2_request([{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                  "data": [base64.b64encode(PNG).decode()]}], parameters={"threshold": "x"}),
     "application/json", "threshold must be a number"),
    (b"x=1&y=2", "application/x-www-form-urlencoded", "not valid JSON"),
]


@pytest.mark.slow
def test_every_bad_request_is_a_400_with_a_json_error(served):
    path = f"/v2/models/{MODEL_NAME}/infer"
    for body, content_type, text in BAD_BODIES:
        status, payload = post(served["port"], path, body, content_type)
        assert status == 400, (body[:60], payload)
        assert text in json.loads(payload)["error"], (body[:60], payload)
    status, payload = post(served["port"], "/v2/models/nope/infer", BAD_BODIES[4][0])
    assert status == 404 and "nope" in json.loads(payload)["error"]
    status, payload = post(served["port"], f"/v1/models/{MODEL_NAME}:predict", b'{"instances": [1]}')
    assert status == 400 and "Open Inference Protocol v2" in json.loads(payload)["error"]


def request_to(port: int, method: str, path: str, body: bytes | None = None,
               headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    status, payload = response.status, response.read()
    connection.close()
    return status, json.loads(payload)


@pytest.mark.slow
def test_what_this_server_does_not_offer_is_a_4xx_with_a_json_error(served):
    port, good = served["port"], BAD_BODIES[4][0]
    for path in (f"/v2/repository/models/{MODEL_NAME}/unload", f"/v2/repository/models/{MODEL_NAME}/load"):
        status, payload = request_to(port, "POST", path)
        assert status == 403 and "load/unload is off" in payload["error"]
    assert request_to(port, "GET", f"/v2/models/{MODEL_NAME}/ready")[1]["ready"]  # still served
    status, payload = request_to(port, "POST", f"/v2/models/{MODEL_NAME}/versions/3/infer", good,
                                 {"Content-Type": "application/json"})
    assert status == 404 and "not served here" in payload["error"]
    assert request_to(port, "GET", "/no/such/route")[0] == 404
    assert request_to(port, "GET", f"/v2/models/{MODEL_NAME}/infer")[0] == 405
    status, payload = request_to(port, "POST", f"/v2/models/{MODEL_NAME}/infer", b"{\xff\xfe}",
                                 {"Content-Type": "application/json"})
    assert status == 400 and payload["code"] == "bad_request"


@pytest.mark.slow
def test_malformed_fields_and_oversize_bodies_are_refused_before_inference(served):
    port, path = served["port"], f"/v2/models/{MODEL_NAME}/infer"
    tensor = [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
               "data": [base64.b64encode(PNG).decode()]}]
    before = openset_metrics(port)
    for body, text in ((v2_request(tensor, id=5), '"id" must be a string'),
                       (v2_request(tensor, outputs=[{"name": "label", "parameters": "binary"}]), '"outputs"'),
                       (v2_request(tensor, outputs=[{"name": "labels"}]), "unknown output 'labels'"),
                       (v2_request(tensor, parameters={"threshold": None}), "null")):
        status, payload = post(port, path, body, None)  # no Content-Type: the binary-request parser
        assert status == 400 and text in json.loads(payload)["error"], payload
    status, payload = post(port, path, v2_request(tensor, outputs=[{"name": "labels"}]))  # JSON path
    assert status == 400 and "unknown output" in json.loads(payload)["error"]
    after = openset_metrics(port)
    assert after["openset_images_total"] == before["openset_images_total"]  # nothing ran
    status, payload = request_to(port, "POST", path, b"x" * ((1 << 20) + 1),
                                 {"Content-Type": "application/json"})
    assert status == 413 and payload["code"] == "too_large"  # --max-body-mb 1, by Content-Length
    chunked = (b"x" * 65536 for _ in range(20))  # 1.25 MB without a Content-Length
    # (http.client sends an iterable body chunked, without a Content-Length)
    status, payload = request_to(port, "POST", path, chunked, {"Content-Type": "application/json"})
    assert status == 413 and payload["code"] == "too_large"


@pytest.mark.slow
def test_bad_requests_do_not_fail_good_ones_beside_them(served, predictor):
    good = v2_request([{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(PNG).decode()]}])
    bodies = [good if i % 2 else BAD_BODIES[i % len(BAD_BODIES)][0] for i in range(40)]
    path = f"/v2/models/{MODEL_NAME}/infer"
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda body: post(served["port"], path, body)[0], bodies))
    assert statuses == [200 if i % 2 else 400 for i in range(40)]


@pytest.mark.slow
def test_concurrent_requests_batched_together_keep_their_own_images_and_thresholds(served, predictor):
    """The server runs concurrent requests as one onnxruntime batch: each answer must still be
    its own request's, with its own threshold."""
    encoded, pixels = pngs(16, seed=6)
    scores = predictor.run(pixels).unknown_score
    thresholds = [float(s) + (0.001 if i % 2 else -0.001) for i, s in enumerate(scores)]  # alternate
    expected = predictor.answers(predictor.run(pixels), thresholds)
    bodies = [v2_request([{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(e).decode()]}], parameters={"threshold": t})
              for e, t in zip(encoded, thresholds)]
    path = f"/v2/models/{MODEL_NAME}/infer"
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda body: post(served["port"], path, body), bodies))
    for (status, payload), answer in zip(replies, expected):
        assert status == 200
        outputs = {o["name"]: o["data"] for o in json.loads(payload)["outputs"]}
        assert outputs["known"] == [answer["known"]] and outputs["label"] == [answer["label"]]
        assert outputs["unknown_score"] == pytest.approx([answer["unknown_score"]], rel=1e-5, abs=1e-6)
    assert [a["known"] for a in expected] == [i % 2 == 1 for i in range(16)]


def openset_metrics(port: int) -> dict[str, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    assert 'model_name="nope"' not in text  # a client's name never becomes a label
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("openset_") and f'model_name="{MODEL_NAME}"' in line}


@pytest.mark.slow
def test_prometheus_endpoint_counts_images_bad_requests_and_the_unknown_rate(served):
    path = f"/v2/models/{MODEL_NAME}/infer"
    before = openset_metrics(served["port"])
    for body, content_type in ((b"not json", "application/json"),  # refused by FastAPI's parser
                               (b"not json", None),  # refused by the binary-request parser
                               (BAD_BODIES[4][0], "application/json")):  # refused by the model
        assert post(served["port"], path, body, content_type)[0] == 400
    assert post(served["port"], "/v2/models/nope/infer", BAD_BODIES[4][0])[0] == 404
    encoded, _ = pngs(6, seed=5)
    tensor = [{"name": "image_bytes", "shape": [6], "datatype": "BYTES",
               "data": [base64.b64encode(e).decode() for e in encoded]}]
    status, payload = post(served["port"], path, v2_request(tensor))
    assert status == 200
    unknown = sum(not known for known in next(o for o in json.loads(payload)["outputs"]
                                              if o["name"] == "known")["data"])
    after = openset_metrics(served["port"])
    assert after["openset_bad_requests_total"] - before["openset_bad_requests_total"] == 3
    assert after["openset_images_total"] - before["openset_images_total"] == 6
    assert after["openset_unknown_total"] - before["openset_unknown_total"] == unknown
    assert 0 <= after["openset_unknown_rate"] <= 1


@pytest.mark.slow
def test_log_stays_quiet_per_request(served):
    """No access line, timing line or traceback per request, good or bad, REST or gRPC: the log
    must not grow with traffic."""
    log = served["workdir"] / "logs" / "kserve.log"
    before = log.stat().st_size
    path = f"/v2/models/{MODEL_NAME}/infer"
    good = v2_request([{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(PNG).decode()]}])
    for _ in range(10):
        assert post(served["port"], path, good)[0] == 200
        post(served["port"], path, BAD_BODIES[4][0])  # refused by the model
        post(served["port"], path, b"not json", None)  # refused by the body parser
        post(served["port"], path, b"not json")  # refused by FastAPI
        post(served["port"], "/v2/models/nope/infer", BAD_BODIES[4][0])
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, served["grpc"], PNG.hex()],
                          capture_output=True, text=True, timeout=60)  # 1 good, 3 refused
    assert done.returncode == 0, done.stderr[-2000:]
    time.sleep(0.2)
    assert log.stat().st_size - before < 200, log.read_text()[before:][:2000]


def test_start_refuses_a_busy_port_and_stop_ignores_a_stale_pid_file(runs, tmp_path, capsys, monkeypatch):
    from handlers import kserve_server
    from tests.helpers import exit_code

    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "kserve.pid").write_text(str(os.getpid()))  # alive, but not a server
    assert exit_code(kserve_server.main, ["stop"]) == 0
    assert "no KServe server was running" in capsys.readouterr().out
    assert not (tmp_path / "logs" / "kserve.pid").exists()
    (tmp_path / "logs" / "kserve.pid").write_text("garbage")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert exit_code(kserve_server.main, ["start", "--model", str(runs["arpl"][1]),
                                               "--http-port", str(port)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"127.0.0.1:{port} is not free" in error and len(error.splitlines()) == 1


def test_cli_refuses_bad_arguments_in_one_line(tmp_path, capsys, monkeypatch):
    from handlers.kserve_server import main
    from tests.helpers import exit_code

    monkeypatch.chdir(tmp_path)  # `start` reads logs/kserve.pid where it runs

    assert exit_code(main, ["start"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert exit_code(main, ["run", "--model", str(tmp_path / "none.onnx")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert exit_code(main, ["run", "--model", "m.onnx", "--http-port", "70000"]) == 2
    assert "not in 1..65535" in capsys.readouterr().err
    assert exit_code(main, ["run", "--model", "m.onnx", "--http-port", "9", "--grpc-port", "9"]) == 2
    assert "must differ" in capsys.readouterr().err
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a model")
    assert exit_code(main, ["start", "--model", str(not_onnx)]) == 2  # refused before starting
    error = capsys.readouterr().err.strip()
    assert "not a loadable ONNX model" in error and len(error.splitlines()) == 1

"""The TorchServe handler as a plain object with a small mock context (no server)."""
import io
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from handlers.torchserve_handler import OpenSetHandler


class MockMetrics:
    def __init__(self):
        self.counters, self.times = {}, {}

    def add_counter(self, name, value, idx=None, dimensions=None):
        self.counters[name] = self.counters.get(name, 0) + value

    def add_time(self, name, value, idx=None, unit="ms", dimensions=None):
        self.times[name] = value


class MockContext:
    def __init__(self, model_dir, serialized="model.onnx", headers=None):
        self.manifest = {"model": {"serializedFile": serialized, "modelName": "mock"}}
        self.system_properties = {"model_dir": str(model_dir)}
        self.model_yaml_config = {"handler": {"ort_threads": 1, "top_k": 2}}
        self.metrics = MockMetrics()
        self.status, self.content_types = {}, {}
        self.headers = headers or {}

    def set_response_status(self, code, phrase="", idx=0):
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx, value):
        self.content_types[idx] = value

    def get_request_header(self, idx, key):
        return self.headers.get((idx, key))


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def model_dir(runs, tmp_path):
    shutil.copy(runs["arpl"][1], tmp_path / "model.onnx")
    return tmp_path


def test_batch_with_one_bad_request(model_dir):
    context = MockContext(model_dir, headers={(2, "X-Threshold"): "1e9"})
    handler = OpenSetHandler()
    handler.initialize(context)
    data = [{"body": bytearray(png(10))}, {"body": bytearray(b"nope")},
            {"body": bytearray(png(10))},
            {"body": [{"pixels": np.zeros((8, 8)).tolist()}, {"pixels": np.ones((8, 8)).tolist()}]}]
    out = [json.loads(answer) for answer in handler.handle(data, context)]
    assert len(out) == 4
    assert context.status == {1: (400, "not_an_image")}
    assert out[1] == {"error": out[1]["error"], "code": "not_an_image"}
    assert out[2]["threshold"] == 1e9 and out[2]["known"] is True
    assert len(out[0]["probabilities"]) == 2  # top_k from the model-config.yaml
    assert isinstance(out[3], list) and len(out[3]) == 2
    assert set(context.content_types.values()) == {"application/json"}
    assert context.metrics.counters["OpenSetPredictions"] == 4
    assert context.metrics.counters["OpenSetBadRequests"] == 1
    unknown = sum(not a["known"] for a in [out[0], out[2], *out[3]])
    assert context.metrics.counters["OpenSetUnknownPredictions"] == unknown
    # the arpl model's reciprocal-point score travels next to the deciding one
    session = ort.InferenceSession(str(model_dir / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    pixels = np.stack([np.full((1, 8, 8), 10 / 255), np.zeros((1, 8, 8)), np.ones((1, 8, 8))])
    reciprocal, deciding = session.run(["reciprocal_score", "unknown_score"],
                                       {"images": pixels.astype(np.float32)})
    served = [out[0], out[3][0], out[3][1]]
    assert [a["reciprocal_score"] for a in served] == pytest.approx(reciprocal.tolist(), rel=1e-5)
    assert [a["unknown_score"] for a in served] == pytest.approx(deciding.tolist(), rel=1e-5)


def test_refused_model_answers_503_instead_of_crashing(tmp_path, caplog):
    (tmp_path / "model.onnx").write_bytes(b"broken")
    context = MockContext(tmp_path)
    handler = OpenSetHandler()
    with caplog.at_level("ERROR"):
        handler.initialize(context)  # must not raise: TorchServe would restart it forever
    assert "OPEN-SET MODEL REFUSED" in caplog.text and "not a loadable ONNX model" in caplog.text
    out = [json.loads(a) for a in handler.handle([{"body": bytearray(png(1))},
                                                  {"body": bytearray(png(2))}], context)]
    assert context.status == {0: (503, "model unavailable"), 1: (503, "model unavailable")}
    assert all(answer["code"] == "model_unavailable" for answer in out)

"""The framework-free predictor: decoding, validation errors, answers, batching."""
import base64
import io
import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from handlers.decode import InputError, Shape, decode_pixels, decode_request
from handlers.predictor import Predictor

SHAPE = Shape(1, 8, 8)


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def predictor(runs):
    return Predictor(runs["arpl"][1], name="digits")


def onnx_output(path, name: str, pixels: np.ndarray) -> np.ndarray:
    """One output of the .onnx, straight from onnxruntime (independent of the predictor)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([name], {"images": pixels.astype(np.float32)})[0]


def onnx_metadata(path) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}


def test_png_bytes_decode_to_unit_range():
    array = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    images, is_list = decode_request(png(array), SHAPE)
    assert not is_list and images[0].pixels.shape == (1, 8, 8)
    assert np.allclose(images[0].pixels[0], array / 255)


def test_rgb_png_converts_to_grey_and_larger_png_resizes():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255
    images, _ = decode_request(png(rgb, "RGB"), SHAPE)
    assert images[0].pixels.shape == (1, 8, 8)
    assert np.allclose(images[0].pixels, 76 / 255, atol=1 / 255)  # Pillow's L of pure red


def test_json_base64_pixels_and_lists():
    array = np.full((8, 8), 128, np.uint8)
    body = json.dumps([{"image": base64.b64encode(png(array)).decode()},
                       {"pixels": (array / 255).tolist(), "threshold": 0.5}]).encode()
    images, is_list = decode_request(body, SHAPE)
    assert is_list and len(images) == 2
    assert np.allclose(images[0].pixels, images[1].pixels, atol=1e-6)
    assert images[0].threshold is None and images[1].threshold == 0.5


def test_integer_pixels_and_channel_conversion():
    assert np.allclose(decode_pixels(np.full((8, 8), 255).tolist(), SHAPE), 1.0)
    rgb = np.zeros((3, 8, 8))
    rgb[1] = 1.0
    assert np.allclose(decode_pixels(rgb.tolist(), SHAPE), 0.587)
    hwc = np.ones((8, 8, 3)) * 0.5
    assert np.allclose(decode_pixels(hwc.tolist(), Shape(3, 8, 8)), 0.5)


@pytest.mark.parametrize("body,code", [
    (b"", "empty_body"),
    (b"\x89PNG garbage bytes", "not_an_image"),
    (b"{not json", "bad_json"),
    (b"[]", "empty_body"),
    (json.dumps({"pixels": np.zeros((5, 5)).tolist()}).encode(), "wrong_size"),
    (b'{"pixels": [[NaN, 0], [0, 0]]}', "non_finite"),
    (json.dumps({"pixels": (-np.ones((8, 8))).tolist()}).encode(), "out_of_range"),
    (json.dumps({"pixels": [[1, 2], [3]]}).encode(), "bad_pixels"),
    (json.dumps({"image": "***"}).encode(), "bad_base64"),
    (json.dumps({"picture": 1}).encode(), "bad_json"),
    (json.dumps({"pixels": np.zeros((8, 8)).tolist(), "threshold": "high"}).encode(), "bad_threshold"),
    (png(np.zeros((8, 12), np.uint8)), "wrong_size"),
])
def test_bad_inputs_have_codes(body, code):
    with pytest.raises(InputError) as raised:
        decode_request(body, SHAPE)
    assert raised.value.code == code
    assert raised.value.to_json() == {"error": str(raised.value), "code": code}


def test_answers_follow_the_contract(predictor, runs):
    image = np.zeros((8, 8), np.uint8)
    [answer] = predictor.predict_requests([(png(image), None)])
    assert set(answer) >= {"label", "known", "class_index", "unknown_score", "threshold",
                           "probabilities", "model", "predicted_class"}
    assert answer["threshold"] == pytest.approx(predictor.info.threshold)
    assert answer["known"] == (answer["unknown_score"] <= answer["threshold"])
    assert answer["label"] in (*predictor.info.class_names, "unknown")
    probabilities = [p["probability"] for p in answer["probabilities"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert answer["probabilities"][0]["label"] == answer["predicted_class"]
    assert answer["model"] == {"name": "digits", "version": "7", "method": "arpl",
                               "score": onnx_metadata(runs["arpl"][1])["score"]}
    expected = onnx_output(runs["arpl"][1], "reciprocal_score", np.zeros((1, 1, 8, 8)))
    assert answer["reciprocal_score"] == pytest.approx(float(expected[0]), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("method", ["rpl", "arpl"])
def test_reciprocal_point_answers_carry_the_onnx_reciprocal_score(runs, method):
    pixels = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    body = json.dumps([{"pixels": image[0].tolist()} for image in pixels]).encode()
    [answers] = Predictor(runs[method][1]).predict_requests([(body, None)])
    expected = onnx_output(runs[method][1], "reciprocal_score", pixels)
    deciding = onnx_output(runs[method][1], "unknown_score", pixels)
    assert [a["reciprocal_score"] for a in answers] == pytest.approx(expected.tolist(), rel=1e-5)
    assert [a["unknown_score"] for a in answers] == pytest.approx(deciding.tolist(), rel=1e-5)
    assert all(a["model"]["method"] == method for a in answers)


def test_softmax_answers_have_no_reciprocal_score(runs):
    predictor = Predictor(runs["softmax"][1])
    [answer] = predictor.predict_requests([(png(np.zeros((8, 8), np.uint8)), None)])
    assert "reciprocal_score" not in answer and "unknown_score" in answer
    assert answer["model"]["score"] == onnx_metadata(runs["softmax"][1])["score"]
    assert predictor.run(np.zeros((2, 1, 8, 8), np.float32)).reciprocal_score is None


def test_batch_answers_each_request_and_isolates_errors(predictor):
    good = png(np.full((8, 8), 200, np.uint8))
    answers = predictor.predict_requests([
        (good, None), (b"garbage", None), (good, "1e9"),
        (json.dumps([{"pixels": np.zeros((8, 8)).tolist()}] * 3).encode(), None),
    ])
    assert isinstance(answers[1], InputError) and answers[1].code == "not_an_image"
    assert answers[2]["known"] is True and answers[2]["threshold"] == 1e9  # override applied
    assert answers[0]["unknown_score"] == pytest.approx(answers[2]["unknown_score"], abs=1e-6)
    assert isinstance(answers[3], list) and len(answers[3]) == 3


def test_decision_is_made_at_the_scores_float32_precision(predictor):
    score = np.float32(0.1)
    same_float32 = float(score) - 1e-12  # below the score in float64, equal to it in float32
    assert np.float32(same_float32) == score
    below = float(np.nextafter(score, np.float32(0)))  # the next float32 down
    known = predictor.decide(np.array([score, score], np.float32),
                             np.array([same_float32, below]))
    assert known.tolist() == [True, False]


def test_thresholds_beyond_float32_saturate_without_warnings(predictor):
    outputs = predictor.run(np.zeros((3, 1, 8, 8), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in cast"
        answers = predictor.answers(outputs, [None, 1e300, -1e300])
    calibrated = bool(outputs.unknown_score[0] <= np.float32(predictor.info.threshold))
    assert [a["known"] for a in answers] == [calibrated, True, False]
    assert [a["threshold"] for a in answers] == [predictor.info.threshold, 1e300, -1e300]
    assert [a["label"] for a in answers[1:]] == [answers[1]["predicted_class"], "unknown"]


def test_batched_scores_equal_single_scores(predictor):
    rng = np.random.default_rng(0)
    images = rng.random((5, 1, 8, 8), dtype=np.float32)
    batched = predictor.run(images)
    singles = [predictor.run(images[i:i + 1]) for i in range(5)]
    assert np.allclose(batched.unknown_score, [s.unknown_score[0] for s in singles], atol=1e-5)
    assert np.allclose(batched.reciprocal_score, [s.reciprocal_score[0] for s in singles],
                       atol=1e-5)


def test_damaged_png_is_a_client_error():
    data = bytearray(png((np.arange(64) % 251).reshape(8, 8).astype(np.uint8)))
    data[36] ^= 0x10  # a damaged chunk length: Pillow raises SyntaxError("broken PNG file")
    with pytest.raises(InputError) as raised:
        decode_request(bytes(data), SHAPE)
    assert raised.value.code == "not_an_image"


def test_sixteen_bit_png_is_scaled_not_clipped():
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(buffer, format="PNG")
    images, _ = decode_request(buffer.getvalue(), SHAPE)
    assert np.allclose(images[0].pixels, 32768 / 65535, atol=1e-4)


def test_huge_image_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG")
    with pytest.raises(InputError) as raised:
        decode_request(buffer.getvalue(), SHAPE)
    assert raised.value.code == "too_large"


def test_wrapped_base64_and_hostile_json():
    encoded = base64.encodebytes(png(np.zeros((8, 8), np.uint8))).decode()  # 76-column lines
    images, _ = decode_request(json.dumps({"image": encoded}).encode(), SHAPE)
    assert images[0].pixels.shape == (1, 8, 8)
    for body, code in ((b"[" * 100_000 + b"]" * 100_000, "bad_json"),
                       (b'{"pixels": [[1]], "threshold": ' + b"9" * 400 + b"}", "bad_threshold"),
                       (b'{"pixels": [[' + b"9" * 400 + b"]]}", "bad_pixels")):
        with pytest.raises(InputError) as raised:
            decode_request(body, SHAPE)
        assert raised.value.code == code

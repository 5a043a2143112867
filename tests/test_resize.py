"""The resize policies (handlers/resize.py), the serving decoder applying them, and the policy's
path from the checkpoint through the ONNX metadata (export) to the served Shape (contract)."""
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from export.onnx_export import metadata
from handlers import resize
from handlers.contract import ModelFileError, load_model
from handlers.decode import InputError, Shape, decode_image_bytes
from handlers.predictor import Predictor
from tests.helpers import tiny_spec

RED, GREEN, BLUE = (200, 0, 0), (0, 180, 0), (0, 0, 160)


def thirds(height: int = 20) -> Image.Image:
    """A 3:1 RGB image, left / centre / right thirds red / green / blue."""
    pixels = np.zeros((height, 3 * height, 3), np.uint8)
    for k, colour in enumerate((RED, GREEN, BLUE)):
        pixels[:, k * height:(k + 1) * height] = colour
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def structured(width: int, height: int) -> Image.Image:
    """Seeded RGB noise over a gradient: every crop or scale of it looks different."""
    generator = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = generator.integers(0, 120, (height, width, 3))
    return Image.fromarray(np.clip(ramp * 0.6 + noise, 0, 255).astype(np.uint8))


def test_center_crop_keeps_the_centre_third():
    fitted = np.asarray(resize.fit(thirds(), 20, 20, "center-crop"))
    assert fitted.shape == (20, 20, 3)
    assert (fitted == GREEN).all()


def test_letterbox_pads_black_bars_around_the_whole_image():
    fitted = np.asarray(resize.fit(thirds(), 20, 20, "letterbox"))
    inner_w, inner_h = resize.covering_size(60, 20, 20, 20, "letterbox")
    assert (inner_w, inner_h) == (20, 7)
    top = (20 - inner_h) // 2  # 6 rows above, 7 below
    assert (fitted[:top] == 0).all() and (fitted[top + inner_h:] == 0).all()
    content = fitted[top:top + inner_h]
    assert (content[:, :6] == RED).all()  # all three thirds, a third of the width each
    assert (content[:, 7:13] == GREEN).all()
    assert (content[:, 14:] == BLUE).all()


@pytest.mark.parametrize("policy", resize.POLICIES)
def test_same_size_is_the_identity(policy):
    image = structured(8, 6)
    assert resize.fit(image, 6, 8, policy) is image
    assert np.array_equal(resize.read_8bit(image, 3, 6, 8, policy),
                          np.asarray(image).transpose(2, 0, 1))


def test_covering_size():
    assert resize.covering_size(60, 20, 20, 20, "center-crop") == (60, 20)
    assert resize.covering_size(640, 480, 224, 224, "center-crop") == (299, 224)
    assert resize.covering_size(640, 480, 224, 224, "letterbox") == (224, 168)
    assert resize.covering_size(1000, 1, 10, 10, "letterbox") == (10, 1)  # never 0 pixels


def test_unknown_policy_is_refused_by_fit_and_shape():
    with pytest.raises(ValueError, match="unknown resize policy 'stretch'"):
        resize.fit(thirds(), 8, 8, "stretch")
    with pytest.raises(ValueError, match="unknown resize policy 'stretch'"):
        Shape(1, 8, 8, "stretch")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", resize.POLICIES)
def test_decoder_equals_training_read_on_any_aspect_ratio(fmt, channels, policy):
    # 200 x 120 JPEG to 16 x 16: big enough that read_8bit decodes it at a reduced DCT scale
    data = encoded(structured(200, 120), fmt)
    served = decode_image_bytes(data, Shape(channels, 16, 16, policy))
    trained = resize.read_8bit(Image.open(io.BytesIO(data)), channels, 16, 16, policy)
    assert served.dtype == np.float32 and served.shape == (channels, 16, 16)
    assert np.array_equal(served, trained.astype(np.float32) / 255)  # bit for bit
    [other] = [p for p in resize.POLICIES if p != policy]
    assert np.abs(served - decode_image_bytes(data, Shape(channels, 16, 16, other))).max() > 0.1


def test_sixteen_bit_grey_is_resized_in_float_by_the_policy():
    grey = (np.arange(30 * 20).reshape(20, 30) * 109 % 65536).astype(np.uint16)
    data = encoded(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    expected = np.asarray(resize.fit(Image.fromarray(grey.astype(np.float32) / 65535), 8, 8,
                                     "letterbox"))
    assert np.array_equal(decode_image_bytes(data, Shape(1, 8, 8, "letterbox"))[0], expected)
    rgb = decode_image_bytes(data, Shape(3, 8, 8, "letterbox"))
    assert rgb.shape == (3, 8, 8) and all(np.array_equal(c, expected) for c in rgb)
    assert resize.covering_size(30, 20, 8, 8, "letterbox") == (8, 5)  # bars: 1 row above, 2 below
    assert (expected[0] == 0).all() and (expected[6:] == 0).all() and expected[1:6].min() > 0


def test_without_a_policy_other_aspect_ratios_are_still_refused():
    data = encoded(structured(12, 8), "PNG")
    with pytest.raises(InputError) as raised:
        decode_image_bytes(data, Shape(1, 8, 8))
    assert raised.value.code == "wrong_size" and "aspect ratio differs" in str(raised.value)
    assert decode_image_bytes(data, Shape(1, 8, 8, "center-crop")).shape == (1, 8, 8)
    # the same aspect ratio resizes as before: a float bilinear resize of the grey image
    square = structured(16, 16)
    old = np.asarray(Image.fromarray(np.asarray(square.convert("L"), np.float32) / 255)
                     .resize((8, 8), Image.BILINEAR))
    assert np.array_equal(decode_image_bytes(encoded(square, "PNG"), Shape(1, 8, 8))[0], old)


def test_too_large_is_refused_before_decoding_with_a_policy():
    data = encoded(Image.new("L", (5000, 4000)), "PNG")
    with pytest.raises(InputError) as raised:
        decode_image_bytes(data, Shape(1, 8, 8, "letterbox"))
    assert raised.value.code == "too_large"


def checkpoint(resize_policy: str | None = None, **extra) -> dict:
    saved = {"model_spec": tiny_spec("softmax").to_dict(), "class_names": ["a"],
             "input_shape": [1, 8, 8], "method": "softmax", "threshold": 0.5,
             "threshold_rule": "a stand-in", **extra}
    return saved if resize_policy is None else {**saved, "resize_policy": resize_policy}


def contract_file(path, props: dict[str, str]):
    """A tiny contract .onnx (images 1 x 8 x 8 -> one logit, unknown_score) with these props."""
    nodes = [helper.make_node("ReduceMean", ["images"], ["logits"], axes=[2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["images"], ["unknown_score"], axes=[1, 2, 3],
                              keepdims=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1]),
         helper.make_tensor_value_info("unknown_score", TensorProto.FLOAT, ["b"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def props(saved: dict) -> dict[str, str]:
    return metadata(saved, {}, "1", "run", ["logits", "unknown_score"])


def test_export_records_the_policy_and_the_predictor_applies_it(tmp_path):
    spec = json.loads(props(checkpoint("letterbox"))["input_spec"])
    assert spec["resize"] == {"policy": "letterbox", "interpolation": "bilinear"}
    predictor = Predictor(contract_file(tmp_path / "m.onnx", props(checkpoint("letterbox"))))
    assert predictor.info.resize_policy == "letterbox"
    assert predictor.shape == Shape(1, 8, 8, "letterbox")
    data = encoded(structured(30, 12), "PNG")
    [image], _ = predictor.decode(data)
    assert np.array_equal(image.pixels, resize.read_8bit(Image.open(io.BytesIO(data)), 1, 8, 8,
                                                         "letterbox") / np.float32(255))


def test_old_checkpoints_record_no_policy(tmp_path):
    for saved in (checkpoint(), {**checkpoint(), "resize_policy": None}):  # lacking, or None
        assert "resize" not in json.loads(props(saved)["input_spec"])
    _, info = load_model(contract_file(tmp_path / "old.onnx", props(checkpoint())))
    assert info.resize_policy is None


@pytest.mark.parametrize("resize_spec,message", [
    ({"policy": "stretch", "interpolation": "bilinear"}, r'unknown resize policy "stretch"'),
    ({"policy": "letterbox", "interpolation": "nearest"}, r'resize interpolation "nearest"'),
    ({"interpolation": "bilinear"}, r'input_spec.resize must be an object with a "policy"'),
    ("center-crop", r'input_spec.resize must be an object with a "policy", got "center-crop"'),
])
def test_contract_refuses_a_policy_it_cannot_apply(tmp_path, resize_spec, message):
    written = props(checkpoint())
    written["input_spec"] = json.dumps({**json.loads(written["input_spec"]), "resize": resize_spec})
    with pytest.raises(ModelFileError, match=message):
        load_model(contract_file(tmp_path / "bad.onnx", written))


def test_a_phone_photo_is_read_upright_by_its_exif_orientation():
    stored = np.zeros((40, 80, 3), np.uint8)  # H x W: left half red, right half blue
    stored[:, :40, 0] = 255
    stored[:, 40:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": left becomes top
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        pixels = resize.read_8bit(image, 3, 40, 20, "center-crop")  # 20 wide, 40 tall
    assert pixels.shape == (3, 40, 20)
    assert pixels[0, :15].mean() > 200 and pixels[2, :15].mean() < 50  # red on top
    assert pixels[2, -15:].mean() > 200 and pixels[0, -15:].mean() < 50  # blue below
    assert np.array_equal(decode_image_bytes(buffer.getvalue(), Shape(3, 40, 20, "center-crop")),
                          pixels.astype(np.float32) / 255)


def test_sixteen_bit_grey_trains_on_the_served_pixels_rounded(tmp_path):
    from data.image_files import decode

    values = (np.arange(30 * 50, dtype=np.uint16).reshape(30, 50) * 43).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # mode I;16
    served = decode_image_bytes((tmp_path / "deep.png").read_bytes(), Shape(1, 16, 16, "center-crop"))
    trained = decode(tmp_path / "deep.png", (1, 16, 16), "center-crop")
    assert trained.dtype == np.uint8 and served.max() > 0.5  # scaled, not clipped to 0/255
    np.testing.assert_allclose(trained / 255, served, atol=0.5 / 255 + 1e-6)
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "float.tif")  # mode F
    with pytest.raises(ValueError, match="32-bit integer or float images are not supported"):
        decode(tmp_path / "float.tif", (1, 8, 8), "center-crop")

"""Turn one request body into model-ready images, or a client error with a stable code.

Accepted: PNG/JPEG/... bytes; JSON {"image": "<base64 PNG/JPEG>"} or {"pixels": nested array
[H, W] / [C, H, W] / [H, W, C], floats in [0, 1] or integers 0..255}; a JSON list of such
objects (several images, answered in order). Each object may carry "threshold".
Encoded images are converted when that is unambiguous (RGB <-> grey) and resized by the
model's resize policy (input_spec.resize in the ONNX metadata, handlers/resize.py): any size
and aspect ratio, upright by its EXIF orientation, through the very functions training decodes
its folder images with (8-bit images: the trained pixels bit for bit; 16-bit grey: before the
8-bit rounding training stores). A file
without a policy (exported before they were recorded) resizes only images of the model's aspect
ratio and refuses others ("wrong_size"). Pixel arrays must already have the model's size.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from handlers import resize

MAX_IMAGES_PER_REQUEST = 256
MAX_PIXELS = 4096 * 4096  # refuse before decoding: a tiny PNG can inflate to gigabytes
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"


class InputError(ValueError):
    """A client's mistake: answered with HTTP 400 and {"error": message, "code": code}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

    def to_json(self) -> dict:
        return {"error": str(self), "code": self.code}


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # C x H x W float32 in [0, 1]
    threshold: float | None  # per-image override of the model's threshold


@dataclass(frozen=True)
class Shape:
    """What the model takes: C x H x W, and how an encoded image of another size gets there
    (a handlers.resize policy; None for files without one: same aspect ratio only)."""
    channels: int
    height: int
    width: int
    resize_policy: str | None = None

    def __post_init__(self):
        if self.resize_policy is not None and self.resize_policy not in resize.POLICIES:
            raise ValueError(f"unknown resize policy {self.resize_policy!r}; choose from "
                             f"{', '.join(resize.POLICIES)}")


def parse_threshold(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        raise InputError("bad_threshold", "threshold must be a number, got a boolean")
    try:
        threshold = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError("bad_threshold", f"threshold must be a number, got {value!r}") from None
    if not math.isfinite(threshold):
        raise InputError("bad_threshold", "threshold must be finite")
    return threshold


def _image_pixels(image: Image.Image, channels: int) -> np.ndarray:
    """H x W (x C) float32 in [0, 1]; 16-bit grey is scaled, not clipped by Pillow's "L"."""
    if image.mode in resize.SIXTEEN_BIT:
        grey = np.asarray(image, dtype=np.float32) / 65535
        return grey if channels == 1 else np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("I", "F"):
        raise InputError("unsupported_image", "32-bit integer or float images are not "
                         "supported; send 8- or 16-bit images, or JSON pixels")
    converted = image.convert("L" if channels == 1 else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255


def _resize_float(pixels: np.ndarray, shape: Shape) -> np.ndarray:
    """H x W (x C) float32 -> the model's H x W, each channel as a Pillow "F" image: by the
    policy, or (no policy) a plain resize, the aspect ratio having been checked."""
    if pixels.shape[:2] == (shape.height, shape.width):
        return pixels
    channels_last = pixels if pixels.ndim == 3 else pixels[..., None]
    resized = []
    for c in range(channels_last.shape[2]):
        channel = Image.fromarray(channels_last[..., c])
        resized.append(np.asarray(
            resize.fit(channel, shape.height, shape.width, shape.resize_policy) if shape.resize_policy
            else channel.resize((shape.width, shape.height), Image.BILINEAR)))
    return np.stack(resized, axis=2) if pixels.ndim == 3 else resized[0]


def _decoded(image: Image.Image, shape: Shape) -> np.ndarray:
    """An opened (not yet loaded) image -> C x H x W float32 in [0, 1] at the model's shape."""
    if shape.resize_policy is not None and image.mode not in resize.UNSUPPORTED_MODES:
        if image.mode in resize.SIXTEEN_BIT:  # as training reads it, before its 8-bit rounding
            return resize.read_16bit_grey(image, shape.channels, shape.height, shape.width,
                                          shape.resize_policy)
        pixels = resize.read_8bit(image, shape.channels, shape.height, shape.width,
                                  shape.resize_policy)  # uint8 C x H x W, as in training
        return pixels.astype(np.float32) / 255
    image.load()
    pixels = _resize_float(_image_pixels(image, shape.channels), shape)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def decode_image_bytes(data: bytes, shape: Shape) -> np.ndarray:
    """Encoded image -> C x H x W float32 in [0, 1] at the model's shape."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError("too_large", f"image is {width}x{height}; at most "
                                 f"{MAX_PIXELS} pixels")
            if shape.resize_policy is None and (width, height) != (shape.width, shape.height) and \
                    abs(width * shape.height - height * shape.width) > 0.01 * width * shape.height:
                raise InputError("wrong_size", f"image is {width}x{height}; the model takes "
                                 f"{shape.width}x{shape.height} and the aspect ratio differs")
            pixels = _decoded(image, shape)
    except InputError:
        raise
    except Exception:  # noqa: BLE001 - Pillow raises many types (SyntaxError, TypeError...) on bad bytes
        raise InputError("not_an_image", "body is neither an image (PNG, JPEG, ...) nor JSON") from None
    return np.ascontiguousarray(pixels, dtype=np.float32)


def decode_pixels(values: object, shape: Shape) -> np.ndarray:
    """Nested array -> C x H x W float32 in [0, 1]; size must match, channels may convert."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise InputError("bad_pixels", "pixels must be a nested array of numbers of one shape") from None
    if not np.isfinite(array).all():
        raise InputError("non_finite", "pixels contain NaN or infinity")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] not in (1, 3) and array.shape[-1] in (1, 3):
        array = array.transpose(2, 0, 1)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise InputError("wrong_shape", f"pixels have shape {list(np.shape(values))}; expected "
                         "[H, W], [C, H, W] or [H, W, C] with 1 or 3 channels")
    if array.shape[1:] != (shape.height, shape.width):
        raise InputError("wrong_size", f"pixels are {array.shape[2]}x{array.shape[1]}; the model "
                         f"takes {shape.width}x{shape.height}")
    if array.min() < 0 or array.max() > 255:
        raise InputError("out_of_range", "pixel values must be in [0, 1] (or integers 0..255)")
    if array.max() > 1:
        if not np.all(array == np.round(array)):
            raise InputError("out_of_range", "pixel values above 1 must be integers 0..255")
        array = array / 255
    if array.shape[0] == 3 and shape.channels == 1:
        array = np.tensordot(LUMA, array, axes=1)[None]
    elif array.shape[0] == 1 and shape.channels == 3:
        array = np.repeat(array, 3, axis=0)
    return np.ascontiguousarray(array, dtype=np.float32)


def _decode_item(item: object, shape: Shape, default_threshold: float | None) -> DecodedImage:
    if not isinstance(item, dict):
        raise InputError("bad_json", 'each JSON image must be an object with "image" or "pixels"')
    threshold = parse_threshold(item["threshold"]) if "threshold" in item else default_threshold
    if "image" in item:
        if not isinstance(item["image"], str):
            raise InputError("bad_base64", '"image" must be a base64 string')
        try:
            data = base64.b64decode("".join(item["image"].split()), validate=True)  # 76-col wraps
        except (binascii.Error, ValueError):
            raise InputError("bad_base64", '"image" is not valid base64') from None
        if not data:
            raise InputError("empty_body", '"image" is empty')
        return DecodedImage(decode_image_bytes(data, shape), threshold)
    if "pixels" in item:
        return DecodedImage(decode_pixels(item["pixels"], shape), threshold)
    raise InputError("bad_json", 'a JSON image needs "image" (base64) or "pixels" (array)')


def decode_request(body: object, shape: Shape,
                   threshold: float | None = None) -> tuple[list[DecodedImage], bool]:
    """(images, is_list): is_list says whether the client sent a JSON list (answer a list)."""
    if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
        raise InputError("empty_body", "request body is empty (send image bytes, or JSON with "
                         "Content-Type: application/json; form posts are not read)")
    if isinstance(body, (bytes, bytearray)):
        stripped = bytes(body).lstrip()
        if stripped[:1] in (b"{", b"["):
            try:
                body = json.loads(stripped)
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, huge ints
                raise InputError("bad_json", "body starts like JSON but is not valid JSON") from None
        else:
            return [DecodedImage(decode_image_bytes(bytes(body), shape), threshold)], False
    elif isinstance(body, str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise InputError("bad_json", "body is not valid JSON") from None
    if isinstance(body, list):
        if not body:
            raise InputError("empty_body", "the JSON list holds no images")
        if len(body) > MAX_IMAGES_PER_REQUEST:
            raise InputError("too_many_images", f"at most {MAX_IMAGES_PER_REQUEST} images per request")
        return [_decode_item(item, shape, threshold) for item in body], True
    return [_decode_item(body, shape, threshold)], False

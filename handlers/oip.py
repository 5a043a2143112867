"""The Open Inference Protocol v2 contract of an open-set model: tensors in, tensors out.

Inputs (one per request): `images` FP32 [N, C, H, W] in [0, 1], or `image_bytes` BYTES [N]
(encoded PNG/JPEG...: base64 strings in JSON, raw bytes with the binary extension or gRPC).
Outputs per image: `label` BYTES (class name or "unknown"), `predicted_class` BYTES, `known`
BOOL, `unknown_score` FP32, `reciprocal_score` FP32 (reciprocal-point models), `logits` FP32
[N, K]. Request parameter `threshold` overrides the calibrated threshold for every image.
Every client mistake raises InputError (answered 400 by the server). The decision itself is
`Predictor.decide`, as for the TorchServe handler and the batch scorer.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from handlers.decode import MAX_IMAGES_PER_REQUEST, InputError, decode_image_bytes, parse_threshold
from handlers.predictor import Outputs, Predictor

IMAGES, IMAGE_BYTES = "images", "image_bytes"


def input_types(predictor: Predictor) -> list[dict]:
    """The model metadata's inputs; -1 is the batch axis."""
    shape = predictor.shape
    return [{"name": IMAGES, "datatype": "FP32", "shape": [-1, shape.channels, shape.height, shape.width]},
            {"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [-1]}]


def output_types(predictor: Predictor) -> list[dict]:
    """The model metadata's outputs, in the order answers list them."""
    scores = ["unknown_score"] + (["reciprocal_score"] if predictor.has_reciprocal else [])
    return ([{"name": name, "datatype": "BYTES", "shape": [-1]} for name in ("label", "predicted_class")]
            + [{"name": "known", "datatype": "BOOL", "shape": [-1]}]
            + [{"name": name, "datatype": "FP32", "shape": [-1]} for name in scores]
            + [{"name": "logits", "datatype": "FP32", "shape": [-1, len(predictor.info.class_names)]}])


def _raw_data(tensor: Any) -> bytes | None:
    """The tensor's binary payload, if it came as one. kserve keeps it in `_raw_data` and has
    no public reader that leaves BYTES elements as bytes (`as_numpy` would, but fails with a
    struct error on truncated data, and its REST parser turns them into UTF-8 text first)."""
    return getattr(tensor, "_raw_data", None)


def _batch_size(name: str, shape: object, rank: int) -> int:
    if not isinstance(shape, Sequence) or len(shape) != rank or \
            not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InputError("wrong_shape", f"input {name!r} needs a shape of {rank} integers, got {shape!r}")
    if not 1 <= shape[0] <= MAX_IMAGES_PER_REQUEST:
        raise InputError("too_many_images" if shape[0] > 0 else "wrong_shape",
                         f"input {name!r}: 1 to {MAX_IMAGES_PER_REQUEST} images per request, got {shape[0]}")
    return shape[0]


def _images(tensor: Any, predictor: Predictor) -> np.ndarray:
    """FP32 [N, C, H, W] in [0, 1] -> N x C x H x W float32."""
    if tensor.datatype != "FP32":
        raise InputError("wrong_datatype", f"input {IMAGES!r} must be FP32, got {tensor.datatype}")
    count = _batch_size(IMAGES, tensor.shape, 4)
    expected = (predictor.shape.channels, predictor.shape.height, predictor.shape.width)
    if tuple(tensor.shape[1:]) != expected:
        raise InputError("wrong_size", f"input {IMAGES!r} has shape {list(tensor.shape)}; the model "
                         f"takes [N, {', '.join(map(str, expected))}]")
    raw = _raw_data(tensor)  # binary extension / gRPC raw_input_contents: little-endian float32
    try:
        if raw is not None:
            values = np.frombuffer(raw, dtype="<f4")
        elif isinstance(tensor.data, np.ndarray):
            values = tensor.data.astype(np.float32).ravel()
        else:  # JSON data, flat (row-major) or nested
            values = np.asarray(tensor.data, dtype=np.float32).ravel()
    except (TypeError, ValueError, OverflowError):
        raise InputError("bad_data", f"input {IMAGES!r}: data must be numbers") from None
    if values.size != count * int(np.prod(expected)):
        raise InputError("shape_mismatch", f"input {IMAGES!r}: shape {list(tensor.shape)} needs "
                         f"{count * int(np.prod(expected))} values, got {values.size}")
    if not np.isfinite(values).all():
        raise InputError("non_finite", f"input {IMAGES!r} contains NaN or infinity")
    if values.min() < 0 or values.max() > 1:
        raise InputError("out_of_range", f"input {IMAGES!r}: pixel values must be in [0, 1]")
    return np.ascontiguousarray(values.reshape(count, *expected), dtype=np.float32)


def _encoded(element: object, index: int) -> bytes:
    """One `image_bytes` element: bytes as sent (binary / gRPC), or a base64 string (JSON)."""
    if isinstance(element, np.generic):
        element = element.item()
    if isinstance(element, (bytes, bytearray)):
        data = bytes(element)
    elif isinstance(element, str):
        try:
            data = base64.b64decode("".join(element.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InputError("bad_base64", f"{IMAGE_BYTES}[{index}] is not valid base64") from None
    else:
        raise InputError("bad_data", f"{IMAGE_BYTES}[{index}] must be a base64 string")
    if not data:
        raise InputError("empty_body", f"{IMAGE_BYTES}[{index}] is empty")
    return data


def _image_bytes(tensor: Any, predictor: Predictor) -> np.ndarray:
    """BYTES [N] of encoded images -> N x C x H x W float32 (decoded as the REST front does)."""
    if tensor.datatype != "BYTES":
        raise InputError("wrong_datatype", f"input {IMAGE_BYTES!r} must be BYTES, got {tensor.datatype}")
    count = _batch_size(IMAGE_BYTES, tensor.shape, 1)
    raw = _raw_data(tensor)
    if raw is not None:  # length-prefixed elements (binary extension, gRPC raw contents)
        elements = list(_split_length_prefixed(raw))
    elif isinstance(tensor.data, (list, tuple, np.ndarray)):
        elements = [item for row in tensor.data for item in (row if isinstance(row, list) else [row])]
    else:
        raise InputError("bad_data", f"input {IMAGE_BYTES!r}: data must be a list of base64 strings")
    if len(elements) != count:
        raise InputError("shape_mismatch", f"input {IMAGE_BYTES!r}: shape [{count}] but "
                         f"{len(elements)} elements")
    pixels = []
    for index, element in enumerate(elements):
        data = _encoded(element, index)  # its errors name the element already
        try:
            pixels.append(decode_image_bytes(data, predictor.shape))
        except InputError as error:
            where = f"{IMAGE_BYTES}[{index}]"  # (the REST front's not_an_image text speaks of a body)
            text = f"{where} is not an image (PNG, JPEG, ...)" if error.code == "not_an_image" \
                else f"{where}: {error}"
            raise InputError(error.code, text) from None
    return np.stack(pixels)


def _split_length_prefixed(raw: bytes):
    """The OIP binary layout of a BYTES tensor: each element a 4-byte little-endian length,
    then that many bytes."""
    view, offset = memoryview(raw), 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InputError("bad_data", f"input {IMAGE_BYTES!r}: truncated binary data")
        size = int.from_bytes(view[offset:offset + 4], "little")
        offset += 4
        if offset + size > len(view):
            raise InputError("bad_data", f"input {IMAGE_BYTES!r}: truncated binary data")
        yield bytes(view[offset:offset + size])
        offset += size


def read_request(inputs: Sequence[Any], parameters: Mapping | None,
                 predictor: Predictor) -> tuple[np.ndarray, float | None]:
    """(images N x C x H x W, threshold override or None) from an InferRequest's inputs and
    parameters; InputError for anything the contract does not take."""
    if len(inputs) != 1:
        raise InputError("wrong_inputs", f"send exactly one input, {IMAGES!r} (FP32 [N, C, H, W]) or "
                         f"{IMAGE_BYTES!r} (BYTES [N]); got {len(inputs)}")
    tensor = inputs[0]
    readers = {IMAGES: _images, IMAGE_BYTES: _image_bytes}
    if tensor.name not in readers:
        raise InputError("unknown_input", f"unknown input {tensor.name!r}; this model takes "
                         f"{IMAGES!r} (FP32 [N, C, H, W]) or {IMAGE_BYTES!r} (BYTES [N])")
    threshold = parse_threshold(_parameter(parameters, "threshold"))
    return readers[tensor.name](tensor, predictor), threshold


def _parameter(parameters: Mapping | None, key: str) -> object:
    """A request parameter's value; gRPC InferParameter messages hold it in a oneof."""
    if not parameters or key not in parameters:
        return None
    value = parameters[key]
    if value is None:  # sent, but empty: not the same as not sent
        raise InputError("bad_threshold", f"parameter {key!r} is null; send a number or leave it out")
    if hasattr(value, "WhichOneof"):  # gRPC InferParameter
        field = value.WhichOneof("parameter_choice")
        if field is None:  # e.g. Triton's double_param, which kserve's proto does not have
            raise InputError("bad_threshold", f"gRPC parameter {key!r} must be a string or "
                             "integer parameter (this server's gRPC has no double_param)")
        return getattr(value, field)
    return value


def check_requested_outputs(requested: Sequence[Any] | None, predictor: Predictor) -> None:
    """InputError when a request asks for an output this model does not have."""
    names = [o["name"] for o in output_types(predictor)]
    unknown = [o.name for o in requested or () if o.name not in names]
    if unknown:
        raise InputError("unknown_output",
                         f"unknown output {unknown[0]!r}; this model has {', '.join(names)}")


def output_arrays(predictor: Predictor, outputs: Outputs, threshold: float | None) -> dict[str, np.ndarray]:
    """The contract's outputs as numpy arrays (BYTES as object arrays of str), by name."""
    value = predictor.info.threshold if threshold is None else threshold
    known = predictor.decide(outputs.unknown_score, np.full(len(outputs.unknown_score), value))
    names = np.array(predictor.info.class_names, dtype=object)
    predicted = names[outputs.logits.argmax(axis=1)]
    arrays = {"label": np.where(known, predicted, "unknown").astype(object),
              "predicted_class": predicted.astype(object), "known": known.astype(bool),
              "unknown_score": outputs.unknown_score.astype(np.float32)}
    if outputs.reciprocal_score is not None:
        arrays["reciprocal_score"] = outputs.reciprocal_score.astype(np.float32)
    arrays["logits"] = outputs.logits.astype(np.float32)
    return arrays

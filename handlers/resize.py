"""The resize policy: how an image of any size and aspect ratio becomes the model's H x W.

One function for both sides of the contract: training decodes its folder images with
`read_8bit` (16-bit grey: `read_16bit_grey`, rounded to 8 bits for storage), and the serving
decoder (handlers/decode.py) calls the same code on the image a client sends, so a photo is
resized the same way when it is learned from and when it is scored (8-bit files: the same
pixels bit for bit; 16-bit: within the 8-bit rounding). The policy is recorded in the ONNX
metadata (input_spec.resize).

    center-crop  scale so the image covers H x W (shorter side, relative to the model's aspect
                 ratio, fits), then keep the centre (torchvision's Resize + CenterCrop at ratio 1)
    letterbox    scale so the whole image fits inside H x W, pad the rest with black

Bilinear interpolation (Pillow's, antialiased when shrinking). A JPEG at least twice the
needed size is first decoded at a reduced DCT scale (Pillow's draft, still covering the needed
size): much faster for camera photos, and the same on both sides.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

POLICIES = ("center-crop", "letterbox")
DEFAULT_POLICY = "center-crop"
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L")
UNSUPPORTED_MODES = ("I", "F")  # 32-bit integer / float: no agreed scale to [0, 1]
EXIF_ORIENTATION = 0x0112


def covering_size(width: int, height: int, out_width: int, out_height: int,
                  policy: str) -> tuple[int, int]:
    """The size the whole image is scaled to before the crop (center-crop) or pad (letterbox)."""
    scale = (max if policy == "center-crop" else min)(out_width / width, out_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(image: Image.Image, height: int, width: int, policy: str) -> Image.Image:
    """`image` (any size, mode L / RGB / F) resized to width x height by `policy`."""
    if policy not in POLICIES:
        raise ValueError(f"unknown resize policy {policy!r}; choose from {', '.join(POLICIES)}")
    src_w, src_h = image.size
    if (src_w, src_h) == (width, height):
        return image
    if policy == "center-crop":
        # one resampling of the centred source box with the target's aspect ratio
        scale = min(src_w / width, src_h / height)
        box_w, box_h = width * scale, height * scale
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        return image.resize((width, height), Image.BILINEAR,
                            box=(left, top, left + box_w, top + box_h))
    inner_w, inner_h = covering_size(src_w, src_h, width, height, policy)
    inner = image.resize((min(inner_w, width), min(inner_h, height)), Image.BILINEAR)
    canvas = Image.new(image.mode, (width, height), 0)
    canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    return canvas


def model_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def read_8bit(image: Image.Image, channels: int, height: int, width: int,
              policy: str) -> np.ndarray:
    """An opened 8-bit-or-less image -> uint8 C x H x W at the model's size by `policy`.

    Decodes it (Pillow opens lazily), at a reduced JPEG scale when that still covers the
    needed size, and turns it upright by its EXIF orientation (as a phone photo is seen)."""
    mode = model_mode(channels)
    turned = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn
    upright_w, upright_h = image.size[::-1] if turned else image.size
    need_w, need_h = covering_size(upright_w, upright_h, width, height, policy)
    if turned:
        need_w, need_h = need_h, need_w  # in the stored image's axes
    if image.format == "JPEG" and image.size[0] >= 2 * need_w and image.size[1] >= 2 * need_h:
        image.draft(mode, (need_w, need_h))
    upright = ImageOps.exif_transpose(image)
    pixels = np.array(fit(upright.convert(mode), height, width, policy), dtype=np.uint8)  # writable
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_16bit_grey(image: Image.Image, channels: int, height: int, width: int,
                    policy: str) -> np.ndarray:
    """An opened 16-bit grey image -> float32 C x H x W in [0, 1], scaled (not clipped as
    Pillow's "L" would) and resized in float by `policy`."""
    if image.mode not in SIXTEEN_BIT:
        raise ValueError(f"not a 16-bit grey image: mode {image.mode}")
    grey = Image.fromarray(np.asarray(image, dtype=np.float32) / 65535, "F")
    pixels = np.asarray(fit(grey, height, width, policy), dtype=np.float32)
    return np.repeat(pixels[None], channels, axis=0)


def native_channels(image: Image.Image) -> int:
    """1 for greyscale files, 3 for everything else (colour, palette, with alpha)."""
    return 1 if image.mode in GREY_MODES else 3

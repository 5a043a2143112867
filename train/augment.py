"""Batched random augmentation on tensors (no torchvision on this stack).

Every augmentation takes a B x C x H x W float batch in [0, 1] (C = 1 or 3, any H x W, any memory
format, any device) and a CPU `torch.Generator`: random numbers are drawn on the CPU, so a seed
gives the same augmentation on every device, and the result keeps the batch's shape, dtype and
device.

- "affine", "affine-flip": `random_affine`, a small random translation, rotation, zoom (+ h-flip).
- "photo": the ImageNet training recipe (Krizhevsky et al. 2012; Szegedy et al. 2015, "Going
  deeper with convolutions") adapted to already-resized images, as torchvision composes it:
  `random_resized_crop` (area fraction and log-uniform aspect, resampled back to H x W), then
  `random_flip` (p = 0.5), then `color_jitter` (brightness, contrast, saturation, in that order).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

# ITU-R BT.601 luma weights for R, G, B
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def random_affine(images: torch.Tensor, generator: torch.Generator, shift: float = 0.1,
                  degrees: float = 10.0, scale: float = 0.1, flip: bool = False) -> torch.Tensor:
    """Per-image random translation (fraction of size), rotation, zoom and optional h-flip."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator) * (high - low) + low

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(1 - scale, 1 + scale)
    mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if flip \
        else torch.ones(batch)
    theta = torch.zeros(batch, 2, 3)  # B x 2 x 3, maps output grid -> input grid
    theta[:, 0, 0] = torch.cos(angle) / zoom * mirror
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom * mirror
    theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, :, 2] = torch.stack([uniform(-shift, shift), uniform(-shift, shift)], 1) * 2
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


# ---- random resized crop -------------------------------------------------------------------

def _source_positions(start: torch.Tensor, length: torch.Tensor, size: int):
    """Bilinear taps along one axis: output pixel k of `size` samples the input at
    start + (k + 0.5) * length / size - 0.5 (pixel centres, align_corners=False), clamped to the
    image (border padding). Returns the low and high neighbour indices and the weight of the high
    one, each B x size; in float64 so the full-image box is exactly the identity."""
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) * (length[:, None] / size)
    position = (start[:, None] + centres - 0.5).clamp(0, size - 1)  # B x size
    low = position.floor()
    high = (low + 1).clamp(max=size - 1)
    return low.long(), high.long(), position - low


def _resample(images: torch.Tensor, dim: int, start: torch.Tensor, length: torch.Tensor):
    """Linear resampling of [start, start + length) (pixels) to the full size along dim -1 or -2."""
    batch, size = images.shape[0], images.shape[dim]
    low, high, weight = _source_positions(start, length, size)
    view = (batch, 1, 1, size) if dim == -1 else (batch, 1, size, 1)
    low, high = (index.to(images.device).view(view).expand_as(images) for index in (low, high))
    weight = weight.to(images.device, images.dtype).view(view)
    return torch.lerp(images.gather(dim, low), images.gather(dim, high), weight)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Bilinearly resample each image's box back to the full H x W.

    boxes: B x 4 (left, top, width, height) in pixels, edges not centres, sub-pixel allowed:
    (0, 0, W, H) is the whole image (returned exactly). Samples near a box edge may draw on the
    pixels just outside the box (a continuous crop); at the image border the edge pixel repeats,
    as grid_sample's padding_mode="border" does.
    """
    boxes = boxes.detach().to("cpu", torch.float64)
    resized = _resample(images, -1, boxes[:, 0], boxes[:, 2])
    return _resample(resized, -2, boxes[:, 1], boxes[:, 3])


def _fallback_box_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's last resort: the whole image, its aspect clamped into the ratio range."""
    aspect = width / height
    if aspect < ratio[0]:
        return width, width / ratio[0]
    if aspect > ratio[1]:
        return height * ratio[1], height
    return width, height


def random_crop_boxes(batch: int, height: int, width: int, generator: torch.Generator,
                      scale: tuple[float, float] = (0.25, 1.0),
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """B x 4 (left, top, width, height) float64 boxes of RandomResizedCrop, vectorised.

    As torchvision: each of `attempts` candidates has area fraction ~ U(scale) and aspect
    (width / height, in pixels) log-uniform in ratio; the first candidate that fits inside the
    image is placed uniformly at random. If none fits, the box is the centred largest box of the
    image whose aspect is the image's own clamped into ratio (the whole image when it is in range).
    Unlike torchvision, sizes and positions are not rounded to whole pixels.
    """
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64) * (high - low) + low

    area = height * width * uniform(*scale, batch, attempts)  # B x attempts
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1]), batch, attempts))
    box_width, box_height = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (box_width <= width) & (box_height <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # first fitting candidate (0 if none)
    fallback_width, fallback_height = _fallback_box_size(height, width, ratio)
    any_fit = fits.any(1)
    box_width = torch.where(any_fit, box_width.gather(1, first)[:, 0], fallback_width)
    box_height = torch.where(any_fit, box_height.gather(1, first)[:, 0], fallback_height)
    place = torch.where(any_fit[:, None], uniform(0, 1, batch, 2), 0.5)  # B x 2, fallback centred
    left, top = place[:, 0] * (width - box_width), place[:, 1] * (height - box_height)
    return torch.stack([left, top, box_width, box_height], 1)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop to the images' own size: `random_crop_boxes`, then `crop_resize`."""
    batch, _, height, width = images.shape
    return crop_resize(images, random_crop_boxes(batch, height, width, generator, scale, ratio))


# ---- horizontal flip -----------------------------------------------------------------------

def flip_horizontal(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where flips (B bools) is True."""
    return torch.where(flips.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


def random_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    return flip_horizontal(images, torch.rand(images.shape[0], generator=generator) < p)


# ---- colour jitter (torchvision's adjust_* formulas) ---------------------------------------

def luma(images: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W grey image: 0.299 R + 0.587 G + 0.114 B (ITU-R 601); grey input as is."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _per_image(factors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return factors.to(images.device, images.dtype).view(-1, 1, 1, 1)  # B x 1 x 1 x 1


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """x * f, per image factor f (B), clamped to [0, 1]."""
    return (images * _per_image(factors, images)).clamp(0, 1)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """f * x + (1 - f) * mean, mean the image's mean luma (one number per image), clamped."""
    factor = _per_image(factors, images)
    mean = luma(images).mean(dim=(-3, -2, -1), keepdim=True)  # B x 1 x 1 x 1
    return (factor * images + (1 - factor) * mean).clamp(0, 1)


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """f * x + (1 - f) * luma(x) per pixel, clamped; identity for grey (C = 1) images."""
    if images.shape[1] == 1:
        return images
    factor = _per_image(factors, images)
    return (factor * images + (1 - factor) * luma(images)).clamp(0, 1)


def color_jitter(images: torch.Tensor, generator: torch.Generator, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4) -> torch.Tensor:
    """ColorJitter: per image factors ~ U[max(0, 1 - s), 1 + s] for each strength s, applied in the
    fixed order brightness, contrast, saturation (torchvision shuffles the order per call)."""
    strengths = torch.tensor([brightness, contrast, saturation])[:, None]  # 3 x 1
    low, high = (1 - strengths).clamp(min=0), 1 + strengths
    factors = low + (high - low) * torch.rand(3, images.shape[0], generator=generator)  # 3 x B
    images = adjust_brightness(images, factors[0])
    images = adjust_contrast(images, factors[1])
    return adjust_saturation(images, factors[2])


def photo_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The "photo" recipe: random resized crop, horizontal flip, colour jitter."""
    images = random_resized_crop(images, generator)
    images = random_flip(images, generator)
    return color_jitter(images, generator)


def _no_augmentation(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images


def _affine_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return random_affine(images, generator, flip=True)


AUGMENTERS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": _no_augmentation,
    "affine": random_affine,
    "affine-flip": _affine_flip,
    "photo": photo_augment,
}
AUGMENTATIONS = tuple(AUGMENTERS)


def augment(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Apply the augmentation named kind (one of AUGMENTATIONS)."""
    if kind not in AUGMENTERS:
        raise ValueError(f"unknown augmentation {kind!r}; choose from {', '.join(AUGMENTATIONS)}")
    return AUGMENTERS[kind](images, generator)

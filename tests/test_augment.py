"""train/augment.py: known values for the crop, flip and colour-jitter pieces of "photo", the
box rule of random_resized_crop, and the composition's contract (shape, range, seeding, layout)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from train.augment import (AUGMENTATIONS, LUMA_WEIGHTS, adjust_brightness, adjust_contrast,
                           adjust_saturation, augment, color_jitter, crop_resize, flip_horizontal,
                           luma, photo_augment, random_crop_boxes, random_flip, random_resized_crop)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=seeded(seed))


# ---- crop_resize ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 24, 40), (1, 1, 224, 224)])
def test_full_image_box_is_identity(shape):
    images = rand_images(*shape)
    boxes = torch.tensor([[0.0, 0.0, shape[3], shape[2]]]).repeat(shape[0], 1)
    torch.testing.assert_close(crop_resize(images, boxes), images, atol=1e-6, rtol=0)


def test_left_half_of_horizontal_ramp():
    # output column k samples x = (k + 0.5) * 4/8 - 0.5 = k/2 - 0.25, clamped at 0; ramp value x/7
    ramp = (torch.arange(8.0) / 7).expand(1, 3, 5, 8)
    out = crop_resize(ramp, torch.tensor([[0.0, 0.0, 4.0, 5.0]]))
    expected = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25]) / 7
    torch.testing.assert_close(out, expected.expand(1, 3, 5, 8), atol=1e-6, rtol=0)


def test_bottom_half_of_vertical_ramp():
    # rows sample y = 3 + k/2 - 0.25 (k = 0..5), clamped at the last row 5
    ramp = (torch.arange(6.0) / 5)[:, None].expand(1, 1, 6, 4)
    out = crop_resize(ramp, torch.tensor([[0.0, 3.0, 4.0, 3.0]]))
    expected = torch.tensor([2.75, 3.25, 3.75, 4.25, 4.75, 5.0]) / 5
    torch.testing.assert_close(out, expected[:, None].expand(1, 1, 6, 4), atol=1e-6, rtol=0)


def test_crop_resize_matches_grid_sample_with_border_padding():
    """Parity with PyTorch's own bilinear sampler on sub-pixel boxes of a non-square batch."""
    images = rand_images(3, 3, 24, 40)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 24.0], [5.5, 2.25, 20.0, 15.0], [30.1, 10.0, 9.9, 14.0]])
    height, width = 24, 40
    theta = torch.zeros(3, 2, 3)  # output grid -> input grid, in [-1, 1] image units
    theta[:, 0, 0] = boxes[:, 2] / width
    theta[:, 1, 1] = boxes[:, 3] / height
    theta[:, 0, 2] = (2 * boxes[:, 0] + boxes[:, 2]) / width - 1
    theta[:, 1, 2] = (2 * boxes[:, 1] + boxes[:, 3]) / height - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    expected = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    torch.testing.assert_close(crop_resize(images, boxes), expected, atol=1e-5, rtol=0)


# ---- random_crop_boxes ---------------------------------------------------------------------

# largest area fraction a box of aspect in [3/4, 4/3] can have: 24 x 32 of 24 x 40 is 0.8
@pytest.mark.parametrize("height,width,largest", [(32, 32, 1.0), (24, 40, 0.8), (40, 24, 0.8)])
def test_random_crop_boxes_inside_with_area_and_aspect_in_range(height, width, largest):
    boxes = random_crop_boxes(4000, height, width, seeded())
    left, top, box_width, box_height = boxes.unbind(1)
    eps = 1e-9
    assert (left >= -eps).all() and (top >= -eps).all()
    assert (left + box_width <= width + eps).all() and (top + box_height <= height + eps).all()
    area, aspect = box_width * box_height / (height * width), box_width / box_height
    # a fitting candidate among 10 is found except with negligible probability at these shapes
    assert (area >= 0.25 - eps).all() and (area <= 1 + eps).all()
    assert (aspect >= 3 / 4 - eps).all() and (aspect <= 4 / 3 + eps).all()
    # the draws spread over the ranges (not stuck at one end) and over positions
    assert area.min() < 0.3 and area.max() > largest - 0.05
    assert aspect.min() < 0.8 and aspect.max() > 1.25
    assert left.std() > 1 and top.std() > 1


def test_random_crop_boxes_log_uniform_aspect_on_a_large_image():
    # on a large square image almost every first candidate fits: log aspect ~ U(log 3/4, log 4/3)
    boxes = random_crop_boxes(20000, 1000, 1000, seeded(), scale=(0.1, 0.5))
    log_aspect = torch.log(boxes[:, 2] / boxes[:, 3])
    assert abs(log_aspect.mean()) < 0.01
    assert abs(log_aspect.std() - 2 * math.log(4 / 3) / math.sqrt(12)) < 0.005


def test_random_crop_boxes_fall_back_to_centred_box_when_nothing_fits():
    # 4 x 64: every candidate (area >= 64 px, aspect <= 4/3) is taller than 4 px, so the box is
    # the full height, aspect clamped to 4/3 (width 16/3), centred
    boxes = random_crop_boxes(5, 4, 64, seeded())
    expected = torch.tensor([(64 - 16 / 3) / 2, 0.0, 16 / 3, 4.0], dtype=torch.float64)
    torch.testing.assert_close(boxes, expected.expand(5, 4))
    # 64 x 4: tall image, full width, aspect clamped to 3/4 (height 16/3)
    boxes = random_crop_boxes(5, 64, 4, seeded())
    expected = torch.tensor([0.0, (64 - 16 / 3) / 2, 4.0, 16 / 3], dtype=torch.float64)
    torch.testing.assert_close(boxes, expected.expand(5, 4))


def test_random_resized_crop_applies_the_drawn_boxes():
    images = rand_images(6, 3, 24, 40)
    boxes = random_crop_boxes(6, 24, 40, seeded(3))
    torch.testing.assert_close(random_resized_crop(images, seeded(3)), crop_resize(images, boxes))


# ---- flip ----------------------------------------------------------------------------------

def test_flip_horizontal_mirrors_exactly_where_asked():
    images = rand_images(2, 3, 5, 7)
    out = flip_horizontal(images, torch.tensor([True, False]))
    assert torch.equal(out[0], images[0, :, :, torch.arange(6, -1, -1)])
    assert torch.equal(out[1], images[1])


def test_random_flip_flips_about_half():
    images = torch.arange(4.0).expand(1000, 1, 1, 4)
    flipped = random_flip(images, seeded())[:, 0, 0, 0] == 3
    assert 400 < flipped.sum() < 600


# ---- colour jitter -------------------------------------------------------------------------

def test_brightness_scales_and_clamps():
    images = torch.tensor([0.0, 0.2, 0.6, 1.0]).view(1, 1, 1, 4).repeat(2, 3, 2, 1)
    out = adjust_brightness(images, torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out[0], images[0] / 2)
    torch.testing.assert_close(out[1, 0, 0], torch.tensor([0.0, 0.4, 1.0, 1.0]))


def test_luma_weights():
    pixel = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    assert luma(pixel).item() == pytest.approx(0.299 * 0.2 + 0.587 * 0.5 + 0.114 * 0.9)
    assert LUMA_WEIGHTS == (0.299, 0.587, 0.114)


def test_contrast_zero_is_the_mean_luma_and_one_is_identity():
    images = rand_images(2, 3, 6, 5)
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    means = (images * weights).sum(1).mean(dim=(1, 2))  # B
    out = adjust_contrast(images, torch.zeros(2))
    torch.testing.assert_close(out, means.view(2, 1, 1, 1).expand_as(images))
    torch.testing.assert_close(adjust_contrast(images, torch.ones(2)), images)
    # factor 0.5 halves every pixel's distance to the mean
    torch.testing.assert_close(adjust_contrast(images, torch.full((2,), 0.5)),
                               (images + means.view(2, 1, 1, 1)) / 2)


def test_contrast_of_grey_images_uses_the_plain_mean():
    images = rand_images(2, 1, 6, 5)
    out = adjust_contrast(images, torch.zeros(2))
    torch.testing.assert_close(out, images.mean(dim=(1, 2, 3), keepdim=True).expand_as(images))


def test_saturation_zero_is_grey_in_all_channels_and_grey_input_unchanged():
    images = rand_images(2, 3, 6, 5)
    grey = (images * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(adjust_saturation(images, torch.zeros(2)), grey.expand_as(images))
    torch.testing.assert_close(adjust_saturation(images, torch.ones(2)), images)
    single = rand_images(2, 1, 6, 5)
    assert torch.equal(adjust_saturation(single, torch.zeros(2)), single)


def test_color_jitter_factors_stay_in_range():
    # brightness only on a constant 0.5 image: output / 0.5 is the factor, in [0.6, 1.4]
    images = torch.full((2000, 3, 2, 2), 0.5)
    factors = color_jitter(images, seeded(), contrast=0.0, saturation=0.0)[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.min() < 0.62 and factors.max() > 1.38


# ---- photo_augment and augment -------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 3, 24, 40), (4, 1, 16, 16), (3, 3, 32, 32)])
def test_photo_augment_shape_range_and_seeding(shape):
    images = rand_images(*shape)
    out = photo_augment(images, seeded(7))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, photo_augment(images, seeded(7)))
    assert not torch.allclose(out, photo_augment(images, seeded(8)))
    assert not torch.allclose(out, images)


def test_photo_augment_channels_last_gives_the_same_values():
    images = rand_images(4, 3, 24, 40)
    out = photo_augment(images.contiguous(memory_format=torch.channels_last), seeded(2))
    torch.testing.assert_close(out, photo_augment(images, seeded(2)), atol=1e-6, rtol=0)


def test_photo_augment_is_crop_then_flip_then_jitter():
    images = rand_images(5, 3, 24, 40)
    generator = seeded(4)
    expected = color_jitter(random_flip(random_resized_crop(images, generator), generator), generator)
    assert torch.equal(photo_augment(images, seeded(4)), expected)


def test_augment_dispatches_photo_and_rejects_unknown_kinds():
    assert AUGMENTATIONS == ("none", "affine", "affine-flip", "photo")
    images = rand_images(2, 3, 24, 40)
    assert torch.equal(augment(images, "photo", seeded(5)), photo_augment(images, seeded(5)))
    assert augment(images, "none", seeded(5)) is images
    assert augment(images, "affine-flip", seeded(5)).shape == images.shape
    with pytest.raises(ValueError, match="unknown augmentation 'crop'"):
        augment(images, "crop", seeded(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_photo_augment_on_cuda_matches_cpu():
    images = rand_images(4, 3, 24, 40)
    out = photo_augment(images.cuda(), seeded(6))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), photo_augment(images, seeded(6)), atol=1e-5, rtol=0)

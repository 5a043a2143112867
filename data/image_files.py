"""Image files (a class-per-folder tree or a list file) decoded at the model's size on access.

Loading a file dataset:
1. list the files and their class names;
2. fix the model's input: channels (RGB when any sampled file has colour) and H x W
   (`--image-size`, or the median height and width of a seeded sample of file headers, scaled
   down to a longer side of 256 if larger, announced in one line);
3. scan: decode every file once at that size through the serving resize policy
   (handlers/resize.py), with `workers` processes. A file that cannot be decoded is skipped
   and named (or, with `strict`, stops the load with its name). The scan also fills the cache.
4. the decoded images live in one cache of at most `cache_bytes`, shared by every process
   (an anonymous shared mapping made before the DataLoader workers fork). When every image
   fits, the cache *is* the dataset (an ordinary array, as before); otherwise the images are a
   `FileImages` whose misses are decoded again on access, by the DataLoader workers in training.
"""
from __future__ import annotations

import csv
import mmap
import multiprocessing
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cli_errors import UserError
from handlers import resize
from handlers.batch_sources import IMAGE_SUFFIXES
from handlers.resize import DEFAULT_POLICY

SIZE_SAMPLE = 256  # file headers read to choose the default image size
MAX_SIDE = 4096
DEFAULT_MAX_SIDE = 256  # the default size's longer side at most (--image-size goes higher)


@dataclass(frozen=True)
class DecodeOptions:
    """How file images become model inputs (the --image-size, --resize, --workers,
    --cache-mb and --strict settings)."""
    size: tuple[int, int] | None = None  # H, W; None: native (arrays) or sampled median (files)
    policy: str = DEFAULT_POLICY
    workers: int = 0
    cache_bytes: int = 2 << 30
    strict: bool = False
    progress: bool = True


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """'64' -> (64, 64); '48,64' -> (48, 64) (height, width); None -> None."""
    if text is None:
        return None
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) in (1, 2) and all(part.isdigit() and 0 < int(part) <= MAX_SIDE for part in parts):
        height, width = int(parts[0]), int(parts[-1])
        return height, width
    raise UserError(f"--image-size must be H or H,W with whole numbers 1..{MAX_SIDE}, got {text!r}")


def list_folder(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """One sub-folder per class (hidden ones ignored), image files by suffix, sorted."""
    source = f"folder:{root}"
    if not root.is_dir():
        raise UserError(f"{source}: not a directory")
    try:
        class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        pairs = [(f, k) for k, d in enumerate(class_dirs) for f in sorted(d.iterdir())
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    except OSError as exc:
        raise UserError(f"{source}: cannot list ({exc})") from None
    if not pairs:
        raise UserError(f"{source}: no images found (expected one sub-folder per class "
                        f"holding {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    files, labels = zip(*pairs)
    return list(files), list(labels), tuple(d.name for d in class_dirs)


def list_file(path: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """A CSV / text list: `image path,class name` per line (relative paths from the list's
    folder; blank lines and lines starting with # ignored)."""
    source = f"list:{path}"
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = [row for row in csv.reader(fh)
                    if row and row[0].strip() and not row[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{source}: cannot read ({exc})") from None
    bad = next((i for i, row in enumerate(rows) if len(row) != 2 or not row[1].strip()), None)
    if bad is not None:
        raise UserError(f"{source}: entry {bad + 1} is {rows[bad]!r}; expected `path,class`")
    if not rows:
        raise UserError(f"{source}: lists no images (one `path,class` per line)")
    names = tuple(sorted({row[1].strip() for row in rows}))
    files = [path.parent / row[0].strip() for row in rows]
    return files, [names.index(row[1].strip()) for row in rows], names


def _header(file: Path) -> tuple[int, int, int] | None:
    """(height, width, channels) from the file's header, None when unreadable."""
    try:
        with Image.open(file) as image:
            return image.size[1], image.size[0], resize.native_channels(image)
    except Exception:  # noqa: BLE001 - any failure here is the scan's to report
        return None


def choose_geometry(files: Sequence[Path],
                    size: tuple[int, int] | None) -> tuple[int, tuple[int, int], str]:
    """(channels, (H, W), how the size was chosen) from a seeded sample of headers."""
    rng = np.random.default_rng(0)
    sample = [files[i] for i in sorted(rng.permutation(len(files))[:SIZE_SAMPLE])]
    headers = [h for h in map(_header, sample) if h is not None]
    channels = 3 if any(h[2] == 3 for h in headers) else 1
    if size is not None:
        return channels, size, "--image-size"
    if not headers:  # the scan will name the unreadable files
        return channels, (32, 32), "a placeholder: no sampled file was readable"
    height = statistics.median(h[0] for h in headers)
    width = statistics.median(h[1] for h in headers)
    rule = f"the median of {len(headers)} sampled files"
    if max(height, width) > DEFAULT_MAX_SIDE:  # camera photos: a trainable size, not 3024 x 4032
        scale = DEFAULT_MAX_SIDE / max(height, width)
        height, width = height * scale, width * scale
        rule += f", scaled to a longer side of {DEFAULT_MAX_SIDE}"
    return channels, (max(1, round(height)), max(1, round(width))), rule


class SharedCache:
    """Decoded images of file ids 0..capacity-1, in memory every forked process shares. The
    scan fills it: every readable file below `capacity` is in it before anything reads."""

    def __init__(self, n_files: int, shape: tuple[int, int, int], bound_bytes: int):
        self.shape = shape
        self.image_bytes = int(np.prod(shape))
        self.capacity = int(min(n_files, max(0, bound_bytes) // self.image_bytes))
        self._buffer = mmap.mmap(-1, max(1, self.nbytes))  # anonymous, MAP_SHARED: survives fork
        self.pixels = np.frombuffer(self._buffer, np.uint8, self.nbytes).reshape(self.capacity, *shape)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.image_bytes


class FileImages:
    """uint8 N x C x H x W images read from files on access (cache first); array-like:
    `len`, `shape`, `dtype`, and indexing by int, slice or index array returns numpy arrays.
    `take(indices)` is a lazy subset (the training split); `workers` tells the training loop
    how many DataLoader processes should read it."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: Sequence[Path], ids: np.ndarray, cache: SharedCache,
                 policy: str, workers: int):
        self.files, self.ids, self.cache = files, np.asarray(ids, np.int64), cache
        self.policy, self.workers = policy, workers

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.ids), *self.cache.shape)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, position: int) -> np.ndarray:
        """One image, C x H x W uint8."""
        return self.load_file(int(self.ids[position]))

    def load_file(self, file_id: int) -> np.ndarray:
        """The image of file `file_id` (an index into `files`, whichever subset this is)."""
        if file_id < self.cache.capacity:  # the scan put it there
            return self.cache.pixels[file_id].copy()
        return decode(self.files[file_id], self.cache.shape, self.policy)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.load(int(key))
        positions = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        out = np.empty((len(positions), *self.cache.shape), np.uint8)
        for row, position in enumerate(positions.tolist()):
            out[row] = self.load(position)
        return out

    def take(self, positions: np.ndarray) -> FileImages:
        return FileImages(self.files, self.ids[np.asarray(positions, np.int64)], self.cache,
                          self.policy, self.workers)


def decode(file: Path, shape: tuple[int, int, int], policy: str) -> np.ndarray:
    """One file at the model's C x H x W by the resize policy (OSError and friends if bad)."""
    channels, height, width = shape
    with Image.open(file) as image:
        if image.mode in resize.UNSUPPORTED_MODES:
            raise ValueError(f"mode {image.mode}: 32-bit integer or float images are not "
                             "supported (the server refuses them too)")
        if image.mode in resize.SIXTEEN_BIT:  # the server's float path, rounded to 8 bits
            pixels = resize.read_16bit_grey(image, channels, height, width, policy)
            return (pixels * 255).round().astype(np.uint8)
        return resize.read_8bit(image, channels, height, width, policy)


# The scan's work, set before its worker processes fork (they inherit it, nothing is pickled).
_SCAN: tuple[Sequence[Path], SharedCache, str] | None = None


def _scan_one(file_id: int) -> tuple[int, str | None]:
    """(file id, None) when the file decodes, else (file id, why not); fills its cache slot."""
    files, cache, policy = _SCAN
    try:
        pixels = decode(files[file_id], cache.shape, policy)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad files
        return file_id, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if file_id < cache.capacity:
        cache.pixels[file_id] = pixels
    return file_id, None


def scan(files: Sequence[Path], cache: SharedCache, options: DecodeOptions,
         source: str) -> dict[int, str]:
    """Decode every file once ({file id: why unreadable}); `strict` stops at the first."""
    global _SCAN
    _SCAN = (files, cache, options.policy)
    bad: dict[int, str] = {}
    bar = tqdm(total=len(files), desc="decode", unit="img", leave=False,
               disable=None if options.progress else True)  # None: off when not a terminal
    try:
        if options.workers > 0:
            pool = multiprocessing.get_context("fork").Pool(options.workers)
            results = pool.imap_unordered(_scan_one, range(len(files)), chunksize=16)
        else:
            pool, results = None, map(_scan_one, range(len(files)))
        try:
            for file_id, reason in results:
                bar.update()
                if reason is not None:
                    if options.strict:
                        raise UserError(f"{source}: cannot read image {files[file_id]} ({reason}); "
                                        "without --strict unreadable files are skipped")
                    bad[file_id] = reason
        finally:
            if pool is not None:
                pool.terminate()
    finally:
        _SCAN = None
        bar.close()
    return bad


@dataclass(frozen=True)
class LoadedFiles:
    images: np.ndarray | FileImages  # N x C x H x W uint8, readable files only
    labels: np.ndarray
    skipped: tuple[tuple[str, str], ...]  # (file, why)


def load_files(files: Sequence[Path], labels: Sequence[int], options: DecodeOptions,
               source: str) -> LoadedFiles:
    """Steps 2-4 of the module docstring."""
    channels, (height, width), rule = choose_geometry(files, options.size)
    if options.progress:
        print(f"{source}: {len(files)} files; input {channels} x {height} x {width} ({rule}), "
              f"resize {options.policy}", flush=True)
    cache = SharedCache(len(files), (channels, height, width), options.cache_bytes)
    bad = scan(files, cache, options, source)
    if len(bad) == len(files):
        first = next(iter(bad))
        raise UserError(f"{source}: none of the {len(files)} files is a readable image "
                        f"(first: {files[first]}: {bad[first]})")
    ids = np.array([i for i in range(len(files)) if i not in bad], np.int64)
    skipped = tuple((str(files[i]), bad[i]) for i in sorted(bad))
    if cache.capacity == len(files):  # everything decoded in memory: an ordinary array
        for start in range(0, len(ids), 256):  # close the gaps in place (ids rise: no overlap)
            chunk = ids[start:start + 256]
            cache.pixels[start:start + len(chunk)] = cache.pixels[chunk]
        images = cache.pixels[:len(ids)]
    else:
        images = FileImages(files, ids, cache, options.policy, options.workers)
    return LoadedFiles(images, np.asarray(labels, np.int64)[ids], skipped)

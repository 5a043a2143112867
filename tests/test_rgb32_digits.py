"""loadtest/rgb32_digits.py: mnist5k as 32x32 RGB for the ResNet-18 benchmark model."""
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_writes_padded_three_channel_digits_the_npz_loader_reads(tmp_path):
    from data.datasets import load_dataset

    out = tmp_path / "rgb.npz"
    done = subprocess.run([sys.executable, "loadtest/rgb32_digits.py", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = load_dataset(f"npz:{out}")
    assert data.images.shape == (5000, 3, 32, 32) and data.num_classes == 10
    assert np.array_equal(data.images[:, 0], data.images[:, 2])  # grey copied to every channel
    assert data.images[:, :, :2].max() == 0 and data.images[:, :, :, -2:].max() == 0  # 2-px pad
    bad = subprocess.run([sys.executable, "loadtest/rgb32_digits.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("usage:")

import numpy as np
import pytest
from PIL import Image

from data.datasets import load_dataset
from cli_errors import UserError


def test_builtin_datasets_shapes():
    mnist = load_dataset("mnist5k")
    assert mnist.images.shape == (5000, 1, 28, 28) and mnist.images.dtype == np.uint8
    assert np.bincount(mnist.labels).tolist() == [500] * 10
    digits = load_dataset("digits")
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.max() == 255


def test_npz_accepts_nhwc_floats(tmp_path):
    x = np.random.default_rng(0).random((6, 5, 5, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["a", "b", "a", "b", "c", "c"]))
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.images.shape == (6, 3, 5, 5)
    assert data.class_names == ("a", "b", "c")
    assert data.labels.tolist() == [0, 1, 0, 1, 2, 2]
    assert data.images[0, 1, 2, 3] == round(x[0, 2, 3, 1] * 255)


def test_folder_dataset(tmp_path):
    for name, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6), value, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.images.shape == (4, 1, 6, 6)
    assert data.class_names == ("cats", "dogs")
    assert data.images[data.labels == 1].min() == 200


@pytest.mark.parametrize("spec,message", [
    ("imagenet", "unknown dataset 'imagenet'"),
    ("npz:", "unknown dataset"),
    ("folder:/nonexistent/dir", "not a directory"),
    ("cifar10:/nonexistent/dir", "missing data_batch_1"),
])
def test_bad_dataset_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_dataset(spec)


def test_npz_without_x_y(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(UserError, match=r"missing array\(s\) \['x', 'y'\]"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_not_an_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read as .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_npz_float_out_of_range(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.full((2, 4, 4), 3.0), y=np.array([0, 1]))
    with pytest.raises(UserError, match=r"in \[0, 1\]"):
        load_dataset(f"npz:{tmp_path / 'big.npz'}")


def test_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no images found"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_with_only_a_corrupt_image(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="none of the 1 files is a readable image"):
        load_dataset(f"folder:{tmp_path}")

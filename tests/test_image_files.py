"""data/image_files.py and train/batches.py: file datasets decoded at the model's size,
streamed past the cache bound, unreadable files skipped or refused; the CLI's one-line errors."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_errors import UserError
from data.datasets import load_dataset
from data.image_files import DecodeOptions, FileImages, parse_image_size
from handlers import resize
from train import batches as batches_module
from train.batches import read_all, read_batches

ROOT = Path(__file__).resolve().parents[1]


def write_photos(root: Path, sizes=((40, 60), (95, 50), (64, 64), (30, 90)), per_class=6,
                 corrupt=True) -> None:
    """Two classes of RGB JPEGs of mixed sizes, plus (optionally) two unreadable files."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", quality=95)
    if corrupt:
        (root / "cat" / "zz_text.jpg").write_bytes(b"not an image at all")
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(buffer, "JPEG")
        (root / "dog" / "zz_truncated.jpg").write_bytes(buffer.getvalue()[:300])


def expected(path: Path, size, policy="center-crop") -> np.ndarray:
    with Image.open(path) as image:
        return resize.read_8bit(image, 3, *size, policy)


@pytest.mark.parametrize("text,size", [("64", (64, 64)), ("48,80", (48, 80)), (" 32 , 40 ", (32, 40)),
                                       (None, None)])
def test_parse_image_size(text, size):
    assert parse_image_size(text) == size


@pytest.mark.parametrize("text", ["0", "-3", "64,0", "a", "1,2,3", "", "99999", "6.5"])
def test_parse_image_size_refuses(text):
    with pytest.raises(UserError, match="--image-size must be H or H,W"):
        parse_image_size(text)


def test_folder_decoded_by_policy_and_unreadable_files_skipped(tmp_path):
    write_photos(tmp_path)
    data = load_dataset(f"folder:{tmp_path}", DecodeOptions(size=(32, 48), progress=False))
    assert isinstance(data.images, np.ndarray) and data.images.shape == (12, 3, 32, 48)
    assert data.labels.tolist() == [0] * 6 + [1] * 6
    assert [Path(f).name for f, _ in data.skipped] == ["zz_text.jpg", "zz_truncated.jpg"]
    assert "truncated" in data.skipped[1][1].lower()
    np.testing.assert_array_equal(data.images[7], expected(tmp_path / "dog" / "1.jpg", (32, 48)))
    letterbox = load_dataset(f"folder:{tmp_path}", DecodeOptions(size=(32, 48), policy="letterbox",
                                                                 progress=False))
    assert not np.array_equal(letterbox.images[7], data.images[7])
    np.testing.assert_array_equal(letterbox.images[7],
                                  expected(tmp_path / "dog" / "1.jpg", (32, 48), "letterbox"))


def test_default_size_is_the_median_of_the_files(tmp_path, capsys):
    write_photos(tmp_path, corrupt=False)
    data = load_dataset(f"folder:{tmp_path}")
    # heights 40, 95, 64, 30, 40, 95 per class -> median 52; widths 60, 50, 64, 90, 60, 50 -> 60
    assert data.images.shape[1:] == (3, 52, 60)
    assert "input 3 x 52 x 60 (the median of 12 sampled files)" in capsys.readouterr().out


def test_strict_names_the_first_unreadable_file(tmp_path):
    write_photos(tmp_path)
    with pytest.raises(UserError, match=r"cannot read image .*zz_text.jpg .*without --strict"):
        load_dataset(f"folder:{tmp_path}", DecodeOptions(size=(16, 16), strict=True, progress=False))


def test_folder_of_only_unreadable_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"not a png")
    (tmp_path / "a" / "2.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"none of the 2 files is a readable image \(first: .*1.png"):
        load_dataset(f"folder:{tmp_path}", DecodeOptions(progress=False))


def test_list_file(tmp_path):
    write_photos(tmp_path / "img", corrupt=False)
    (tmp_path / "list.csv").write_text("# path,class\nimg/cat/0.jpg,cat\nimg/dog/1.jpg,dog\n\n"
                                       "img/cat/2.jpg,cat\n")
    data = load_dataset(f"list:{tmp_path / 'list.csv'}", DecodeOptions(size=(20, 20), progress=False))
    assert data.class_names == ("cat", "dog") and data.labels.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(data.images[1], expected(tmp_path / "img/dog/1.jpg", (20, 20)))
    (tmp_path / "bad.csv").write_text("img/cat/0.jpg\n")
    with pytest.raises(UserError, match=r"entry 1 is \['img/cat/0.jpg'\]; expected `path,class`"):
        load_dataset(f"list:{tmp_path / 'bad.csv'}")


def test_past_the_cache_bound_images_stream_with_the_same_pixels(tmp_path):
    write_photos(tmp_path)
    in_memory = load_dataset(f"folder:{tmp_path}", DecodeOptions(size=(24, 24), progress=False))
    bound = 5 * 3 * 24 * 24  # five decoded images
    streamed = load_dataset(f"folder:{tmp_path}", DecodeOptions(size=(24, 24), cache_bytes=bound,
                                                                workers=2, progress=False))
    images = streamed.images
    assert isinstance(images, FileImages) and images.shape == (12, 3, 24, 24)
    assert images.cache.capacity == 5 and images.cache.nbytes == bound
    # the scan (in 2 processes) filled the shared cache: the first 5 files' decoded pixels
    np.testing.assert_array_equal(images.cache.pixels, in_memory.images[:5])
    np.testing.assert_array_equal(images[:], in_memory.images)
    subset = images.take(np.array([11, 3]))
    np.testing.assert_array_equal(subset[:], in_memory.images[[11, 3]])
    batches = [np.array([0, 5, 11]), np.array([2, 1])]
    for workers in (0, 2):
        images.workers = workers
        got = list(read_batches(images, batches))
        assert [b.dtype for b in got] == [torch.uint8] * 2
        np.testing.assert_array_equal(torch.cat(got).numpy(), in_memory.images[[0, 5, 11, 2, 1]])
    np.testing.assert_array_equal(torch.cat(list(read_all(images, 5))).numpy(), in_memory.images)
    loaders = len(batches_module._LOADERS)
    subset.workers = 2
    np.testing.assert_array_equal(next(read_batches(subset, [np.array([1, 0])])).numpy(),
                                  in_memory.images[[3, 11]])
    assert len(batches_module._LOADERS) == loaders  # one loader (one set of workers) per dataset
    workers = batches_module._LOADERS[id(images.cache)]._iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    batches_module.release_loaders()  # what the end of a run does
    assert not batches_module._LOADERS and not any(w.is_alive() for w in workers)


def test_arrays_resized_to_image_size():
    data = load_dataset("digits", DecodeOptions(size=(16, 12), progress=False))
    assert data.images.shape == (1797, 1, 16, 12)
    native = load_dataset("digits")
    assert native.images.shape == (1797, 1, 8, 8)
    pil = Image.fromarray(native.images[5, 0], "L")
    np.testing.assert_array_equal(data.images[5], resize.read_8bit(pil, 1, 16, 12, "center-crop"))


def run_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_inputs_are_one_line_exit_2(tmp_path):
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.jpg").write_bytes(b"nope")
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "other.pth")
    write_photos(tmp_path / "ok", per_class=4, corrupt=False)
    cases = {
        ("--image-size", "0"): "--image-size must be H or H,W",
        ("--dataset", f"folder:{tmp_path / 'bad'}"): "none of the 1 files is a readable image",
        ("--dataset", f"folder:{tmp_path / 'ok'}", "--image-size", "32", "--arch", "imagenet_resnet18",
         "--known", "cat,dog", "--pretrained", str(tmp_path / "other.pth")): "--pretrained",
        ("--resize", "squash"): "unknown --resize 'squash'",
        ("--head-epochs", "2"): "needs --pretrained",
    }
    for args, message in cases.items():
        done = run_train(*args, "--epochs", "1", "--out", str(tmp_path / "run"))
        assert done.returncode == 2, (args, done.stderr[-800:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, lines)


def test_channel_statistics_chunked_equal_the_one_pass_figures(monkeypatch):
    from train import build

    images = np.random.default_rng(0).integers(0, 256, (300, 3, 10, 14), dtype=np.uint8)
    exact = build.channel_statistics(images)
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(exact[0], pixels.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(exact[1], pixels.std(axis=(0, 2, 3)), atol=1e-6)
    monkeypatch.setattr(build, "EXACT_STATISTICS_BYTES", 0)  # the float64 chunked pass
    np.testing.assert_allclose(build.channel_statistics(images), exact, atol=1e-6)


def test_eval_batches_shrink_with_the_input():
    from train.batches import eval_batch_size

    assert eval_batch_size(np.zeros((1, 1, 28, 28))) == 512  # the shipped sets keep 512
    assert eval_batch_size(np.zeros((1, 3, 32, 32))) == 512
    assert eval_batch_size(np.zeros((1, 3, 224, 224))) == 2**24 // (3 * 224 * 224) == 111
    assert eval_batch_size(np.zeros((1, 3, 4096, 4096))) == 8


def test_pretrained_torchvision_weights_bring_imagenet_normalisation(tmp_path):
    from models.imagenet_resnet import imagenet_resnet18
    from train.build import IMAGENET_MEAN, build_model
    from train.config import TrainConfig
    from train.run_data import load_run_data

    write_photos(tmp_path / "photos", per_class=4, corrupt=False)
    weights = {k: v + 0.01 for k, v in imagenet_resnet18().state_dict().items()
               if not k.endswith("num_batches_tracked")}
    torch.save({**weights, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
               tmp_path / "resnet18.pth")
    cfg = TrainConfig(dataset=f"folder:{tmp_path / 'photos'}", known="cat,dog", arch="imagenet_resnet18",
                      epochs=2).override(image_size="32", pretrained=str(tmp_path / "resnet18.pth"))
    cfg.validate()
    data = load_run_data(cfg, progress=False)
    spec, model = build_model(cfg.resolved(3), data, progress=False)
    assert spec.mean == IMAGENET_MEAN and model.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    torch.testing.assert_close(model.backbone.conv1.weight, weights["conv1.weight"])

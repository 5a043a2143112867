"""Offline batch scoring: folder with a corrupt file, npz, CSV/JSONL schema, bad inputs."""
import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from handlers.batch_score import COLUMNS, main
from handlers.predictor import Predictor


def onnx_output(path, name: str, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([name], {"images": pixels})[0]


def write_png(path, value):
    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        write_png(root / f"img{i}.png", 40 * i)
    write_png(root / "sub" / "nested.png", 255)
    (root / "broken.png").write_bytes(b"definitely not a png")
    return root


def test_folder_with_corrupt_file_is_scored_and_reported(runs, folder, tmp_path, capsys):
    model = runs["arpl"][1]
    out = tmp_path / "scores.csv"
    assert main([str(folder), "--model", str(model), "--out", str(out), "--batch-size", "3",
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 7 and summary["errors"] == 1 and summary["scored"] == 6
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(COLUMNS)
    broken = [r for r in rows if r["id"].endswith("broken.png")]
    assert len(broken) == 1 and "neither an image" in broken[0]["error"] and broken[0]["label"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and all(r["known"] in ("True", "False") for r in good)
    # the scores equal the predictor's own on the same image, and onnxruntime's own output
    predictor = Predictor(model)
    pixels = np.full((1, 1, 8, 8), 255, np.float32) / 255
    expected = predictor.run(pixels).unknown_score[0]
    nested = [r for r in rows if r["id"].endswith("nested.png")][0]
    assert float(nested["unknown_score"]) == pytest.approx(float(expected), abs=1e-5)
    [reciprocal] = onnx_output(model, "reciprocal_score", pixels)
    assert float(nested["reciprocal_score"]) == pytest.approx(float(reciprocal), abs=1e-5)
    assert broken[0]["reciprocal_score"] == ""


def test_npz_to_jsonl(runs, tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x)
    out = tmp_path / "s.jsonl"
    assert main([str(tmp_path / "d.npz"), "--model", str(runs["rpl"][1]), "--out", str(out),
                 "--batch-size", "4", "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(10)]
    assert set(rows[0]) == set(COLUMNS)
    assert isinstance(rows[0]["top_k"], list) and rows[0]["error"] == ""
    assert json.loads(capsys.readouterr().out)["images"] == 10
    pixels = (x / 255).astype(np.float32)[:, None]
    expected = onnx_output(runs["rpl"][1], "reciprocal_score", pixels)
    assert [r["reciprocal_score"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-5)
    assert list(rows[0])[3:5] == ["unknown_score", "reciprocal_score"]


def test_softmax_rows_have_an_empty_reciprocal_score(runs, folder, tmp_path, capsys):
    for suffix in (".csv", ".jsonl"):
        out = tmp_path / f"s{suffix}"
        assert main([str(folder), "--model", str(runs["softmax"][1]), "--out", str(out),
                     "--quiet"]) == 0
        rows = list(csv.DictReader(out.open())) if suffix == ".csv" else \
            [json.loads(line) for line in out.read_text().splitlines()]
        good = [r for r in rows if not r["error"]]
        assert len(rows) == 7 and len(good) == 6
        assert all(r["reciprocal_score"] == ("" if suffix == ".csv" else None) for r in rows)
        assert all(r["unknown_score"] not in ("", None) for r in good)


@pytest.mark.parametrize("make_input,message", [
    (lambda d: d / "missing", "no such folder"),
    (lambda d: (np.savez(d / "w.npz", x=np.zeros((2, 5, 5))), d / "w.npz")[1], "the model takes"),
    (lambda d: (np.savez(d / "n.npz", images=np.zeros((2, 8, 8))), d / "n.npz")[1], "no array 'x'"),
])
def test_bad_run_inputs_exit_2(runs, tmp_path, capsys, make_input, message):
    source = make_input(tmp_path)
    assert main([str(source), "--model", str(runs["arpl"][1]), "--out",
                 str(tmp_path / "o.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_output_suffix_is_checked(runs, folder, tmp_path, capsys):
    assert main([str(folder), "--model", str(runs["arpl"][1]), "--out",
                 str(tmp_path / "o.txt"), "--quiet"]) == 2
    assert "use a .csv or .jsonl" in capsys.readouterr().err

"""Batch scoring on Ray Data (`--ray`): the same rows as the local scorer, and its bad inputs.
Runs when the `ray` extra is installed (it is in `make test`'s setup), skipped otherwise."""
import csv
import json
import sys

import numpy as np
import pytest

from handlers.batch_score import main

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install -e '.[ray]')")


def score(*args: str) -> int:
    return main([*args, "--quiet"])


@pytest.mark.slow
def test_ray_rows_equal_local_rows_on_a_folder_and_an_npz(runs, folder, tmp_path, capsys):
    model = str(runs["arpl"][1])
    x = np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    for source, name in ((folder, "rows.csv"), (tmp_path / "x.npz", "rows.jsonl")):
        assert score(str(source), "--model", model, "--out", str(tmp_path / f"local-{name}"),
                     "--batch-size", "3") == 0
        local = json.loads(capsys.readouterr().out)
        assert score(str(source), "--model", model, "--out", str(tmp_path / f"ray-{name}"),
                     "--batch-size", "3", "--ray") == 0
        on_ray = json.loads(capsys.readouterr().out)
        assert (tmp_path / f"ray-{name}").read_bytes() == (tmp_path / f"local-{name}").read_bytes()
        for key in ("images", "errors", "unknown", "scored"):
            assert on_ray[key] == local[key]
        # one 1-thread actor per CPU that the local Ray reports
        assert on_ray["ray"]["actors"] == on_ray["ray"]["cpus"] >= 1
        assert on_ray["ray"]["threads_per_actor"] == 1
    rows = list(csv.DictReader((tmp_path / "ray-rows.csv").open()))
    broken = [r for r in rows if r["id"].endswith("broken.png")]
    assert len(rows) == 7 and "neither an image" in broken[0]["error"]


def test_parquet_rows_carry_the_jsonl_values(runs, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    model = str(runs["arpl"][1])
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(1).integers(0, 256, (20, 8, 8), np.uint8))
    assert score(str(tmp_path / "x.npz"), "--model", model, "--out", str(tmp_path / "r.jsonl")) == 0
    assert score(str(tmp_path / "x.npz"), "--model", model, "--out", str(tmp_path / "r.parquet")) == 0
    capsys.readouterr()
    expected = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert len(table) == 20
    for got, want in zip(table, expected):
        got["top_k"] = [[p["label"], p["probability"]] for p in got["top_k"]]
        assert got == want


@pytest.mark.parametrize("extra, message", [
    (["--ray", "127.0.0.1:1"], "error: --ray 127.0.0.1:1: no Ray cluster answers there"),
    (["--ray", "headnode"], "error: --ray headnode: expected host:port, ray://host:port or auto"),
    (["--ray", "--server", "http://127.0.0.1:1"], "error: --ray scores with the model file, --server"),
])
def test_bad_ray_input_is_one_line_and_exit_2(runs, folder, tmp_path, capsys, extra, message):
    assert score(str(folder), "--model", str(runs["arpl"][1]), "--out", str(tmp_path / "o.csv"),
                 *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def never_connect(address):
    raise AssertionError("Ray was started for an input that cannot be scored")


def test_a_missing_model_or_input_stops_before_ray_starts_and_keeps_the_output(
        runs, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("handlers.ray_score.connect", never_connect)
    out = tmp_path / "o.csv"
    out.write_text("yesterday's rows\n")
    assert score(str(folder), "--model", str(tmp_path / "none.onnx"), "--out", str(out),
                 "--ray") == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.onnx'}: no such model file\n"
    assert score(str(tmp_path / "missing"), "--model", str(runs["arpl"][1]), "--out", str(out),
                 "--ray") == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'missing'}: no such folder, list "
                                       "file or .npz\n")
    assert out.read_text() == "yesterday's rows\n"  # untouched, and no partial file left
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "o.csv"]


@pytest.mark.slow
def test_more_threads_than_any_node_has_is_one_line(runs, folder, tmp_path, capsys):
    assert score(str(folder), "--model", str(runs["arpl"][1]), "--out", str(tmp_path / "o.csv"),
                 "--ray", "--threads", "512") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --threads 512: no Ray node has 512 CPUs (largest: ")
    assert not (tmp_path / "o.csv").exists()


def test_without_ray_the_flag_says_how_to_install_it(runs, folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "handlers.ray_score", None)  # import fails as if absent
    assert score(str(folder), "--model", str(runs["arpl"][1]), "--out", str(tmp_path / "o.csv"),
                 "--ray") == 2
    assert capsys.readouterr().err.startswith("error: --ray needs Ray Data: pip install -e '.[ray]'")

"""Batch scoring: folder with a corrupt file, npz, CSV/JSONL schema, bad inputs; its sources,
row writer and remote client on their own (the remote client against a stub HTTP server here;
tests/test_serving.py runs it against a real TorchServe)."""
import base64
import csv
import json
import random
import socket

import numpy as np
import onnxruntime as ort
import pytest

from handlers.batch_score import build_parser, main, remote_scorer
from handlers.batch_sources import BatchScoreError, batches, open_npz, read_batch
from handlers.batch_writer import COLUMNS, RowWriter
from handlers.decode import Shape
from handlers.predictor import Predictor
from handlers.remote_client import MAX_REQUEST_SIZE, RemoteScorer, backoff_s
from tests.helpers import stub_json_server, write_png

SHAPE = Shape(1, 8, 8)


def onnx_output(path, name: str, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([name], {"images": pixels})[0]


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
    # known / label: the calibrated threshold on onnxruntime's own deciding score (float32)
    deciding = onnx_output(runs["rpl"][1], "unknown_score", pixels)
    known = (deciding <= np.float32(Predictor(runs["rpl"][1]).info.threshold)).tolist()
    assert [r["known"] for r in rows] == known
    assert [r["label"] == "unknown" for r in rows] == [not k for k in known]


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
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'o.txt'}: use a .csv, .jsonl or "
                                       ".parquet file name\n")


ANSWER = {"label": "unknown", "known": False, "predicted_class": "3", "class_index": 1,
          "unknown_score": -0.5, "reciprocal_score": -2.25, "threshold": -0.75,
          "probabilities": [{"label": "3", "probability": 0.5},
                            {"label": "5", "probability": 0.3333333}],
          "model": {"name": "m", "version": "1", "method": "arpl", "score": "knn"}}


def test_writer_rows_csv(tmp_path):
    softmax = {key: value for key, value in ANSWER.items() if key != "reciprocal_score"}
    with RowWriter(tmp_path / "o.csv") as writer:
        writer.write("a.png", ANSWER, None)
        writer.write("b.png", None, "cannot read file (Permission denied)")
        writer.write("c.png", {**softmax, "label": "3", "known": True}, None)
    assert (tmp_path / "o.csv").read_text().splitlines() == [
        ",".join(COLUMNS),
        "a.png,unknown,False,-0.5,-2.25,3,1,3:0.500000;5:0.333333,",
        "b.png,,,,,,,,cannot read file (Permission denied)",
        "c.png,3,True,-0.5,,3,1,3:0.500000;5:0.333333,"]


def test_writer_rows_jsonl(tmp_path):
    with RowWriter(tmp_path / "o.jsonl") as writer:
        writer.write("a.png", ANSWER, None)
        writer.write("b.png", None, "server answered 500: boom")
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert rows == [
        {"id": "a.png", "label": "unknown", "known": False, "unknown_score": -0.5,
         "reciprocal_score": -2.25, "predicted_class": "3", "class_index": 1,
         "top_k": [["3", 0.5], ["5", 0.3333333]], "error": ""},
        {"id": "b.png", **{column: None for column in COLUMNS[1:-1]},
         "error": "server answered 500: boom"}]


def test_payloads_stay_aligned_around_a_broken_file(tmp_path):
    for name, value in (("a.png", 10), ("c.png", 30)):
        write_png(tmp_path / name, value)
    (tmp_path / "b.png").write_bytes(b"broken")
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "missing.png", tmp_path / "c.png"]
    batch = read_batch(paths, SHAPE)
    assert batch.good == [0, 3] and len(batch.payloads) == 4
    assert [batch.payloads[i] for i in batch.good] == [paths[0].read_bytes(),
                                                       paths[3].read_bytes()]
    assert batch.errors == {1: "body is neither an image (PNG, JPEG, ...) nor JSON",
                            2: "cannot read file (No such file or directory)"}
    assert np.array_equal(batch.pixels[:, 0, 0, 0], np.float32([10, 30]) / 255)


def test_list_file_skips_comments_and_reports_missing_images(tmp_path):
    write_png(tmp_path / "a.png", 0)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\n{tmp_path / 'a.png'}\n\n  {tmp_path / 'gone.png'}  \n")
    total, stream = batches(listing, SHAPE, 64)
    [batch] = list(stream)
    assert total == 2 and batch.ids == [str(tmp_path / "a.png"), str(tmp_path / "gone.png")]
    assert batch.good == [0] and "No such file" in batch.errors[1]


def test_npz_rgb_becomes_the_models_grey(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)  # N x H x W x C
    np.savez(tmp_path / "rgb.npz", x=x)
    total, stream = batches(tmp_path / "rgb.npz", SHAPE, 2)
    got = np.concatenate([batch.pixels for batch in stream])
    grey = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114) / 255  # ITU-R 601
    assert total == 5 and got.shape == (5, 1, 8, 8)
    assert np.allclose(got[:, 0], grey, atol=1e-6)


@pytest.mark.parametrize("write,message", [  # each writes d.npz through an open file
    (lambda f: np.save(f, np.zeros((2, 8, 8))), "a single .npy array, not an .npz with x"),
    (lambda f: f.write(b"PK not a zip"), "cannot read as .npz"),
    (lambda f: np.savez(f, x=np.zeros((8, 8))), "x must be uint8 or float images of rank 3 or 4"),
    (lambda f: np.savez(f, x=np.zeros((2, 8, 8), np.int32)), "x must be uint8 or float images"),
    (lambda f: np.savez(f, x=np.full((2, 8, 8), 1.5)), "float x must be finite and in [0, 1]"),
    (lambda f: np.savez(f, x=np.zeros((0, 8, 8))), "x has shape (0, 8, 8); the model takes 1 x 8 x 8"),
])
def test_npz_errors_name_the_problem(tmp_path, write, message):
    path = tmp_path / "d.npz"
    with open(path, "wb") as handle:
        write(handle)
    with pytest.raises(BatchScoreError) as raised:
        open_npz(path, SHAPE)
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)


@pytest.fixture
def stub_server():
    """A TorchServe stand-in on 127.0.0.1: each POST gets the next of `replies` (status, JSON
    or a function of the request body), the last one repeated; `requests` records them. A
    status of None closes the connection without an answer, as a stopping server does."""
    replies, requests = [], []

    def answer(handler, body):
        requests.append({"path": handler.path, "authorization": handler.headers["Authorization"],
                         "body": body})
        status, reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return status, reply(body) if callable(reply) and status is not None else reply

    with stub_json_server(answer) as url:
        yield {"url": url, "replies": replies, "requests": requests}


def test_remote_client_retries_503_and_sends_the_payloads(stub_server):
    stub_server["replies"].extend([(503, {"code": 503}), (503, {"code": 503}),
                                   (200, [ANSWER, ANSWER])])
    scorer = RemoteScorer(stub_server["url"], "digits", "secret", retries=3)
    pixels = np.full((1, 2, 2), 0.5, np.float32)
    assert scorer([b"png bytes", pixels]) == [ANSWER, ANSWER]
    requests = stub_server["requests"]
    assert len(requests) == 3 and {r["path"] for r in requests} == {"/predictions/digits"}
    assert {r["authorization"] for r in requests} == {"Bearer secret"}
    assert json.loads(requests[0]["body"]) == [
        {"image": base64.b64encode(b"png bytes").decode()},
        {"pixels": [[[128, 128], [128, 128]]]}]  # 0.5 * 255 = 127.5, rounded half to even


def test_remote_client_reports_a_500_per_image_without_retrying(stub_server):
    stub_server["replies"].append((500, {"error": "boom"}))
    answers = RemoteScorer(stub_server["url"], "digits", None, retries=3)([b"a", b"b"])
    assert answers == ['server answered 500: {"error": "boom"}'] * 2
    assert len(stub_server["requests"]) == 1 and stub_server["requests"][0]["authorization"] is None


def test_remote_client_refuses_an_answer_of_the_wrong_length(stub_server):
    stub_server["replies"].append((200, [ANSWER]))
    answers = RemoteScorer(stub_server["url"], "digits", None)([b"a", b"b"])
    assert answers == ["server answered 200 without a list of 2 answers"] * 2


def echo(body: bytes) -> list[dict]:
    """A stub reply naming each image it was sent, so that answers show their image."""
    return [{"echo": value} for item in json.loads(body) for value in item.values()]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def quick_scorer(url: str, retries: int = 3,
                 max_body_bytes: int = MAX_REQUEST_SIZE) -> tuple[RemoteScorer, list[float]]:
    """A scorer seeded with Random(0) whose waits are recorded instead of slept."""
    waits: list[float] = []
    return RemoteScorer(url, "digits", None, retries=retries, max_body_bytes=max_body_bytes,
                        rng=random.Random(0), sleep=waits.append), waits


def seeded_waits(count: int, base_s: float = 0.1, cap_s: float = 2.0) -> list[float]:
    rng = random.Random(0)
    return [backoff_s(attempt, base_s, cap_s, rng) for attempt in range(count)]


def test_backoff_doubles_up_to_its_cap_with_jitter():
    rng = random.Random(0)
    waits = [backoff_s(attempt, 0.1, 1.0, rng) for attempt in range(6) for _ in range(200)]
    for attempt, nominal in enumerate((0.1, 0.2, 0.4, 0.8, 1.0, 1.0)):
        chunk = waits[200 * attempt:200 * (attempt + 1)]
        assert nominal / 2 <= min(chunk) and max(chunk) <= nominal
        assert max(chunk) - min(chunk) > nominal / 3  # jittered, not one value


def test_remote_client_retries_a_507_and_a_reset_connection(stub_server):
    # 507: TorchServe's answer for the batch of a worker that died; None: a reset connection
    stub_server["replies"].extend([(507, {"code": 507}), (None, None), (200, echo)])
    scorer, waits = quick_scorer(stub_server["url"])
    assert scorer([b"a", b"b"]) == [{"echo": b64(b"a")}, {"echo": b64(b"b")}]
    assert len(stub_server["requests"]) == 3
    assert waits == seeded_waits(2) and 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2


def test_remote_client_gives_up_after_its_retries(stub_server):
    stub_server["replies"].append((507, {"code": 507, "message": "worker died"}))
    scorer, waits = quick_scorer(stub_server["url"], retries=2)
    answers = scorer([b"a", b"b"])
    assert answers == ['server answered 507: {"code": 507, "message": "worker died"}'] * 2
    assert len(stub_server["requests"]) == 3 and waits == seeded_waits(2)


def test_remote_client_retries_a_refused_connection():
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scorer, waits = quick_scorer(f"http://127.0.0.1:{port}", retries=2)
    [answer] = scorer([b"a"])
    assert answer.startswith("server unreachable (") and "refused" in answer
    assert waits == seeded_waits(2)


def test_remote_client_does_not_retry_a_413(stub_server):
    stub_server["replies"].append((413, {"code": 413, "message": "too large"}))
    scorer, waits = quick_scorer(stub_server["url"])
    assert scorer([b"a"]) == ['server answered 413: {"code": 413, "message": "too large"}']
    assert len(stub_server["requests"]) == 1 and waits == []


@pytest.mark.parametrize("max_body_bytes,sizes", [(110, [110, 110, 55]), (109, [55] * 5)])
def test_remote_client_splits_a_batch_over_max_body_bytes_in_order(stub_server, max_body_bytes,
                                                                   sizes):
    stub_server["replies"].append((200, echo))
    payloads = [bytes([65 + i]) * 30 for i in range(5)]  # each '{"image": "<40 chars>"}', 53 bytes
    # one image: "[" + 53 + "]" = 55 bytes; two: 2 + 53 + ", " + 53 = 110 bytes
    scorer, _ = quick_scorer(stub_server["url"], max_body_bytes=max_body_bytes)
    assert scorer(payloads) == [{"echo": b64(p)} for p in payloads]
    bodies = [r["body"] for r in stub_server["requests"]]
    assert [len(body) for body in bodies] == sizes
    assert [item["image"] for body in bodies for item in json.loads(body)] == [b64(p) for p in payloads]


def test_remote_client_refuses_only_the_image_over_max_body_bytes(stub_server):
    stub_server["replies"].append((200, echo))
    payloads = [b"small", b"x" * 300, np.zeros((1, 2, 2), np.float32), b"tiny"]
    scorer, _ = quick_scorer(stub_server["url"], max_body_bytes=200)
    too_large = len(json.dumps([{"image": b64(b"x" * 300)}]))  # 2 + 13 + 400 bytes
    assert scorer(payloads) == [
        {"echo": b64(b"small")},
        f"image body of {too_large} bytes is over the server's max_request_size (200 bytes)",
        {"echo": [[[0, 0], [0, 0]]]}, {"echo": b64(b"tiny")}]
    assert len(stub_server["requests"]) == 1  # the others still fit one request, in order
    assert json.loads(stub_server["requests"][0]["body"]) == [
        {"image": b64(b"small")}, {"pixels": [[[0, 0], [0, 0]]]}, {"image": b64(b"tiny")}]


def test_the_cli_passes_max_body_bytes_and_refuses_non_positive(runs, folder, tmp_path, capsys):
    args = build_parser().parse_args([str(folder), "--out", "o.csv", "--server", "http://h:1",
                                      "--key-file", str(tmp_path / "none.json"),
                                      "--max-body-bytes", "1000"])
    assert remote_scorer(args).max_body_bytes == 1000
    assert build_parser().parse_args(["in", "--out", "o.csv"]).max_body_bytes == 6_553_500
    assert main([str(folder), "--model", str(runs["arpl"][1]), "--out", str(tmp_path / "o.csv"),
                 "--server", "http://127.0.0.1:9", "--max-body-bytes", "0", "--quiet"]) == 2
    assert capsys.readouterr().err == "error: --max-body-bytes must be >= 1\n"
    assert not (tmp_path / "o.csv").exists()

def test_remote_mode_writes_the_local_rows(runs, folder, tmp_path, stub_server, capsys):
    predictor = Predictor(runs["arpl"][1])  # what the TorchServe handler would answer with
    stub_server["replies"].append((200, lambda body: predictor.predict_requests([(body, None)])[0]))
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "secret"}}))
    common = [str(folder), "--model", str(runs["arpl"][1]), "--batch-size", "3", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "local.csv")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*common, "--out", str(tmp_path / "remote.csv"), "--server", stub_server["url"],
                 "--model-name", "digits", "--key-file", str(key_file)]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert (tmp_path / "remote.csv").read_text() == (tmp_path / "local.csv").read_text()
    rows = list(csv.DictReader((tmp_path / "local.csv").open()))
    assert remote["unknown"] == local["unknown"] == sum(r["known"] == "False" for r in rows)
    assert len(stub_server["requests"]) == 3  # batches of 3, 3 and 1 images; 6 decodable
    assert {r["authorization"] for r in stub_server["requests"]} == {"Bearer secret"}


def test_a_key_file_that_is_not_torchserves_is_refused(runs, folder, tmp_path, capsys):
    key_file = tmp_path / "key_file.json"
    key_file.write_text('{"inference": "secret"}')
    assert main([str(folder), "--model", str(runs["arpl"][1]), "--out", str(tmp_path / "o.csv"),
                 "--server", "http://127.0.0.1:9", "--key-file", str(key_file), "--quiet"]) == 2
    assert capsys.readouterr().err == \
        f"error: --key-file {key_file}: not TorchServe's key_file.json\n"
    assert not (tmp_path / "o.csv").exists()


def test_a_version_being_unregistered_is_retried_too():
    from handlers.remote_client import worth_retrying

    scaled_down = '{"code": 500, "type": "InternalServerException", "message": "Worker scaled down."}'
    assert worth_retrying(500, scaled_down)

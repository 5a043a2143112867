"""What several test modules share (fixtures are in conftest.py): the tiny model and run,
running a CLI in-process, stand-in run directories, a run's open-set figures recomputed
from its saved model and split, and HTTP: a request's JSON answer, a stub JSON server."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from models import ModelSpec, build_classifier
from rundir import Checkpoint, RunDirectory
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# A run that trains in about a second: 8x8 digits, a quarter-width CNN, ~8 SGD steps an epoch.
TINY_RUN = ["--dataset", "digits", "--epochs", "1", "--width", "0.25", "--batch-size", "128"]


def tiny_spec(method: str) -> ModelSpec:
    head = "linear" if method in ("softmax", "sla") else "reciprocal"  # sla: --sla-task softmax
    variant = method if method in ("rpl", "arpl") else "arpl"
    defaults = TrainConfig()  # the project's default head settings, on a tiny backbone
    return ModelSpec(arch="small_cnn", in_channels=1, num_classes=3, head=head, width=0.25,
                     variant=variant, points_per_class=defaults.reciprocal.points_per_class,
                     feature_scale=defaults.reciprocal.feature_scale,
                     sla_transform=defaults.sla.transform if method == "sla" else "none")


def training_inputs(method: str, images: torch.Tensor) -> torch.Tensor:
    """What the training loop feeds the model for `method` (SLA: its M transformed views)."""
    from models.sla import transform_views

    return transform_views(images, TrainConfig().sla.transform) if method == "sla" else images


def exit_code(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """A CLI's exit status, in-process: what main returns, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def fake_run(path: Path, class_names: list[str], input_shape: list[int]) -> str:
    """A run directory with only model.pt: an untrained tiny softmax network on other data."""
    spec = tiny_spec("softmax")
    RunDirectory(path).create()
    RunDirectory(path).write_checkpoint(Checkpoint(
        model_spec=spec.to_dict(), state_dict=build_classifier(spec).state_dict(),
        class_names=class_names, input_shape=input_shape, method="softmax", threshold=0.0,
        threshold_rule="none (a stand-in)"))
    return str(path)


def onnx_model(path: Path) -> Callable[[torch.Tensor], dict[str, np.ndarray]]:
    """An exported .onnx as a function of an image batch, like the PyTorch model."""
    from handlers.contract import load_model

    session, info = load_model(path, providers=["CPUExecutionProvider"])
    names = list(info.output_names)
    return lambda images: dict(zip(names, session.run(names, {"images": images.numpy()})))


def outputs(model: Callable, images) -> dict[str, np.ndarray]:
    with torch.no_grad():
        answer = model(torch.from_numpy(np.asarray(images)))
        return {name: np.asarray(value) for name, value in answer.items()}


def open_set_figures(model: Callable, run_dir: Path, threshold: float) -> dict:
    """closed_acc, auroc, oscr and the accept/reject rates of `model` on the run's own test
    split, computed here from its outputs: sklearn's AUROC (unknown = positive); OSCR as the
    fraction of (known, unknown) pairs whose known image is classified correctly and scored
    below the unknown one (ties count half)."""
    split = RunDirectory(run_dir).split_images()
    known, unknown = outputs(model, split["test_known"]), outputs(model, split["test_unknown"])
    known_scores, unknown_scores = known["unknown_score"], unknown["unknown_score"]
    correct = known["logits"].argmax(1) == split["test_labels"]
    below = (known_scores[:, None] < unknown_scores[None, :]) \
        + 0.5 * (known_scores[:, None] == unknown_scores[None, :])  # known x unknown
    is_unknown = np.r_[np.zeros(len(known_scores)), np.ones(len(unknown_scores))]
    return {"closed_acc": float(np.mean(correct)),
            "auroc": float(roc_auc_score(is_unknown, np.r_[known_scores, unknown_scores])),
            "oscr": float(np.mean(correct[:, None] * below)),
            "known_accept_rate": float(np.mean(known_scores <= threshold)),
            "unknown_reject_rate": float(np.mean(unknown_scores > threshold))}


def write_png(path: Path, value: int) -> None:
    """An 8x8 grey PNG of one value."""
    from PIL import Image

    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(path)


def json_answer(request: urllib.request.Request, timeout: float = 30) -> tuple[int, dict]:
    """(status, decoded JSON) of a request, error statuses included; a body that is not JSON
    comes back as {"raw": text}."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        try:
            return error.code, json.loads(text)
        except ValueError:
            return error.code, {"raw": text.decode(errors="replace")}


@contextmanager
def stub_json_server(answer: Callable[[BaseHTTPRequestHandler, bytes], tuple[int | None, object]]
                     ) -> Iterator[str]:
    """A stand-in HTTP server on 127.0.0.1 (its URL): each POST is answered `answer(handler,
    body)` -> (status, JSON-able); a status of None closes the connection without an answer,
    as a stopping server does."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, reply = answer(self, body)
            if status is None:
                self.close_connection = True
                return
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()

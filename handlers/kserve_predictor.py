"""KServe front: a `kserve.Model` over the framework-free Predictor, answering OIP v2.

The tensors in and out are `handlers.oip`'s; the decision is `Predictor.decide`, as for the
TorchServe handler and the batch scorer. Decoding runs in the event loop's thread pool;
concurrent requests' images run as one onnxruntime batch (`DynamicBatcher`, one inference at a
time), so the loop keeps reading requests while a batch computes. Prometheus counters
(on the server's /metrics, beside kserve's own latency histograms):
  openset_images_total, openset_unknown_total, openset_bad_requests_total   (counters; the
  last one counts every 400 of a served model, including bodies refused before the model)
  openset_unknown_rate   (gauge: the unknown fraction of the last UNKNOWN_WINDOW images)
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from pathlib import Path

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput
from kserve.utils.utils import generate_uuid
from prometheus_client import Counter, Gauge

from handlers import oip
from handlers.decode import InputError
from handlers.dynamic_batcher import DynamicBatcher
from handlers.predictor import Outputs, Predictor

UNKNOWN_WINDOW = 1000
IMAGES = Counter("openset_images", "Images answered", ["model_name"])
UNKNOWN = Counter("openset_unknown", "Images answered 'unknown'", ["model_name"])
BAD_REQUESTS = Counter("openset_bad_requests", "Requests answered 400", ["model_name"])
UNKNOWN_RATE = Gauge("openset_unknown_rate",
                     f"Fraction answered 'unknown' among the last {UNKNOWN_WINDOW} images", ["model_name"])
SERVED: set[str] = set()  # names of the models loaded in this process
DATATYPES = {"label": "BYTES", "predicted_class": "BYTES", "known": "BOOL"}  # the rest: FP32


def count_bad_request(model_name: str | None) -> None:
    """One more 400 for a model this process serves (the server's error handlers call it, so
    bodies refused before they reach the model count too; other names get no label)."""
    if model_name in SERVED:
        BAD_REQUESTS.labels(model_name).inc()


def _invalid(error: InputError) -> InvalidInput:
    """kserve's 400 exception, carrying the InputError's code for the server's error body."""
    invalid = InvalidInput(str(error))
    invalid.code = error.code
    return invalid


class UnknownRate:
    """The unknown fraction of the last `window` images (a sliding window, thread-safe)."""

    def __init__(self, window: int = UNKNOWN_WINDOW):
        self._recent: deque[bool] = deque(maxlen=window)
        self._unknown = 0
        self._lock = threading.Lock()

    def add(self, unknown: np.ndarray) -> float:
        with self._lock:
            for value in unknown.tolist():
                if len(self._recent) == self._recent.maxlen:
                    self._unknown -= self._recent[0]
                self._recent.append(value)
                self._unknown += value
            return self._unknown / len(self._recent)


class OpenSetModel(Model):
    """One contract .onnx served under `name`; `load()` refuses a file that breaks the contract
    (ModelFileError, one line)."""

    def __init__(self, name: str, model_path: str | Path, threads: int = 1, max_batch: int = 64,
                 batch_delay: float = 0.0):
        super().__init__(name)
        self.model_path = Path(model_path)
        self.threads = threads
        self.predictor: Predictor | None = None
        self.unknown_rate = UnknownRate()
        self.batcher: DynamicBatcher | None = None
        self._batching = {"max_images": max_batch, "max_delay": batch_delay}

    def load(self) -> bool:
        self.predictor = Predictor(self.model_path, name=self.name, threads=self.threads)
        self.batcher = DynamicBatcher(self.predictor.run, _rows, **self._batching)
        SERVED.add(self.name)
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return oip.input_types(self.predictor)

    def get_output_types(self) -> list[dict]:
        return oip.output_types(self.predictor)

    def _read(self, request: InferRequest) -> tuple[np.ndarray, float | None]:
        """Images and threshold of a request (decoding runs in the loop's thread pool); the
        requested outputs are checked first, so a refused request runs nothing."""
        try:
            oip.check_requested_outputs(request.request_outputs, self.predictor)
            return oip.read_request(request.inputs, request.parameters, self.predictor)
        except InputError as error:
            if request.from_grpc:  # REST 400s are counted by the server's error handler
                count_bad_request(self.name)
            raise _invalid(error) from None

    def _respond(self, request: InferRequest, outputs: Outputs, threshold: float | None) -> InferResponse:
        arrays = oip.output_arrays(self.predictor, outputs, threshold)
        unknown = ~arrays["known"]
        IMAGES.labels(self.name).inc(len(unknown))
        UNKNOWN.labels(self.name).inc(int(unknown.sum()))
        UNKNOWN_RATE.labels(self.name).set(self.unknown_rate.add(unknown))
        info = self.predictor.info
        outputs = [InferOutput(name, list(array.shape), DATATYPES.get(name, "FP32"), data=array)
                   for name, array in arrays.items()]
        parameters = {"threshold": info.threshold if threshold is None else threshold,
                      "score": info.score, "method": info.method}
        if request.from_grpc:
            # kserve's to_grpc takes neither numpy data nor float parameters (its proto has no
            # double_param): serialise the tensors here, send the threshold as text
            for output in outputs:
                output.set_data_from_numpy(output.data, binary_data=True)
            parameters["threshold"] = repr(parameters["threshold"])
        return InferResponse(
            response_id=request.id or generate_uuid(), model_name=self.name,
            model_version=info.model_version, infer_outputs=outputs, from_grpc=request.from_grpc,
            parameters=parameters, use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs)

    async def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        if not isinstance(payload, InferRequest):  # kserve's v1 route hands over a plain dict
            raise _invalid(InputError("wrong_protocol", "this server speaks the Open Inference "
                                      f"Protocol v2: POST /v2/models/{self.name}/infer"))
        loop = asyncio.get_running_loop()
        images, threshold = await loop.run_in_executor(None, self._read, payload)
        outputs = await self.batcher.run(images)  # one onnxruntime batch with concurrent requests
        return self._respond(payload, outputs, threshold)


def _rows(outputs: Outputs, start: int, stop: int) -> Outputs:
    """One request's rows of a batch's outputs."""
    return Outputs(*(None if array is None else array[start:stop] for array in outputs))

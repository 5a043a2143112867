"""TorchServe handler: a thin adapter over handlers.predictor.Predictor (one class here).

Server-side batching: `data` holds one dict per HTTP request; each bad request gets its own
400 with {"error", "code"} while the rest of the batch is answered. Threshold override per
request: a "threshold" JSON field, or the X-Threshold header for image bodies (TorchServe
0.12 was seen not to forward query parameters of POST/PUT bodies to the handler). A model file that breaks
the contract is refused at load with one log line, and the worker stays up answering 503
(raising in initialize would make TorchServe restart the worker forever).
"""
import json
import logging
import os
import time
from pathlib import Path

from handlers.contract import ModelFileError
from handlers.decode import InputError
from handlers.predictor import Predictor

logger = logging.getLogger(__name__)


class OpenSetHandler:
    def __init__(self):
        self.predictor = None
        self.load_error = None
        self.initialized = False

    def initialize(self, context):
        manifest = context.manifest["model"]
        model_dir = Path(context.system_properties["model_dir"])
        settings = (context.model_yaml_config or {}).get("handler", {})
        try:
            threads = int(os.environ.get("OPENSET_ORT_THREADS", settings.get("ort_threads", 1)))
        except ValueError:
            logger.error("OPENSET_ORT_THREADS / ort_threads is not an integer; using 1")
            threads = 1
        try:
            self.predictor = Predictor(model_dir / manifest["serializedFile"],
                                       name=manifest["modelName"], threads=threads,
                                       top_k=int(settings.get("top_k", 3)),
                                       version=manifest.get("modelVersion"))
            logger.info("open-set model %s version %s loaded: %s, %d classes, threshold %.4g, "
                        "%d ORT threads", manifest["modelName"], self.predictor.version,
                        self.predictor.info.method,
                        len(self.predictor.info.class_names), self.predictor.info.threshold, threads)
        except ModelFileError as error:
            self.load_error = str(error)
            logger.error("OPEN-SET MODEL REFUSED: %s", error)
        self.initialized = True

    @staticmethod
    def _header(context, idx, name):
        """A request header, whatever case the client sent it in (TorchServe keeps it)."""
        for variant in (name, name.lower()):
            value = context.get_request_header(idx, variant)
            if value is not None:
                return value
        return None

    def handle(self, data, context):
        started = time.perf_counter()
        if self.predictor is None:
            for idx in range(len(data)):
                context.set_response_status(503, "model unavailable", idx=idx)
            return [json.dumps({"error": f"model refused at load: {self.load_error}",
                                "code": "model_unavailable"}) for _ in data]
        requests = [(row.get("body", row.get("data")),
                     row.get("threshold") or self._header(context, idx, "X-Threshold"))
                    for idx, row in enumerate(data)]
        timings: dict = {}
        answers = self.predictor.predict_requests(requests, timings)
        responses, images, unknown = [], 0, 0
        for idx, answer in enumerate(answers):
            context.set_response_content_type(idx, "application/json")
            if isinstance(answer, InputError):
                context.set_response_status(400, answer.code, idx=idx)
                responses.append(json.dumps(answer.to_json()))
                continue
            rows = answer if isinstance(answer, list) else [answer]
            images += len(rows)
            unknown += sum(not row["known"] for row in rows)
            # a compact string: TorchServe would json.dumps(indent=2) a dict, ~2x the bytes
            responses.append(json.dumps(answer))
        metrics = context.metrics
        metrics.add_counter("OpenSetPredictions", images, dimensions=[])
        metrics.add_counter("OpenSetUnknownPredictions", unknown, dimensions=[])
        metrics.add_counter("OpenSetBadRequests", len(answers) - sum(
            not isinstance(a, InputError) for a in answers), dimensions=[])
        handler_ms = (time.perf_counter() - started) * 1000
        metrics.add_time("OpenSetHandlerLatency", handler_ms, dimensions=[], unit="ms")
        # running sums, so an operator (or the benchmark) can split the time per image
        metrics.add_counter("OpenSetBatches", 1, dimensions=[])
        metrics.add_counter("OpenSetHandlerMs", handler_ms, dimensions=[])
        metrics.add_counter("OpenSetDecodeMs", timings.get("decode_s", 0) * 1000, dimensions=[])
        metrics.add_counter("OpenSetInferenceMs", timings.get("inference_s", 0) * 1000,
                            dimensions=[])
        return responses

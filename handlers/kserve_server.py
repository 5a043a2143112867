"""Run the KServe front (OIP v2 over HTTP, optionally gRPC) for one contract .onnx.

    python -m handlers.kserve_server run   --model M.onnx [--name N] [--host H] [--http-port P]
    python -m handlers.kserve_server start ...   (`make serve-kserve`: background, waits, prints a call)
    python -m handlers.kserve_server stop        (`make stop-kserve`)

`run` is what a container runs (deploy/Dockerfile). Three things differ from a bare
`kserve.ModelServer`, each because a client's mistake must never be a 5xx or an HTML/422 page:
- the REST server binds `--host` (127.0.0.1 by default; kserve hard-codes 0.0.0.0);
- the request decoder answers 400 for a malformed body (kserve raises ValueError/KeyError ->
  500 on a bad binary header), and reads the binary extension's BYTES elements as raw bytes
  (kserve 0.21 decodes them as UTF-8 text, which fails for any PNG);
- FastAPI's body validation errors (422 {"detail"}) are answered 400 {"error"}.
kserve's gRPC server always binds all interfaces ([::]): gRPC is off unless --grpc-port is given.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# kserve parses sys.argv when it is imported (kserve/model_server.py, parse_known_args): this
# CLI's --model and --timeout would be read as abbreviations of its --model_name and
# --timeout_keep_alive. It sees an empty command line instead.
_ARGV, sys.argv = sys.argv, sys.argv[:1]
import orjson  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import ORJSONResponse  # noqa: E402
from kserve import InferInput, InferRequest, ModelServer  # noqa: E402
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol  # noqa: E402
from kserve.errors import InferenceError, InvalidInput, ModelNotFound  # noqa: E402
from kserve.model_server import FASTAPI_APP_IMPORT_STRING  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.grpc.server import GRPCServer  # noqa: E402
from kserve.protocol.infer_type import RequestedOutput  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from cli_errors import OneLineErrorParser, UserError  # noqa: E402
from handlers.contract import ModelFileError, load_model  # noqa: E402
from handlers.kserve_predictor import OpenSetModel, count_bad_request  # noqa: E402
from handlers.preflight import port_is_free  # noqa: E402

sys.argv = _ARGV

PID_FILE = Path("logs/kserve.pid")
MAX_BODY_BYTES = 64 << 20  # 256 encoded images of ~250 KB; --max-body-mb raises it
LOG_FILE = Path("logs/kserve.log")


def _checked_inputs(header: dict) -> list[dict]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('the request needs "inputs": a list of tensors')
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) or \
                not isinstance(tensor.get("datatype"), str) or not isinstance(tensor.get("shape"), list):
            raise InvalidInput('each input needs "name", "datatype" and "shape"')
        if not isinstance(tensor.get("parameters") or {}, dict):
            raise InvalidInput(f'input {tensor["name"]!r}: "parameters" must be an object')
    return inputs


def binary_request(body: bytes, headers: dict, model_name: str) -> InferRequest:
    """An OIP v2 request in the binary extension's layout: a JSON header of
    Inference-Header-Content-Length bytes, then each binary input's `binary_data_size` bytes."""
    length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
    if length is None:  # no binary part: all of it is JSON (a client that sent no Content-Type)
        try:
            header = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidInput("the body is not valid JSON (nor binary data with an "
                               f"{INFERENCE_CONTENT_LENGTH_HEADER} header)") from None
        length = len(body)
    else:
        try:
            length = int(length)
            if not 0 < length <= len(body):
                raise ValueError
            header = orjson.loads(body[:length])
        except (ValueError, orjson.JSONDecodeError):
            raise InvalidInput(f"{INFERENCE_CONTENT_LENGTH_HEADER} must be the length of a JSON "
                               "header at the start of the body") from None
    if not isinstance(header, dict):
        raise InvalidInput("the request header must be a JSON object")
    offset, tensors, raw = length, [], []
    for tensor in _checked_inputs(header):
        parameters = tensor.get("parameters") or {}
        chunk = None
        if "data" not in tensor:
            size = parameters.get("binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f'input {tensor["name"]!r} has neither "data" nor a binary_data_size')
            chunk = body[offset:offset + size]
            if len(chunk) != size:
                raise InvalidInput(f'input {tensor["name"]!r}: binary_data_size {size} but only '
                                   f"{len(chunk)} bytes left in the body")
            offset += size
        tensors.append(InferInput(tensor["name"], tensor["shape"], tensor["datatype"],
                                  data=tensor.get("data"), parameters=parameters))
        raw.append(chunk)
    if offset != len(body):
        raise InvalidInput(f"{len(body) - offset} bytes after the last binary input")
    outputs = header.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str)
            and isinstance(o.get("parameters") or {}, dict) for o in outputs)):
        raise InvalidInput('"outputs" must be a list of objects with a "name" (and object "parameters")')
    parameters = header.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput('"parameters" must be an object')
    if header.get("id") is not None and not isinstance(header["id"], str):
        raise InvalidInput('"id" must be a string')
    return InferRequest(model_name, tensors, request_id=header.get("id"),
                        raw_inputs=raw if any(c is not None for c in raw) else None,
                        parameters=parameters,
                        request_outputs=[RequestedOutput(o["name"], o.get("parameters"))
                                         for o in outputs] if outputs else None)


class OpenSetDataPlane(DataPlane):
    """kserve's data plane with a decoder that answers every malformed body with InvalidInput."""

    def decode(self, body, headers, protocol_version: str = PredictorProtocol.REST_V1.value,
               model_name: str | None = None):
        try:
            if isinstance(body, bytes) and protocol_version.lower() == PredictorProtocol.REST_V2.value:
                return binary_request(body, headers or {}, model_name), {}
            return super().decode(body, headers, protocol_version, model_name)
        except InvalidInput:
            raise
        except (ValueError, TypeError, KeyError, InferenceError) as error:
            raise InvalidInput(f"malformed inference request: {error}") from None

    async def model_metadata(self, model_name: str) -> dict:
        metadata = await super().model_metadata(model_name)
        model = self.get_model_from_registry(model_name)
        return {**metadata, "platform": "onnxruntime",
                "versions": [model.predictor.info.model_version]}


async def _validation_error(request, error: RequestValidationError) -> ORJSONResponse:
    """FastAPI's 422 {"detail": [...]} for a body that is not an InferenceRequest -> 400."""
    count_bad_request(request.path_params.get("model_name"))
    first = error.errors()[0] if error.errors() else {}
    if first.get("type") == "json_invalid":
        detail = "the body is not valid JSON"
    else:
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid")
    return ORJSONResponse({"error": f"not an OIP v2 inference request ({detail})", "code": "bad_request"},
                          status_code=400)


async def _invalid_input(request, error: InvalidInput) -> ORJSONResponse:
    """400 {"error", "code"}: the code of the InputError behind it, as on the TorchServe front."""
    count_bad_request(request.path_params.get("model_name"))
    return ORJSONResponse({"error": error.reason, "code": getattr(error, "code", "bad_request")},
                          status_code=400)


async def _model_not_found(_request, error: ModelNotFound) -> ORJSONResponse:
    """404 without kserve's traceback in the log (a client's typo is not a server error)."""
    return ORJSONResponse({"error": str(error), "code": "model_not_found"}, status_code=404)


async def _not_served(_request, error: NotImplementedError) -> ORJSONResponse:
    """kserve's 501 for what this server does not offer (model versions, explain, repository
    load/unload) -> 404/403 with a JSON error: asking for it is the client's mistake."""
    if isinstance(error, RepositoryLocked):
        return ORJSONResponse({"error": str(error), "code": "forbidden"}, status_code=403)
    return ORJSONResponse({"error": f"not served here: {error}", "code": "not_found"}, status_code=404)


async def _http_error(request, error: StarletteHTTPException) -> ORJSONResponse:
    """FastAPI's own {"detail"} errors (unknown route, wrong method, undecodable body) as
    {"error", "code"}, same status; a body cut off by BodyLimit (FastAPI wraps whatever fails
    while it reads a body in a 400) as its 413."""
    if isinstance(error.__cause__, BodyTooLarge):
        return await _body_too_large(request, error.__cause__)
    return ORJSONResponse({"error": str(error.detail), "code": "bad_request" if error.status_code == 400
                           else "not_found" if error.status_code == 404 else "http_error"},
                          status_code=error.status_code, headers=getattr(error, "headers", None))


class RepositoryLocked(NotImplementedError):
    """Model load/unload through the API: off (the one model this server started with)."""


class ReadOnlyRepository(ModelRepositoryExtension):
    """kserve's model repository extension without load/unload: with it, any client could
    unload the model (every call 404 after) or "load" it (nothing loads)."""

    async def load(self, model_name: str) -> None:
        raise RepositoryLocked("model load/unload is off: this server serves the model it started with")

    async def unload(self, model_name: str) -> None:
        raise RepositoryLocked("model load/unload is off: this server serves the model it started with")


class BodyTooLarge(Exception):
    """A body sent without Content-Length (chunked) grew past the limit while it was read."""


class BodyLimit:
    """ASGI middleware: a request whose Content-Length exceeds `limit` bytes gets 413 with a
    JSON error before its body is read; a body without one (chunked) is counted as it arrives
    and refused with 413 once past the limit (BodyTooLarge, answered by `_body_too_large`)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or ()).get(b"content-length")
        refusal = None
        if length is not None and not length.isdigit():
            refusal = (400, "bad Content-Length header", "bad_request")
        elif length is not None and int(length) > self.limit:
            refusal = (413, f"body of {int(length)} bytes; at most {self.limit}", "too_large")
        if refusal:
            status, message, code = refusal
            response = ORJSONResponse({"error": message, "code": code}, status_code=status)
            await response(scope, receive, send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(f"body over {self.limit} bytes")
            return message

        await self.app(scope, counted if length is None else receive, send)


async def _body_too_large(_request, error: BodyTooLarge) -> ORJSONResponse:
    return ORJSONResponse({"error": str(error), "code": "too_large"}, status_code=413)


class ClientErrorLogFilter(logging.Filter):
    """Drops kserve's gRPC log lines with a traceback for a client's mistake (a request this
    server refused with a code, an unknown model, the locked repository): one bad request must
    not write 20 lines of log. Server-side failures still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        client = isinstance(error, (ModelNotFound, RepositoryLocked)) or (
            isinstance(error, InvalidInput) and hasattr(error, "code"))
        return not (record.filename == "interceptors.py" and client)


class OpenSetRESTServer(RESTServer):
    """kserve's REST server bound to `host`, answering client mistakes 400 {"error", "code"}."""

    def __init__(self, host: str, max_body: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = host
        self.max_body = max_body

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        app.add_middleware(BodyLimit, limit=self.max_body)

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(InvalidInput, _invalid_input)
        app.add_exception_handler(ModelNotFound, _model_not_found)
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(NotImplementedError, _not_served)
        app.add_exception_handler(StarletteHTTPException, _http_error)
        app.add_exception_handler(BodyTooLarge, _body_too_large)


class OpenSetModelServer(ModelServer):
    """A single-process kserve ModelServer whose REST server binds `host`."""

    def __init__(self, host: str, http_port: int, grpc_port: int | None = None,
                 max_body: int = MAX_BODY_BYTES):
        super().__init__(http_port=http_port, grpc_port=grpc_port or 0, workers=1,
                         enable_grpc=grpc_port is not None, enable_docs_url=False,
                         enable_latency_logging=False)
        self.host, self.max_body = host, max_body
        self.dataplane = OpenSetDataPlane(model_registry=self.registered_models)
        self.model_repository_extension = ReadOnlyRepository(model_registry=self.registered_models)
        # kserve logs up to three lines per request (access, wall and cpu time; gRPC: the method)
        # and a traceback per gRPC client error: keep warnings and our own faults only
        for name in ("uvicorn.access", "kserve.trace", "kserve"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("kserve").addFilter(ClientErrorLogFilter())

    def start(self, models: list) -> None:
        """ModelServer.start for one worker, with the REST host set before uvicorn binds."""
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = OpenSetRESTServer(self.host, self.max_body, FASTAPI_APP_IMPORT_STRING,
                                              self.dataplane,
                                              self.model_repository_extension, self.http_port,
                                              grace_period=self.grace_period, event_loop=self.event_loop,
                                              timeout_keep_alive=self.timeout_keep_alive)
        self.servers.append(self._rest_server.start())
        if self.enable_grpc:
            self._grpc_server = GRPCServer(self.grpc_port, self.dataplane,
                                           self.model_repository_extension,
                                           kwargs={"grpc_max_send_message_length": 64 << 20,
                                                   "grpc_max_receive_message_length": 64 << 20},
                                           grace_period=self.grace_period)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def run(args: argparse.Namespace) -> None:
    model = OpenSetModel(args.name, args.model, threads=args.threads, max_batch=args.max_batch,
                         batch_delay=args.batch_delay_ms / 1000)
    model.load()
    check_ports(args)
    OpenSetModelServer(args.host, args.http_port, args.grpc_port,
                       max_body=int(args.max_body_mb * (1 << 20))).start([model])


def check_ports(args: argparse.Namespace) -> None:
    """The REST address, and the gRPC port on all interfaces (where kserve binds it), are free."""
    check_port_free(args.host, args.http_port)
    if args.grpc_port is not None:
        check_port_free("::" if _ipv6_works() else "0.0.0.0", args.grpc_port)


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::", 0))
        return True
    except OSError:
        return False


def check_port_free(host: str, port: int) -> None:
    """UserError naming the address when something already listens there (the probe binds
    with SO_REUSEADDR, as uvicorn and gRPC do)."""
    if not port_is_free(host, port):
        raise UserError(f"{host}:{port} is not free; stop what uses it or pick another port "
                        "(--http-port / --grpc-port, or `make serve-kserve KSERVE_PORT=...`)")


def wait_until_ready(url: str, name: str, process: subprocess.Popen, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise UserError(f"the KServe server exited (code {process.returncode}); "
                            f"last lines of {LOG_FILE}:\n{_tail(LOG_FILE)}")
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{name}/ready", timeout=2) as response:
                if json.loads(response.read()).get("ready"):
                    return time.perf_counter() - started
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.25)
    raise UserError(f"the KServe server at {url} was not ready after {timeout:.0f} s (see {LOG_FILE})")


def _tail(path: Path, lines: int = 5) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def start(args: argparse.Namespace) -> int:
    """Start `run` in the background (pid in logs/kserve.pid), wait until the model is ready."""
    running = _our_server()
    if running:
        raise UserError(f"a KServe server is already running (pid {running}); "
                        "stop it with `make stop-kserve`")
    load_model(args.model)  # ModelFileError (one line) before anything starts
    check_ports(args)
    LOG_FILE.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "handlers.kserve_server", "run", "--model", args.model,
               "--name", args.name, "--host", args.host, "--http-port", str(args.http_port),
               "--threads", str(args.threads), "--max-batch", str(args.max_batch),
               "--batch-delay-ms", str(args.batch_delay_ms), "--max-body-mb", str(args.max_body_mb)]
    if args.grpc_port:
        command += ["--grpc-port", str(args.grpc_port)]
    with open(LOG_FILE, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    PID_FILE.write_text(str(process.pid))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)  # where to call it
    url = f"http://{f'[{host}]' if ':' in host else host}:{args.http_port}"
    try:
        seconds = wait_until_ready(url, args.name, process, args.timeout)
    except UserError:
        _terminate(process.pid, 10)
        PID_FILE.unlink(missing_ok=True)
        raise
    print(f"KServe (OIP v2) ready after {seconds:.1f} s at {url}, model {args.name!r}")
    print("try:")
    print(f"  curl {url}/v2/models/{args.name}")
    print(f"  curl -H 'Content-Type: application/json' -d '{{\"inputs\": [{{\"name\": \"image_bytes\", "
          f"\"shape\": [1], \"datatype\": \"BYTES\", \"data\": [\"'$(base64 -w0 digit.png)'\"]}}]}}' "
          f"{url}/v2/models/{args.name}/infer")
    print(f"  curl -s {url}/metrics | grep openset_")
    print("stop with: make stop-kserve")
    return 0


def _our_server() -> int:
    """The pid in logs/kserve.pid if that process is still this server (not a reused pid); 0."""
    try:
        pid = int(PID_FILE.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):  # no pid file, not a number, no such process
        return 0
    return pid if b"handlers.kserve_server" in command and _alive(pid) else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return pid > 0


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM (uvicorn finishes requests in flight), then SIGKILL after `timeout` s."""
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def stop() -> int:
    pid = _our_server()
    stopped = pid > 0 and _terminate(pid, 30)
    PID_FILE.unlink(missing_ok=True)
    print("KServe server stopped" if stopped else "no KServe server was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m handlers.kserve_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "start", "stop"])
    parser.add_argument("--model", help="the contract .onnx to serve (run, start)")
    parser.add_argument("--name", default="opensetmnist", help="model name in the URLs")
    parser.add_argument("--host", default="127.0.0.1", help="REST address to bind (a pod: 0.0.0.0)")
    parser.add_argument("--http-port", type=int, default=8085)
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also serve OIP v2 over gRPC here (binds all interfaces)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="most images in one onnxruntime batch of concurrent requests")
    parser.add_argument("--batch-delay-ms", type=float, default=0.0,
                        help="how long a batch waits for more requests (0: takes what is queued)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / (1 << 20),
                        help="larger request bodies are answered 413")
    parser.add_argument("--timeout", type=float, default=60, help="start: seconds to wait for ready")
    args = parser.parse_args(argv)
    if args.action == "stop":
        return stop()
    if not args.model:
        parser.error(f"{args.action} needs --model MODEL.onnx")
    for port in (args.http_port, args.grpc_port):
        if port is not None and not 0 < port < 65536:
            parser.error(f"port {port} is not in 1..65535")
    if args.grpc_port == args.http_port:
        parser.error("--grpc-port and --http-port must differ")
    if args.threads < 1 or args.max_batch < 1:
        parser.error("--threads and --max-batch must be at least 1")
    if not 0 <= args.batch_delay_ms <= 1000:
        parser.error("--batch-delay-ms must be in 0..1000")
    if not args.max_body_mb > 0:
        parser.error("--max-body-mb must be positive")
    try:
        if args.action == "start":
            return start(args)
        run(args)
    except (UserError, ModelFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mixed open-set traffic for a running `make serve` (locust).

    locust -f loadtest/locustfile.py --headless -u 16 -r 8 -t 60s --host http://127.0.0.1:8080 \
        --mix known=70,unknown=25,bad=5 --max-fail-ratio 0 --max-p95-ms 200

Known and unknown digits are real mnist5k images of the served run's known / unknown classes
(read from --run-dir's metrics.json), sent as PNG bytes; "bad" requests send garbage bytes and
count as a success only when the server answers 400 with a JSON error. The token comes from
TorchServe's key_file.json.

Like any client of the service, the user tries again an answer of 503 (worker busy or
restarting), 507 or 500 "Worker died." / "Worker scaled down." (the worker holding the batch
went away) or no answer at all (connection refused or reset), up to --retries times with
doubling, jittered waits (0.1 s, at most 1 s; see loadtest/traffic.py: retry_wait). Each such
attempt is reported as a success under its own name, e.g. `known digit: 507 retried`, so the
report counts the retries while the failure ratio counts only the requests still failing after
the last one. At the end the process exits non-zero when the failure ratio or the p95 latency
(over every attempt) is above the thresholds given.
"""
from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from pathlib import Path

from locust import HttpUser, between, events, task

from handlers.server import read_inference_key
from loadtest.traffic import NO_ANSWER, digit_pngs, parse_mix, pick, retry_wait


@events.init_command_line_parser.add_listener
def _arguments(parser):
    parser.add_argument("--mix", default="known=70,unknown=25,bad=5", help="traffic mix")
    parser.add_argument("--run-dir", default="runs/default", help="the served model's run")
    parser.add_argument("--key-file", default="key_file.json", help="TorchServe token file")
    parser.add_argument("--model-name", default="opensetmnist")
    parser.add_argument("--retries", type=int, default=3,
                        help="tries again of a 503, 507, worker-gone 500 or connection error (0: none)")
    parser.add_argument("--max-fail-ratio", type=float, default=0.0)
    parser.add_argument("--max-p95-ms", type=float, default=float("inf"))


STATE: dict = {}


@events.init.add_listener
def _prepare(environment, **_):
    options = environment.parsed_options
    if options is None:  # imported by tests, not run by locust
        return
    STATE["mix"] = parse_mix(options.mix)
    STATE["images"] = digit_pngs(Path(options.run_dir))
    STATE["token"] = read_inference_key(Path(options.key_file))
    STATE["path"] = f"/predictions/{options.model_name}"
    STATE["retries"] = options.retries


@events.quitting.add_listener
def _verdict(environment, **_):
    options, stats = environment.parsed_options, environment.stats.total
    p95 = stats.get_response_time_percentile(0.95) or 0.0
    too_many_failures = stats.fail_ratio > options.max_fail_ratio
    too_slow = p95 > options.max_p95_ms
    print(f"verdict: {stats.num_requests} requests, failure ratio {stats.fail_ratio:.4f} "
          f"(max {options.max_fail_ratio}), p95 {p95:.0f} ms (max {options.max_p95_ms:g})")
    if too_many_failures or too_slow:
        environment.process_exit_code = 1


def bad_input_problem(response) -> str | None:
    """Why a 'bad' request's final answer is a failure: anything but 400 not_an_image."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        code = None
    if response.status_code == 400 and code == "not_an_image":
        return None
    return f"expected 400 not_an_image, got {response.status_code} {code}"


def digit_problem(response) -> str | None:
    """Why a digit's final answer is a failure: no answer, or one without an unknown_score."""
    if response.status_code == NO_ANSWER:
        return f"no answer ({response.error})"
    try:
        ok = response.status_code == 200 and "unknown_score" in response.json()
    except ValueError:
        ok = False
    return None if ok else f"status {response.status_code} without an unknown_score"


class OpenSetUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self):
        if STATE.get("token"):
            self.client.headers["Authorization"] = f"Bearer {STATE['token']}"

    def send(self, name: str, body: bytes, content_type: str,
             problem: Callable[[object], str | None]) -> None:
        """POST until the answer is final. A retried attempt is a success under
        `{name}: {status} retried`; the final one is reported under `name`, failed when
        `problem` says why."""
        for retries_done in itertools.count():
            with self.client.post(STATE["path"], data=body, headers={"Content-Type": content_type},
                                  name=name, catch_response=True) as response:
                wait = retry_wait(response.status_code, retries_done, STATE["retries"],
                                  text=response.text or "")
                if wait is not None:
                    response.request_meta["name"] = f"{name}: {response.status_code} retried"
                    response.success()
                elif (failure := problem(response)) is not None:
                    response.failure(failure)
                else:
                    response.success()
            if wait is None:
                return
            time.sleep(wait)  # gevent's sleep: locust has monkey-patched the process

    @task
    def predict(self):
        kind = pick(STATE["mix"])
        if kind == "bad":
            self.send("bad input (expect 400)", b"\x00 not an image", "application/octet-stream",
                      bad_input_problem)
        else:
            self.send(f"{kind} digit", random.choice(STATE["images"][kind]), "image/png",
                      digit_problem)

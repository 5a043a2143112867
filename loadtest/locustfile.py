"""Mixed open-set traffic for a running `make serve` (locust).

    locust -f loadtest/locustfile.py --headless -u 16 -r 8 -t 60s --host http://127.0.0.1:8080 \
        --mix known=70,unknown=25,bad=5 --max-fail-ratio 0 --max-p95-ms 200

Known and unknown digits are real mnist5k images of the served run's known / unknown classes
(read from --run-dir's metrics.json), sent as PNG bytes; "bad" requests send garbage bytes and
count as a success only when the server answers 400 with a JSON error. The token comes from
TorchServe's key_file.json. At the end the process exits non-zero when the failure ratio or
the p95 latency is above the thresholds given.
"""
from __future__ import annotations

import random
from pathlib import Path

from locust import HttpUser, between, events, task

from handlers.server import read_inference_key
from loadtest.traffic import digit_pngs, parse_mix, pick


@events.init_command_line_parser.add_listener
def _arguments(parser):
    parser.add_argument("--mix", default="known=70,unknown=25,bad=5", help="traffic mix")
    parser.add_argument("--run-dir", default="runs/default", help="the served model's run")
    parser.add_argument("--key-file", default="key_file.json", help="TorchServe token file")
    parser.add_argument("--model-name", default="opensetmnist")
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


class OpenSetUser(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self):
        if STATE.get("token"):
            self.client.headers["Authorization"] = f"Bearer {STATE['token']}"

    @task
    def predict(self):
        kind = pick(STATE["mix"])
        if kind == "bad":
            with self.client.post(STATE["path"], data=b"\x00 not an image",
                                  headers={"Content-Type": "application/octet-stream"},
                                  name="bad input (expect 400)", catch_response=True) as response:
                try:
                    code = response.json().get("code")
                except (ValueError, AttributeError):
                    code = None
                if response.status_code == 400 and code == "not_an_image":
                    response.success()
                else:
                    response.failure(f"expected 400 not_an_image, got {response.status_code} {code}")
            return
        body = random.choice(STATE["images"][kind])
        with self.client.post(STATE["path"], data=body, headers={"Content-Type": "image/png"},
                              name=f"{kind} digit", catch_response=True) as response:
            try:
                ok = response.status_code == 200 and "unknown_score" in response.json()
            except ValueError:
                ok = False
            if not ok:
                response.failure(f"status {response.status_code} without an unknown_score")

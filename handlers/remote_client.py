"""Scores images through a running TorchServe: one multi-image JSON request per batch.

Encoded files go as base64 `image`s, pixel arrays as 0..255 integer `pixels` (3-4 characters
each instead of ~20 for floats).

Inference is idempotent, so a 503 (worker busy or restarting), a 507 (the worker holding the
batch died; the frontend starts a new one) and an unreachable or reset connection (a server
stopping or restarting) are retried, with exponential backoff and jitter; any other HTTP status
is final. A batch that fails gets its error text once per image (`server answered 507: ...`,
`server unreachable (...)`).
"""
from __future__ import annotations

import base64
import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import numpy as np

RETRIED_STATUSES = frozenset({503, 507})  # worker busy or restarting; its worker died mid-batch


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before retry `attempt` (0, 1, ...): base_s x 2^attempt, at most cap_s, times a
    uniform jitter in [0.5, 1] so that clients refused together do not come back together."""
    return min(cap_s, base_s * 2 ** attempt) * rng.uniform(0.5, 1.0)


def request_body(payloads: list[bytes | np.ndarray]) -> bytes:
    """A JSON list request: encoded bytes as base64 `image`, C x H x W [0, 1] as `pixels`."""
    return json.dumps([{"image": base64.b64encode(p).decode()} if isinstance(p, bytes)
                       else {"pixels": np.rint(p * 255).astype(np.uint8).tolist()}
                       for p in payloads]).encode()


class RemoteScorer:
    """`scorer(payloads)` -> per image the server's answer (a dict) or its request's error text.

    A failed request is tried again up to `retries` times, waiting `backoff_s(attempt, ...)`
    between tries; `rng` and `sleep` are there so that tests can seed and skip the waits."""

    def __init__(self, url: str, model: str, token: str | None, retries: int = 3,
                 timeout: float = 60.0, backoff_base_s: float = 0.1, backoff_cap_s: float = 2.0, *,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep):
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.token, self.retries, self.timeout = token, retries, timeout
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.rng, self.sleep = rng or random.Random(), sleep

    def post(self, body: bytes) -> tuple[object, str | None, bool]:
        """One attempt: (decoded JSON answer, None, _) or (None, error text, worth a retry)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()[:200].decode(errors="replace")
            return None, f"server answered {exc.code}: {text}", exc.code in RETRIED_STATUSES
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            return None, f"server unreachable ({exc})", True
        try:
            return json.loads(data), None, False
        except ValueError:
            return None, "server answered 200 with a body that is not JSON", False

    def __call__(self, payloads: list[bytes | np.ndarray]) -> list[dict | str]:
        body = request_body(payloads)
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(backoff_s(attempt - 1, self.backoff_base_s, self.backoff_cap_s, self.rng))
            answers, error, retry = self.post(body)
            if not retry:
                break
        if error is None and not (isinstance(answers, list) and len(answers) == len(payloads)
                                  and all(isinstance(answer, dict) for answer in answers)):
            error = f"server answered 200 without a list of {len(payloads)} answers"
        return [error] * len(payloads) if error else answers

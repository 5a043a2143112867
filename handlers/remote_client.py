"""Scores images through a running TorchServe: multi-image JSON requests, each small enough for
the server's `max_request_size`.

Encoded files go as base64 `image`s, pixel arrays as 0..255 integer `pixels` (3-4 characters
each instead of ~20 for floats). A batch whose JSON is over `max_body_bytes` (TorchServe's
`max_request_size`, 6553500 bytes unless config.properties says otherwise) goes as several
requests, filled greedily in input order. An image whose request alone would be over it gets an
error text and is not sent: TorchServe would refuse it with a 413, or, since urllib writes the
whole body before reading the answer, by resetting the connection, which reads as unreachable
(so a server with a smaller limit needs that limit here).

Inference is idempotent, so a 503 (worker busy or restarting), a 507 or a 500 "Worker died." /
"Worker scaled down." (the worker holding the batch went away) and an unreachable or reset
connection (a server stopping or restarting) are retried, with exponential backoff and jitter;
any other HTTP status, 413 included, is final. A request that fails gets its error text once
per image it carried (`server answered 507: ...`, `server unreachable (...)`).
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

MAX_REQUEST_SIZE = 6_553_500  # TorchServe's default max_request_size, in bytes of one body
RETRIED_STATUSES = frozenset({503, 507})  # worker busy or restarting; its worker died mid-batch
# TorchServe's 500 texts for the requests of a batch whose worker went away: killed, or
# stopped when its model version was unregistered
WORKER_GONE = ("Worker died", "Worker scaled down")


def worth_retrying(status: int, text: str = "") -> bool:
    """An answer that a worker restart or a rollout explains: 503, 507, or TorchServe's 500
    "Worker died." (the batch of a killed worker; 507 for the same, depending on timing) /
    "Worker scaled down." (a batch held by a version being unregistered). The handler itself
    never answers 500."""
    return status in RETRIED_STATUSES or (status == 500 and any(text_ in text for text_ in WORKER_GONE))


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The wait before retry `attempt` (0, 1, ...): base_s x 2^attempt, at most cap_s, times a
    uniform jitter in [0.5, 1] so that clients refused together do not come back together."""
    return min(cap_s, base_s * 2 ** attempt) * rng.uniform(0.5, 1.0)


def encoded(payload: bytes | np.ndarray) -> bytes:
    """One image of a request: encoded bytes as base64 `image`, C x H x W [0, 1] as `pixels`."""
    item = ({"image": base64.b64encode(payload).decode()} if isinstance(payload, bytes)
            else {"pixels": np.rint(payload * 255).astype(np.uint8).tolist()})
    return json.dumps(item).encode()


def request_body(items: list[bytes]) -> bytes:
    """The JSON list of encoded images, with json.dumps' own separators."""
    return b"[" + b", ".join(items) + b"]"


def split_by_size(sizes: list[int], max_body_bytes: int) -> tuple[list[list[int]], dict[int, str]]:
    """Positions of the encoded images grouped, in order and greedily, into request bodies of at
    most `max_body_bytes`; and the error text of each image too large for a request of its own."""
    groups: list[list[int]] = []
    too_large: dict[int, str] = {}
    body = 0
    for i, size in enumerate(sizes):
        alone = len(b"[]") + size
        if alone > max_body_bytes:
            too_large[i] = (f"image body of {alone} bytes is over the server's max_request_size "
                            f"({max_body_bytes} bytes)")
        elif groups and body + len(b", ") + size <= max_body_bytes:
            groups[-1].append(i)
            body += len(b", ") + size
        else:
            groups.append([i])
            body = alone
    return groups, too_large


class RemoteScorer:
    """`scorer(payloads)` -> per image the server's answer (a dict) or its request's error text.

    A failed request is tried again up to `retries` times, waiting `backoff_s(attempt, ...)`
    between tries; `rng` and `sleep` are there so that tests can seed and skip the waits."""

    def __init__(self, url: str, model: str, token: str | None, retries: int = 3,
                 timeout: float = 60.0, max_body_bytes: int = MAX_REQUEST_SIZE,
                 backoff_base_s: float = 0.1, backoff_cap_s: float = 2.0, *,
                 rng: random.Random | None = None, sleep: Callable[[float], None] = time.sleep):
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.token, self.retries, self.timeout = token, retries, timeout
        self.max_body_bytes = max_body_bytes
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
            return None, f"server answered {exc.code}: {text}", worth_retrying(exc.code, text)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            return None, f"server unreachable ({exc})", True
        try:
            return json.loads(data), None, False
        except ValueError:
            return None, "server answered 200 with a body that is not JSON", False

    def answers(self, items: list[bytes]) -> list[dict | str]:
        """One request (retried while worth it): an answer per image, or its error per image."""
        body = request_body(items)
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(backoff_s(attempt - 1, self.backoff_base_s, self.backoff_cap_s, self.rng))
            answers, error, retry = self.post(body)
            if not retry:
                break
        if error is None and not (isinstance(answers, list) and len(answers) == len(items)
                                  and all(isinstance(answer, dict) for answer in answers)):
            error = f"server answered 200 without a list of {len(items)} answers"
        return [error] * len(items) if error else answers

    def __call__(self, payloads: list[bytes | np.ndarray]) -> list[dict | str]:
        items = [encoded(payload) for payload in payloads]
        groups, answers = split_by_size([len(item) for item in items], self.max_body_bytes)
        for group in groups:
            answers.update(zip(group, self.answers([items[i] for i in group])))
        return [answers[i] for i in range(len(payloads))]

"""Scores images through a running TorchServe: one multi-image JSON request per batch.

Encoded files go as base64 `image`s, pixel arrays as 0..255 integer `pixels` (3-4 characters
each instead of ~20 for floats). A 503 (worker busy or restarting) and an unreachable server
are retried with backoff; any other HTTP error is final. A batch that fails gets its error
text once per image (`server answered 500: ...`, `server unreachable (...)`).
"""
from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request

import numpy as np


def request_body(payloads: list[bytes | np.ndarray]) -> bytes:
    """A JSON list request: encoded bytes as base64 `image`, C x H x W [0, 1] as `pixels`."""
    return json.dumps([{"image": base64.b64encode(p).decode()} if isinstance(p, bytes)
                       else {"pixels": np.rint(p * 255).astype(np.uint8).tolist()}
                       for p in payloads]).encode()


class RemoteScorer:
    """`scorer(payloads)` -> per image the server's answer (a dict) or the batch's error text."""

    def __init__(self, url: str, model: str, token: str | None, retries: int = 3,
                 timeout: float = 60.0):
        self.endpoint = f"{url.rstrip('/')}/predictions/{model}"
        self.token, self.retries, self.timeout = token, retries, timeout

    def post(self, body: bytes) -> tuple[object, str | None, bool]:
        """One attempt: (decoded JSON answer, None, _) or (None, error text, worth a retry)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read()), None, False
        except urllib.error.HTTPError as exc:
            text = exc.read()[:200].decode(errors="replace")
            return None, f"server answered {exc.code}: {text}", exc.code == 503
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            return None, f"server unreachable ({exc})", True

    def __call__(self, payloads: list[bytes | np.ndarray]) -> list[dict | str]:
        body = request_body(payloads)
        for attempt in range(self.retries + 1):
            answers, error, retry = self.post(body)
            if error is None or not retry:
                break
            if attempt < self.retries:
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        if error is None and not (isinstance(answers, list) and len(answers) == len(payloads)
                                  and all(isinstance(answer, dict) for answer in answers)):
            error = f"server answered 200 without a list of {len(payloads)} answers"
        return [error] * len(payloads) if error else answers

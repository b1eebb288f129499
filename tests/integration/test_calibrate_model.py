"""Calibration on the embedded model: converges, and c* reproduces its statistic when re-measured alone."""

import numpy as np
import pytest

from tl_isokl.calibrate import calibrate
from tl_isokl.errors import CalibrationError
from tl_isokl.kl import per_token_kl
from tl_isokl.rollout import rollout

WINDOW = 32



@pytest.fixture(scope="module")
def prompts(splits):
    return [q.prompt for q in splits.calibration[:6]]


@pytest.fixture(scope="module")
def result(model, vec, prompts):
    return calibrate(model, vec, prompts, window=WINDOW, target=1.0, stat="p95", tol=0.05)


def test_calibration_converges(result):
    assert result.converged
    assert abs(result.achieved - 1.0) <= 0.05
    assert result.rounds <= 4
    assert len(result.history) >= 5 and all(p.stats["n"] > 0 for p in result.history)


def test_c_star_reproduces_the_statistic_alone(model, vec, prompts, result):
    rolls = rollout(model, vec, prompts, [result.c_star] * len(prompts), window=WINDOW)
    pool = np.concatenate(per_token_kl(model, vec, rolls))
    assert np.percentile(pool, 95) == pytest.approx(result.achieved, abs=1e-4)


def test_history_is_serialisable_and_spread_is_reported(result):
    import json

    d = result.to_dict()
    json.dumps(d)
    assert "kl" not in d["history"][0] and len(d["per_prompt_c_star"]) == 6
    sp = result.spread()
    assert sp["not_bracketed"] + sum(c is not None for c in result.per_prompt_c_star) == 6


def test_unreachable_target_raises(model, vec, prompts):
    with pytest.raises(CalibrationError, match="never reached 1000.0 nats up to c_max=2"):
        calibrate(model, vec, prompts[:2], window=8, target=1000.0, c_max=2.0, c_init=1.0)

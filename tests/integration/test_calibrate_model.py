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
    # on the CPU, candidates="auto" is the sequential solver: one dose per round (this used to pin the fan's
    # <= 4 rounds of 5 doses; the fan is checked below)
    assert result.solver == "sequential" and result.rounds == len(result.history) == result.doses
    assert 2 <= result.doses <= 10 and all(p.stats["n"] > 0 for p in result.history)
    assert [p.round for p in result.history] == list(range(1, result.doses + 1))


def test_the_batched_fan_still_converges_in_few_rounds_and_agrees(model, vec, prompts, result):
    fan = calibrate(model, vec, prompts, window=WINDOW, target=1.0, stat="p95", tol=0.05, candidates=5)
    assert fan.converged and abs(fan.achieved - 1.0) <= 0.05
    assert fan.solver == "fan(5)" and fan.rounds <= 4 and fan.doses >= 5
    assert fan.doses > result.doses  # the point of the sequential solver on a CPU
    # both are within tolerance of the same first crossing; the doses differ by the curve's slope there
    assert fan.c_star == pytest.approx(result.c_star, rel=0.05)


def test_calibration_records_its_dose_response_shape(result):
    shape = result.shape()
    assert (result.low_dose_slope, result.leaves_quadratic_at, result.saturates_from, result.monotone) == (
        shape.low_dose_slope, shape.leaves_quadratic_at, shape.saturates_from, shape.monotone)
    assert result.low_dose_slope is not None and result.low_dose_slope > 1.5  # KL grows at least like c^2
    from tl_isokl.figures.dose_response import dose_response_plot

    fig = dose_response_plot(result.to_dict())
    assert fig.axes[0].get_xscale() == "log"


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

"""The iso-KL root finder on synthetic dose-response curves (no model): rounds, accuracy, refusal to guess."""

import math

import numpy as np
import pytest

from tl_isokl.calibrate import _crossing, _loglog_secant, kl_stats, parse_stat, solve
from tl_isokl.errors import CalibrationError, IsoKLError, IsoKLWarning


def run(curve, **kw):
    calls = []

    def evaluate(cs, rnd):
        calls.append(list(cs))
        return [curve(c) for c in cs]

    rnd, c, ok = solve(evaluate, **{"target": 1.0, "tol": 0.01, **kw})
    return rnd, c, ok, calls


def test_power_law_is_solved_in_two_rounds():
    # KL = a c^2 (small-dose law): the log-log secant through two bracketing points is exact
    a = 0.37
    rnd, c, ok, calls = run(lambda c: a * c * c)
    assert ok and rnd == 2
    assert c == pytest.approx(1 / math.sqrt(a), rel=1e-9)
    assert len(calls[0]) == 5  # one batched round = 5 doses


def test_saturating_curve_converges_within_tolerance_in_few_rounds():
    # c^2 growth, then a plateau at 4 nats (the shape Taimeskhanov et al. predict)
    curve = lambda c: 4.0 * (c * c) / (c * c + 9.0)  # noqa: E731
    rnd, c, ok, _ = run(curve)
    assert ok and rnd <= 4
    assert abs(curve(c) - 1.0) <= 0.01
    assert c == pytest.approx(math.sqrt(3.0), rel=0.02)  # exact root: 4c^2/(c^2+9) = 1 -> c = sqrt(3)


def test_target_far_outside_the_first_grid_moves_the_grid_outward():
    rnd, c, ok, calls = run(lambda c: 1e-6 * c * c)  # root at c = 1000
    assert ok
    assert c == pytest.approx(1000.0, rel=0.01)
    assert max(calls[1]) > max(calls[0])


def test_unreachable_target_raises_with_closest_values():
    with pytest.raises(CalibrationError, match=r"never reached 1.0 nats up to c_max=100.*c=100 -> stat=0.5"):
        run(lambda c: 0.5 * (1 - math.exp(-c)), c_max=100.0)


def test_target_below_c_min_raises():
    with pytest.raises(CalibrationError, match="already above"):
        run(lambda c: 5.0 + c, c_min=1e-3)


def test_not_converging_in_max_rounds_warns_and_says_so():
    # a step: no dose gives a value within tol of the target
    with pytest.warns(IsoKLWarning, match="did not reach"):
        rnd, c, ok, _ = run(lambda c: 0.5 if c < 1.3 else 1.5, max_rounds=3)
    assert not ok and rnd == 3


def test_loglog_secant_and_crossing_by_hand():
    # points (1, 0.25) and (4, 4): slope log(16)/log(4) = 2 -> c* = 1 * (1/0.25)^(1/2) = 2
    assert _loglog_secant(1.0, 0.25, 4.0, 4.0, 1.0) == pytest.approx(2.0)
    # zero KL at the lower point: fall back to KL ~ c^2 from the upper point: 4 * sqrt(1/4) = 2
    assert _loglog_secant(0.5, 0.0, 4.0, 4.0, 1.0) == pytest.approx(2.0)
    assert _crossing([1, 4, 8], [0.25, 4.0, 9.0], 1.0) == pytest.approx(2.0)
    assert _crossing([1, 4], [0.1, 0.2], 1.0) is None


def test_parse_stat_matches_numpy():
    x = np.random.default_rng(0).exponential(size=1000)
    assert parse_stat("p95")(x) == pytest.approx(np.percentile(x, 95))
    assert parse_stat("p99.9")(x) == pytest.approx(np.percentile(x, 99.9))
    assert parse_stat("max")(x) == x.max() and parse_stat("mean")(x) == pytest.approx(x.mean())
    for bad in ("p101", "q95", "median", ""):
        with pytest.raises(IsoKLError, match="unknown statistic"):
            parse_stat(bad)
    s = kl_stats(x)
    assert s["n"] == 1000 and s["p50"] == pytest.approx(np.median(x))
    assert math.isnan(kl_stats(np.zeros(0))["p95"])

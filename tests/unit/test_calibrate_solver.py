"""The iso-KL root finder on synthetic dose-response curves (no model): rounds, accuracy, refusal to guess."""

import math

import pytest

from tl_isokl.calibrate import _crossing, _loglog_secant, solve
from tl_isokl.errors import CalibrationError, IsoKLWarning


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


def test_non_monotone_curve_picks_the_first_crossing_not_a_later_branch():
    """KL rises through the target near c = 1, falls back (a mode switch) and crosses again near c = 8. The
    grid 0.25, 0.5, 1, 2, 4 samples c = 4 at 0.999 (closest to 1 of all) but that lies past the first crossing;
    c* must come from the bracket [0.5, 1] of the first crossing."""

    def curve(c):
        if c <= 1.5:
            return 1.1 * c * c  # first crossing at c = sqrt(1/1.1) = 0.9535
        return max(0.999 - 0.001 * (c - 4.0) ** 2, 0.0) if c < 6 else 0.2 * c

    rnd, c, ok, calls = run(curve, tol=0.01)
    assert 4.0 in calls[0]
    assert ok and c == pytest.approx(math.sqrt(1 / 1.1), rel=0.01)
    assert c < 1.5


def test_lowest_dose_above_target_moves_down_even_when_a_higher_dose_is_below():
    # above the target at the bottom of the first grid, below it above: the first crossing is further down
    curve = lambda c: 40.0 * c * c if c < 0.5 else 0.5  # noqa: E731  first crossing at c = sqrt(1/40) = 0.158
    rnd, c, ok, calls = run(curve, c_init=4.0)  # first grid 0.25 (-> 2.5, above), 1, 4, 16, 64 (-> 0.5, below)
    assert calls[0] == [0.25, 1.0, 4.0, 16.0, 64.0]
    assert min(calls[1]) < 0.25  # the grid moved down, towards the first crossing
    assert ok and c == pytest.approx(math.sqrt(1 / 40), rel=0.01)


def test_tolerance_is_relative_to_the_target():
    """target 0.01 with tol 0.05: 0.0157 (57% off) is not converged; |v - 0.01| <= 0.0005 is required."""
    curve = lambda c: 0.01 * c ** 2  # noqa: E731  root at c = 1
    calls = []

    def evaluate(cs, rnd):
        calls.append(list(cs))
        return [curve(c) for c in cs]

    # a first grid whose best point is 0.0157 (c = 1.2530) must not be accepted
    rnd, c, ok = solve(evaluate, target=0.01, tol=0.05, c_init=1.2530)
    assert ok and abs(curve(c) - 0.01) <= 0.05 * 0.01
    assert rnd >= 2 and c == pytest.approx(1.0, rel=0.03)
    # the old absolute rule would have stopped after round 1: every first-grid value is within 0.05 nats
    assert all(abs(curve(x) - 0.01) <= 0.05 for x in calls[0][:3])

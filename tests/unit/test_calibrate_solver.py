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


# ---- the sequential solver (candidates=1, calibrate's CPU default): same guarantees, far fewer doses ----------------

import numpy as np  # noqa: E402

from tl_isokl.calibrate import SEQUENTIAL_MAX_ROUNDS, first_crossing  # noqa: E402
from tl_isokl.errors import IsoKLError  # noqa: E402


def seq(curve, **kw):
    return run(curve, **{"candidates": 1, **kw})


def doses(calls):
    return sum(len(c) for c in calls)


def brute_force_band(curve, target=1.0, tol=0.01, lo=1e-3, hi=1e4, n=200_001):
    """The doses of the *first* upward crossing's branch whose value is within tol: [first dose >= target(1 - tol),
    first dose > target(1 + tol)), on a dense geometric grid."""
    cs = np.geomspace(lo, hi, n)
    vs = np.array([curve(c) for c in cs])
    first = int(np.argmax(vs >= target))
    assert vs[first] >= target, "the curve never reaches the target"
    a = first
    while a > 0 and vs[a - 1] >= target * (1 - tol):
        a -= 1
    b = first
    while b + 1 < n and vs[b + 1] <= target * (1 + tol) and vs[b + 1] >= vs[b] - 1e-12:
        b += 1
    return cs[max(a - 1, 0)], cs[min(b + 1, n - 1)]


def steep(c):  # c^2 at low dose, a steep sigmoid-like rise around c = 1.4, a plateau at 6 nats
    return 0.02 * c * c + 6.0 / (1 + math.exp(-12 * (math.log(c) - math.log(1.4))))


def later_branch(c):  # first crossing near 0.95, a dip below the target, a second crossing near 8
    if c <= 1.5:
        return 1.1 * c * c
    return max(0.999 - 0.001 * (c - 4.0) ** 2, 0.0) if c < 6 else 0.2 * c


CURVES = {
    "power law 0.37 c^2": lambda c: 0.37 * c * c,
    "power law 1e-6 c^2 (root 1000)": lambda c: 1e-6 * c * c,
    "power law 50 c^2 (root 0.14)": lambda c: 50.0 * c * c,
    "steep sigmoid-like": steep,
    "saturating 4c^2/(c^2+9)": lambda c: 4.0 * c * c / (c * c + 9.0),
    "c^4": lambda c: 0.05 * c ** 4,
}


@pytest.mark.parametrize("name", list(CURVES))
@pytest.mark.parametrize("c_init", [0.1, 1.0, 10.0])
def test_sequential_finds_the_brute_force_root_with_few_doses(name, c_init):
    curve = CURVES[name]
    rnd, c, ok, calls = seq(curve, c_init=c_init)
    a, b = brute_force_band(curve)
    assert ok and abs(curve(c) - 1.0) <= 0.01
    assert a <= c <= b, (a, c, b)
    assert all(len(x) == 1 for x in calls) and rnd == len(calls)  # one dose per round
    assert doses(calls) <= 9, calls


def test_sequential_spends_far_fewer_doses_than_the_fan():
    seq_total = fan_total = 0
    for curve in CURVES.values():
        for c_init in (0.1, 0.3, 1.0, 3.0, 10.0):
            seq_total += doses(seq(curve, c_init=c_init)[3])
            fan_total += doses(run(curve, c_init=c_init)[3])
    assert seq_total * 2.5 <= fan_total, (seq_total, fan_total)


def test_sequential_power_law_brackets_with_the_quadratic_law_in_two_doses():
    # 0.37 c^2 from c_init = 1: the c^2 extrapolation aims at 1.5 x target, the log-log secant is then exact
    rnd, c, ok, calls = seq(lambda c: 0.37 * c * c)
    assert calls[0] == [1.0] and calls[1][0] == pytest.approx(math.sqrt(1.5 / 0.37))
    assert ok and rnd == 3 and c == pytest.approx(1 / math.sqrt(0.37), rel=1e-9)


def test_sequential_non_monotone_curve_picks_the_first_crossing_not_a_later_branch():
    for c_init in (0.1, 1.0, 1.4):  # below it, just above it, on the way down from it
        rnd, c, ok, calls = seq(later_branch, c_init=c_init, tol=0.01)
        assert ok and c == pytest.approx(math.sqrt(1 / 1.1), rel=0.01), (c_init, calls)


def test_sequential_starting_inside_a_dip_past_the_first_crossing_cannot_see_it():
    """The documented difference: the fan's first grid reaches c_init / 16, the sequential search starts at
    c_init. From the dip (c_init = 4: 0.999 - within 1% of the target - sits on a later branch), the fan returns
    the first crossing; the sequential search returns the dip point, which is within tolerance of its sampled
    curve. Neither returns a point outside the tolerance."""
    rnd, c, ok, _ = run(later_branch, c_init=4.0, tol=0.01)
    assert ok and c == pytest.approx(math.sqrt(1 / 1.1), rel=0.01)
    rnd, c, ok, _ = seq(later_branch, c_init=4.0, tol=0.01)
    assert ok and c == 4.0 and abs(later_branch(c) - 1) <= 0.01


def test_sequential_unreachable_target_raises_with_closest_values():
    with pytest.raises(CalibrationError, match=r"never reached 1.0 nats up to c_max=100.*c=100 -> stat=0.5"):
        seq(lambda c: 0.5 * (1 - math.exp(-c)), c_max=100.0)
    with pytest.raises(CalibrationError, match=r"already above 1.0 nats at c_min=0.001.*c=0.001 -> stat=5"):
        seq(lambda c: 5.0 + c, c_min=1e-3)


def test_sequential_reaches_c_max_within_its_budget_on_a_flat_curve():
    # from c_init = 1 to c_max = 1e4 on a plateau: x2.2 (the c^2 law from one point), then the measured slope 0
    # is clamped to 0.5 and every step is the largest (x8): 7 doses, well inside the 16-dose budget
    calls = []

    def evaluate(cs, r):
        calls.append(cs)
        return [0.3 for _ in cs]

    with pytest.raises(CalibrationError, match="never reached 1.0 nats up to c_max=10000"):
        solve(evaluate, target=1.0, tol=0.01, candidates=1, c_max=1e4)
    assert len(calls) == 7 and calls[-1] == [1e4]


def test_sequential_lowest_dose_above_target_moves_down():
    curve = lambda c: 40.0 * c * c if c < 0.5 else 0.5  # noqa: E731  first crossing at c = sqrt(1/40) = 0.158
    rnd, c, ok, calls = seq(curve, c_init=0.4)  # 0.4 -> 6.4: above the target; the search moves down
    assert ok and c == pytest.approx(math.sqrt(1 / 40), rel=0.01) and doses(calls) <= 6


def test_sequential_nan_values_are_never_returned_and_cap_the_search():
    nan = float("nan")
    # NaN beyond c = 3 (a blow-up at large doses); root at 2 (0.25 c^2)
    curve = lambda c: 0.25 * c * c if c <= 3 else nan  # noqa: E731
    for c_init in (0.1, 1.0, 10.0):
        rnd, c, ok, calls = seq(curve, c_init=c_init)
        assert ok and c == pytest.approx(2.0, rel=0.01) and doses(calls) <= 9, (c_init, calls)
    # NaN at every dose: an error naming the statistic, never a dose
    with pytest.raises(CalibrationError, match="never finite"):
        seq(lambda c: nan)
    # NaN at isolated doses near the root: skipped, the crossing is still found
    rnd, c, ok, calls = seq(lambda c: nan if 1.5 < c < 1.7 else 0.25 * c * c, c_init=1.0)
    assert ok and c == pytest.approx(2.0, rel=0.01)


def test_sequential_step_curve_does_not_converge_and_says_so():
    with pytest.warns(IsoKLWarning, match="did not reach"):
        rnd, c, ok, calls = seq(lambda c: 0.5 if c < 1.3 else 1.5)
    assert not ok and rnd == SEQUENTIAL_MAX_ROUNDS == len(calls)
    assert c in (max(x[0] for x in calls if x[0] < 1.3), min(x[0] for x in calls if x[0] >= 1.3))
    # the bracket closed in on the step (bisection guard): the last doses straddle 1.3 within 0.1%
    lo, hi = first_crossing({x[0]: (0.5 if x[0] < 1.3 else 1.5) for x in calls}, 1.0)
    assert hi[0] / lo[0] < 1.001


def test_sequential_tolerance_is_relative():
    rnd, c, ok = solve(lambda cs, r: [0.01 * x * x for x in cs], target=0.01, tol=0.05, c_init=1.2530,
                       candidates=1)
    assert ok and abs(0.01 * c * c - 0.01) <= 0.05 * 0.01 and rnd >= 2


def test_sequential_zero_values_at_low_doses_still_bracket():
    # nothing measurable below c = 0.5 (e.g. a hard gate that never opens), then 0.5 (c - 0.5)^2 ... root at 1.914
    curve = lambda c: 0.0 if c <= 0.5 else 0.5 * (c - 0.5) ** 2  # noqa: E731
    rnd, c, ok, calls = seq(curve, c_init=0.1)
    assert ok and c == pytest.approx(0.5 + math.sqrt(2), rel=0.01) and doses(calls) <= 10


def test_bad_candidates_and_rounds_are_refused():
    with pytest.raises(IsoKLError, match="candidates"):
        seq(lambda c: c, candidates=0)
    with pytest.raises(IsoKLError, match="max_rounds"):
        seq(lambda c: c, max_rounds=0)


def test_auto_candidates_is_sequential_on_cpu_and_the_fan_on_an_accelerator():
    from types import SimpleNamespace

    import torch

    from tl_isokl.calibrate import auto_candidates

    dev = lambda d: SimpleNamespace(cfg=SimpleNamespace(device=d))  # noqa: E731
    assert auto_candidates(dev("cpu")) == 1 and auto_candidates(dev(torch.device("cpu"))) == 1
    assert auto_candidates(dev("cuda:0")) == 5 and auto_candidates(dev(torch.device("cuda", 1))) == 5
    assert auto_candidates(dev("mps")) == 5

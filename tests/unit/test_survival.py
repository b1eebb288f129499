"""Kaplan-Meier, log-rank and KL summaries against hand-worked numbers, brute force and scipy."""

import math

import numpy as np
import pytest
from helpers_runs import synthetic_trajectories, traj
from scipy import stats

from tl_isokl.errors import IsoKLError
from tl_isokl.records import Fate, fate
from tl_isokl.survival import (
    kaplan_meier,
    kl_summary,
    km_curves,
    logrank,
    survival_table,
)
from tl_isokl.figures.series import rolling_mean, running_median

Z95 = stats.norm.ppf(0.975)


def dead(*ts):
    return [Fate(died=True, time=t, eos=False) for t in ts]


def cens(*ts, eos=True):
    return [Fate(died=False, time=t, eos=eos) for t in ts]


def brute_km(fs, t):
    """Product-limit by definition: walk the death times <= t; at each, n = subjects with time >= it (dead ones
    left at their death, censored ones after their censoring), d = deaths exactly then."""
    s = 1.0
    for u in sorted({f.time for f in fs if f.died and f.time <= t}):
        n = sum(f.time >= u for f in fs)
        d = sum(f.died and f.time == u for f in fs)
        s *= 1 - d / n
    return s


# ---------------------------------------------------------------------------------------------- KM


def test_hand_worked_example_with_censoring():
    # deaths at 2 and 4; censored at 3, 4 (tie with a death: still at risk at 4) and 6. n = 5.
    #   t=2: at risk {2,3,4,4,6} = 5, d = 1   -> S = 4/5            = 0.8
    #   t=3: censoring only                    -> S stays 0.8
    #   t=4: at risk {4,4,6} = 3, d = 1        -> S = 0.8 * 2/3      = 0.53333
    #   t=6: censoring only                    -> S_end = 0.53333 > 0.5: median not reached
    # Greenwood at 4: S^2 (1/(5*4) + 1/(3*2)) = 0.284444 * 0.216667 = 0.061630 -> se 0.248254
    # linear band at 4: 0.53333 -/+ 1.95996 * 0.248254 = [0.04677, 1.01990 -> clipped to 1]
    c = kaplan_meier(dead(2, 4) + cens(3, 4, 6), alpha=0.5, ci_method="linear")
    assert (c.n, c.died, c.censored, c.eos) == (5, 2, 3, 3)
    np.testing.assert_array_equal(c.times, [2, 4])
    np.testing.assert_array_equal(c.at_risk, [5, 3])
    np.testing.assert_array_equal(c.deaths, [1, 1])
    np.testing.assert_allclose(c.survival, [0.8, 0.8 * 2 / 3])
    np.testing.assert_array_equal(c.censor_times, [3, 4, 6])
    assert c.at(1.999) == 1.0 and c.at(2) == pytest.approx(0.8) and c.at(3.5) == pytest.approx(0.8)
    assert c.at(4) == pytest.approx(0.533333, abs=1e-6) and c.at(1000) == pytest.approx(0.533333, abs=1e-6)
    assert c.median() is None
    assert c.ci_low[1] == pytest.approx(0.04677, abs=1e-4) and c.ci_high[1] == pytest.approx(1.0)


def test_log_log_band_matches_greenwood_formula():
    fs = dead(2, 4) + cens(3, 4, 6)
    c = kaplan_meier(fs)  # default log-log
    assert c.ci_method == "log-log"
    for i, (s, n, d) in enumerate(zip(c.survival, c.at_risk, c.deaths)):
        g = sum(dd / (nn * (nn - dd)) for nn, dd in zip(c.at_risk[: i + 1], c.deaths[: i + 1]))
        w = Z95 * math.sqrt(g) / abs(math.log(s))  # [Kalbfleisch & Prentice]: S ** exp(+-z se(log -log S))
        assert c.ci_low[i] == pytest.approx(s ** math.exp(w), rel=1e-9)
        assert c.ci_high[i] == pytest.approx(s ** math.exp(-w), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_against_brute_force_and_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    times = rng.integers(0, 30, n)  # many ties, deaths at 0 included
    died = rng.random(n) < 0.6
    fs = [Fate(bool(d), int(t), eos=not d) for d, t in zip(died, times)]
    c = kaplan_meier(fs)
    grid = np.arange(-1, 32)
    np.testing.assert_allclose(c.at(grid), [brute_km(fs, t) for t in grid], atol=1e-12)
    sf = stats.ecdf(stats.CensoredData(uncensored=times[died], right=times[~died])).sf if died.any() else None
    if sf is not None:
        np.testing.assert_allclose(c.at(grid), sf.evaluate(grid), atol=1e-12)
    assert c.died == died.sum() and c.censored == (~died).sum()


def test_dead_traces_leave_the_at_risk_set():
    # Recovered prototype data (anchor §4.2): 8 death forks, nobody censored.
    # sorted: 0 5 13 23 64 64 64 108; at risk 8 7 6 5 4 1, deaths 1 1 1 1 3 1
    # S: 7/8, 6/8, 5/8, 4/8 = 0.5 at 23, 1/8 at 64, 0 at 108 -> median 23, S_end 0.
    ts = [64, 5, 64, 0, 13, 64, 23, 108]
    c = kaplan_meier(dead(*ts))
    np.testing.assert_array_equal(c.at_risk, [8, 7, 6, 5, 4, 1])
    np.testing.assert_allclose(c.survival, [7 / 8, 6 / 8, 5 / 8, 4 / 8, 1 / 8, 0.0])
    assert c.at(23) == 0.5 and c.at(24) == 0.5 and c.at(22) == 5 / 8
    assert c.at(10**6) == 0.0 and c.median() == 23
    # the prototype's bug: n_k = everyone still "running", dead or not (8 here) -> S never reaches 0
    buggy = np.prod([1 - d / 8 for d in c.deaths])
    assert buggy > 0.3 and c.survival[-1] == 0.0


def test_absorbing_death_on_pmass_sequences():
    # dips below 0.75 at fork 8, recovers at 16 and 32: dead at 8 for good; forks may come unsorted
    t1 = traj(1.0, [0.1] * 40, [(32, 0.96), (0, 0.9), (16, 0.95), (8, 0.5)], eos=False, window=40)
    t2 = traj(1.0, [0.1] * 40, [(0, 0.9), (4, float("nan")), (8, 0.9)], window=40)  # NaN mass = dead
    t3 = traj(1.0, [0.1] * 12, [(0, 0.9), (8, 0.8)], eos=True, window=40)  # alive, EOS at 12, last seen at 8
    t4 = traj(1.0, [0.1] * 40, [(0, 0.9), (32, 0.76)], window=40)  # alive, last probed at 32 -> censored 32
    c = km_curves([t1, t2, t3, t4], threshold=0.75)[1.0]
    np.testing.assert_array_equal(c.times, [4, 8])
    # censored where last observed alive (the last probed fork), not at EOS (12) or the window (40)
    np.testing.assert_array_equal(c.censor_times, [8, 32])
    assert (c.died, c.censored, c.eos) == (2, 2, 1)
    # by hand: at 4, 4 at risk, 1 death -> 3/4; at 8, {t1, t3, t4} at risk (t3 censored at 8 stays), 1 death -> 1/2
    assert c.at(4) == pytest.approx(0.75) and c.at(8) == pytest.approx(0.5) and c.median() == 8


def test_censoring_at_last_probed_fork_when_forks_after_think_close_are_skipped():
    """A trace that closed </think> at token 10 is probed only at 0, 1, 2, 4, 8: nothing is known after 8, so it
    must leave the risk set there. Counting it at risk to the window (the old rule) hides a death at 32."""
    closed = traj(1.0, [0.1] * 64, [(0, 0.9), (1, 0.9), (2, 0.9), (4, 0.9), (8, 0.9)], window=64)
    died = traj(1.0, [0.1] * 64, [(0, 0.9), (16, 0.9), (32, 0.1)], window=64)
    ok = traj(1.0, [0.1] * 64, [(0, 0.9), (64, 0.9)], window=64)
    f = fate(closed, 0.75)
    assert (f.died, f.time, f.last_alive, f.interval) == (False, 8, 8, None)
    fd = fate(died, 0.75)
    assert (fd.died, fd.time, fd.last_alive, fd.interval) == (True, 32, 16, (16, 32))
    c = km_curves([closed, died, ok], threshold=0.75)[1.0]
    # at 32 only {died, ok} are at risk: S = 1 - 1/2 (the old rule counted 3 at risk: 2/3)
    assert c.at(32) == pytest.approx(0.5) and c.at_risk.tolist() == [2]
    none = fate(traj(1.0, [0.1] * 5, [], window=5), 0.75)
    assert (none.died, none.time, none.last_alive) == (False, 0, None)  # never observed: adds no information


def test_no_deaths_means_survival_one_everywhere():
    c = kaplan_meier(cens(5, 10, 64, eos=False))
    assert c.times.size == 0 and c.died == 0
    np.testing.assert_array_equal(c.at([-5, 0, 5, 100]), [1, 1, 1, 1])
    assert c.median() is None and c.median_ci() == (None, None)


def test_everyone_dead_at_zero():
    c = kaplan_meier(dead(0, 0, 0))
    assert c.at(-1) == 1.0 and c.at(0) == 0.0 and c.at(50) == 0.0
    assert c.median() == 0 and c.median_ci() == (0, 0)


@pytest.mark.parametrize("f, s_after, med", [(dead(7), 0.0, 7), (cens(7), 1.0, None)])
def test_single_trajectory(f, s_after, med):
    c = kaplan_meier(f)
    assert c.n == 1 and c.at(6) == 1.0 and c.at(7) == s_after and c.median() == med


def test_median_not_reached_but_band_reported():
    # one death among 4 at t=3: S = 0.75 stays above 0.5; the lower band may still cross 0.5
    c = kaplan_meier(dead(3) + cens(10, 10, 10, eos=False))
    assert c.at(10) == pytest.approx(0.75) and c.median() is None
    lo, hi = c.median_ci()
    assert hi is None and lo == (3 if c.ci_low[0] <= 0.5 else None)


def test_bad_input_raises():
    with pytest.raises(IsoKLError, match="no trajectories"):
        kaplan_meier([])
    with pytest.raises(IsoKLError, match="ci_method"):
        kaplan_meier(dead(1), ci_method="plain")
    with pytest.raises(IsoKLError, match="threshold"):
        km_curves([traj(1.0, [0.1])], threshold=1.5)


# ---------------------------------------------------------------------------------------------- log-rank


def brute_logrank_p(a, b):
    """Two-group log-rank by definition: sum (O - E) and hypergeometric variance over pooled death times."""
    oe = var = 0.0
    for u in sorted({f.time for f in a + b if f.died}):
        na, nb = sum(f.time >= u for f in a), sum(f.time >= u for f in b)
        da, d = sum(f.died and f.time == u for f in a), sum(f.died and f.time == u for f in a + b)
        n = na + nb
        oe += da - d * na / n
        var += d * (na / n) * (nb / n) * (n - d) / max(n - 1, 1)
    return float(stats.chi2.sf(oe**2 / var, 1))


def test_logrank_separates_clearly_different_groups():
    early = dead(1, 2, 2, 3, 4, 5, 6, 8)
    late = dead(50, 55) + cens(64, 64, 64, 64, 64, 64, eos=False)
    r = logrank(early, late)
    assert r.p_value < 1e-3 and r.name == "log-rank"
    assert r.p_value == pytest.approx(brute_logrank_p(early, late), rel=1e-9)


def test_logrank_identical_groups_is_large():
    g = dead(3, 9, 20) + cens(30, 40)
    assert logrank(g, list(g)).p_value == pytest.approx(1.0)


def test_logrank_mixed_matches_brute_force():
    a = dead(2, 5, 5, 9) + cens(4, 12)
    b = dead(3, 5, 11) + cens(6, 12, 12)
    assert logrank(a, b).p_value == pytest.approx(brute_logrank_p(a, b), rel=1e-9)


def test_logrank_undefined_without_deaths():
    r = logrank(cens(5, 10), cens(7))
    assert math.isnan(r.p_value) and not r.defined
    assert math.isnan(logrank([], dead(1)).p_value)


# ---------------------------------------------------------------------------------------------- table


def test_survival_table_rows_agree_with_curves():
    trajs = synthetic_trajectories(alphas=(0.0, 1.0, 4.0), n=10, window=64, seed=3)
    rows = survival_table(trajs, threshold=0.75, at_tokens=(8, 64))
    curves = km_curves(trajs, threshold=0.75)
    assert [r["alpha"] for r in rows] == [0.0, 1.0, 4.0]
    for r in rows:
        c = curves[r["alpha"]]
        assert (r["n"], r["died"], r["censored"]) == (c.n, c.died, c.censored) and r["n"] == 10
        assert r["S@8"] == pytest.approx(brute_km(c_fates(trajs, r["alpha"]), 8)) and r["S@64"] == c.at(64)
        assert r["median"] == c.median()
    by = {r["alpha"]: r for r in rows}
    assert by[0.0]["p_vs_0"] is None and by[1.0]["p_vs_1"] is None
    p = logrank(c_fates(trajs, 4.0), c_fates(trajs, 0.0)).p_value
    assert by[4.0]["p_vs_0"] == p and p < 0.01


def c_fates(trajs, alpha):
    from tl_isokl.records import fate

    return [fate(t, 0.75) for t in trajs if t.alpha == alpha]


def test_survival_table_without_reference_alphas_and_default_tokens():
    trajs = [traj(2.0, [1.0] * 10, [(0, 0.9), (4, 0.2)], window=100)]
    (row,) = survival_table(trajs)
    assert row["p_vs_0"] is None and row["p_vs_1"] is None
    assert [k for k in row if k.startswith("S@")] == ["S@20", "S@50", "S@100"]
    assert row["S@20"] == 0.0 and row["median"] == 4


# ---------------------------------------------------------------------------------------------- KL


def test_kl_summary_against_numpy_pooling():
    ts = [traj(0.5, [0.1, 0.2, float("nan")]), traj(0.5, [0.4, 3.0]), traj(0.0, [0.0, 0.0])]
    s0, s1 = kl_summary(ts)
    pool = np.array([0.1, 0.2, 0.4, 3.0])
    assert (s1.alpha, s1.n_traj, s1.n_tokens) == (0.5, 2, 4)
    assert s1.mean == pytest.approx(pool.mean()) and s1.max == 3.0
    assert s1.p50 == pytest.approx(np.median(pool)) and s1.p95 == pytest.approx(np.quantile(pool, 0.95))
    assert (s0.n_tokens, s0.p95, s0.max) == (2, 0.0, 0.0)
    (empty,) = kl_summary([traj(1.0, [float("nan")])])
    assert empty.n_tokens == 0 and math.isnan(empty.p95)


def test_rolling_mean_and_running_median_against_loops():
    x = np.array([1.0, 5.0, np.nan, 2.0, 8.0, 3.0])
    w = 3
    want = [np.nanmean(x[max(0, i - 1): i + 2]) for i in range(x.size)]
    np.testing.assert_allclose(rolling_mean(x, w), want)
    np.testing.assert_array_equal(rolling_mean(x, 1), x)
    series = [[1, 2, 3], [5, 6], [0]]
    np.testing.assert_allclose(running_median(series), [1, 4, 3])

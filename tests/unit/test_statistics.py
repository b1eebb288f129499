"""KL statistics against numpy by hand, the CVaR on a worked example, registration of a new statistic."""

import math

import numpy as np
import pytest

from tl_isokl.errors import IsoKLError
from tl_isokl.statistics import pool, register_statistic, statistic, summarize


def test_quantiles_max_mean_match_numpy():
    x = np.random.default_rng(0).exponential(size=1000)
    assert statistic("p95")(x) == pytest.approx(np.percentile(x, 95))
    assert statistic("P99.9")(x) == pytest.approx(np.percentile(x, 99.9))
    assert statistic("max")(x) == x.max() and statistic("mean")(x) == pytest.approx(x.mean())


def test_cvar_by_hand():
    x = np.arange(1, 21, dtype=float)  # 1..20; p90 (linear) = 18.1 -> tail {19, 20} -> mean 19.5
    assert statistic("cvar90")(x) == pytest.approx(19.5)
    assert statistic("cvar0")(x) == pytest.approx(x.mean())
    assert statistic("cvar95")(x) >= statistic("p95")(x)


def test_empty_pool_is_nan_and_pool_drops_non_finite():
    assert math.isnan(statistic("p95")([]))
    p = pool([[1.0, float("nan")], np.array([2.0, float("inf")]), []])
    assert p.tolist() == [1.0, 2.0]
    s = summarize([1.0, 2.0, float("nan")])
    assert s["n"] == 2 and s["max"] == 2.0 and s["p50"] == 1.5


@pytest.mark.parametrize("bad", ["p101", "q95", "median", "", "cvarx", "p-1"])
def test_unknown_statistic_names_the_choices(bad):
    with pytest.raises(IsoKLError, match=r"unknown statistic") as e:
        statistic(bad)
    assert "p<q>" in str(e.value) and "cvar<q>" in str(e.value) and "max" in str(e.value)


def test_registering_a_statistic_makes_it_available():
    @register_statistic("test_median_abs")
    def _fn(x):
        return float(np.median(np.abs(x)))

    assert statistic("test_median_abs")([-3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(IsoKLError, match="identifier"):
        register_statistic("has space")

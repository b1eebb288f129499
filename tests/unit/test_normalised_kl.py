"""The seed's normalised KL view: normaliser from RAW early KL, None where it would be 0/0."""

import numpy as np
import pytest
from helpers_runs import make_run, traj

from tl_isokl.rundir import load_run
from tl_isokl.figures.series import normalised_kl, rolling_mean


def spiky(n=200, seed=0):
    rng = np.random.default_rng(seed)
    kl = rng.uniform(0.1, 0.3, n)
    kl[3] = 5.0  # an early spike: dominates the raw p95, washed out by smoothing
    kl[100:] += 2.0  # and a later rise the smoothing would smear into "the first 20 tokens"
    return kl


def test_normaliser_is_raw_early_p95():
    kl = spiky()
    out = normalised_kl(kl)
    denom = np.quantile(kl[:20], 0.95)  # raw, first 20 tokens
    np.testing.assert_allclose(out, kl / denom)
    smoothed_denom = np.quantile(rolling_mean(kl, 301)[:20], 0.95)  # the prototype's way
    assert not np.isclose(denom, smoothed_denom, rtol=0.05)


def test_quantile_and_window_arguments():
    kl = np.arange(1.0, 51.0)
    np.testing.assert_allclose(normalised_kl(kl, n_early=10, q=0.5), kl / np.median(kl[:10]))
    short = [1.0, 2.0, 3.0]  # fewer than n_early tokens: the whole trace is the early part
    np.testing.assert_allclose(normalised_kl(short), np.array(short) / np.quantile(short, 0.95))


@pytest.mark.parametrize("kl", [[0.0] * 30, [], [float("nan")] * 5, [0.0] * 20 + [1.0] * 10])
def test_none_without_a_normaliser(kl):
    assert normalised_kl(kl) is None


def test_nan_kept_and_ignored_in_normaliser():
    kl = np.array([1.0, np.nan, 2.0, 3.0])
    out = normalised_kl(kl)
    denom = np.quantile([1.0, 2.0, 3.0], 0.95)
    assert np.isnan(out[1]) and out[3] == pytest.approx(3.0 / denom)


def test_spaghetti_smooths_after_normalising(tmp_path):
    """The drawn median of a one-trace panel is rolling_mean(kl / raw p95) -- not the smoothed trace's p95."""
    from tl_isokl.figures.spaghetti import spaghetti

    kl = spiky(64)
    run = load_run(make_run(tmp_path / "r", trajectories=[traj(1.0, kl, [(0, 0.9)], window=64)], window=64))
    fig = spaghetti(run, mode="normalised", roll=9)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    med = [ln for ln in ax.get_lines() if ln.get_color() == "black" and ln.get_linestyle() == "-"]
    np.testing.assert_allclose(med[0].get_ydata(), rolling_mean(kl / np.quantile(kl[:20], 0.95), 9))

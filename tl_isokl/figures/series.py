"""Per-token series as figures draw them: the seed's normalised KL, rolling means and the running median.

Display transforms only: no statistic that a table or a test of the method reports is computed here.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np


def normalised_kl(traj_kl: Sequence[float] | np.ndarray, n_early: int = 20, q: float = 0.95,
                  floor: float = 1e-8) -> np.ndarray | None:
    """The seed's normalised view: per-token KL divided by the trajectory's own q-quantile over its first
    `n_early` tokens, so y = 1 is "this trace's own early-rollout scale".

    The normaliser is always taken from the RAW KL: smoothing first (as the prototype did with a 301-token rolling
    mean) would make "first 20 tokens" mean "first ~170". Smooth the returned series afterwards if at all.

    Returns:
        The normalised series (NaN stays NaN), or None when there is no usable normaliser: it is non-finite or
        <= `floor` nats (numerically zero). That is always the case at alpha = 0, where steered == base and the KL
        is exactly 0 -- 0/0 has no meaning, so callers must show those traces some other way, not drop them.
    """
    kl = np.asarray(traj_kl, dtype=float)
    early = kl[: max(int(n_early), 0)]
    early = early[np.isfinite(early)]
    if early.size == 0:
        return None
    denom = float(np.quantile(early, q))
    if not math.isfinite(denom) or denom <= floor:
        return None
    return kl / denom


# --------------------------------------------------------------------------------------------------- display series


def rolling_mean(x: Sequence[float] | np.ndarray, width: int) -> np.ndarray:
    """Centred rolling mean for display (width 1 = unchanged). Near the ends the window shrinks to what exists,
    so the series keeps its length and is never padded with invented values; NaN entries are ignored."""
    x = np.asarray(x, dtype=float)
    width = int(width)
    if width <= 1 or x.size == 0:
        return x.copy()
    ok = np.isfinite(x)
    v = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    c = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(x.size)
    lo = np.clip(i - width // 2, 0, x.size)
    hi = np.clip(i + (width - 1) // 2 + 1, 0, x.size)
    n = c[hi] - c[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (v[hi] - v[lo]) / np.maximum(n, 1), np.nan)


def running_median(series: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
    """Median across series at each index, over the series still running there (a series of length L counts for
    indices < L only; alive and dead alike, so later indices carry survivorship by EOS). NaN where none runs."""
    series = [np.asarray(s, dtype=float) for s in series]
    if not series:
        return np.empty(0)
    T = max(s.size for s in series)
    m = np.full((len(series), T), np.nan)
    for i, s in enumerate(series):
        m[i, : s.size] = s
    with warnings.catch_warnings():  # all-NaN columns -> NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(m, axis=0)

"""Kaplan-Meier survival of steered rollouts, log-rank tests and per-token KL summaries: numbers only.

Survival convention (the one the prototype got wrong, anchor §4.2): each trajectory is one subject with a `Fate`
from `tl_isokl.records.fate` -- death at the first fork below the threshold (absorbing), otherwise right-censored
at its last probed fork (where it was last seen alive: forks after EOS or after the model's own `</think>` are not
probed). Deaths are interval-censored at fork resolution, (last alive fork, death fork]; the product-limit
estimate puts each death at its fork, so S(t) and the median are read at fork tokens and the true first failure
lies up to one fork interval earlier (with log2 forks, a median of 64 means between 33 and 64). The at-risk set just
before token t is every trajectory whose fate time is >= t: a trace that died at s < t has LEFT it (it is not
counted again), and so has one censored before t. A trace censored at t is still at risk at t (deaths at a tie come
first), the usual product-limit convention::

    S(t) = prod_{t_i <= t} (1 - d_i / n_i)      n_i = #{time >= t_i},  d_i = #{died and time == t_i}

The estimate and its pointwise confidence band come from `scipy.stats.ecdf` on `scipy.stats.CensoredData`
(Greenwood variance; "log-log" band by default because it stays inside [0, 1], "linear" on request), and the
two-group test from `scipy.stats.logrank` (two-sided). Nothing here reads files or draws: notebooks call it on a
loaded `Run` or on a plain list of trajectories. Series transforms for figures (normalised KL, smoothing) live in
`tl_isokl.figures.series`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError
from tl_isokl.records import Fate, Trajectory, fate
from tl_isokl.statistics import pool, summarize

DEFAULT_THRESHOLD = 0.75
CI_METHODS = ("log-log", "linear")


# --------------------------------------------------------------------------------------------------- grouping


def group_by_alpha(source: Any) -> dict[float, list[Trajectory]]:
    """Trajectories per alpha, ascending, from a `Run` (anything with `by_alpha()`) or an iterable of them."""
    if hasattr(source, "by_alpha"):
        groups = source.by_alpha()
    else:
        groups = {}
        for t in source:
            if not isinstance(t, Trajectory):
                raise IsoKLError(f"expected Trajectory objects, got {type(t).__name__}; pass a Run or trajectories")
            groups.setdefault(float(t.alpha), []).append(t)
    return {float(a): list(groups[a]) for a in sorted(groups)}


def resolve_threshold(source: Any, threshold: float | None = None) -> float:
    """The pmass threshold to use: the given one, else the run's, else 0.75; must lie in (0, 1]."""
    if threshold is None:
        threshold = getattr(source, "threshold", DEFAULT_THRESHOLD)
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise IsoKLError(f"threshold={threshold} is not a probability mass in (0, 1]; use e.g. 0.75")
    return threshold


def run_threshold(source: Any) -> float:
    """The threshold the run was swept at (its manifest's; 0.75 for a bare list of trajectories)."""
    return float(getattr(source, "threshold", DEFAULT_THRESHOLD))


def is_rederived(source: Any, threshold: float | None) -> bool:
    """True when `threshold` differs from the run's own: every fate at it is re-derived from the stored pmass."""
    return threshold is not None and not math.isclose(float(threshold), run_threshold(source), abs_tol=1e-12)


def threshold_text(source: Any, threshold: float | None = None) -> str:
    """Which threshold the numbers use, for every output that shows fates: "0.75 (the run's)" or
    "0.5 (re-derived from the stored pmass; the run's is 0.75)"."""
    thr = resolve_threshold(source, threshold)
    if is_rederived(source, thr):
        return f"{thr:g} (re-derived from the stored pmass; the run's is {run_threshold(source):g})"
    return f"{thr:g} (the run's)"


def run_window(source: Any) -> int:
    """The rollout window: the run manifest's, else the largest trajectory window."""
    try:
        return int(source.window)
    except (AttributeError, KeyError, TypeError, ValueError):
        return max(t.window for ts in group_by_alpha(source).values() for t in ts)


def fates(trajectories: Iterable[Trajectory], threshold: float) -> list[Fate]:
    """`records.fate` for each trajectory (the absorbing-death rule lives there, not here)."""
    return [fate(t, threshold) for t in trajectories]


# --------------------------------------------------------------------------------------------------- KM


@dataclass(frozen=True)
class SurvivalCurve:
    """Kaplan-Meier estimate for one alpha.

    Arrays are indexed by distinct death times (no entries where only censoring happened): `survival[i]` is S just
    after `times[i]` (right-continuous), `at_risk[i]` / `deaths[i]` the product-limit n_i / d_i there. The band is
    pointwise at `confidence_level`, by `ci_method`; it is NaN where the formula is undefined (S = 0 for log-log).
    With no deaths the arrays are empty and S = 1 everywhere.
    """

    alpha: float
    n: int
    died: int
    censored: int
    eos: int  # censored because the rollout ended at EOS (the rest ran the whole window)
    times: np.ndarray = field(repr=False)
    survival: np.ndarray = field(repr=False)
    ci_low: np.ndarray = field(repr=False)
    ci_high: np.ndarray = field(repr=False)
    at_risk: np.ndarray = field(repr=False)
    deaths: np.ndarray = field(repr=False)
    censor_times: np.ndarray = field(repr=False)  # sorted, one entry per censored trajectory
    confidence_level: float = 0.95
    ci_method: str = "log-log"

    def at(self, t: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
        """S(t) as a right-continuous step function: 1 before the first death, S(t_i) on [t_i, t_{i+1})."""
        tt = np.asarray(t, dtype=float)
        idx = np.searchsorted(self.times, tt, side="right") - 1
        out = np.where(idx >= 0, self.survival[np.clip(idx, 0, None)] if self.times.size else 1.0, 1.0)
        return float(out) if out.ndim == 0 else out

    def median(self) -> int | None:
        """First token with S <= 0.5; None when S never falls that low ("not reached")."""
        hit = np.flatnonzero(self.survival <= 0.5)
        return int(self.times[hit[0]]) if hit.size else None

    def median_ci(self) -> tuple[int | None, int | None]:
        """Band for the median (Brookmeyer-Crowley style, as R's survfit): the first tokens at which the lower and
        the upper pointwise band fall to <= 0.5. None = not reached. At S = 0 the band is taken as 0."""
        out = []
        for band in (self.ci_low, self.ci_high):
            band = np.where(self.survival == 0, 0.0, band)
            hit = np.flatnonzero(band <= 0.5)  # NaN compares False: undefined band never "reaches" 0.5
            out.append(int(self.times[hit[0]]) if hit.size else None)
        return out[0], out[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def _censored_data(fs: Sequence[Fate]):
    from scipy.stats import CensoredData

    dead = [f.time for f in fs if f.died]
    cens = [f.time for f in fs if not f.died]
    return CensoredData(uncensored=np.asarray(dead, float), right=np.asarray(cens, float))


def kaplan_meier(
    fs: Sequence[Fate], *, alpha: float = math.nan, confidence_level: float = 0.95, ci_method: str = "log-log"
) -> SurvivalCurve:
    """Product-limit estimate of S(t) = P(alive after t generated tokens) from one group's fates.

    Args:
        fs: one Fate per trajectory (see `fates`).
        alpha: the dose, only carried along as a label.
        confidence_level: of the pointwise band (and of `median_ci`).
        ci_method: "log-log" (default; exp(-exp(.)) transform of Greenwood, stays in [0, 1]) or "linear"
            (Greenwood +- z*se, clipped to [0, 1] by scipy).
    """
    if ci_method not in CI_METHODS:
        raise IsoKLError(f"ci_method={ci_method!r} is not one of {CI_METHODS}")
    if not 0.0 < confidence_level < 1.0:
        raise IsoKLError(f"confidence_level={confidence_level} must be in (0, 1), e.g. 0.95")
    fs = list(fs)
    if not fs:
        raise IsoKLError(f"no trajectories at alpha={alpha:g}: Kaplan-Meier needs at least one")
    time = np.array([f.time for f in fs], dtype=float)
    died = np.array([f.died for f in fs], dtype=bool)
    t_ev = np.unique(time[died])
    at_risk = np.array([(time >= t).sum() for t in t_ev], dtype=int)
    deaths = np.array([(died & (time == t)).sum() for t in t_ev], dtype=int)
    if t_ev.size:
        from scipy.stats import ecdf

        sf = ecdf(_censored_data(fs)).sf
        surv = sf.evaluate(t_ev)
        with warnings.catch_warnings():  # scipy warns where the band is undefined (S = 0); we keep the NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = sf.confidence_interval(confidence_level, method=ci_method)
            lo, hi = ci.low.evaluate(t_ev), ci.high.evaluate(t_ev)
    else:
        surv = lo = hi = np.empty(0)
    return SurvivalCurve(
        alpha=float(alpha), n=len(fs), died=int(died.sum()), censored=int((~died).sum()),
        eos=int(sum(1 for f in fs if not f.died and f.eos)),
        times=t_ev.astype(int), survival=np.asarray(surv, float), ci_low=np.asarray(lo, float),
        ci_high=np.asarray(hi, float), at_risk=at_risk, deaths=deaths, censor_times=np.sort(time[~died]).astype(int),
        confidence_level=confidence_level, ci_method=ci_method,
    )


def km_curves(
    source: Any, threshold: float | None = None, *, confidence_level: float = 0.95, ci_method: str = "log-log"
) -> dict[float, SurvivalCurve]:
    """One `SurvivalCurve` per alpha (ascending) of a `Run` or a list of trajectories.

    `threshold` defaults to the run's threshold (0.75 for a bare list).
    """
    thr = resolve_threshold(source, threshold)
    return {
        a: kaplan_meier(fates(ts, thr), alpha=a, confidence_level=confidence_level, ci_method=ci_method)
        for a, ts in group_by_alpha(source).items()
    }


# --------------------------------------------------------------------------------------------------- log-rank


@dataclass(frozen=True)
class LogRankResult:
    """Two-sided log-rank test. `statistic` is scipy's signed z; both are NaN when the test is undefined
    (no deaths in either group, or zero variance, e.g. every death in one tie with nobody else at risk)."""

    statistic: float
    p_value: float
    name: str = "log-rank"

    @property
    def defined(self) -> bool:
        return math.isfinite(self.p_value)


def logrank(a: Sequence[Fate], b: Sequence[Fate]) -> LogRankResult:
    """Do two groups of fates have the same hazard? (scipy.stats.logrank, two-sided)."""
    a, b = list(a), list(b)
    if not a or not b or not any(f.died for f in a + b):
        return LogRankResult(math.nan, math.nan)
    from scipy.stats import logrank as _logrank

    with np.errstate(invalid="ignore", divide="ignore"):
        res = _logrank(_censored_data(a), _censored_data(b))
    return LogRankResult(float(res.statistic), float(res.pvalue))


# --------------------------------------------------------------------------------------------------- table


def _find_alpha(alphas: Iterable[float], target: float) -> float | None:
    return next((a for a in alphas if math.isclose(a, target, abs_tol=1e-9)), None)


def default_at_tokens(window: int) -> tuple[int, ...]:
    """Tokens at which the table reads S(t): early (20), mid-window and the window end."""
    return tuple(sorted({min(20, window), window // 2, window}))


def survival_table(
    source: Any,
    threshold: float | None = None,
    at_tokens: Sequence[int] | None = None,
    *,
    confidence_level: float = 0.95,
    ci_method: str = "log-log",
    answers: Mapping[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """One row per alpha: counts, S at `at_tokens`, median death token with its band, log-rank p vs alpha 0 and 1,
    and, where the prompts carry answers, the three fates and the probe's accuracy.

    Columns: alpha, n, died, censored, eos, [answered, alive_right, alive_wrong, acc_t0, acc_end, acc_alive: only
    when answers are known, see `tl_isokl.outcomes`], ``S@<t>`` for each t, median, median_low, median_high
    (None = not reached), p_vs_0, p_vs_1 (None = no such comparison: the row is the reference, or the run lacks
    that alpha; NaN = the test is undefined, e.g. no deaths in either group). `at_tokens` defaults to
    (20, window/2, window) with the window taken from the run (or the trajectories). `answers` ({prompt id: bool})
    overrides the run manifest's.
    """
    from tl_isokl.outcomes import accuracy_columns, answers as run_answers, has_accuracy

    thr = resolve_threshold(source, threshold)
    groups = group_by_alpha(source)
    if not groups:
        raise IsoKLError("no trajectories to tabulate; load a run with finished alpha cells")
    if at_tokens is None:
        at_tokens = default_at_tokens(run_window(source))
    known = run_answers(source if answers is None else answers)
    with_acc = has_accuracy((t for ts in groups.values() for t in ts), known)
    fs = {a: fates(ts, thr) for a, ts in groups.items()}
    refs = {0.0: _find_alpha(fs, 0.0), 1.0: _find_alpha(fs, 1.0)}
    rows = []
    for a, f in fs.items():
        c = kaplan_meier(f, alpha=a, confidence_level=confidence_level, ci_method=ci_method)
        lo, hi = c.median_ci()
        row: dict[str, Any] = {"alpha": a, "n": c.n, "died": c.died, "censored": c.censored, "eos": c.eos}
        if with_acc:
            row.update(accuracy_columns(groups[a], known, thr))
        row.update({f"S@{int(t)}": c.at(t) for t in at_tokens})
        row.update({"median": c.median(), "median_low": lo, "median_high": hi})
        for ref_alpha, ref in refs.items():
            key = f"p_vs_{ref_alpha:g}"
            row[key] = None if ref is None or ref == a else logrank(f, fs[ref]).p_value
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------- sensitivity

SENSITIVITY_THRESHOLDS = (0.5, 0.75, 0.9)


def sensitivity_thresholds(source: Any, threshold: float | None = None) -> list[float]:
    """0.5, 0.75, 0.9, the run's own and `threshold` (when given), ascending, without duplicates."""
    out: list[float] = []
    for t in (*SENSITIVITY_THRESHOLDS, run_threshold(source), *(() if threshold is None else (threshold,))):
        t = resolve_threshold(source, t)
        if not any(math.isclose(t, u, abs_tol=1e-12) for u in out):
            out.append(t)
    return sorted(out)


def sensitivity_table(source: Any, thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """How much the deaths depend on the threshold: one row per alpha, and per threshold two columns,
    ``died@<thr>`` ("d/n") and ``median@<thr>`` (Kaplan-Meier median death token; None = not reached). The run's
    own threshold is marked "(run)" in its column names. Every fate is re-derived from the stored pmass.

    `thresholds` defaults to `sensitivity_thresholds(source)`: 0.5, 0.75, 0.9 and the run's own.
    """
    ths = sensitivity_thresholds(source) if thresholds is None else [resolve_threshold(source, t) for t in thresholds]
    own = run_threshold(source) if hasattr(source, "threshold") else None
    rows = []
    for a, ts in group_by_alpha(source).items():
        row: dict[str, Any] = {"alpha": a, "n": len(ts)}
        for thr in ths:
            mark = " (run)" if own is not None and math.isclose(thr, own, abs_tol=1e-12) else ""
            c = kaplan_meier(fates(ts, thr), alpha=a)
            row[f"died@{thr:g}{mark}"] = f"{c.died}/{c.n}"
            row[f"median@{thr:g}{mark}"] = c.median()
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------- KL


@dataclass(frozen=True)
class KLSummary:
    """Pooled per-token KL(steered || base) of one alpha, in nats. Non-finite entries are left out of the pool
    (and of `n_tokens`); every statistic is NaN when nothing finite is left."""

    alpha: float
    n_traj: int
    n_tokens: int
    mean: float
    p50: float
    p95: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kl_summary(source: Any) -> list[KLSummary]:
    """Per alpha (ascending): pooled per-token KL p50 / p95 / max / mean over all tokens of all trajectories."""
    out = []
    for a, ts in group_by_alpha(source).items():
        s = summarize(pool(t.kl for t in ts), ("mean", "p50", "p95", "max"))
        out.append(KLSummary(a, len(ts), s["n"], s["mean"], s["p50"], s["p95"], s["max"]))
    return out

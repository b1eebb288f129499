"""Statistics of a pool of per-token KL values: the one place calibration, sweep tables and the report get them.

The calibration target is a statistic of the pooled per-token KL of all generated tokens (p95 by default). The
same names are read back everywhere a KL pool is summarised, so a new statistic is one function plus its
registration::

    from tl_isokl.statistics import register_statistic

    @register_statistic("trimmed_mean")
    def trimmed_mean(pool):            # pool: 1-D float array of finite KL values, never empty
        lo, hi = np.percentile(pool, [5, 95])
        return float(pool[(pool >= lo) & (pool <= hi)].mean())

after which `--stat trimmed_mean` works in `calibrate` and `sweep`. Parametric families are parsed by prefix:
``p<q>`` is the q-th percentile (p95, p99.9) and ``cvar<q>`` the conditional value at risk, the mean of the
tokens at or above the q-th percentile (cvar95: "how bad is the worst 5%", which a quantile cannot see).

Every statistic is NaN on an empty pool; non-finite values are left out of a pool by `pool()`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError

StatFn = Callable[[np.ndarray], float]

# the columns every KL summary carries (calibration history, sweep tables, report)
SUMMARY = ("mean", "p50", "p90", "p95", "p99", "max")

_NAMED: dict[str, StatFn] = {}
_FAMILIES: dict[str, Callable[[float], StatFn]] = {}


def register_statistic(name: str) -> Callable[[StatFn], StatFn]:
    """Decorator: make `fn(pool) -> float` available as statistic `name` (lower case, e.g. "trimmed_mean")."""
    key = name.lower().strip()
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
        raise IsoKLError(f"statistic name {name!r} must be an identifier, e.g. 'trimmed_mean'")

    def deco(fn: StatFn) -> StatFn:
        _NAMED[key] = fn
        return fn
    return deco


def register_family(prefix: str) -> Callable[[Callable[[float], StatFn]], Callable[[float], StatFn]]:
    """Decorator: `make(q) -> fn` for names "<prefix><q>" with 0 <= q <= 100 (e.g. p95, cvar99)."""
    def deco(make: Callable[[float], StatFn]) -> Callable[[float], StatFn]:
        _FAMILIES[prefix] = make
        return make
    return deco


@register_statistic("mean")
def _mean(pool: np.ndarray) -> float:
    return float(pool.mean())


@register_statistic("max")
def _max(pool: np.ndarray) -> float:
    return float(pool.max())


@register_family("p")
def _percentile(q: float) -> StatFn:
    return lambda pool: float(np.percentile(pool, q))


@register_family("cvar")
def _cvar(q: float) -> StatFn:
    """Mean of the pool at or above its q-th percentile (expected shortfall of the upper tail)."""
    def fn(pool: np.ndarray) -> float:
        return float(pool[pool >= np.percentile(pool, q)].mean())
    return fn


@dataclass(frozen=True)
class Statistic:
    """A named statistic of a KL pool; calling it on an empty pool gives NaN."""

    name: str
    fn: StatFn

    def __call__(self, pool: np.ndarray | Sequence[float]) -> float:
        x = np.asarray(pool, dtype=float)
        return self.fn(x) if x.size else math.nan


def statistic(name: str) -> Statistic:
    """The statistic called `name` ("p95", "p99.9", "max", "mean", "cvar95", or a registered one)."""
    key = str(name).lower().strip()
    if key in _NAMED:
        return Statistic(key, _NAMED[key])
    for prefix in sorted(_FAMILIES, key=len, reverse=True):
        if key.startswith(prefix):
            try:
                q = float(key[len(prefix):])
            except ValueError:
                continue
            if 0.0 <= q <= 100.0:
                return Statistic(key, _FAMILIES[prefix](q))
    raise IsoKLError(f"unknown statistic {name!r}; use {choices()}")


def choices() -> str:
    """Human list of the accepted names, for error messages and --help."""
    return ", ".join([f"{p}<q> (e.g. {p}95)" for p in sorted(_FAMILIES)] + sorted(_NAMED))


def pool(kls: Iterable[Sequence[float] | np.ndarray]) -> np.ndarray:
    """One flat float array of every finite per-token KL value in `kls` (one array per trajectory)."""
    parts = [np.asarray(k, dtype=float).ravel() for k in kls]
    x = np.concatenate(parts) if parts else np.zeros(0)
    return x[np.isfinite(x)]


def summarize(values: np.ndarray | Sequence[float], names: Sequence[str] = SUMMARY) -> dict[str, float | int]:
    """{name: statistic} for each of `names`, plus n (finite tokens in the pool)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return {**{n: statistic(n)(x) for n in names}, "n": int(x.size)}

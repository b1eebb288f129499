"""Iso-KL calibration: the dose c* at which a statistic of per-token KL(steered || base) equals a target.

The statistic is pooled over *all generated tokens of all calibration prompts* (so "p95" is the 95th percentile
of that pool; its meaning changes with prompts x window, which is why the window is part of every manifest).
One pooled number can hide a wide spread between prompts, so the dose each prompt alone would get is reported
too (`per_prompt_c_star`).

Solver: near c = 0, KL grows like c^2 (Taimeskhanov et al. 2026: dCE ~ 1/2 Var(log-odds) c^2), then steeply,
then plateaus. So it works in log-log space, and each round evaluates several candidate doses in *one* batched
rollout: a wide geometric grid first, then candidates spread around the log-log secant inside the bracket.
That converges in 2-3 batched rounds instead of 5-8 sequential bisection steps. It never returns a bracket end
silently: an unreachable target raises `CalibrationError` with the closest values seen.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tl_isokl.errors import CalibrationError, IsoKLError, IsoKLWarning
from tl_isokl.files import sha256_json
from tl_isokl.statistics import statistic, summarize
from tl_isokl.identity import calibration_identity, warn_reflection
from tl_isokl.kl import per_token_kl
from tl_isokl.records import Rollout
from tl_isokl.rollout import GREEDY, Sampling, grid, rollout
from tl_isokl.vector import SteeringVector

@dataclass
class CalibrationPoint:
    """One evaluated dose: pooled statistics, the target statistic, and each prompt's own statistic and KL."""

    coeff: float
    value: float
    stats: dict[str, float]
    per_prompt: list[float]
    round: int
    kl: list[list[float]] = field(default_factory=list, repr=False)
    lengths: list[int] = field(default_factory=list, repr=False)


@dataclass
class CalibrationResult:
    """What a calibration found and what it was made with: the value `sweep` takes and calibration.json holds.

    `to_dict()` / `from_dict()` round-trip through calibration.json (the per-token KL of each dose is dropped
    unless asked for). `prompts` and `positions` travel with it, so a sweep can check that its held-out prompts
    are disjoint and that it steers the same positions; `identity` is what `tl_isokl.identity` compares.
    """

    c_star: float
    achieved: float
    target: float
    stat: str
    tol: float
    converged: bool | None
    window: int
    history: list[CalibrationPoint]
    per_prompt_c_star: list[float | None]
    prompt_ids: list[str]
    rounds: int
    seconds: float
    prompts: list[str] = field(default_factory=list)
    positions: str = "all"
    # what was calibrated (model, vector, gate, positions, stat, target, tol, window, prompts, c bounds); a sweep
    # refuses a calibration whose identity does not match its own (tl_isokl.identity)
    identity: dict = field(default_factory=dict)

    @property
    def prompts_sha256(self) -> str | None:
        return sha256_json(list(self.prompts)) if self.prompts else None

    def spread(self) -> dict[str, float | int | None]:
        """min / median / max of the per-prompt doses, and how many prompts never crossed the target."""
        xs = [c for c in self.per_prompt_c_star if c is not None]
        if not xs:
            return {"min": None, "median": None, "max": None, "ratio": None, "not_bracketed": len(self.per_prompt_c_star)}
        return {"min": min(xs), "median": float(np.median(xs)), "max": max(xs), "ratio": max(xs) / min(xs),
                "not_bracketed": len(self.per_prompt_c_star) - len(xs)}

    def to_dict(self, include_kl: bool = False) -> dict:
        hist = []
        for p in sorted(self.history, key=lambda p: p.coeff):
            d = asdict(p)
            if not include_kl:
                d.pop("kl")
            hist.append(d)
        return {"c_star": self.c_star, "achieved": self.achieved, "target": self.target, "stat": self.stat,
                "tol": self.tol, "converged": self.converged, "window": self.window, "rounds": self.rounds,
                "seconds": self.seconds, "per_prompt_c_star": self.per_prompt_c_star,
                "per_prompt_spread": self.spread(), "prompt_ids": self.prompt_ids, "identity": self.identity,
                "prompts": list(self.prompts), "prompts_sha256": self.prompts_sha256, "positions": self.positions,
                "history": hist}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CalibrationResult":
        """Read back `to_dict()` (calibration.json). Lenient for a hand-made dict: only c_star is required;
        missing fields are NaN / empty / None, and `converged` None means "not recorded"."""
        if not isinstance(d, Mapping) or not isinstance(d.get("c_star"), (int, float)) or isinstance(
                d.get("c_star"), bool):
            raise IsoKLError("a calibration needs a numeric c_star; pass the calibration.json written by "
                             "`tl-isokl calibrate` (or CalibrationResult.to_dict())")
        nan = float("nan")
        hist = [CalibrationPoint(**{k: h[k] for k in ("coeff", "value", "stats", "per_prompt", "round")},
                                 kl=h.get("kl") or [], lengths=h.get("lengths") or [])
                for h in d.get("history") or []]
        num = lambda k: nan if d.get(k) is None else float(d[k])  # noqa: E731
        return cls(c_star=float(d["c_star"]), achieved=num("achieved"), target=num("target"),
                   stat=str(d.get("stat") or "p95"), tol=num("tol"), converged=d.get("converged"),
                   window=int(d.get("window") or 0), history=hist,
                   per_prompt_c_star=list(d.get("per_prompt_c_star") or []), prompt_ids=list(d.get("prompt_ids") or []),
                   rounds=int(d.get("rounds") or 0), seconds=num("seconds"), prompts=list(d.get("prompts") or []),
                   positions=str(d.get("positions") or "all"), identity=dict(d.get("identity") or {}))


def _crossing(cs: Sequence[float], vs: Sequence[float], target: float) -> float | None:
    """Dose where a sampled curve first crosses `target`, by log-log interpolation; None if never bracketed."""
    pts = sorted((c, v) for c, v in zip(cs, vs) if c > 0 and math.isfinite(v))
    for (c0, v0), (c1, v1) in zip(pts, pts[1:]):
        if v0 < target <= v1:
            return _loglog_secant(c0, v0, c1, v1, target)
    return None


def _loglog_secant(c0: float, v0: float, c1: float, v1: float, target: float) -> float:
    if v0 <= 0:  # no KL yet at c0: assume the small-dose law KL ~ c^2 from the upper point
        return c1 * math.sqrt(target / v1)
    slope = (math.log(v1) - math.log(v0)) / (math.log(c1) - math.log(c0))
    if slope <= 0:
        return math.sqrt(c0 * c1)
    return math.exp(math.log(c0) + (math.log(target) - math.log(v0)) / slope)


def calibrate(
    model,
    vector: SteeringVector,
    prompts: Sequence[str],
    *,
    window: int = 256,
    target: float = 1.0,
    stat: str = "p95",
    tol: float = 0.05,
    prompt_ids: Sequence[str] | None = None,
    c_init: float | None = None,
    c_min: float = 1e-4,
    c_max: float = 1e4,
    candidates: int = 5,
    max_rounds: int = 6,
    batch_size: int = 32,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
    on_round: Callable[[int, list[CalibrationPoint]], None] | None = None,
    sampling: Sampling = GREEDY,
) -> CalibrationResult:
    """Find c* with stat(pooled per-token KL over `window`-token greedy rollouts) = target (nats), within
    `tol` relative (|stat - target| <= tol * target; 0.05 = 5%).

    Args:
        c_init: centre of the first round's geometric grid (default: the operator's `c_init`, 1 for add = one
            full contrast vector; 0.5 for ablate, whose useful range is ~0..2).
        candidates: doses evaluated per round, all in one batched rollout (rows = prompts x candidates).
        on_round: called after each round with (round, points of that round), e.g. to print a table.

    Raises:
        CalibrationError: the target is not reached between c_min and c_max (message gives the closest points).
    """
    stat_fn = statistic(stat)
    if not target > 0:
        raise IsoKLError(f"target KL must be > 0 nats, got {target}")
    if not 0 < tol < 1:  # relative: an absolute tolerance meant 57% error at a 0.01-nat target
        raise IsoKLError(f"tol is relative to the target (0.05 = 5%) and must be in (0, 1), got {tol}")
    if not prompts:
        raise IsoKLError("no calibration prompts given")
    if candidates < 2:
        raise IsoKLError(f"candidates per round must be >= 2, got {candidates}")
    if not 0 < c_min < c_max:
        raise IsoKLError(f"need 0 < c_min < c_max, got c_min={c_min}, c_max={c_max}")
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    c0 = float(c_init) if c_init is not None else vector.operator.c_init
    t0 = time.time()
    history: list[CalibrationPoint] = []

    def evaluate(cs: list[float], rnd: int) -> list[CalibrationPoint]:
        P, C, I = grid(prompts, cs, pids)
        rolls: list[Rollout] = rollout(model, vector, P, C, prompt_ids=I, window=window, batch_size=batch_size,
                                       positions=positions, progress=progress, sampling=sampling)
        kls = per_token_kl(model, vector, rolls, batch_size=batch_size, positions=positions)
        pts = []
        n = len(prompts)
        for k, c in enumerate(cs):
            per = kls[k * n: (k + 1) * n]
            pool = np.concatenate(per) if per else np.zeros(0, np.float32)
            pts.append(CalibrationPoint(coeff=float(c), value=stat_fn(pool), stats=summarize(pool),
                                        per_prompt=[stat_fn(x) for x in per], round=rnd,
                                        kl=[x.tolist() for x in per], lengths=[len(x) for x in per]))
        history.extend(pts)
        if on_round is not None:
            on_round(rnd, pts)
        return pts

    rnd, best, converged = solve(lambda cs, r: [p.value for p in evaluate(cs, r)], target=target, tol=tol,
                                 c_init=c0, c_min=c_min, c_max=c_max, candidates=candidates, max_rounds=max_rounds,
                                 stat=stat)
    best_point = next(p for p in history if p.coeff == best)
    res = _result(best_point, converged, history, target, stat, tol, window, prompts, pids, rnd, t0)
    res.positions = positions
    res.identity = calibration_identity(model, vector, prompts, stat=stat, target=target, tol=tol, window=window,
                                        positions=positions, c_min=c_min, c_max=c_max,
                                        sampling=None if sampling.greedy else sampling.to_dict())
    warn_reflection(vector, res.c_star)  # an ablation dose > 1 reflects the component: say so, once
    return res


def solve(evaluate: Callable[[list[float], int], list[float]], *, target: float, tol: float, c_init: float = 1.0,
          c_min: float = 1e-4, c_max: float = 1e4, candidates: int = 5, max_rounds: int = 6, stat: str = "stat"
          ) -> tuple[int, float, bool]:
    """Batched log-log root finder: (rounds used, best dose, converged) for evaluate(doses, round) -> values.

    c* is the *first* upward crossing of the target in increasing dose: the answer is always one of the two
    sampled doses that bracket that crossing (the last one below the target and the first one at or above it),
    never a closer-looking point on a later branch of a non-monotone curve. Converged means that point is within
    `tol * target` of the target (`tol` is relative: 0.05 = 5%, whatever the target's scale).

    Round 1 is a geometric grid c_init * 4^[-2..2]. While the first crossing is not bracketed the grid moves
    outward by factors of 4 (down when the lowest dose is already at or above target, up when no dose reaches
    it; at c_min/c_max, CalibrationError). Once bracketed, the next round spreads candidates over +-30% of the
    log-bracket around the log-log secant estimate, so a locally power-law curve (KL ~ c^2 near 0) converges in
    one more round. Never returns a bracket end silently.
    """
    seen: dict[float, float] = {}
    abs_tol = tol * target

    def closest() -> str:
        pts = sorted(seen.items(), key=lambda cv: abs(cv[1] - target) if math.isfinite(cv[1]) else math.inf)[:3]
        return ", ".join(f"c={c:.4g} -> {stat}={v:.4g}" for c, v in pts)

    cs = [min(max(float(c_init) * 4.0 ** k, c_min), c_max) for k in np.linspace(-2, 2, candidates)]
    rnd = 0
    while True:
        rnd += 1
        cs = sorted(set(cs))
        for c, v in zip(cs, evaluate(cs, rnd)):
            seen[c] = v
        lo, hi = first_crossing(seen, target)
        if hi is None:  # nothing reaches the target: the candidates are the doses below it
            eligible = [(c, v) for c, v in seen.items() if math.isfinite(v)]
        else:
            eligible = [cv for cv in (lo, hi) if cv is not None]
        best = min(eligible, key=lambda cv: abs(cv[1] - target), default=None)
        if best is not None and abs(best[1] - target) <= abs_tol:
            return rnd, best[0], True
        if rnd >= max_rounds:
            if best is None:
                raise CalibrationError(f"{stat} KL was never finite at any dose tried; closest: {closest()}")
            warnings.warn(f"calibration did not reach |{stat} - {target}| <= {tol:g} x {target} in {max_rounds} "
                          f"rounds; returning the closest point of the first crossing (converged=False): "
                          f"c={best[0]:.4g} -> {stat}={best[1]:.4g}", IsoKLWarning, stacklevel=3)
            return rnd, best[0], False
        if hi is None:
            top = max(seen)
            if top >= c_max:
                raise CalibrationError(f"{stat} KL never reached {target} nats up to c_max={c_max:g}; closest: "
                                       f"{closest()}. Raise --c-max or lower the target")
            cs = [min(top * 4.0 ** (k + 1), c_max) for k in range(candidates)]
            continue
        if lo is None:
            bottom = min(seen)
            if bottom <= c_min:
                raise CalibrationError(f"{stat} KL is already above {target} nats at c_min={c_min:g}; closest: "
                                       f"{closest()}. Lower --c-min or raise the target")
            cs = [max(bottom / 4.0 ** (k + 1), c_min) for k in range(candidates)]
            continue
        c_est = _loglog_secant(lo[0], lo[1], hi[0], hi[1], target)
        span = math.log(hi[0]) - math.log(lo[0])
        cs = [c for c in (c_est * math.exp(o) for o in np.linspace(-0.3, 0.3, candidates) * span)
              if lo[0] < c < hi[0] and c not in seen]
        if not cs:
            cs = [math.sqrt(lo[0] * hi[0])]


def first_crossing(seen: dict[float, float], target: float
                   ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """(lo, hi) around the first upward crossing of `target` in increasing dose, from {dose: value}.

    hi is the lowest dose whose value is >= target, lo the highest dose below hi (value < target). lo is None when
    the lowest dose is already at or above target; hi is None when no dose reaches it. Non-finite values are
    ignored (no information).
    """
    pts = sorted((c, v) for c, v in seen.items() if math.isfinite(v))
    for i, (c, v) in enumerate(pts):
        if v >= target:
            return (pts[i - 1] if i > 0 else None), (c, v)
    return (pts[-1] if pts else None), None


def _warn_non_monotone(pts: list[CalibrationPoint], stat: str) -> None:
    vals = [p.value for p in pts]
    drops = [(pts[i], pts[i + 1]) for i in range(len(vals) - 1) if vals[i + 1] < vals[i] - 1e-9]
    if drops:
        a, b = drops[0]
        warnings.warn(f"{stat} KL is not monotone in the dose: c={a.coeff:.4g} -> {a.value:.4g} but "
                      f"c={b.coeff:.4g} -> {b.value:.4g} ({len(drops)} drop(s)); c* may not be unique",
                      IsoKLWarning, stacklevel=4)


def _result(best, converged, history, target, stat, tol, window, prompts, pids, rnd, t0) -> CalibrationResult:
    _warn_non_monotone(sorted(history, key=lambda p: p.coeff), stat)
    cs = [p.coeff for p in history]
    per_c = []
    for i in range(len(prompts)):
        per_c.append(_crossing(cs, [p.per_prompt[i] for p in history], target))
    return CalibrationResult(c_star=best.coeff, achieved=best.value, target=target, stat=stat, tol=tol,
                             converged=converged, window=int(window), history=history, per_prompt_c_star=per_c,
                             prompt_ids=pids, rounds=rnd, seconds=round(time.time() - t0, 2), prompts=list(prompts))

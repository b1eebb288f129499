"""Iso-KL calibration: the dose c* at which a statistic of per-token KL(steered || base) equals a target.

The statistic is pooled over *all generated tokens of all calibration prompts* (so "p95" is the 95th percentile
of that pool; its meaning changes with prompts x window, which is why the window is part of every manifest).
One pooled number can hide a wide spread between prompts, so the dose each prompt alone would get is reported
too (`per_prompt_c_star`).

Solver (`solve`): near c = 0, KL grows like c^2 (Taimeskhanov et al. 2026: dCE ~ 1/2 Var(log-odds) c^2), then
steeply, then plateaus, so it works in log-log space. On a CPU a round costs about in proportion to its rows
(test bed, 8 prompts, window 256, one thread: ~1.4 s + 0.13 s per row), so `calibrate` evaluates one dose per
round there: two or three extrapolated doses bracket the first crossing, then log-log regula falsi (Illinois)
closes in on it (8 doses, 19 s CPU, where the batched fan spent 25 doses, 33 s). On an accelerator a round of
several doses costs about one, so the batched fan of `candidates` doses per round is used there
(`candidates="auto"`). Either way it never returns a bracket end silently: an unreachable target raises
`CalibrationError` with the closest values seen.

The history of every calibration is a dose-response curve: `dose_response(doses, values, target)` reads its
shape (the fitted low-dose log-log slope, where it leaves the quadratic regime, where it saturates, whether it
is monotone), `CalibrationResult` records it and `tl_isokl.figures.dose_response` draws it.

A behavioural target instead of KL: `calibrate_nll_delta` finds the dose at which the mean per-token NLL of the
*unsteered* model's own greedy text rises by `target` nats under steering (statistic "nll_delta"); the base
text is generated once and only teacher-forced per dose.
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

NLL_DELTA = "nll_delta"  # the statistic name of a base-text NLL calibration (reserved: never a KL statistic)


@dataclass
class CalibrationPoint:
    """One evaluated dose: pooled statistics, the target statistic, and each prompt's own statistic and per-token
    values (`kl`: per-token KL, or per-token NLL delta for an "nll_delta" calibration)."""

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

    The shape of the sampled dose-response curve (`dose_response` of the history; recomputed from the history when
    an older calibration.json lacks them): `low_dose_slope` (log-log slope fitted over the lowest doses below the
    target; 2 is the small-dose law KL ~ c^2), `leaves_quadratic_at` (first dose whose local slope departs from 2
    by more than `QUADRATIC_BAND`), `saturates_from` (start of the high-end run of local slopes below
    `SATURATION_SLOPE`), `monotone` (no sampled drop). `solver` says how the doses were chosen ("sequential" or
    "fan(5)"; "" when not recorded).
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
    solver: str = ""
    low_dose_slope: float | None = None
    leaves_quadratic_at: float | None = None
    saturates_from: float | None = None
    monotone: bool | None = None

    @property
    def prompts_sha256(self) -> str | None:
        return sha256_json(list(self.prompts)) if self.prompts else None

    @property
    def doses(self) -> int:
        """Doses evaluated (each one a rollout of every calibration prompt)."""
        return len(self.history)

    def spread(self) -> dict[str, float | int | None]:
        """min / median / max of the per-prompt doses, and how many prompts never crossed the target."""
        xs = [c for c in self.per_prompt_c_star if c is not None]
        if not xs:
            return {"min": None, "median": None, "max": None, "ratio": None, "not_bracketed": len(self.per_prompt_c_star)}
        return {"min": min(xs), "median": float(np.median(xs)), "max": max(xs), "ratio": max(xs) / min(xs),
                "not_bracketed": len(self.per_prompt_c_star) - len(xs)}

    def shape(self) -> "DoseResponse":
        """The dose-response shape of this calibration's history (what the shape fields hold)."""
        return dose_response([p.coeff for p in self.history], [p.value for p in self.history], self.target)

    def __repr__(self) -> str:
        """One line: the dose and how it was reached (the full record is `to_dict()`; `history` has every dose)."""
        model = (self.identity or {}).get("model")
        name = model.get("name") if isinstance(model, Mapping) else model
        return (f"CalibrationResult(c_star={self.c_star:.4g}, {self.stat}={self.achieved:.4g} (target "
                f"{self.target:g}, tol {self.tol:g}), converged={self.converged}, window={self.window}, "
                f"rounds={self.rounds}, doses={self.doses}, prompts={len(self.per_prompt_c_star)}"
                + (f", model={name!r}" if name else "") + ")")

    def _repr_html_(self) -> str:
        """The notebook view: the result, the per-prompt spread and the doses tried, as small tables."""
        import html

        def num(v: Any) -> str:
            return "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))

        sp = self.spread()
        head = [("c*", self.c_star), (f"{self.stat} achieved (nats)", self.achieved), ("target", self.target),
                ("tolerance (relative)", self.tol), ("converged", self.converged), ("window", self.window),
                ("rounds / doses", f"{self.rounds} / {self.doses}"), ("prompts", len(self.per_prompt_c_star)),
                ("per-prompt c* min / median / max", " / ".join(num(sp[k]) for k in ("min", "median", "max"))),
                ("prompts not bracketed", sp["not_bracketed"]), ("solver", self.solver or "—")]
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{num(v)}</td></tr>"
                       for k, v in head)
        doses = "".join(f"<tr><td>{num(float(p.coeff))}</td><td>{num(float(p.value))}</td></tr>"
                        for p in sorted(self.history, key=lambda p: p.coeff))
        return (f"<div><b>CalibrationResult</b><table>{rows}</table><details><summary>{self.doses} doses tried"
                f"</summary><table><tr><th>coeff</th><th>{html.escape(self.stat)} (nats)</th></tr>{doses}</table>"
                f"</details></div>")

    def to_dict(self, include_kl: bool = False) -> dict:
        hist = []
        for p in sorted(self.history, key=lambda p: p.coeff):
            d = asdict(p)
            if not include_kl:
                d.pop("kl")
            hist.append(d)
        return {"c_star": self.c_star, "achieved": self.achieved, "target": self.target, "stat": self.stat,
                "tol": self.tol, "converged": self.converged, "window": self.window, "rounds": self.rounds,
                "doses": self.doses, "solver": self.solver, "seconds": self.seconds,
                "per_prompt_c_star": self.per_prompt_c_star, "per_prompt_spread": self.spread(),
                "prompt_ids": self.prompt_ids, "identity": self.identity, "prompts": list(self.prompts),
                "prompts_sha256": self.prompts_sha256, "positions": self.positions,
                "low_dose_slope": self.low_dose_slope, "leaves_quadratic_at": self.leaves_quadratic_at,
                "saturates_from": self.saturates_from, "monotone": self.monotone, "history": hist}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CalibrationResult":
        """Read back `to_dict()` (calibration.json). Lenient for a hand-made dict: only c_star is required;
        missing fields are NaN / empty / None, and `converged` None means "not recorded". The dose-response
        shape fields, absent from files written before they existed, are recomputed from the history."""
        if not isinstance(d, Mapping) or not isinstance(d.get("c_star"), (int, float)) or isinstance(
                d.get("c_star"), bool):
            raise IsoKLError("a calibration needs a numeric c_star; pass the calibration.json written by "
                             "`tl-isokl calibrate` (or CalibrationResult.to_dict())")
        nan = float("nan")
        hist = [CalibrationPoint(**{k: h[k] for k in ("coeff", "value", "stats", "per_prompt", "round")},
                                 kl=h.get("kl") or [], lengths=h.get("lengths") or [])
                for h in d.get("history") or []]
        num = lambda k: nan if d.get(k) is None else float(d[k])  # noqa: E731
        opt = lambda k: None if d.get(k) is None else float(d[k])  # noqa: E731
        res = cls(c_star=float(d["c_star"]), achieved=num("achieved"), target=num("target"),
                  stat=str(d.get("stat") or "p95"), tol=num("tol"), converged=d.get("converged"),
                  window=int(d.get("window") or 0), history=hist,
                  per_prompt_c_star=list(d.get("per_prompt_c_star") or []), prompt_ids=list(d.get("prompt_ids") or []),
                  rounds=int(d.get("rounds") or 0), seconds=num("seconds"), prompts=list(d.get("prompts") or []),
                  positions=str(d.get("positions") or "all"), identity=dict(d.get("identity") or {}),
                  solver=str(d.get("solver") or ""), low_dose_slope=opt("low_dose_slope"),
                  leaves_quadratic_at=opt("leaves_quadratic_at"), saturates_from=opt("saturates_from"),
                  monotone=d.get("monotone"))
        if not any(k in d for k in SHAPE_FIELDS) and hist:
            res._set_shape(res.shape())
        return res

    def _set_shape(self, s: "DoseResponse") -> None:
        self.low_dose_slope, self.leaves_quadratic_at = s.low_dose_slope, s.leaves_quadratic_at
        self.saturates_from, self.monotone = s.saturates_from, s.monotone


SHAPE_FIELDS = ("low_dose_slope", "leaves_quadratic_at", "saturates_from", "monotone")


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


def auto_candidates(model) -> int:
    """Doses per round for `candidates="auto"`: 1 (sequential) on a CPU, where a dose costs the same batched or
    not; 5 (the batched fan) on an accelerator, where a round of 5 doses costs about one."""
    return 1 if str(getattr(model.cfg, "device", "cpu")).split(":")[0] == "cpu" else 5


def _solver_name(candidates: int) -> str:
    return "sequential" if candidates == 1 else f"fan({candidates})"


def _check(target: float, tol: float, prompts: Sequence[str], c_min: float, c_max: float, candidates,
           model) -> int:
    if not target > 0:
        raise IsoKLError(f"target must be > 0 nats, got {target}")
    if not 0 < tol < 1:  # relative: an absolute tolerance meant 57% error at a 0.01-nat target
        raise IsoKLError(f"tol is relative to the target (0.05 = 5%) and must be in (0, 1), got {tol}")
    if not prompts:
        raise IsoKLError("no calibration prompts given")
    if not 0 < c_min < c_max:
        raise IsoKLError(f"need 0 < c_min < c_max, got c_min={c_min}, c_max={c_max}")
    if candidates == "auto":
        return auto_candidates(model)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise IsoKLError(f"candidates per round must be 'auto' or an integer >= 1, got {candidates!r}")
    return candidates


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
    candidates: int | str = "auto",
    max_rounds: int | None = None,
    batch_size: int = 32,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
    on_round: Callable[[int, list[CalibrationPoint]], None] | None = None,
    sampling: Sampling = GREEDY,
) -> CalibrationResult:
    """Find c* with stat(pooled per-token KL over `window`-token greedy rollouts) = target (nats), within
    `tol` relative (|stat - target| <= tol * target; 0.05 = 5%).

    Args:
        c_init: the first dose (sequential) or the centre of the first round's geometric grid (fan); default: the
            operator's `c_init`, 1 for add = one full contrast vector; 0.5 for ablate, whose useful range is ~0..2.
        candidates: doses per round. "auto" (default): 1 on a CPU, 5 on an accelerator (`auto_candidates`).
            1 = sequential: bracket with extrapolated doses, then one log-log regula falsi dose per round;
            >= 2 = the batched fan: that many doses in one batched rollout per round (rows = prompts x doses).
            Both return the first upward crossing with the same guarantees (see `solve`).
        max_rounds: rounds before giving up with converged=False (a warning); default 16 sequential, 6 fan.
        on_round: called after each round with (round, points of that round), e.g. to print a table.

    Raises:
        CalibrationError: the target is not reached between c_min and c_max (message gives the closest points).
    """
    if str(stat).lower().strip() == NLL_DELTA:
        raise IsoKLError(f"{NLL_DELTA!r} is the base-text NLL target, not a KL statistic: use calibrate_nll_delta")
    stat_fn = statistic(stat)
    candidates = _check(target, tol, prompts, c_min, c_max, candidates, model)
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    n = len(prompts)

    def measure(cs: list[float]) -> list[list[np.ndarray]]:
        P, C, I = grid(prompts, cs, pids)
        # the decode keeps the steered final residuals, so the KL pass runs only the base copy (as the sweep does)
        rolls, finals = rollout(model, vector, P, C, prompt_ids=I, window=window, batch_size=batch_size,
                                positions=positions, progress=progress, sampling=sampling, return_final=True)
        kls = per_token_kl(model, vector, rolls, batch_size=batch_size, positions=positions, final=finals)
        return [kls[k * n: (k + 1) * n] for k in range(len(cs))]

    return _calibrate(measure, stat_fn, model=model, vector=vector, prompts=prompts, pids=pids, window=window,
                      target=target, stat=stat, tol=tol, c_init=c_init, c_min=c_min, c_max=c_max,
                      candidates=candidates, max_rounds=max_rounds, positions=positions, on_round=on_round,
                      sampling=sampling)


def calibrate_nll_delta(
    model,
    vector: SteeringVector,
    prompts: Sequence[str],
    *,
    target: float,
    window: int = 256,
    tol: float = 0.05,
    prompt_ids: Sequence[str] | None = None,
    c_init: float | None = None,
    c_min: float = 1e-4,
    c_max: float = 1e4,
    candidates: int | str = "auto",
    max_rounds: int | None = None,
    batch_size: int = 32,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
    on_round: Callable[[int, list[CalibrationPoint]], None] | None = None,
    sampling: Sampling = GREEDY,
) -> CalibrationResult:
    """Find c* at which steering raises the mean per-token NLL of the *base* model's own text by `target` nats
    (statistic "nll_delta"), within `tol` relative.

    The unsteered rollouts of the calibration prompts (`window` tokens, greedy unless `sampling` says otherwise)
    are generated once; for each dose they are teacher-forced through the steered model and
    nll_delta = mean over all generated tokens of all prompts of [-log P_steered(token) + log P_base(token)]
    (pooled like the KL statistics; `per_prompt` holds each prompt's own mean). No steered rollout is decoded,
    so a dose costs one teacher-forced pass instead of a decode plus a KL pass. Same solver, arguments, errors and
    `CalibrationResult` as `calibrate`; its identity records stat "nll_delta", so a sweep never takes it for a KL
    calibration or the other way round.

    Unlike KL, the NLL delta can be negative at small doses (steering may make the base text more likely); the
    solver treats such doses as below the target. `target` (nats per token) has no default: there is no
    established value. For scale, on the test bed (8 calibration prompts, window 256) the KL calibration's
    c* = 1.367 gives nll_delta = 0.071, and nll_delta = 0.5 is reached at c = 2.27 (1.65 x that c*).
    """
    candidates = _check(target, tol, prompts, c_min, c_max, candidates, model)
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    base = rollout(model, None, list(prompts), [0.0] * len(prompts), prompt_ids=pids, window=window,
                   batch_size=batch_size, positions=positions, sampling=sampling)
    base_nll = token_nll(model, None, base, [0.0] * len(base), batch_size=batch_size, positions=positions)

    def measure(cs: list[float]) -> list[list[np.ndarray]]:
        out = []
        for c in cs:
            nll = token_nll(model, vector, base, [c] * len(base), batch_size=batch_size, positions=positions)
            out.append([(s - b).astype(np.float32) for s, b in zip(nll, base_nll)])
            if progress is not None:
                progress(len(base))
        return out

    mean = lambda pool: float(pool.mean()) if pool.size else math.nan  # noqa: E731
    return _calibrate(measure, mean, model=model, vector=vector, prompts=prompts, pids=pids, window=window,
                      target=target, stat=NLL_DELTA, tol=tol, c_init=c_init, c_min=c_min, c_max=c_max,
                      candidates=candidates, max_rounds=max_rounds, positions=positions, on_round=on_round,
                      sampling=sampling)


def token_nll(model, vector: SteeringVector | None, rollouts: Sequence[Rollout], coeffs: Sequence[float], *,
              batch_size: int = 16, positions: str = "all") -> list[np.ndarray]:
    """-log P(token | prefix) of each generated token of each rollout, teacher-forced through the model steered
    at that row's coefficient (float32 log-softmax through the model's own head; chunked like `per_token_kl`).

    Rows are batched in order, `batch_size` at a time, so two calls on the same rollouts pad alike: at
    coefficient 0 the result is bit-identical to the unsteered call.
    """
    import torch

    from tl_isokl.forward import chunks, log_probs, resid_post
    from tl_isokl.steer import steering_hooks
    from tl_isokl.tokens import pad_batch, pad_id, position_ids

    if len(coeffs) != len(rollouts):
        raise IsoKLError(f"{len(rollouts)} rollouts but {len(coeffs)} coefficients; pass one per rollout")
    if vector is not None:
        vector.check_model(model)
    out: list[np.ndarray] = []
    with torch.no_grad():
        for b0 in range(0, len(rollouts), batch_size):
            rows = rollouts[b0: b0 + batch_size]
            cs = [float(c) for c in coeffs[b0: b0 + batch_size]]
            seqs = [r.prompt_tokens + r.tokens for r in rows]
            ids, mask = pad_batch(seqs, pad_id(model), side="left")
            T = ids.shape[1]
            offsets = [T - len(s) for s in seqs]
            starts = [o + len(r.prompt_tokens) for o, r in zip(offsets, rows)]
            hooks = steering_hooks(vector, cs, positions=positions, start=starts) if any(cs) else []
            resid = next(iter(resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask),
                                         hooks=hooks).values()))
            row_idx, pos_idx, toks = [], [], []
            for j, r in enumerate(rows):
                first = offsets[j] + len(r.prompt_tokens) - 1  # the position whose distribution chose token 0
                row_idx += [j] * len(r.tokens)
                pos_idx += list(range(first, first + len(r.tokens)))
                toks += list(r.tokens)
            dev = resid.device
            ri = torch.tensor(row_idx, dtype=torch.long, device=dev)
            pi = torch.tensor(pos_idx, dtype=torch.long, device=dev)
            ti = torch.tensor(toks, dtype=torch.long, device=dev)
            flat = torch.empty(len(row_idx), dtype=torch.float32)
            for c in chunks(model, len(row_idx)):
                lp = log_probs(model, resid[ri[c], pi[c]])
                flat[c] = (-lp.gather(-1, ti[c].unsqueeze(-1)).squeeze(-1)).cpu()
            k = 0
            for r in rows:
                out.append(flat[k: k + len(r.tokens)].numpy().astype(np.float32))
                k += len(r.tokens)
            del resid
    return out


def _calibrate(measure: Callable[[list[float]], list[list[np.ndarray]]], stat_fn: Callable[[np.ndarray], float],
               *, model, vector, prompts, pids, window, target, stat, tol, c_init, c_min, c_max, candidates,
               max_rounds, positions, on_round, sampling) -> CalibrationResult:
    """The solve around `measure(doses) -> [per prompt per-token values] per dose`, shared by both targets."""
    c0 = float(c_init) if c_init is not None else vector.operator.c_init
    t0 = time.time()
    history: list[CalibrationPoint] = []

    def evaluate(cs: list[float], rnd: int) -> list[float]:
        pts = []
        for c, per in zip(cs, measure(cs)):
            pool = np.concatenate(per) if per else np.zeros(0, np.float32)
            pts.append(CalibrationPoint(coeff=float(c), value=stat_fn(pool), stats=summarize(pool),
                                        per_prompt=[stat_fn(x) for x in per], round=rnd,
                                        kl=[x.tolist() for x in per], lengths=[len(x) for x in per]))
        history.extend(pts)
        if on_round is not None:
            on_round(rnd, pts)
        return [p.value for p in pts]

    rnd, best, converged = solve(evaluate, target=target, tol=tol, c_init=c0, c_min=c_min, c_max=c_max,
                                 candidates=candidates, max_rounds=max_rounds, stat=stat)
    best_point = next(p for p in history if p.coeff == best)
    res = _result(best_point, converged, history, target, stat, tol, window, prompts, pids, rnd, t0)
    res.positions = positions
    res.solver = _solver_name(candidates)
    res.identity = calibration_identity(model, vector, prompts, stat=stat, target=target, tol=tol, window=window,
                                        positions=positions, c_min=c_min, c_max=c_max,
                                        sampling=None if sampling.greedy else sampling.to_dict())
    warn_reflection(vector, res.c_star)  # an ablation dose > 1 reflects the component: say so, once
    return res


def solve(evaluate: Callable[[list[float], int], list[float]], *, target: float, tol: float, c_init: float = 1.0,
          c_min: float = 1e-4, c_max: float = 1e4, candidates: int = 5, max_rounds: int | None = None,
          stat: str = "stat") -> tuple[int, float, bool]:
    """Log-log root finder: (rounds used, best dose, converged) for evaluate(doses, round) -> values.

    c* is the *first* upward crossing of the target in increasing dose: the answer is always one of the two
    sampled doses that bracket that crossing (the last one below the target and the first one at or above it),
    never a closer-looking point on a later branch of a non-monotone curve. Converged means that point is within
    `tol * target` of the target (`tol` is relative: 0.05 = 5%, whatever the target's scale). An unreachable
    target raises `CalibrationError` with the closest points seen; running out of rounds warns (IsoKLWarning) and
    returns the closest point of the first crossing with converged=False. Non-finite values carry no information
    about the crossing (they are never returned); a dose where the value is NaN caps the search from above.

    Two strategies with these same guarantees:

    * ``candidates=1``, sequential (the CPU default of `calibrate`): one dose per round. Bracketing steps
      extrapolate in log-log space towards ``OVERSHOOT`` x target (up) or target / ``OVERSHOOT`` (down), with the
      small-dose law KL ~ c^2 (slope 2) from one point and the measured local slope once there are two, each
      step a factor within [STEP_MIN, STEP_MAX]; inside the bracket, log-log regula falsi with the Illinois
      safeguard (an end kept twice in a row has its log-distance to the target halved), doses kept ``EDGE`` of the
      log-bracket away from its ends, and a geometric bisection whenever two steps did not halve the bracket.
      Default budget: ``SEQUENTIAL_MAX_ROUNDS`` doses.
    * ``candidates >= 2``, batched fan (the GPU default, where a round of several doses costs about one): round 1
      is a geometric grid c_init * 4^[-2..2]; while the first crossing is not bracketed the grid moves outward by
      factors of 4; once bracketed, candidates spread over +-30% of the log-bracket around the log-log secant.
      Default budget: ``FAN_MAX_ROUNDS`` rounds.

    The fan samples a wide range in round 1 (c_init/16 .. 16 c_init), so it can see a first crossing below a
    dip of a non-monotone curve that the sequential search, starting at c_init, never samples; both return the
    first crossing *of the doses they sampled*.
    """
    if candidates < 1:
        raise IsoKLError(f"candidates per round must be >= 1, got {candidates}")
    if max_rounds is None:
        max_rounds = SEQUENTIAL_MAX_ROUNDS if candidates == 1 else FAN_MAX_ROUNDS
    if max_rounds < 1:
        raise IsoKLError(f"max_rounds must be >= 1, got {max_rounds}")
    run = _solve_sequential if candidates == 1 else _solve_fan
    return run(evaluate, target=float(target), tol=float(tol), c_init=float(c_init), c_min=float(c_min),
               c_max=float(c_max), candidates=int(candidates), max_rounds=int(max_rounds), stat=stat)


FAN_MAX_ROUNDS = 6
SEQUENTIAL_MAX_ROUNDS = 16
# Sequential solver constants, tuned on synthetic curves and on the test bed's measured p95 curve (window 256,
# 90 doses): the doses needed barely move with them (+-5%), the bisection guard bounds the worst case.
OVERSHOOT = 1.5  # bracketing steps aim past the target by this factor, so the next dose usually lands across it
STEP_MIN, STEP_MAX = 1.05, 8.0  # limits of one bracketing step (a factor on the dose)
SLOPE_MIN, SLOPE_MAX = 0.5, 8.0  # limits of the measured log-log slope used to extrapolate
EDGE = 0.02  # a secant dose stays this fraction of the log-bracket away from the bracket's ends


class _Seen:
    """{dose: value} of a solve, with the checks both strategies share."""

    def __init__(self, target: float, tol: float, max_rounds: int, stat: str):
        self.v: dict[float, float] = {}
        self.target, self.abs_tol, self.tol, self.max_rounds, self.stat = target, tol * target, tol, max_rounds, stat

    @property
    def what(self) -> str:
        return _what(self.stat)

    def closest(self) -> str:
        t = self.target
        pts = sorted(self.v.items(), key=lambda cv: abs(cv[1] - t) if math.isfinite(cv[1]) else math.inf)[:3]
        return ", ".join(f"c={c:.4g} -> {self.stat}={v:.4g}" for c, v in pts)

    def verdict(self, rnd: int) -> tuple[tuple | None, tuple | None, tuple[int, float, bool] | None]:
        """(lo, hi, answer): answer is (rounds, dose, converged) when the solve ends here, else None."""
        lo, hi = first_crossing(self.v, self.target)
        if hi is None:  # nothing reaches the target: the candidates are the doses below it
            eligible = [(c, v) for c, v in self.v.items() if math.isfinite(v)]
        else:
            eligible = [cv for cv in (lo, hi) if cv is not None]
        best = min(eligible, key=lambda cv: abs(cv[1] - self.target), default=None)
        if best is not None and abs(best[1] - self.target) <= self.abs_tol:
            return lo, hi, (rnd, best[0], True)
        if rnd >= self.max_rounds:
            if best is None:
                raise CalibrationError(f"{self.what} was never finite at any dose tried; closest: {self.closest()}")
            warnings.warn(f"calibration did not reach |{self.stat} - {self.target}| <= {self.tol:g} x {self.target} "
                          f"in {self.max_rounds} rounds; returning the closest point of the first crossing "
                          f"(converged=False): c={best[0]:.4g} -> {self.stat}={best[1]:.4g}", IsoKLWarning,
                          stacklevel=4)
            return lo, hi, (rnd, best[0], False)
        return lo, hi, None

    def never_reached(self, c_max: float) -> CalibrationError:
        return CalibrationError(f"{self.what} never reached {self.target} nats up to c_max={c_max:g}; closest: "
                                f"{self.closest()}. Raise --c-max or lower the target")

    def already_above(self, c_min: float) -> CalibrationError:
        return CalibrationError(f"{self.what} is already above {self.target} nats at c_min={c_min:g}; closest: "
                                f"{self.closest()}. Lower --c-min or raise the target")


def _solve_fan(evaluate, *, target, tol, c_init, c_min, c_max, candidates, max_rounds, stat):
    seen = _Seen(target, tol, max_rounds, stat)
    cs = [min(max(c_init * 4.0 ** k, c_min), c_max) for k in np.linspace(-2, 2, candidates)]
    rnd = 0
    while True:
        rnd += 1
        cs = sorted(set(cs))
        for c, v in zip(cs, evaluate(cs, rnd)):
            seen.v[c] = float(v)
        lo, hi, answer = seen.verdict(rnd)
        if answer is not None:
            return answer
        if hi is None:
            top = max(seen.v)
            if top >= c_max:
                raise seen.never_reached(c_max)
            cs = [min(top * 4.0 ** (k + 1), c_max) for k in range(candidates)]
            continue
        if lo is None:
            bottom = min(seen.v)
            if bottom <= c_min:
                raise seen.already_above(c_min)
            cs = [max(bottom / 4.0 ** (k + 1), c_min) for k in range(candidates)]
            continue
        c_est = _loglog_secant(lo[0], lo[1], hi[0], hi[1], target)
        span = math.log(hi[0]) - math.log(lo[0])
        cs = [c for c in (c_est * math.exp(o) for o in np.linspace(-0.3, 0.3, candidates) * span)
              if lo[0] < c < hi[0] and c not in seen.v]
        if not cs:
            cs = [math.sqrt(lo[0] * hi[0])]


def _slope(a: tuple[float, float], b: tuple[float, float]) -> float:
    """log-log slope between two (dose, value) points with positive doses and values."""
    return (math.log(b[1]) - math.log(a[1])) / (math.log(b[0]) - math.log(a[0]))


def _solve_sequential(evaluate, *, target, tol, c_init, c_min, c_max, candidates, max_rounds, stat):
    seen = _Seen(target, tol, max_rounds, stat)
    c = min(max(c_init, c_min), c_max)
    weight = {"lo": 1.0, "hi": 1.0}  # Illinois: the factor on each bracket end's log-distance to the target
    kept_last: str | None = None  # the bracket end the previous secant step kept
    spans: list[float] = []  # log-width of the bracket after each bracketed round
    prev: tuple | None = None
    rnd = 0
    while True:
        rnd += 1
        seen.v[c] = float(evaluate([c], rnd)[0])
        lo, hi, answer = seen.verdict(rnd)
        if answer is not None:
            return answer
        finite = sorted((d, v) for d, v in seen.v.items() if math.isfinite(v))
        if not finite:  # no information yet; NaN comes from too much steering far more often than from too little
            bottom = min(seen.v)
            if bottom <= c_min:
                raise CalibrationError(f"{_what(stat)} was never finite at any dose tried down to c_min={c_min:g}; "
                                       f"closest: {seen.closest()}")
            c = max(bottom / 4.0, c_min)
            continue
        if hi is None:  # every finite dose is below the target: step up from the highest
            c = _step_up(seen, finite, target, c_max)
            prev, kept_last, spans = None, None, []
            continue
        if lo is None:  # the lowest dose is already at or above the target: step down from it
            c = _step_down(seen, finite, target, c_min)
            prev, kept_last, spans = None, None, []
            continue
        if prev is not None:  # which end the last dose replaced; Illinois halves an end kept twice in a row
            kept = "hi" if lo != prev[0] else "lo"
            weight["lo" if kept == "hi" else "hi"] = 1.0
            if kept == kept_last:
                weight[kept] *= 0.5
            kept_last = kept
        prev = (lo, hi)
        x0, x1 = math.log(lo[0]), math.log(hi[0])
        spans.append(x1 - x0)
        if len(spans) >= 3 and spans[-1] > 0.5 * spans[-3]:  # two steps without halving: bisect
            c = math.sqrt(lo[0] * hi[0])
            spans = [spans[-1]]
            continue
        if lo[1] > 0:
            y0, y1 = weight["lo"] * math.log(lo[1] / target), weight["hi"] * math.log(hi[1] / target)
            x = x0 - y0 * (x1 - x0) / (y1 - y0)
        else:  # nothing measurable at lo yet: the small-dose law from hi
            x = x1 + 0.5 * math.log(target / hi[1])
        c = math.exp(min(max(x, x0 + EDGE * (x1 - x0)), x1 - EDGE * (x1 - x0)))


def _step_up(seen: _Seen, finite: list, target: float, c_max: float) -> float:
    c_t, v_t = finite[-1]
    if c_t >= c_max:
        raise seen.never_reached(c_max)
    if v_t > 0:
        below = [cv for cv in finite[:-1] if cv[1] > 0]
        s = min(max(_slope(below[-1], (c_t, v_t)), SLOPE_MIN), SLOPE_MAX) if below else 2.0
        f = (OVERSHOOT * target / v_t) ** (1.0 / s)
    else:
        f = STEP_MAX
    c = min(c_t * min(max(f, STEP_MIN), STEP_MAX), c_max)
    ceiling = min((d for d, v in seen.v.items() if d > c_t and not math.isfinite(v)), default=None)
    if ceiling is not None:  # a NaN above: stay below it
        c = min(c, math.sqrt(c_t * ceiling))
    return c


def _step_down(seen: _Seen, finite: list, target: float, c_min: float) -> float:
    c_b, v_b = finite[0]
    if c_b <= c_min:
        raise seen.already_above(c_min)
    above = [cv for cv in finite[1:] if cv[1] > 0]
    s = min(max(_slope((c_b, v_b), above[0]), SLOPE_MIN), SLOPE_MAX) if above else 2.0
    f = (OVERSHOOT * v_b / target) ** (1.0 / s)
    c = max(c_b / min(max(f, STEP_MIN), STEP_MAX), c_min)
    floor = max((d for d, v in seen.v.items() if d < c_b and not math.isfinite(v)), default=None)
    if floor is not None:
        c = max(c, math.sqrt(c_b * floor))
    return c


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


def _what(stat: str) -> str:
    """How messages name the calibrated quantity: "p95 KL", or "nll_delta"."""
    return stat if stat == NLL_DELTA else f"{stat} KL"


# ------------------------------------------------------------------------------------------------ dose-response

QUADRATIC_BAND = 0.5  # a local log-log slope outside 2 +- this has left the small-dose regime KL ~ c^2
SATURATION_SLOPE = 0.5  # local log-log slopes below this at the high end: the curve has saturated
LOW_DOSE_POINTS = 3  # the low-dose slope is fitted over at most this many of the lowest doses below the target


@dataclass(frozen=True)
class DoseResponse:
    """The shape of a sampled dose-response curve (see `dose_response`). None where the samples cannot say."""

    low_dose_slope: float | None
    leaves_quadratic_at: float | None
    saturates_from: float | None
    monotone: bool


def loglog_points(doses: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(doses, values) sorted by dose, keeping the points a log-log plot can show: dose > 0, finite value > 0."""
    pts = sorted((float(c), float(v)) for c, v in zip(doses, values)
                 if float(c) > 0 and math.isfinite(float(v)) and float(v) > 0)
    pts = list({c: v for c, v in pts}.items())  # one value per dose (the last one given)
    return np.array([c for c, _ in pts], float), np.array([v for _, v in pts], float)


def local_slopes(doses: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(upper dose, slope) of each segment between consecutive `loglog_points`: d log v / d log c. The slope
    belongs to the segment's upper dose (the "local slope at" that dose)."""
    c, v = loglog_points(doses, values)
    if c.size < 2:
        return np.zeros(0), np.zeros(0)
    return c[1:], np.diff(np.log(v)) / np.diff(np.log(c))


def dose_response(doses: Sequence[float], values: Sequence[float], target: float) -> DoseResponse:
    """The shape of a calibration's sampled curve, from its (dose, statistic) pairs alone.

    * `low_dose_slope`: least-squares log-log slope over the (up to `LOW_DOSE_POINTS`) lowest doses whose value is
      below `target`; over the lowest `LOW_DOSE_POINTS` doses when fewer than 2 are below it; None with fewer than
      2 usable points. 2 is the small-dose law KL ~ c^2; more means the lowest sampled doses are already past it.
    * `leaves_quadratic_at`: the first dose whose local slope (from the dose below it) is outside
      2 +- `QUADRATIC_BAND`; None when every sampled segment is inside that band.
    * `saturates_from`: the lower dose of the high-end run of segments whose slopes are all below
      `SATURATION_SLOPE` (the run must include the highest dose); None when the last segment is steeper.
    * `monotone`: no dose's value is below the value of the dose before it (NaN values skipped; a decrease
      from a value <= 0, e.g. a negative NLL delta at small doses, does not count).

    Only zero/negative or non-finite values are left out of the log-log quantities; the resolution is that of the
    sampled doses (a sequential calibration samples little below and above c*).
    """
    c, v = loglog_points(doses, values)
    fin = sorted((float(a), float(b)) for a, b in zip(doses, values) if math.isfinite(float(b)))
    monotone = not any(_drop(b0, b1) for (_, b0), (_, b1) in zip(fin, fin[1:]))
    slope = None
    below = [i for i in range(c.size) if v[i] < target][:LOW_DOSE_POINTS]
    idx = below if len(below) >= 2 else list(range(min(LOW_DOSE_POINTS, c.size)))
    if len(idx) >= 2:
        slope = float(np.polyfit(np.log(c[idx]), np.log(v[idx]), 1)[0])
    ups, s = local_slopes(c, v)
    leaves = next((float(u) for u, k in zip(ups, s) if abs(k - 2.0) > QUADRATIC_BAND), None)
    sat = None
    if s.size and s[-1] < SATURATION_SLOPE:
        j = s.size - 1
        while j > 0 and s[j - 1] < SATURATION_SLOPE:
            j -= 1
        sat = float(c[j])  # segment j runs from c[j] to c[j + 1]
    return DoseResponse(low_dose_slope=slope, leaves_quadratic_at=leaves, saturates_from=sat, monotone=monotone)


def _drop(v0: float, v1: float) -> bool:
    """A decrease from one dose to the next that says something about the curve: values at or below 0 (no KL
    yet; an NLL delta while steering still makes the base text *more* likely) going further down do not count."""
    return v1 < v0 - 1e-9 and v0 > 0


def _warn_shape(shape: DoseResponse, c_star: float, stat: str) -> None:
    if shape.saturates_from is not None and c_star >= shape.saturates_from:
        warnings.warn(f"c* = {c_star:.4g} lies where the {_what(stat)} curve has saturated (local log-log slope < "
                      f"{SATURATION_SLOPE:g} from c = {shape.saturates_from:.4g} on): the statistic barely moves "
                      f"with the dose there, so c* is poorly determined; lower the target or use another statistic",
                      IsoKLWarning, stacklevel=5)


def _warn_non_monotone(pts: list[CalibrationPoint], stat: str) -> None:
    pts = [p for p in pts if math.isfinite(p.value)]
    vals = [p.value for p in pts]
    drops = [(pts[i], pts[i + 1]) for i in range(len(vals) - 1) if _drop(vals[i], vals[i + 1])]
    if drops:
        a, b = drops[0]
        warnings.warn(f"{_what(stat)} is not monotone in the dose: c={a.coeff:.4g} -> {a.value:.4g} but "
                      f"c={b.coeff:.4g} -> {b.value:.4g} ({len(drops)} drop(s)); c* may not be unique",
                      IsoKLWarning, stacklevel=5)


def _result(best, converged, history, target, stat, tol, window, prompts, pids, rnd, t0) -> CalibrationResult:
    _warn_non_monotone(sorted(history, key=lambda p: p.coeff), stat)
    cs = [p.coeff for p in history]
    per_c = []
    for i in range(len(prompts)):
        per_c.append(_crossing(cs, [p.per_prompt[i] for p in history], target))
    res = CalibrationResult(c_star=best.coeff, achieved=best.value, target=target, stat=stat, tol=tol,
                            converged=converged, window=int(window), history=history, per_prompt_c_star=per_c,
                            prompt_ids=pids, rounds=rnd, seconds=round(time.time() - t0, 2), prompts=list(prompts))
    shape = res.shape()
    res._set_shape(shape)
    _warn_shape(shape, res.c_star, stat)
    return res

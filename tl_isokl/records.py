"""The record family of one steered trace: a `Rollout` (what the decode loop wrote), its `ForkProbe`s, the
`Trajectory` a sweep stores (the rollout's tokens with per-token KL and probes at an alpha), and its `Fate`.

Kept free of torch so that analysis code and notebooks can load a run directory with nothing but the stdlib.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence


@dataclass
class Rollout:
    """One greedy rollout, as the decode loop returns it: prompt token ids, generated ids (EOS included when hit),
    dose. `prompt_id` is the prompt's name in its set (a string); `prompt_tokens` its token ids."""

    prompt_id: str
    prompt: str
    coeff: float
    prompt_tokens: list[int]
    tokens: list[int]
    eos: bool
    window: int
    text: str = ""

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass
class ForkProbe:
    """The answer probe spliced in after `t` generated tokens (t = 0: right after the prompt).

    pmass = P(true) + P(false) of the steered model; p_true = P(true) (not renormalised). P(false) is not stored
    because it is determined: `p_false` = pmass - p_true. A probe that cannot split its mass stores p_true = NaN
    (JSON null), and then nothing here says which answer the fork prefers.
    """

    t: int
    pmass: float
    p_true: float

    def alive(self, threshold: float) -> bool:
        """pmass >= threshold. NaN is dead: no mass could be measured, so the model did not commit."""
        return bool(self.pmass >= threshold)

    @property
    def p_false(self) -> float:
        """P(false) = pmass - p_true (NaN when either is)."""
        return self.pmass - self.p_true

    def prediction(self) -> bool | None:
        """The more probable of the two answers at this fork: True (P(true) > P(false)), False (P(false) >
        P(true)), None when they tie or when p_true or pmass is NaN (the fork prefers neither, as far as is known).
        Says nothing about whether the fork is alive: combine with `alive(threshold)`."""
        pt, pf = self.p_true, self.p_false
        if pt != pt or pf != pf or pt == pf:
            return None
        return pt > pf

    @classmethod
    def from_dict(cls, d: dict) -> "ForkProbe":
        """Inverse of asdict, with JSON null (how NaN is written) read back as NaN."""
        return cls(t=int(d["t"]), pmass=_float(d.get("pmass")), p_true=_float(d.get("p_true")))


def _float(v) -> float:
    return float("nan") if v is None else float(v)


@dataclass
class Trajectory:
    """One greedy rollout of one prompt at one dose, with its per-token KL and fork probes.

    `tokens` are the generated ids (the EOS id included when the row stopped at EOS); `kl[i]` is
    KL(steered || base) of the distribution that produced `tokens[i]`, so len(kl) == len(tokens).
    """

    prompt_id: str
    prompt: str
    alpha: float
    coeff: float
    tokens: list[int]
    text: str
    kl: list[float]
    eos: bool
    window: int
    forks: list[ForkProbe] = field(default_factory=list)
    # the base model's mean projection of its generated tokens on the run's concept axis (tl_isokl.effect), when
    # the sweep measured it; None otherwise (and in files written before it existed)
    concept: float | None = None
    # for a gated vector: the share of generated tokens where the gate let steering through (g != 0) and the mean
    # gate value over them, read in the KL's base pass (the residual the gate sees); None otherwise
    gate_on: float | None = None
    gate_mean: float | None = None

    @property
    def length(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_rollout(cls, r: Rollout, *, alpha: float, kl, forks: list[ForkProbe], coeff: float | None = None,
                     concept: float | None = None, gate: Sequence[float] | None = None) -> "Trajectory":
        """The stored record of a rollout measured at `alpha` (prompt token ids are re-derivable, not stored).
        `coeff`: the exact dose alpha x c* (the rollout's own went through a float32 tensor)."""
        return cls(prompt_id=r.prompt_id, prompt=r.prompt, alpha=float(alpha),
                   coeff=float(r.coeff if coeff is None else coeff),
                   tokens=list(r.tokens), text=r.text, kl=[float(x) for x in kl], eos=r.eos, window=r.window,
                   forks=list(forks), concept=None if concept is None else float(concept),
                   gate_on=None if gate is None or not len(gate) else float(sum(g != 0 for g in gate) / len(gate)),
                   gate_mean=None if gate is None or not len(gate) else float(sum(gate) / len(gate)))

    def to_dict(self, threshold: float | None = None) -> dict:
        """The stored record; with `threshold`, also its `fate` at that threshold (a derived copy for readers
        without this package: `from_dict` ignores it and `fate()` recomputes, so a new threshold never reads a
        stale one)."""
        d = asdict(self)
        for k in ("concept", "gate_on", "gate_mean"):
            if d.get(k) is None:  # not measured: files stay as they were before the field existed
                d.pop(k, None)
        if threshold is not None:
            d["fate"] = {"threshold": float(threshold), **asdict(fate(self, threshold))}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        d = {k: v for k, v in d.items() if k != "fate"}
        d["forks"] = [ForkProbe.from_dict(f) for f in d.get("forks", [])]
        d["kl"] = [_float(v) for v in d["kl"]]
        return cls(**d)


@dataclass(frozen=True)
class Fate:
    """Alive/dead/censored outcome of a trajectory at a threshold, at fork resolution.

    The probe only looks at forks, so a death is *interval-censored*: the model was seen alive at fork
    `last_alive` and dead at fork `time`, and failed somewhere in (last_alive, time] (`last_alive` is None when
    the very first fork was already dead). Survival analysis uses `time`, the fork where the death was seen.

    An alive trace is right-censored where it was last observed: its last probed fork (`time == last_alive`),
    not its EOS or the window, because forks after the model's own `</think>` are skipped and nothing is known
    about them. A trace with no probed fork at all is censored at 0 (it adds no information). `eos` says whether
    the rollout ended at EOS.
    """

    died: bool
    time: int
    eos: bool
    last_alive: int | None = None

    @property
    def interval(self) -> tuple[int | None, int] | None:
        """(last alive fork, death fork] for a death, None for a censored trace."""
        return (self.last_alive, self.time) if self.died else None


def fate(traj: Trajectory, threshold: float) -> Fate:
    """Absorbing death: the first fork below `threshold` is the death time, whatever later forks say."""
    last_alive = None
    for f in sorted(traj.forks, key=lambda f: f.t):
        if not f.alive(threshold):
            return Fate(died=True, time=int(f.t), eos=traj.eos, last_alive=last_alive)
        last_alive = int(f.t)
    return Fate(died=False, time=last_alive if last_alive is not None else 0, eos=traj.eos, last_alive=last_alive)

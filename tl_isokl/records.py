"""Plain records shared by rollouts, the sweep and the analysis: what one steered trace *is*.

Kept free of torch so that analysis code and notebooks can load a run directory with nothing but the stdlib.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ForkProbe:
    """The answer probe spliced in after `t` generated tokens (t = 0: right after the prompt).

    pmass = P(true) + P(false) of the steered model; p_true = P(true) (not renormalised).
    """

    t: int
    pmass: float
    p_true: float


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

    @property
    def length(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        d = dict(d)
        d["forks"] = [ForkProbe(**f) for f in d.get("forks", [])]
        d["kl"] = [float("nan") if v is None else float(v) for v in d["kl"]]
        return cls(**d)


@dataclass(frozen=True)
class Fate:
    """Alive/dead/censored outcome of a trajectory at a threshold.

    `time` is the death token (the first fork whose pmass fell below the threshold) when `died`, otherwise the
    censoring token: the EOS length for a rollout that ended, the window for one that ran the whole window.
    """

    died: bool
    time: int
    eos: bool


def fate(traj: Trajectory, threshold: float) -> Fate:
    """Absorbing death: the first fork below `threshold` is the death time, whatever later forks say."""
    for f in sorted(traj.forks, key=lambda f: f.t):
        if not (f.pmass >= threshold):  # NaN counts as dead: no mass could be measured
            return Fate(died=True, time=int(f.t), eos=traj.eos)
    return Fate(died=False, time=traj.length if traj.eos else traj.window, eos=traj.eos)

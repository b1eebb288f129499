"""Synthetic run directories for analysis tests: hand-made Trajectories written through RunDir, no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tl_isokl.records import ForkProbe, Trajectory
from tl_isokl.rundir import RunDir, base_manifest


def traj(alpha: float, kl, forks=(), *, eos: bool = False, window: int = 64, pid: str = "p0") -> Trajectory:
    """A trajectory with `len(kl)` tokens and forks given as (t, pmass) pairs."""
    kl = [float(v) for v in kl]
    return Trajectory(prompt_id=pid, prompt=f"prompt {pid}", alpha=float(alpha), coeff=2.0 * alpha,
                      tokens=list(range(len(kl))), text="x" * len(kl), kl=kl, eos=eos, window=window,
                      forks=[ForkProbe(t=int(t), pmass=float(p), p_true=float(p) / 2) for t, p in forks])


def fork_times(window: int) -> list[int]:
    """0, 1, 2, 4, ... up to and including the window: the log-spaced forks a sweep would probe."""
    ts, t = [0], 1
    while t < window:
        ts.append(t)
        t *= 2
    return ts + [window]


def synthetic_trajectories(alphas=(0.0, 0.5, 1.0, 2.0, 4.0), n: int = 8, window: int = 64, seed: int = 0):
    """Dose-dependent toy data: KL ~ alpha^2 (exactly 0 at alpha 0), death hazard and KL drift rise with alpha,
    some rows end at EOS, and pmass recovers after a death now and then (absorbing death must ignore that)."""
    rng = np.random.default_rng(seed)
    out = []
    for a in alphas:
        for i in range(n):
            length = window if rng.random() < 0.6 else int(rng.integers(8, window))
            eos = length < window
            t = np.arange(length)
            kl = a**2 * rng.lognormal(-1.0, 0.8, length) * (1 + 0.02 * a * t) if a > 0 else np.zeros(length)
            death = int(rng.exponential(window / (a**2 + 0.05))) if a > 0 or i == 0 else 10**9
            forks = []
            for ft in fork_times(window):
                if ft > length:
                    break
                dead = ft >= death
                pm = rng.uniform(0.1, 0.6) if dead and (ft % 3 or a > 1) else rng.uniform(0.85, 0.99)
                forks.append((ft, pm))
            out.append(traj(a, kl, forks, eos=eos, window=window, pid=f"p{i}"))
    return out


def make_run(path, *, alphas=(0.0, 0.5, 1.0, 2.0, 4.0), n: int = 8, window: int = 64, seed: int = 0,
             threshold: float = 0.75, target: float = 1.0, trajectories=None) -> Path:
    """Write a complete run directory (manifest, calibration, one cell per alpha) and return its path."""
    rd = RunDir(path)
    trajs = trajectories if trajectories is not None else synthetic_trajectories(alphas, n, window, seed)
    rd.write_manifest(base_manifest(
        "sweep", model={"name": "testbed-tiny", "revision": "abc123", "dtype": "float32"}, layer=2,
        method="mean_diff", vector_sha256="f" * 64, prompts_sha256="e" * 64, window=window, seed=seed,
        threshold=threshold, alphas=list(alphas)))
    from tl_isokl.files import atomic_write_json

    atomic_write_json(rd.calibration_path, {"c_star": 3.25, "target": target, "stat": 0.998, "q": 0.95,
                                            "converged": True, "history": []})
    for a in sorted({t.alpha for t in trajs}):
        rd.write_cell(a, [t for t in trajs if t.alpha == a])
    return rd.path

"""Preflight: can the *unsteered* model answer the probe at all? Checked before any long run.

A probe the base model cannot answer makes every trace "dead" at t = 0 and every survival number meaningless (on a
random Llama the default JSON probe was dead at t = 0 on 24 of 24 prompts, and nothing said so). So before
calibrating or sweeping, the unsteered model is probed at t = 0 on the prompts, and at one late fork of a short
base rollout (a model can answer right after the prompt yet lose the format once it has written a while). If
fewer than `min_alive` (90%) are alive at either, the run stops with one line saying what the model put its mass
on instead (its top tokens after the prefill) and which flags change the probe. `--skip-preflight` overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.probe import ProbeSpec, probe
from tl_isokl.records import Rollout

MIN_ALIVE = 0.9
LATE_WINDOW = 32


class PreflightError(IsoKLError):
    """The unsteered model cannot answer the probe: the run would measure nothing."""


@dataclass
class PreflightResult:
    """Alive fractions of the unsteered model at t = 0 and at a late fork, and where its mass went."""

    n: int
    alive_t0: float
    alive_late: float | None
    late_fork: int | None
    threshold: float
    top_tokens: list[tuple[str, float]] = field(default_factory=list)
    ok: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def top_after_prefill(model, prompt: str, spec: ProbeSpec, k: int = 5) -> list[tuple[str, float]]:
    """The unsteered model's k most likely next tokens after prompt + prefill (what it says instead)."""
    from tl_isokl.forward import log_probs, resid_post
    from tl_isokl.tokens import decode, encode

    ids = torch.tensor([encode(model, prompt) + encode(model, spec.prefill, bos=False)])
    resid = next(iter(resid_post(model, ids, attention_mask=torch.ones_like(ids)).values()))
    lp = log_probs(model, resid[0, -1])
    vals, idx = lp.topk(k)
    return [(decode(model, [int(i)]), float(v.exp())) for v, i in zip(vals, idx)]


def preflight(model, prompts: Sequence[str], spec: ProbeSpec, *, threshold: float = 0.75,
              min_alive: float = MIN_ALIVE, late_window: int = LATE_WINDOW, batch_size: int = 8) -> PreflightResult:
    """Probe the unsteered model at t = 0 and at the last fork of a `late_window`-token base rollout."""
    from tl_isokl.rollout import rollout
    from tl_isokl.tokens import encode

    prompts = list(prompts)
    if not prompts:
        raise IsoKLError("preflight needs at least one prompt")
    starts = [Rollout(prompt_id=str(i), prompt=p, coeff=0.0, prompt_tokens=encode(model, p), tokens=[], eos=False,
                      window=0) for i, p in enumerate(prompts)]
    t0 = probe(model, None, starts, spec=spec, forks=[[0]] * len(starts), batch_size=batch_size)
    alive0 = [bool(fs) and fs[0].alive(threshold) for fs in t0]
    rolls = rollout(model, None, prompts, [0.0] * len(prompts), window=late_window, batch_size=batch_size)
    late_forks = [[max(0, r.length - 1) if r.eos else r.length] for r in rolls]
    late = probe(model, None, rolls, spec=spec, forks=late_forks, batch_size=batch_size)
    probed = [fs for fs in late if fs]  # forks after the model's own </think> are skipped: nothing to judge there
    alive_late = (sum(fs[0].alive(threshold) for fs in probed) / len(probed)) if probed else None
    res = PreflightResult(n=len(prompts), alive_t0=sum(alive0) / len(prompts), alive_late=alive_late,
                          late_fork=late_window if probed else None, threshold=float(threshold))
    res.ok = res.alive_t0 >= min_alive and (alive_late is None or alive_late >= min_alive)
    if not res.ok:
        bad = next((p for p, a in zip(prompts, alive0) if not a), prompts[0])
        res.top_tokens = top_after_prefill(model, bad, spec)
    return res


def failure_message(res: PreflightResult, spec: ProbeSpec, min_alive: float = MIN_ALIVE) -> str:
    """One line: how many were alive, what the model said instead, and which flags change the probe."""
    n = res.n
    where = (f"at t = 0 on {round(res.alive_t0 * n)}/{n} prompts" if res.alive_t0 < min_alive
             else f"at t = {res.late_fork} of a base rollout on {res.alive_late:.0%} of the prompts")
    top = ", ".join(f"{t!r} {p:.2f}" for t, p in res.top_tokens)
    answers = "/".join(spec.true_variants + spec.false_variants)
    return (f"preflight: the unsteered model answers the probe (P({answers}) >= {res.threshold:g}) {where}, "
            f"needs >= {min_alive:.0%}; after the prefill {spec.prefill!r} it puts its mass on {top}; set "
            f"--probe-preset (json-think, json, yes-no), --probe-prefill/--probe-true/--probe-false or --probe FILE "
            f"to match how this model answers, or pass --skip-preflight")


def check_preflight(model, prompts: Sequence[str], spec: ProbeSpec, *, threshold: float = 0.75,
                    skip: bool = False, batch_size: int = 8, late_window: int = LATE_WINDOW) -> dict:
    """Run the preflight and raise PreflightError on failure (unless `skip`); returns what the manifest records."""
    if skip:
        return {"skipped": True}
    res = preflight(model, prompts, spec, threshold=threshold, batch_size=batch_size, late_window=late_window)
    if not res.ok:
        raise PreflightError(failure_message(res, spec))
    return {"skipped": False, **res.to_dict()}

"""Where dead traces die: the tokens around a death fork, recomputed by teacher forcing with the model.

`inspect_trace` / `death_table`: one teacher-forced steered forward and one base forward over prompt + rollout
recompute, per generated token, the KL the sweep stored, both models' top-k next tokens, the steered entropy, the
log-probability each model gave the rollout's token, and the cosine between the steered layer's residual and the
direction. The recomputed KL must equal the stored one (the sweep batched and padded; this path does not), which
makes every table self-checking. The label comes from `tl_isokl.labels.label_death` (no model needed).

Alignment convention used everywhere here: row i describes generated token i and the *distribution that produced
it*, i.e. the model at position len(prompt) + i - 1 (the same alignment as `Trajectory.kl`). Fork t was spliced
after t generated tokens, so it sits right before token t; the death fork is the first fork below threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError
from tl_isokl.labels import evidence_summary, label_death
from tl_isokl.records import Fate, ForkProbe, Trajectory, fate

# ------------------------------------------------------------------------------------------------- model side


@dataclass
class TraceInspection:
    """Everything `inspect_trace` recomputed for one trajectory.

    Attributes:
        traj: the trajectory.
        fate: its fate at `threshold`.
        threshold: pmass threshold used.
        center: token the table window is centred on (the death fork, or `at`).
        rows: the table (see `death_table`).
        scores: per generated token, all of them: kl (stored), kl_recomputed, logp_steered, logp_base,
            entropy_steered, cos_steered, cos_base; float arrays of len(traj.tokens).
        token_strs: decoded text of every generated token.
        prompt_tokens: the prompt's token ids as re-encoded for the forward.
        max_abs_kl_diff: max |kl_recomputed - kl| over finite stored values (the self-check).
        label, evidence: `label_death` output, or (None, {}) when the trace did not die.
    """

    traj: Trajectory
    fate: Fate
    threshold: float
    center: int
    rows: list[dict[str, Any]]
    scores: dict[str, np.ndarray]
    token_strs: list[str]
    prompt_tokens: list[int]
    max_abs_kl_diff: float
    label: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


def _topk(logp, k: int, decode_one) -> list[tuple[str, float]]:
    vals, idx = logp.topk(k)
    return [(decode_one(int(i)), float(v.exp())) for v, i in zip(vals, idx)]


def inspect_trace(
    model,
    vector,
    traj: Trajectory,
    *,
    threshold: float,
    radius: int = 16,
    positions: str = "all",
    at: int | None = None,
    top_k: int = 3,
    label_kwargs: dict[str, Any] | None = None,
) -> TraceInspection:
    """Recompute one trajectory by teacher forcing and build its death table; see `death_table`.

    Args:
        at: centre the window on this token instead of the death fork (lets alive traces be inspected too).
        positions: the sweep's `positions` ("all", or "generated" = steer only generated tokens), from its
            manifest; needed to reproduce the stored KL.
        label_kwargs: passed to `label_death` for dead traces.
    """
    import torch

    from tl_isokl.forward import chunks, final_hook, log_probs, resid_post
    from tl_isokl.kl import kl_from_logprobs
    from tl_isokl.methods import cosine
    from tl_isokl.steer import steering_hooks
    from tl_isokl.tokens import decode, encode, position_ids

    if radius < 0:
        raise IsoKLError(f"radius {radius} must be >= 0 tokens")
    if top_k < 1:
        raise IsoKLError(f"top_k {top_k} must be >= 1")
    vector.check_model(model)
    f = fate(traj, threshold)
    n = traj.length
    if at is None:
        if not f.died:
            raise IsoKLError(f"trace {traj.prompt_id!r} at alpha {traj.alpha:g} did not die at threshold "
                             f"{threshold:g} (censored at token {f.time}); pass at= to inspect an alive trace")
        center = f.time
    else:
        if not 0 <= at <= n:
            raise IsoKLError(f"at={at} is outside the rollout's tokens 0..{n}")
        center = int(at)
    if len(traj.kl) != n:
        raise IsoKLError(f"trajectory has {n} tokens but {len(traj.kl)} KL values; the run file is damaged")
    if n == 0:
        raise IsoKLError(f"trace {traj.prompt_id!r} at alpha {traj.alpha:g} generated no tokens; nothing to inspect")

    prompt_tokens = encode(model, traj.prompt)
    P = len(prompt_tokens)
    seq = torch.tensor([prompt_tokens + list(traj.tokens)], dtype=torch.long)
    mask = torch.ones_like(seq)
    dev = model.cfg.device
    L_hook, final = vector.hook_name, final_hook(model)
    kw = dict(attention_mask=mask, position_ids=position_ids(mask), names=[L_hook, final])
    with torch.no_grad():
        cs = resid_post(model, seq, hooks=steering_hooks(vector, float(traj.coeff), positions=positions, start=P),
                        **kw)
        cb = resid_post(model, seq, **kw)

        # positions whose output distribution produced generated tokens 0..n-1
        pos = torch.arange(P - 1, P - 1 + n, device=dev)
        tok = torch.tensor(traj.tokens, dtype=torch.long, device=dev)
        cos_s = cosine(cs[L_hook][0, pos], vector.direction).cpu().numpy()
        cos_b = cosine(cb[L_hook][0, pos], vector.direction).cpu().numpy()

        lo, hi = max(0, center - radius), min(n, center + radius + 1)
        kl_r = np.empty(n, dtype=np.float64)
        lp_s = np.empty(n, dtype=np.float64)
        lp_b = np.empty(n, dtype=np.float64)
        ent = np.empty(n, dtype=np.float64)
        detail: dict[int, dict[str, Any]] = {}

        def one(i: int) -> str:
            return decode(model, [i])

        for c in chunks(model, n):
            a, p = c.start, pos[c]
            ls = log_probs(model, cs[final][0, p])
            lb = log_probs(model, cb[final][0, p])
            ps = ls.exp()
            kl_r[a: a + len(p)] = kl_from_logprobs(ls, lb).cpu().numpy()
            ent[a: a + len(p)] = (-(ps * ls).nan_to_num().sum(-1)).cpu().numpy()
            t_ = tok[a: a + len(p), None]
            lp_s[a: a + len(p)] = ls.gather(-1, t_)[:, 0].cpu().numpy()
            lp_b[a: a + len(p)] = lb.gather(-1, t_)[:, 0].cpu().numpy()
            for i in range(max(a, lo), min(a + len(p), hi)):
                detail[i] = {"top_steered": _topk(ls[i - a], top_k, one), "top_base": _topk(lb[i - a], top_k, one)}
        del cs, cb

    kl_stored = np.asarray(traj.kl, dtype=np.float64)
    ok = np.isfinite(kl_stored)
    max_diff = float(np.abs(kl_r[ok] - kl_stored[ok]).max()) if ok.any() else float("nan")
    token_strs = [decode(model, [t]) for t in traj.tokens]
    forks = {p.t: p for p in traj.forks}
    rows = []
    for i in range(lo, hi):
        fp: ForkProbe | None = forks.get(i)
        rows.append({
            "index": i, "token_id": int(traj.tokens[i]), "token": token_strs[i],
            "kl": float(kl_stored[i]), "kl_recomputed": float(kl_r[i]),
            "logp_steered": float(lp_s[i]), "logp_base": float(lp_b[i]),
            "top_steered": detail[i]["top_steered"], "top_base": detail[i]["top_base"],
            "entropy_steered": float(ent[i]), "cos": float(cos_s[i]), "cos_base": float(cos_b[i]),
            "fork_pmass": None if fp is None else float(fp.pmass),
            "fork_alive": None if fp is None else fp.alive(threshold),
            "is_death": bool(f.died and i == f.time),
        })
    label, evidence = (None, {})
    if f.died:
        label, evidence = label_death(traj, threshold, **(label_kwargs or {}))
        # the pure function knows ids only; with the model at hand, name the tokens in the evidence
        if evidence["max_kl_index"] is not None:
            evidence["max_kl_token"] = token_strs[evidence["max_kl_index"]]
        if evidence["loop"] is not None:
            evidence["loop"]["text"] = decode(model, evidence["loop"]["unit"])
        evidence["summary"] = evidence_summary(label, evidence)
    scores = {"kl": kl_stored, "kl_recomputed": kl_r, "logp_steered": lp_s, "logp_base": lp_b,
              "entropy_steered": ent, "cos_steered": cos_s.astype(np.float64), "cos_base": cos_b.astype(np.float64)}
    return TraceInspection(traj=traj, fate=f, threshold=float(threshold), center=center, rows=rows, scores=scores,
                           token_strs=token_strs, prompt_tokens=prompt_tokens, max_abs_kl_diff=max_diff, label=label,
                           evidence=evidence)


def death_table(
    model,
    vector,
    traj: Trajectory,
    *,
    radius: int = 16,
    threshold: float,
    positions: str = "all",
    at: int | None = None,
    top_k: int = 3,
) -> list[dict[str, Any]]:
    """The tokens around a trace's death fork, one dict per generated token in [t - radius, t + radius].

    Two forwards under `torch.no_grad()` over prompt + rollout (steered at `traj.coeff`, then base), caching only
    the steered layer's and the final block's resid_post; logits come from the final residual, log-softmax in
    float32, chunked over positions. Row i describes generated token i and the distribution that produced it
    (see the module docstring).

    Row keys: index, token_id, token (decoded text), kl (stored in the trajectory), kl_recomputed (must match
    kl), logp_steered / logp_base (log-probability each model gave token i), top_steered / top_base ([(text,
    prob)] x top_k), entropy_steered (nats), cos / cos_base (cosine between blocks.{L}.hook_resid_post and the
    direction, steered and base run, at the producing position), fork_pmass / fork_alive (the fork spliced
    right before token i, else None), is_death (i is the death fork).

    Raises:
        IsoKLError: the trace did not die at `threshold` (and no `at` was given), or bad arguments.
    """
    return inspect_trace(model, vector, traj, threshold=threshold, radius=radius, positions=positions, at=at,
                         top_k=top_k).rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text rendering of `death_table` rows for terminals and logs."""
    def tk(s: str) -> str:
        return repr(s)[1:-1][:10]

    head = f"{'i':>4} {'token':<10} {'KL':>8} {'H_steer':>7} {'cos':>6} {'fork':>6}  {'steered top-3':<36} base top-3"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "x" if r["is_death"] else " "
        fork = "" if r["fork_pmass"] is None else f"{r['fork_pmass']:.2f}"
        st = " ".join(f"{tk(s)}:{p:.2f}" for s, p in r["top_steered"])
        bt = " ".join(f"{tk(s)}:{p:.2f}" for s, p in r["top_base"])
        lines.append(f"{r['index']:>4}{mark}{tk(r['token']):<10} {r['kl']:>8.3g} {r['entropy_steered']:>7.3g} "
                     f"{r['cos']:>6.3f} {fork:>6}  {st:<36} {bt}")
    return "\n".join(lines)

"""Exact per-token KL(steered || base) along a steered rollout, by teacher forcing, in bounded memory.

For generated token i of a row: KL(P_steer(. | x_<i) || P_base(. | x_<i)), both conditioned on the *steered*
rollout's tokens, over the full vocabulary, with log-softmax in float32 whatever the model dtype.

How: one teacher-forced forward (`tl_isokl.forward`) over prompt + rollout for a batch holding each row twice,
once at its dose and once at dose 0 (a base row is just a row with coefficient 0); the final residual stream is
cached and turned into log-probabilities through the model's own head in chunks of (row, position) pairs, so
peak memory is chunk x vocab, never batch x window x vocab.

Two shortcuts that change no number: rows at coefficient 0 are not run at all (every operator is the identity at
c = 0, so their KL is exactly 0), and with `final=` (the steered final residuals the decode loop already computed,
`rollout(..., return_final=True)`) only the base copy of each row is forwarded: half the teacher-forced work.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.forward import CHUNK_ELEMENTS, chunks, log_probs, resid_post
from tl_isokl.records import Rollout
from tl_isokl.steer import steering_hooks
from tl_isokl.tokens import pad_batch, pad_id, position_ids
from tl_isokl.vector import SteeringVector

__all__ = ["CHUNK_ELEMENTS", "kl_from_logprobs", "per_token_kl"]


def kl_from_logprobs(ls: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """KL(P_s || P_b) along the last axis from log-probabilities (clamped at 0 against rounding)."""
    return (ls.exp() * (ls - lb)).sum(-1).clamp(min=0.0)


@torch.no_grad()
def per_token_kl(
    model,
    vector: SteeringVector,
    rollouts: Sequence[Rollout],
    *,
    batch_size: int = 16,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
    final: Sequence[torch.Tensor | None] | None = None,
    readout: Any = None,
    gate_readout: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], dict[str, list[np.ndarray] | None]]:
    """Per-token KL for each rollout: a float32 array of len(rollout.tokens) (empty for an empty rollout).

    Exactly 0 for rows at coefficient 0 (not computed: the hook is the identity there, so the steered and base
    distributions are the same computation).

    Args:
        final: per rollout, the steered final-block residual at each generated token's position
            (`rollout(..., return_final=True)`); the steered log-probabilities then come from it through the head,
            and only the base pass is run. Without it (or for a row whose entry is None) both passes are run.
        readout: a `tl_isokl.effect.ConceptAxis`: also return, per rollout, the *base* model's residual at the
            axis's layer projected on it at each generated token (how the unsteered model reads the steered text),
            from the same base pass; rows at coefficient 0 are then run too (base pass only), since they are the
            reference the effect is measured against.
        gate_readout: for a gated vector, also return per rollout the gate value g(h, v) at each generated token.
            The gate reads the residual *entering* the hook at the vector's layer, which depends only on layers
            below it, so on the steered rollout's tokens it equals the base model's residual there: the base pass
            already has it (rows at coefficient 0 are then run too).

    With `readout` or `gate_readout`: returns (kls, {"concept": per-row projections or None, "gate": per-row gate
    values or None}).
    """
    if final is not None and len(final) != len(rollouts):
        raise IsoKLError(f"final has {len(final)} entries for {len(rollouts)} rollouts; pass the list `rollout(..., "
                         f"return_final=True)` returned with those rollouts")
    out: list[np.ndarray | None] = [None] * len(rollouts)
    gate_readout = bool(gate_readout and vector is not None and vector.gate is not None)
    reading = readout is not None or gate_readout
    proj: list[np.ndarray] = [np.zeros(0, np.float32) for _ in rollouts]
    gates: list[np.ndarray] = [np.zeros(0, np.float32) for _ in rollouts]
    todo, base_only = [], []
    for i, r in enumerate(rollouts):
        if r.coeff == 0.0 or not r.tokens:
            out[i] = np.zeros(len(r.tokens), np.float32)
            if reading and r.tokens:
                base_only.append(i)
        else:
            todo.append(i)
    skipped = len(rollouts) - len(todo) - len(base_only)
    if progress is not None and skipped:
        progress(skipped)
    have = [i for i in todo if final is not None and final[i] is not None]
    both = [i for i in todo if not (final is not None and final[i] is not None)]
    for group, mode in ((have, "final"), (both, "both"), (base_only, "base")):
        for b0 in range(0, len(group), batch_size):
            idx = group[b0: b0 + batch_size]
            kls, ps, gs = _kl_batch(model, vector, [rollouts[i] for i in idx], positions,
                                    [final[i] for i in idx] if mode == "final" else None,  # type: ignore[index]
                                    readout, base_only=mode == "base", gate_readout=gate_readout)
            for k, i in enumerate(idx):
                if mode != "base":
                    out[i] = kls[k]
                if ps is not None:
                    proj[i] = ps[k]
                if gs is not None:
                    gates[i] = gs[k]
            if progress is not None:
                progress(len(idx))
    if reading:
        return out, {"concept": proj if readout is not None else None,  # type: ignore[return-value]
                     "gate": gates if gate_readout else None}
    return out  # type: ignore[return-value]


def _kl_batch(model, vector, rows: Sequence[Rollout], positions: str, final: Sequence[torch.Tensor] | None,
              readout: Any = None, base_only: bool = False, gate_readout: bool = False
              ) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[np.ndarray] | None]:
    """KL (and base-model projections on `readout`) of one batch of rows: base copies only when `final` is given
    or `base_only` (no KL then), steered + base copies otherwise."""
    R = len(rows)
    seqs = [r.prompt_tokens + r.tokens for r in rows]
    both = final is None and not base_only
    ids, mask = pad_batch(seqs + seqs if both else seqs, pad_id(model), side="left")
    T = ids.shape[1]
    offsets = [T - len(s) for s in seqs]
    gen_starts = [o + len(r.prompt_tokens) for o, r in zip(offsets, rows)]
    hooks: list = []
    recorder = None
    if readout is not None:
        from tl_isokl.effect import ProjectionRecorder

        recorder = ProjectionRecorder(readout)
        hooks += recorder.fwd_hooks()  # first: reads the residual before a steering hook at the same layer
    seen: dict[str, torch.Tensor] = {}
    if gate_readout:
        from tl_isokl.steer import gate_values

        def read_gate(h, hook):  # before any steering hook at this layer: the residual the gate sees
            seen["g"] = gate_values(h, vector.direction.to(h.device), vector.gate).cpu()
        hooks.append((vector.hook_name, read_gate))
    if both:
        hooks += steering_hooks(vector, [r.coeff for r in rows] + [0.0] * R, positions=positions,
                                start=gen_starts * 2)
    resid = next(iter(resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask),
                                 hooks=hooks).values()))
    proj = gate = None
    base = range(R, 2 * R) if both else range(R)  # the base copies: rows R..2R-1 in the two-copy batch
    lengths = [len(r.tokens) for r in rows]
    if recorder is not None:
        proj = recorder.take(base, gen_starts, lengths)
    if gate_readout:
        gate = [seen["g"][b, s: s + n].numpy().astype(np.float32) for b, s, n in zip(base, gen_starts, lengths)]
    if base_only:
        return [], proj, gate
    # (row, position) of the distribution that produced each generated token: the previous position
    row_idx, pos_idx = [], []
    for j, r in enumerate(rows):
        first = offsets[j] + len(r.prompt_tokens) - 1
        row_idx += [j] * len(r.tokens)
        pos_idx += range(first, first + len(r.tokens))
    dev = resid.device
    ri = torch.tensor(row_idx, dtype=torch.long, device=dev)
    pi = torch.tensor(pos_idx, dtype=torch.long, device=dev)
    steered = None if both else torch.cat([f.to(dev, resid.dtype) for f in final])  # type: ignore[union-attr]
    base_rows = ri + R if both else ri
    kl_flat = torch.empty(len(row_idx), dtype=torch.float32)
    for c in chunks(model, len(row_idx)):
        ls = log_probs(model, resid[ri[c], pi[c]] if both else steered[c])  # type: ignore[index]
        lb = log_probs(model, resid[base_rows[c], pi[c]])
        kl_flat[c] = kl_from_logprobs(ls, lb).cpu()
    del resid
    out, a = [], 0
    for r in rows:
        out.append(kl_flat[a: a + len(r.tokens)].numpy().astype(np.float32))
        a += len(r.tokens)
    return out, proj, gate

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

from typing import Callable, Sequence

import numpy as np
import torch

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
) -> list[np.ndarray]:
    """Per-token KL for each rollout: a float32 array of len(rollout.tokens) (empty for an empty rollout).

    Exactly 0 for rows at coefficient 0 (not computed: the hook is the identity there, so the steered and base
    distributions are the same computation).

    Args:
        final: per rollout, the steered final-block residual at each generated token's position
            (`rollout(..., return_final=True)`); the steered log-probabilities then come from it through the head,
            and only the base pass is run. Without it (or for a row whose entry is None) both passes are run.
    """
    if final is not None and len(final) != len(rollouts):
        raise ValueError(f"final has {len(final)} entries for {len(rollouts)} rollouts")
    out: list[np.ndarray | None] = [None] * len(rollouts)
    todo = []
    for i, r in enumerate(rollouts):
        if r.coeff == 0.0 or not r.tokens:
            out[i] = np.zeros(len(r.tokens), np.float32)
        else:
            todo.append(i)
    if progress is not None and len(todo) < len(rollouts):
        progress(len(rollouts) - len(todo))
    have = [i for i in todo if final is not None and final[i] is not None]
    both = [i for i in todo if not (final is not None and final[i] is not None)]
    for group, stored in ((have, True), (both, False)):
        for b0 in range(0, len(group), batch_size):
            idx = group[b0: b0 + batch_size]
            kls = _kl_batch(model, vector, [rollouts[i] for i in idx], positions,
                            [final[i] for i in idx] if stored else None)  # type: ignore[index]
            for i, k in zip(idx, kls):
                out[i] = k
            if progress is not None:
                progress(len(idx))
    return out  # type: ignore[return-value]


def _kl_batch(model, vector, rows: Sequence[Rollout], positions: str,
              final: Sequence[torch.Tensor] | None) -> list[np.ndarray]:
    """KL of one batch of rows: base copies only when `final` is given, steered + base copies otherwise."""
    R = len(rows)
    seqs = [r.prompt_tokens + r.tokens for r in rows]
    both = final is None
    ids, mask = pad_batch(seqs + seqs if both else seqs, pad_id(model), side="left")
    T = ids.shape[1]
    offsets = [T - len(s) for s in seqs]
    hooks = []
    if both:
        starts = [o + len(r.prompt_tokens) for o, r in zip(offsets, rows)] * 2
        hooks = steering_hooks(vector, [r.coeff for r in rows] + [0.0] * R, positions=positions, start=starts)
    resid = next(iter(resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask),
                                 hooks=hooks).values()))
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
    return out

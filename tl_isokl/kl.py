"""Exact per-token KL(steered || base) along a steered rollout, by teacher forcing, in bounded memory.

For generated token i of a row: KL(P_steer(. | x_<i) || P_base(. | x_<i)), both conditioned on the *steered*
rollout's tokens, over the full vocabulary, with log-softmax in float32 whatever the model dtype.

How: one teacher-forced forward (`tl_isokl.forward`) over prompt + rollout for a batch holding each row twice,
once at its dose and once at dose 0 (a base row is just a row with coefficient 0); the final residual stream is
cached and turned into log-probabilities through the model's own head in chunks of (row, position) pairs, so
peak memory is chunk x vocab, never batch x window x vocab.
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
) -> list[np.ndarray]:
    """Per-token KL for each rollout: a float32 array of len(rollout.tokens) (empty for an empty rollout).

    Exactly 0 for rows at coefficient 0: the hook is the identity there, so the steered and base copies of the
    row are the same computation.
    """
    out: list[np.ndarray] = []
    for b0 in range(0, len(rollouts), batch_size):
        rows = rollouts[b0: b0 + batch_size]
        R = len(rows)
        seqs = [r.prompt_tokens + r.tokens for r in rows]
        ids, mask = pad_batch(seqs + seqs, pad_id(model), side="left")
        T = ids.shape[1]
        offsets = [T - len(s) for s in seqs]
        starts = [o + len(r.prompt_tokens) for o, r in zip(offsets, rows)] * 2
        hooks = steering_hooks(vector, [r.coeff for r in rows] + [0.0] * R, positions=positions, start=starts)
        resid = next(iter(resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask),
                                     hooks=hooks).values()))
        # (row, position) of the distribution that produced each generated token: the previous position
        row_idx, pos_idx, owner = [], [], []
        for j, r in enumerate(rows):
            first = offsets[j] + len(r.prompt_tokens) - 1
            n = len(r.tokens)
            row_idx += [j] * n
            pos_idx += list(range(first, first + n))
            owner += [j] * n
        kl_flat = torch.empty(len(row_idx), dtype=torch.float32)
        dev = resid.device
        ri = torch.tensor(row_idx, dtype=torch.long, device=dev)
        pi = torch.tensor(pos_idx, dtype=torch.long, device=dev)
        for c in chunks(model, len(row_idx)):
            ls = log_probs(model, resid[ri[c], pi[c]])
            lb = log_probs(model, resid[ri[c] + R, pi[c]])
            kl_flat[c] = kl_from_logprobs(ls, lb).cpu()
        owner_t = torch.tensor(owner, dtype=torch.long)
        for j, r in enumerate(rows):
            out.append(kl_flat[owner_t == j].numpy().astype(np.float32))
        del resid
        if progress is not None:
            progress(R)
    return out

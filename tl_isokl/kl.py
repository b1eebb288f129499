"""Exact per-token KL(steered || base) along a steered rollout, by teacher forcing, in bounded memory.

For generated token i of a row: KL(P_steer(. | x_<i) || P_base(. | x_<i)), both conditioned on the *steered*
rollout's tokens, over the full vocabulary, with log-softmax in float32 whatever the model dtype.

How: one teacher-forced forward over prompt + rollout for a batch holding each row twice, once at its dose and
once at dose 0 (a base row is just a row with coefficient 0). The forward returns only the last position's
logits (`logits_to_keep=1`); the final residual stream is cached instead and unembedded in chunks of
(row, position) pairs, so peak memory is chunk x vocab, never batch x window x vocab.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from tl_isokl.head import final_logits
from tl_isokl.rollout import Rollout
from tl_isokl.steer import Steering
from tl_isokl.tokens import pad_batch, pad_id, position_ids
from tl_isokl.vector import SteeringVector, hook_name

# elements of one [chunk, vocab] float32 block (~256 MB): bounds peak memory whatever the window and vocab
CHUNK_ELEMENTS = 1 << 26


def kl_from_logprobs(ls: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """KL(P_s || P_b) along the last axis from log-probabilities (clamped at 0 against rounding)."""
    return (ls.exp() * (ls - lb)).sum(-1).clamp(min=0.0)


def kl_from_logits(steer_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(s) || softmax(b)) along the last axis, computed in float32."""
    return kl_from_logprobs(torch.log_softmax(steer_logits.float(), -1), torch.log_softmax(base_logits.float(), -1))


def unembed_final(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits from the final block's resid_post as the model's own head computes them: `head.final_logits`
    (ln_final, unembed, then the architecture's output transform such as Gemma's soft-cap)."""
    return final_logits(model, resid)


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
    final = hook_name(int(model.cfg.n_layers) - 1)
    pad = pad_id(model)
    dev = model.cfg.device
    V = int(model.cfg.d_vocab)
    chunk = max(1, CHUNK_ELEMENTS // max(V, 1))
    for b0 in range(0, len(rollouts), batch_size):
        rows = rollouts[b0: b0 + batch_size]
        R = len(rows)
        seqs = [r.prompt_ids + r.tokens for r in rows]
        ids, mask = pad_batch(seqs + seqs, pad, side="left")
        T = ids.shape[1]
        offsets = [T - len(s) for s in seqs]
        starts = torch.tensor([o + len(r.prompt_ids) for o, r in zip(offsets, rows)] * 2)
        coeffs = torch.tensor([r.coeff for r in rows] + [0.0] * R)
        steering = Steering(vector, coeffs, positions=positions, start=starts).reset(0)
        with model.hooks(fwd_hooks=steering.fwd_hooks()):
            _, cache = model.run_with_cache(ids.to(dev), attention_mask=mask.to(dev),
                                            position_ids=position_ids(mask).to(dev), names_filter=[final],
                                            logits_to_keep=1)
        resid = cache[final]
        # (row, position) of the distribution that produced each generated token: the previous position
        row_idx, pos_idx, owner = [], [], []
        for j, r in enumerate(rows):
            first = offsets[j] + len(r.prompt_ids) - 1
            n = len(r.tokens)
            row_idx += [j] * n
            pos_idx += list(range(first, first + n))
            owner += [j] * n
        kl_flat = torch.empty(len(row_idx), dtype=torch.float32)
        ri = torch.tensor(row_idx, dtype=torch.long)
        pi = torch.tensor(pos_idx, dtype=torch.long)
        for a in range(0, len(row_idx), chunk):
            r_s = resid[ri[a: a + chunk].to(dev), pi[a: a + chunk].to(dev)]
            r_b = resid[(ri[a: a + chunk] + R).to(dev), pi[a: a + chunk].to(dev)]
            kl_flat[a: a + chunk] = kl_from_logits(final_logits(model, r_s), final_logits(model, r_b)).cpu()
        owner_t = torch.tensor(owner, dtype=torch.long)
        for j, r in enumerate(rows):
            out.append(kl_flat[owner_t == j].numpy().astype(np.float32))
        del cache, resid
        if progress is not None:
            progress(R)
    return out

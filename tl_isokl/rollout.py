"""Batched greedy rollouts of a steered model: many prompts x doses in one KV-cached decode loop.

Why a loop of our own rather than `TransformerBridge.generate`: it lets rows leave the batch as soon as they hit
EOS (long windows are dominated by a few long rows), keeps per-row doses aligned when rows leave, and avoids
`output_logits` (a [window, batch, vocab] tuple). The loop calls the HF model inside the bridge
(`model.original_model`), which fires the TL hooks; prompts are left-padded with an explicit attention mask and
position ids, so a row's rollout in a batch is token-identical to its rollout alone.

`return_final=True` also keeps the final block's residual at every step (d_model floats per generated token):
the steered distribution that chose each token, so the per-token KL needs only the *base* teacher-forced pass
(`kl.per_token_kl(..., final=...)`) instead of re-computing the steered one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.records import Rollout
from tl_isokl.steer import Steering
from tl_isokl.tokens import decode, encode, eos_ids, pad_batch, pad_id, position_ids
from tl_isokl.vector import SteeringVector


def check_window(model, prompt_lens: Sequence[int], window: int) -> None:
    if int(window) <= 0:
        raise IsoKLError(f"window must be a positive number of generated tokens, got {window}")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    longest = max(prompt_lens)
    if n_ctx and longest + window > n_ctx:
        raise IsoKLError(
            f"prompt ({longest} tokens) + window ({window}) exceeds the model context of {n_ctx} tokens; "
            f"use --window {max(1, n_ctx - longest)} or shorter prompts"
        )


def _cache_select(cache, keep: torch.Tensor):
    """Drop finished rows from an HF cache in place (DynamicCache.batch_select_indices)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return cache
    raise IsoKLError("this transformers version's cache cannot drop rows; upgrade transformers to >=5.9")


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 (the default) is greedy argmax; above 0, a token is sampled
    from softmax(logits / temperature) restricted to the smallest set of tokens with probability >= top_p.

    Every row draws from its own generator seeded by (seed, the row's prompt id), so a row's sample is the same
    alone or in any batch, at any position, and a rerun reproduces it. Rows with the same prompt id and dose
    (e.g. one prompt at several alphas) share their seed: the doses differ, not the dice.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise IsoKLError(f"temperature {self.temperature} must be a finite number >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise IsoKLError(f"top_p {self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "seed": int(self.seed)}

    def generator(self, prompt_id: str) -> torch.Generator:
        h = hashlib.sha256(f"{self.seed}:{prompt_id}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))

    def choose(self, logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Next token per row of [rows, vocab] logits (float32 math; argmax when greedy)."""
        if self.greedy:
            return logits.float().argmax(-1)
        probs = torch.softmax(logits.float().cpu() / self.temperature, -1)
        if self.top_p < 1:
            p_sorted, idx = probs.sort(-1, descending=True)
            keep = (p_sorted.cumsum(-1) - p_sorted) < self.top_p  # the top token is always kept
            probs = torch.zeros_like(probs).scatter(-1, idx, p_sorted * keep)
        out = [torch.multinomial(probs[j], 1, generator=g) for j, g in enumerate(generators)]
        return torch.cat(out).to(logits.device)


GREEDY = Sampling()


@torch.no_grad()
def rollout(
    model,
    vector: SteeringVector | None,
    prompts: Sequence[str],
    coeffs: Sequence[float] | torch.Tensor,
    *,
    window: int,
    prompt_ids: Sequence[str] | None = None,
    batch_size: int = 32,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
    sampling: Sampling = GREEDY,
    return_final: bool = False,
) -> list[Rollout] | tuple[list[Rollout], list[torch.Tensor]]:
    """Greedy (or, with `sampling`, seeded sampled) rollouts of each (prompt, coeff) row for up to `window`
    generated tokens.

    Args:
        prompts, coeffs: one entry per row (build the prompt x dose product yourself, or use `grid`).
        window: generated tokens per row; a row that emits EOS stops there (EOS kept in `tokens`).
        batch_size: rows decoded together (memory knob; results do not depend on it).
        positions: "all" or "generated" (steer only generated tokens).
        progress: called with the number of rows finished in each batch.
        return_final: also return, per row, the final block's `hook_resid_post` at the position that chose each
            generated token ([len(tokens), d_model], on the CPU, model dtype): what `per_token_kl(final=...)`
            turns into the steered log-probabilities without a second steered forward.
    """
    coeffs = torch.as_tensor(coeffs, dtype=torch.float32).flatten()
    if len(prompts) != len(coeffs):
        raise IsoKLError(f"{len(prompts)} prompts but {len(coeffs)} coefficients; pass one coefficient per row")
    if vector is not None:
        vector.check_model(model)
    ids_list = [encode(model, p) for p in prompts]
    check_window(model, [len(s) for s in ids_list], window)
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    out: list[Rollout | None] = [None] * len(prompts)
    finals: list[torch.Tensor | None] = [None] * len(prompts)
    # similar lengths together: less padding, and the order does not change any row's result
    order = sorted(range(len(prompts)), key=lambda i: len(ids_list[i]))
    for b0 in range(0, len(order), batch_size):
        rows = order[b0: b0 + batch_size]
        gens = None if sampling.greedy else [sampling.generator(pids[i]) for i in rows]
        gen = _decode_batch(model, vector, [ids_list[i] for i in rows], coeffs[rows], window, positions, sampling,
                            gens, keep_final=return_final)
        for i, (toks, hit, fin) in zip(rows, gen):
            finals[i] = fin
            out[i] = Rollout(prompt_id=pids[i], prompt=prompts[i], coeff=float(coeffs[i]), prompt_tokens=ids_list[i],
                             tokens=toks, eos=hit, window=int(window), text=decode(model, toks))
        if progress is not None:
            progress(len(rows))
    if return_final:
        return out, finals  # type: ignore[return-value]
    return out  # type: ignore[return-value]


def _decode_batch(model, vector, seqs: list[list[int]], coeffs: torch.Tensor, window: int,
                  positions: str, sampling: Sampling = GREEDY, generators: list | None = None,
                  keep_final: bool = False) -> list[tuple[list[int], bool, torch.Tensor | None]]:
    from tl_isokl.acceleration import growing_cache
    from tl_isokl.forward import final_hook

    dev = model.cfg.device
    ids, mask = pad_batch(seqs, pad_id(model), side="left")
    ids, mask = ids.to(dev), mask.to(dev)
    B, T = ids.shape
    stops = torch.tensor(sorted(eos_ids(model)), device=dev)
    steering = None
    hooks = []
    if vector is not None:
        steering = Steering(vector, coeffs, positions=positions, start=T)
        hooks = steering.fwd_hooks()
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (alive rows, their final residual) per forward
    if keep_final:
        current = {}

        def keep(resid, hook):  # registered after the steering hook: sees the steered residual
            current["h"] = resid[:, -1].detach()
        hooks = list(hooks) + [(final_hook(model), keep)]
    generated: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    alive = torch.arange(B, device=dev)  # original row index of each batch row still decoding
    om = model.original_model
    with model.hooks(fwd_hooks=hooks):
        if steering is not None:
            steering.reset(0)
        out = om(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                 past_key_values=growing_cache(capacity=T + window), use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        for step in range(window):
            if keep_final:
                steps.append((alive, current.pop("h")))
            nxt = sampling.choose(logits, [generators[r] for r in alive.tolist()] if generators else [])
            done = torch.isin(nxt, stops) if len(stops) else torch.zeros_like(nxt, dtype=torch.bool)
            for j, (r, t) in enumerate(zip(alive.tolist(), nxt.tolist())):
                generated[r].append(t)
                if done[j]:
                    finished[r] = True
            if step == window - 1:
                break
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            if keep.numel() < alive.numel():
                alive, nxt, mask = alive[keep], nxt[keep], mask[keep]
                cache = _cache_select(cache, keep)
                if steering is not None:
                    steering.select_rows(keep.cpu())
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = mask.sum(1, keepdim=True) - 1
            out = om(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                     use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]
    finals: list[torch.Tensor | None] = [None] * B
    if keep_final and steps:
        h0 = steps[0][1]
        full = h0.new_zeros(len(steps), B, h0.shape[-1])  # [step, row, d]; rows that left keep zeros
        for k, (rows, h) in enumerate(steps):
            full[k, rows] = h
        full = full.cpu()
        finals = [full[: len(generated[i]), i].clone() for i in range(B)]
    return [(generated[i], finished[i], finals[i]) for i in range(B)]


def grid(prompts: Sequence[str], coeffs: Sequence[float], prompt_ids: Sequence[str] | None = None):
    """Rows of the prompt x dose product: (prompts, coeffs, prompt_ids), dose-major."""
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    P, C, I = [], [], []
    for c in coeffs:
        for p, i in zip(prompts, pids):
            P.append(p)
            C.append(float(c))
            I.append(i)
    return P, C, I

"""Teacher forcing through a (steered) model: the one forward behind per-token KL, the probe, forensics and cosine.

Every measurement that is not a rollout is the same three steps, written once here:

1. `resid_post(...)`: one forward over given token ids, under an optional steering hook, caching only the
   `hook_resid_post` of the blocks asked for. The HF head is asked for the last position's logits alone
   (`logits_to_keep=1`): a [batch, window, vocab] tensor is never built.
2. `log_probs(model, resid)`: the final residual of chosen (row, position) pairs through the model's own head
   (`head.final_logits`, soft-caps and logit scales included), log-softmax in float32 whatever the model dtype.
3. `chunks(model, n)`: slices of at most `CHUNK_ELEMENTS // vocab` positions, so step 2 never holds more than
   ~256 MB of float32 whatever the batch, window and vocabulary.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from tl_isokl.head import final_logits
from tl_isokl.vector import hook_name

# elements of one [chunk, vocab] float32 block (~256 MB): bounds peak memory whatever the window and vocab
CHUNK_ELEMENTS = 1 << 26


def final_hook(model) -> str:
    """`blocks.{n_layers - 1}.hook_resid_post`: the residual the head reads."""
    return hook_name(int(model.cfg.n_layers) - 1)


@torch.no_grad()
def resid_post(model, ids: torch.Tensor, *, attention_mask, position_ids: torch.Tensor | None = None,
               hooks: Sequence = (), names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """{hook name: [batch, T, d]} of one teacher-forced forward under `hooks` (default: the final block only).

    `attention_mask` is a [batch, T] padding mask, a 4D float mask, or a {layer type: 4D mask} mapping (the
    packed probe's); it goes to the model as given.
    """
    dev = model.cfg.device
    names = list(dict.fromkeys(names or [final_hook(model)]))
    mask = attention_mask if isinstance(attention_mask, dict) else attention_mask.to(dev)
    kw = {"position_ids": position_ids.to(dev)} if position_ids is not None else {}
    with model.hooks(fwd_hooks=list(hooks)):
        _, cache = model.run_with_cache(ids.to(dev), attention_mask=mask, names_filter=names, logits_to_keep=1, **kw)
    return {n: cache[n] for n in names}


def log_probs(model, resid: torch.Tensor) -> torch.Tensor:
    """log P(next token) in float32 from final-block residuals [..., d] through the model's own head."""
    return torch.log_softmax(final_logits(model, resid).float(), -1)


def chunks(model, n: int) -> Iterator[slice]:
    """Slices over n (row, position) pairs sized so one [chunk, vocab] float32 block stays ~256 MB."""
    step = max(1, CHUNK_ELEMENTS // max(int(model.cfg.d_vocab), 1))
    for a in range(0, n, step):
        yield slice(a, min(a + step, n))

"""Contrastive directions from residual activations at `blocks.{L}.hook_resid_post`.

The direction comes from the extractor registry of `tl_isokl.methods` (mean_diff, pca, ...), and is stored
unit-norm when the method's operator asks for it (ablate) or when `unit=True`:

    mean_diff:             v = mean(pos) - mean(neg)
    pca:                   first principal axis of the pooled, centred activations (pos and neg together,
                           minus their pooled mean). Works for unpaired sets of any size; with a real concept
                           the between-class axis carries the most variance. Signed so v . mean_diff > 0 and
                           scaled to |mean_diff| so raw coefficients are comparable before calibration.
    directional_ablation:  (= mean_diff+ablate) r = mean_diff / |mean_diff|, applied as h - c (h . r) r.
"""

from __future__ import annotations

from typing import Sequence

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.files import sha256_json
from tl_isokl.model import model_info
from tl_isokl.tokens import encode, pad_batch, pad_id, position_ids
from tl_isokl.methods import parse_method
from tl_isokl.vector import Gate, SteeringVector, hook_name

TOKEN_CHOICES = ("last", "mean")


def default_layer(model) -> int:
    """The middle block: where concept directions are usually most linear and steering least destructive."""
    return int(model.cfg.n_layers) // 2


@torch.no_grad()
def residuals(model, prompts: Sequence[str], layers: Sequence[int], *, token: str = "last",
              batch_size: int = 16) -> dict[int, torch.Tensor]:
    """Per-prompt residual at `resid_post` of each layer: {layer: [n_prompts, d_model] float32}.

    One forward per batch caches every requested layer (names_filter), right-padded with a mask. `token="last"`
    takes the last real token; `"mean"` averages the prompt's tokens after BOS.
    """
    if token not in TOKEN_CHOICES:
        raise IsoKLError(f"token choice {token!r} is unknown; use 'last' or 'mean'")
    if not prompts:
        raise IsoKLError("no prompts given; the contrastive sets need at least one prompt each")
    n_layers = int(model.cfg.n_layers)
    for L in layers:
        if not 0 <= L < n_layers:
            raise IsoKLError(f"layer {L} does not exist; the model has layers 0..{n_layers - 1}")
    names = [hook_name(L) for L in layers]
    out: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    pad = pad_id(model)
    for i in range(0, len(prompts), batch_size):
        seqs = [encode(model, p) for p in prompts[i: i + batch_size]]
        ids, mask = pad_batch(seqs, pad, side="right")
        dev = model.cfg.device
        _, cache = model.run_with_cache(ids.to(dev), attention_mask=mask.to(dev),
                                        position_ids=position_ids(mask).to(dev), names_filter=names)
        lengths = mask.sum(1)
        for L, name in zip(layers, names):
            r = cache[name].float().cpu()
            if token == "last":
                out[L].append(r[torch.arange(len(seqs)), lengths - 1])
            else:
                m = mask.clone().float()
                m[:, 0] = 0.0  # skip BOS: its residual is an attention sink with an outsized norm
                denom = m.sum(1, keepdim=True).clamp(min=1.0)
                out[L].append((r * m.unsqueeze(-1)).sum(1) / denom)
    return {L: torch.cat(v) for L, v in out.items()}


def direction_from(pos: torch.Tensor, neg: torch.Tensor, method: str, *, unit: bool = False) -> torch.Tensor:
    """The method's extractor on [n, d] activations; unit-norm when asked or when its operator needs it."""
    extractor, operator = parse_method(method)
    v = extractor.fn(pos, neg)
    return v / v.norm() if (unit or operator.unit) else v


def extract(model, pos: Sequence[str], neg: Sequence[str], *, method: str = "mean_diff",
            layer: int | None = None, token: str = "last", unit: bool = False, gate: Gate | None = None,
            batch_size: int = 16, sources: tuple[str, str] | None = None,
            framing: str | None = None) -> SteeringVector:
    """Extract a steering vector from contrastive prompt sets (pos - neg direction) at one layer.

    The texts are read as given (frame them first, e.g. `prompt_sets.frame_prompts`, to extract from what a chat
    model sees). `sources` names where the two sets came from (e.g. ("concept:cheerful", "concept:gloomy") or two
    file names); it is recorded in the vector's metadata and is what run identities call the vector's concept.
    `framing`, recorded too, says how the texts were framed.
    """
    parse_method(method)  # an unknown method fails before any forward
    layer = default_layer(model) if layer is None else int(layer)
    acts_p = residuals(model, pos, [layer], token=token, batch_size=batch_size)[layer]
    acts_n = residuals(model, neg, [layer], token=token, batch_size=batch_size)[layer]
    info = model_info(model)
    meta = {"model": info.get("name"), "revision": info.get("revision"), "token": token, "unit": unit,
            "n_pos": len(pos), "n_neg": len(neg), "prompts_sha256": sha256_json({"pos": list(pos), "neg": list(neg)}),
            "package_version": _version()}
    if sources is not None:
        meta["pos_source"], meta["neg_source"] = str(sources[0]), str(sources[1])
    if framing is not None:
        meta["framing"] = str(framing)
    return SteeringVector(direction=direction_from(acts_p, acts_n, method, unit=unit), layer=layer,
                          method=method, gate=gate, meta=meta)


def _version() -> str:
    from tl_isokl.rundir import package_version

    return package_version()

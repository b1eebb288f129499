"""Where the steering direction lives in the residual stream: cosine(resid_post, v) per layer and token.

One `run_with_cache` over every block's `hook_resid_post` for the base model and one for the steered model on the
same tokens give cos[layer, token] for both. The base profile shows where the concept is already written (the
direction was extracted at one layer; is it present above and below?); the steered profile shows what the
intervention does downstream (the steered layer jumps by construction; later layers show how much survives the
blocks that follow). A zero residual (e.g. a zero-initialised embedding row) gets cosine 0, not NaN.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError


def resid_post_names(model) -> list[str]:
    from tl_isokl.vector import hook_name

    return [hook_name(i) for i in range(int(model.cfg.n_layers))]


def layer_summary(cos: np.ndarray, *, skip_first: bool = False) -> list[dict[str, float]]:
    """Per layer of a [n_layers, T] cosine array: mean, mean |cos|, max (optionally skipping token 0)."""
    c = np.asarray(cos, dtype=np.float64)
    if skip_first and c.shape[1] > 1:
        c = c[:, 1:]
    return [{"layer": i, "mean": float(row.mean()), "mean_abs": float(np.abs(row).mean()), "max": float(row.max()),
             "min": float(row.min())} for i, row in enumerate(c)]


def cosine_profile(
    model,
    vector,
    text_or_ids: str | Sequence[int],
    *,
    coeff: float = 0.0,
    positions: str = "all",
    start: int = 0,
    skip_bos_in_summary: bool = True,
) -> dict[str, Any]:
    """cos(blocks.{l}.hook_resid_post, direction) for every layer l and token, base and steered at `coeff`.

    Args:
        text_or_ids: a string (encoded with BOS by `tl_isokl.tokens.encode`) or token ids used as given.
        coeff: steering coefficient of the steered run (0 gives a steered profile identical to the base one).
        positions, start: as in `Steering`: "all" steers every token; "generated" only tokens >= start
            (e.g. start = prompt length when the text is a prompt plus its rollout).
        skip_bos_in_summary: leave token 0 out of the per-layer summary when it is the BOS token (an attention
            sink with an outsized norm in real models).

    Returns:
        dict with ids, tokens (decoded), layer (the steered one), coeff, base and steered ([n_layers, T] float
        arrays), summary {"base": [...], "steered": [...]} (per layer: mean, mean_abs, max, min), and gate
        (the steered run's gate telemetry: tokens, fraction_on, mean_gate) for gated vectors, else None.
    """
    import torch

    from tl_isokl.forward import resid_post
    from tl_isokl.methods import cosine
    from tl_isokl.steer import Steering
    from tl_isokl.tokens import bos_id, decode, encode, position_ids

    vector.check_model(model)
    if isinstance(text_or_ids, str):
        ids = encode(model, text_or_ids)
    else:
        ids = [int(i) for i in text_or_ids]
    if not ids:
        raise IsoKLError("cosine_profile needs at least one token; pass a non-empty text")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and len(ids) > n_ctx:
        raise IsoKLError(f"text is {len(ids)} tokens but the model context is {n_ctx}; pass a shorter text")
    names = resid_post_names(model)
    seq = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(seq)
    kw = dict(attention_mask=mask, position_ids=position_ids(mask), names=names)

    def cos_of(cache) -> np.ndarray:
        R = torch.stack([cache[n][0] for n in names])  # [layer, T, d]
        return cosine(R, vector.direction).cpu().numpy().astype(np.float64)

    with torch.no_grad():
        base = cos_of(resid_post(model, seq, **kw))
        steering = Steering(vector, float(coeff), positions=positions, start=start).reset(0)  # kept: telemetry
        steered = cos_of(resid_post(model, seq, hooks=steering.fwd_hooks(), **kw))
    skip = skip_bos_in_summary and ids[0] == bos_id(model)
    return {
        "ids": ids,
        "tokens": [decode(model, [i]) for i in ids],
        "layer": int(vector.layer),
        "method": vector.method,
        "coeff": float(coeff),
        "base": base,
        "steered": steered,
        "summary": {"base": layer_summary(base, skip_first=skip), "steered": layer_summary(steered, skip_first=skip)},
        "summary_skips_bos": bool(skip),
        "gate": steering.telemetry.to_dict() if vector.gate is not None else None,
    }


def format_profile(profile: dict[str, Any]) -> str:
    """The per-layer table `tl-isokl cosine` prints: base and steered mean, mean |cos|, max per layer."""
    head = (f"{'layer':>5}  {'base mean':>9} {'base |cos|':>10} {'base max':>8}  "
            f"{'steer mean':>10} {'steer |cos|':>11} {'steer max':>9}")
    lines = [head, "-" * len(head)]
    for b, s in zip(profile["summary"]["base"], profile["summary"]["steered"]):
        mark = " <- steered" if b["layer"] == profile["layer"] else ""
        lines.append(f"{b['layer']:>5}  {b['mean']:>9.3f} {b['mean_abs']:>10.3f} {b['max']:>8.3f}  "
                     f"{s['mean']:>10.3f} {s['mean_abs']:>11.3f} {s['max']:>9.3f}{mark}")
    g = profile.get("gate")
    if g is not None:
        lines.append(f"gate: fraction_on {g['fraction_on']:.3f}, mean_gate {g['mean_gate']:.3f} over {g['tokens']} "
                     f"steered tokens")
    return "\n".join(lines)


def profile_to_json(profile: dict[str, Any]) -> dict[str, Any]:
    """JSON-able copy (arrays as nested lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in profile.items()}

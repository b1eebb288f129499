"""The model's output head, applied to a residual: logits equal the model's own `forward` logits.

Every place that turns a residual stream into logits (per-token KL, the fork probe, forensics) calls
`final_logits(model, resid)`: the final norm, the unembedding, then the architecture's output transform, which
HF applies *after* the unembedding and which `model.unembed(model.ln_final(resid))` alone would skip:

    Gemma-2/3 (any config with `final_logit_softcapping`)   logits = cap * tanh(logits / cap)
    Cohere, Cohere2                                          logits = logits * logit_scale
    Granite family, MiniCPM3                                 logits = logits / logits_scaling
    HyperCLOVA X                                             logits = logits * logits_scaling
    Falcon-H1                                                logits = logits * lm_head_multiplier
    Muse                                                     logits = logits * output_multiplier (before the cap)

The transform is read from the HF config by model type (the same field name means different things in different
families: Granite divides by `logits_scaling`, HyperCLOVA X multiplies). Multipliers are read from the HF module
when it holds them (Cohere's `logit_scale`), so a scale folded into the weights is not applied twice.

A table cannot know every architecture, so `check_head` (run by `tl_isokl.model.load_model`) compares
`final_logits(final resid_post)` with the model's own logits on a few tokens and refuses a model whose head it does
not reproduce: an unknown transform is a clear load error, never silently wrong KL or probe numbers.
"""

from __future__ import annotations

from typing import Callable

import torch

from tl_isokl.errors import ModelLoadError


def _text_config(model):
    cfg = model.original_model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def _value(*sources, name: str):
    """First non-None attribute `name` among the sources (HF modules first, then configs)."""
    for s in sources:
        v = getattr(s, name, None)
        if v is not None and not callable(v) and not isinstance(v, torch.nn.Module):
            return float(v)
    return None


def output_transform(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The post-unembedding transform of this model's architecture, or None when its head is plain."""
    hf = model.original_model
    cfg = _text_config(model)
    mtype = str(getattr(cfg, "model_type", "") or getattr(model.original_model.config, "model_type", ""))
    inner = getattr(hf, "model", None)
    mult: float | None = None
    if mtype.startswith("cohere"):
        mult = _value(hf, cfg, name="logit_scale")
    elif mtype.startswith("granite") or mtype == "minicpm3":
        s = _value(cfg, name="logits_scaling")
        mult = 1.0 / s if s else None
    elif mtype.startswith("hyperclovax"):
        mult = _value(cfg, name="logits_scaling")
    elif mtype == "falcon_h1":
        mult = _value(inner, hf, cfg, name="lm_head_multiplier")
    elif mtype.startswith("muse"):
        mult = _value(cfg, name="output_multiplier")
    if mult == 1.0:
        mult = None
    cap = _value(cfg, name="final_logit_softcapping")
    if cap is not None and cap <= 0:
        cap = None

    if mult is None and cap is None:
        fn = None
    else:
        def fn(logits: torch.Tensor) -> torch.Tensor:
            if mult is not None:
                logits = logits * mult
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            return logits

        fn.description = ", ".join(  # type: ignore[attr-defined]
            ([f"x {mult:g}"] if mult is not None else []) + ([f"softcap {cap:g}"] if cap is not None else []))
    return fn


def final_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Logits from the final block's resid_post exactly as the model's head computes them (in the model's dtype):
    ln_final, unembed, then the architecture's output transform (soft-cap, logit scale)."""
    logits = model.unembed(model.ln_final(resid))
    fn = output_transform(model)
    return fn(logits) if fn is not None else logits


def head_error(model, n_tokens: int = 8) -> float:
    """max |final_logits(final resid_post) - model logits| / (1 + max |model logits|) on a few fixed tokens."""
    from tl_isokl.vector import hook_name

    V = int(model.cfg.d_vocab)
    ids = torch.tensor([[(7 * i + 3) % V for i in range(n_tokens)]], device=model.cfg.device)
    seen: dict[str, torch.Tensor] = {}

    def grab(x, hook):
        seen["r"] = x.detach()
        return None

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name(int(model.cfg.n_layers) - 1), grab)]):
        ref = model.original_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    if "r" not in seen:
        raise ModelLoadError("the final block's hook_resid_post did not fire; tl-isokl cannot read this model's "
                             "residual stream")
    with torch.no_grad():
        mine = final_logits(model, seen["r"])
    ref, mine = ref.float(), mine.float()
    if mine.shape != ref.shape:
        return float("inf")
    return float((mine - ref).abs().max() / (1.0 + ref.abs().max()))


def check_head(model, name: str = "model") -> None:
    """Raise ModelLoadError unless `final_logits` reproduces the model's own logits (an unsupported output head)."""
    dtype = model.cfg.dtype if isinstance(getattr(model.cfg, "dtype", None), torch.dtype) else torch.float32
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # relative to the logits' scale; bf16 has 8 mantissa bits
    try:
        err = head_error(model)
    except ModelLoadError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"model {name!r}: the output-head check forward failed: {first}") from e
    if not err <= tol:
        fn = output_transform(model)
        what = getattr(fn, "description", "none") if fn is not None else "none"
        mtype = getattr(_text_config(model), "model_type", "?")
        raise ModelLoadError(
            f"model {name!r} ({mtype}): logits from the final residual differ from the model's own by {err:.2g} "
            f"(relative; applied output transform: {what}); its output head is not supported by tl-isokl, so "
            f"KL and probe numbers would be wrong"
        )

"""Prototype (benchmarks only, not the library): run the model's own HF attention kernel under the bridge.

What the bridge does today (TransformerLens 4.3): OLMo-2's adapter (and Llama's, Qwen's, Gemma's, ...) maps
`self_attn` to `PositionEmbeddingsAttentionBridge`, whose `forward` *re-implements* attention in eager PyTorch
(Q/K/V projections, QK-norm, RoPE, `past_key_values.update`, matmul, mask, softmax, matmul) so that
`hook_attn_scores` / `hook_pattern` / `hook_rot_q` / `hook_rot_k` fire; the adapter also loads the HF model with
`attn_implementation="eager"`. `maintain_native_attention=True`, which that bridge passes to its base class, is only
a marker read by TransformerLens's own component benchmark: it changes nothing at run time.

The base class `AttentionBridge.forward` is the delegating path: hook_in -> the wrapped HF attention module ->
hook_out. The HF module's `q_proj` / `k_proj` / `v_proj` / `o_proj` / `q_norm` / `k_norm` are still the bridge's
Linear / RMSNorm bridges, so hook_q/k/v/z fire; the HF module then calls
`ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` (sdpa, flash_attention_2, ...) and updates the HF cache
itself. Block-level hooks (`blocks.{L}.hook_resid_post`, the steering hook) are untouched: they sit on
`BlockBridge`, outside attention.

So the smallest switch is two lines per model, applied after `TransformerBridge.boot_transformers`:

    for blk in model.blocks:                                    # delegate to the HF attention module
        object.__setattr__(blk.attn, "forward", types.MethodType(AttentionBridge.forward, blk.attn))
    model.original_model.set_attn_implementation("sdpa")       # or "flash_attention_2" on a GPU that has it

for every block whose attention bridge is a `PositionEmbeddingsAttentionBridge` (the re-implementing class), with
"eager" (HF's own) instead of "sdpa" where the config has `attn_logit_softcapping` (Gemma-2; HF's sdpa refuses it).

What is lost: hook_attn_scores, hook_rot_q/k, hook_q_normed/k_normed never fire (TransformerLens's benchmark
skips them for the same reason), hook_pattern fires post hoc only with eager (sdpa returns no weights), and the
low-precision RoPE cast-back hook (`tl_isokl.model._fix_low_precision_rotary`) becomes unnecessary (HF's own
attention casts q/k back). tl_isokl needs none of those hooks for rollout / KL / probe; forensics or circuitsvis
views that read `hook_pattern` must switch back (`disable_native_attention`).
"""

from __future__ import annotations

import types


def _attention_bridges(model):
    return [blk.attn for blk in model.blocks if hasattr(blk, "attn")]


def _reimplemented(a) -> bool:
    """Attention bridges that re-implement attention in eager PyTorch (the RoPE family: Llama, Qwen, Gemma,
    OLMo, Mistral, Cohere, Granite, ...). Others (GPT-2's joint-QKV bridge, ...) are left alone."""
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    return isinstance(a, PositionEmbeddingsAttentionBridge)


def choose_implementation(model) -> str:
    """sdpa, except where HF's sdpa path refuses the model (attention-logit soft-capping: Gemma-2)."""
    cfg = model.original_model.config
    cfg = cfg.get_text_config() if callable(getattr(cfg, "get_text_config", None)) else cfg
    return "eager" if getattr(cfg, "attn_logit_softcapping", None) else "sdpa"


def enable_native_attention(model, implementation: str | None = None) -> int:
    """Delegate every re-implemented attention bridge to the wrapped HF module and select its kernel; returns how
    many attention bridges were switched (0: nothing to do, the model keeps its attention). Idempotent."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    n = 0
    for a in _attention_bridges(model):
        if _reimplemented(a) and "forward" not in a.__dict__:
            # object.__setattr__: a bridge component forwards attribute writes to the wrapped HF module when it has
            # the attribute (GeneralizedComponent.__setattr__), so `a.forward = ...` would patch Olmo2Attention
            object.__setattr__(a, "forward", types.MethodType(AttentionBridge.forward, a))
            n += 1
    if n:
        model.original_model.set_attn_implementation(implementation or choose_implementation(model))
    return n


def disable_native_attention(model) -> None:
    """Back to the bridge's reconstructed eager attention (every attention hook fires again)."""
    switched = False
    for a in _attention_bridges(model):
        switched |= a.__dict__.pop("forward", None) is not None
    if switched:
        model.original_model.set_attn_implementation("eager")


def native_attention_enabled(model) -> bool:
    return any("forward" in a.__dict__ for a in _attention_bridges(model))

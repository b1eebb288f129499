"""Prototype (benchmarks only, not the library): stop paying for bridge machinery nobody listens to.

Measured on the test bed (investigate_speed.py overhead): a cached decode step through the bridge costs ~2x the
same step through the raw HF model with a plain torch hook, and hook-point dispatch itself is only ~0.2 ms of
it. The rest is per-call Python in the bridge components. Three exact shortcuts, each taken only when no hook
is attached to the hook points it skips (so every hook that *is* attached still fires and can edit):

1. `GeneralizedComponent.__call__` wraps every component call in accelerate's `align_module_device`, a
   generator context manager plus `has_offloaded_params`, even when nothing is offloaded. Skipped when the
   wrapped module has no accelerate `_hf_hook` (what `has_offloaded_params` requires), i.e. always unless the
   model was loaded with a CPU/disk offloading device_map.
2. `NormalizationBridge._hf_autograd_forward_with_hooks` computes the norm a *second* time (variance, rsqrt,
   sqrt, multiply) only to fire `hook_scale` / `hook_normalized`, then returns the HF module's own output.
   With no hook on either, calling the HF module alone returns the identical tensor. OLMo-2 runs 4 norms per
   layer (q_norm, k_norm, post-attention, post-MLP).
3. `LinearBridge.forward`: hook_in -> linear -> hook_out; with neither hooked it is the HF linear (the
   `_fired_hook_out` flag of the projection-hook protocol is still set).

These are class-level patches (they apply to every bridge in the process; `disable_fastpath` restores the
originals). The exact equivalent belongs upstream in TransformerLens (a `has_hooks` guard in these three
places); tl_isokl could carry it like `_patch_kv_cache`.
"""

from __future__ import annotations

_ORIG: dict = {}


def _quiet(hp) -> bool:
    """No forward/backward hook on this HookPoint (TransformerLens hooks are torch module hooks)."""
    return hp is None or not (hp._forward_hooks or hp._forward_pre_hooks or hp._backward_hooks
                              or getattr(hp, "bwd_hooks", None))


def enable_fastpath() -> None:
    import torch
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.generalized_components.linear import LinearBridge
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    if _ORIG:
        return
    _ORIG["call"] = GeneralizedComponent.__call__
    _ORIG["norm"] = NormalizationBridge._hf_autograd_forward_with_hooks
    _ORIG["linear"] = LinearBridge.forward
    module_call = torch.nn.Module.__call__

    def __call__(self, *args, **kwargs):
        oc = self._modules.get("_original_component")
        if oc is None or "_hf_hook" not in oc.__dict__:
            return module_call(self, *args, **kwargs)
        return _ORIG["call"](self, *args, **kwargs)

    def _hf_autograd_forward_with_hooks(self, x):
        oc = self._modules.get("_original_component")
        if oc is not None and not isinstance(oc, torch.nn.Identity) and _quiet(self.hook_scale) \
                and _quiet(self.hook_normalized):
            r = oc(x)
            return r if r.dtype == x.dtype else r.to(x.dtype)
        return _ORIG["norm"](self, x)

    def forward(self, input, *args, **kwargs):
        oc = self._modules.get("_original_component")
        if oc is not None and _quiet(self._modules.get("hook_in")) and _quiet(self._modules.get("hook_out")):
            if self._suppress_next_hook_in:
                object.__setattr__(self, "_suppress_next_hook_in", False)
            out = oc(input, *args, **kwargs)
            object.__setattr__(self, "_fired_hook_out", True)
            return out
        return _ORIG["linear"](self, input, *args, **kwargs)

    GeneralizedComponent.__call__ = __call__
    NormalizationBridge._hf_autograd_forward_with_hooks = _hf_autograd_forward_with_hooks
    LinearBridge.forward = forward


def disable_fastpath() -> None:
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.model_bridge.generalized_components.linear import LinearBridge
    from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge

    if not _ORIG:
        return
    GeneralizedComponent.__call__ = _ORIG.pop("call")
    NormalizationBridge._hf_autograd_forward_with_hooks = _ORIG.pop("norm")
    LinearBridge.forward = _ORIG.pop("linear")

"""Prototype (benchmarks only): a KV cache that does not re-copy itself at every decode step.

transformers' `DynamicLayer.update` grows K/V with `torch.cat`, copying the whole cache for every new token:
O(T^2) bytes over a window. On the test bed at batch 128 that is ~29% of a decode step's CPU time (torch
profiler: `aten::cat`). `GrowingLayer` keeps K/V in a buffer with spare capacity (doubling when full, so the total
copying is O(T)) and hands attention a view of the filled part. Same numbers (it stores the same K/V), same
interface (`batch_select_indices` for rows leaving at EOS, `get_seq_length`, masks).

    cache = growing_cache()          # instead of DynamicCache() in tl_isokl.rollout._decode_batch

`patched_dynamic_cache()` swaps `transformers.DynamicCache` for the duration of a block, which is how the
benchmarks run the unmodified library with it.
"""

from __future__ import annotations

from contextlib import contextmanager


def _layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self._n = 0
            self._kb = self._vb = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._n + key_states.shape[-2]
            cap = self._kb.shape[-2] if self._kb is not None else 0
            if need > cap:
                cap = max(need, 2 * cap, 64)
                kb = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
                vb = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
                if self._n:
                    kb[..., : self._n, :] = self._kb[..., : self._n, :]
                    vb[..., : self._n, :] = self._vb[..., : self._n, :]
                self._kb, self._vb = kb, vb
            self._kb[..., self._n: need, :] = key_states
            self._vb[..., self._n: need, :] = value_states
            self._n = need
            self.keys, self.values = self._kb[..., :need, :], self._vb[..., :need, :]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self.is_initialized and self._n:
                self._kb, self._vb = self._kb[indices, ...], self._vb[indices, ...]
                self.keys, self.values = self._kb[..., : self._n, :], self._vb[..., : self._n, :]

        def reset(self):
            self._n = 0
            self._kb = self._vb = None
            super().reset()

    return GrowingLayer


_CLS: dict = {}


def growing_cache():
    """A DynamicCache whose layers are GrowingLayer."""
    from transformers.cache_utils import DynamicCache  # not `transformers.DynamicCache`: patched_dynamic_cache swaps it

    if "cache" not in _CLS:
        layer = _layer_class()

        class GrowingCache(DynamicCache):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.layer_class_to_replicate = layer

        _CLS["cache"] = GrowingCache
    return _CLS["cache"]()


@contextmanager
def patched_dynamic_cache():
    """Inside the block, `from transformers import DynamicCache` yields growing caches (tl_isokl.rollout imports it
    at call time)."""
    import transformers

    orig = transformers.DynamicCache
    transformers.DynamicCache = lambda *a, **k: growing_cache()
    try:
        yield
    finally:
        transformers.DynamicCache = orig

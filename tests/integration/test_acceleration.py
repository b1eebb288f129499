"""tl_isokl.acceleration: native attention, the bridge fast path and the growing KV cache change no number.

The reference side is the Hugging Face model itself, loaded separately with `AutoModelForCausalLM` from the same
folder, steered by a plain PyTorch forward hook on its decoder layer (no tl_isokl helper), or the bridge with every
lever off. Zoo families (tests/zoo_models.py) cover the attention variants: sliding windows, soft-capping (Gemma-2
keeps HF's eager kernel), QK-norm, GPT-2's joint-QKV bridge (left alone).
"""

import warnings

import pytest
import torch

import zoo_models as Z
from tl_isokl import acceleration as A
from tl_isokl.model import EMBEDDED_MODEL, load_model, model_info
from tl_isokl.rollout import rollout
from tl_isokl.vector import SteeringVector

FAMILIES = ["gpt2", "llama", "qwen3", "olmo2", "mistral", "qwen2", "gemma2", "gemma3", "granite", "cohere",
            "cohere2"]
EXPECTED_ATTENTION = {"gpt2": "bridge", "gemma2": "eager"}  # every other family: sdpa
LAYER = 0
PROMPTS = [[5, 17, 230, 44, 9, 301, 77, 12, 600, 41, 8, 90], [5, 400, 23, 88]]  # left-padded together
TOL = 1e-4


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo_accel")


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, zoo_root):
    """(family, bridge through load_model with its defaults, untouched HF model from the same folder)."""
    from transformers import AutoModelForCausalLM

    folder = Z.build(request.param, zoo_root)
    bridge = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return request.param, bridge, hf


@pytest.fixture(scope="module")
def plain():
    """The embedded model with every lever off; tests switch levers on it and switch them back."""
    return load_model(device="cpu", native_attention=False, fast_path=False)


# ---- the independent side ---------------------------------------------------------------------------------------
def padded():
    T = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[Z.PAD] * (T - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in PROMPTS])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def hf_layers(hf):
    base = hf.base_model
    return base.layers if hasattr(base, "layers") else base.h


def direction(d: int, scale: float) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(3))
    return scale * v / v.norm()


def hf_add(hf, v):
    """A plain forward hook adding v to decoder layer LAYER's output (every position)."""
    def add(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h + v.to(h.dtype)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    return hf_layers(hf)[LAYER].register_forward_hook(add)


def tl_add(v):
    return [(f"blocks.{LAYER}.hook_resid_post", lambda x, hook: x + v.to(x.dtype))]


def gap(a, b, mask):
    keep = mask.bool()
    return float((a[keep] - b[keep]).abs().max())


# ---- parity with the HF model -----------------------------------------------------------------------------------
def test_attention_mode_is_recorded(pair):
    family, bridge, _ = pair
    info = model_info(bridge)
    assert info["attention"] == EXPECTED_ATTENTION.get(family, "sdpa")
    assert info["fast_path"] is True


def test_logits_equal_the_hf_model(pair):
    _, bridge, hf = pair
    ids, mask, pos = padded()
    with torch.no_grad():
        ours = bridge(ids, attention_mask=mask, position_ids=pos)
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert gap(ours, ref, mask) < TOL


def test_steering_hook_equals_a_plain_hook_on_the_hf_layer(pair):
    """Full forward and one cached decode step (prefill steered, then the step steered), as rollouts run them."""
    from transformers import DynamicCache

    _, bridge, hf = pair
    ids, mask, pos = padded()
    v = direction(int(bridge.cfg.d_model), 4.0)
    nxt = torch.tensor([[31], [502]])
    mask2 = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    pos2 = mask2.sum(1, keepdim=True) - 1
    with torch.no_grad():
        base = bridge(ids, attention_mask=mask, position_ids=pos)
        with bridge.hooks(fwd_hooks=tl_add(v)):
            full = bridge(ids, attention_mask=mask, position_ids=pos)
            om = bridge.original_model
            out = om(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=DynamicCache(),
                     use_cache=True)
            step = om(input_ids=nxt, attention_mask=mask2, position_ids=pos2, past_key_values=out.past_key_values,
                      use_cache=True).logits[:, -1]
        h = hf_add(hf, v)
        try:
            ref_full = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            ref_out = hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=DynamicCache(),
                         use_cache=True)
            ref_step = hf(input_ids=nxt, attention_mask=mask2, position_ids=pos2,
                          past_key_values=ref_out.past_key_values, use_cache=True).logits[:, -1]
            ref_uncached = hf(input_ids=torch.cat([ids, nxt], 1), attention_mask=mask2,
                              position_ids=torch.cat([pos, pos2], 1)).logits[:, -1]
        finally:
            h.remove()
    assert gap(base, full, mask) > 0.1  # the dose is visible
    assert gap(full, ref_full, mask) < TOL
    assert float((step - ref_step).abs().max()) < TOL
    assert float((step - ref_uncached).abs().max()) < TOL


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gpt2"])  # plain, windowed, soft-capped, bridge
def test_growing_cache_rollout_equals_dynamic_cache(family, zoo_root, monkeypatch):
    """tl_isokl.rollout (which decodes through growing_cache) against the same rollout with a plain
    `transformers.DynamicCache` swapped in: identical tokens, rows leaving the batch at an EOS mid-way
    (batch_select_indices) included."""
    import transformers

    bridge = load_model(Z.build(family, zoo_root), device="cpu")
    vec = SteeringVector(direction=direction(int(bridge.cfg.d_model), 1.0), layer=LAYER)
    P = ["Once upon a time", "The little fox", "Is the sky blue?", "Tom is happy today because the sun"]
    C = [0.0, 3.0, 3.0, 0.0]
    first = rollout(bridge, vec, P, C, window=24, batch_size=4)
    stop = first[1].tokens[5]  # a token one row reaches early: it leaves the batch there
    gen = bridge.original_model.generation_config
    old = gen.eos_token_id
    made = []
    real = A.growing_cache

    def counted(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    try:
        gen.eos_token_id = [Z.EOS, int(stop)]
        monkeypatch.setattr(A, "growing_cache", lambda *a, **k: transformers.DynamicCache())
        ref = rollout(bridge, vec, P, C, window=24, batch_size=4)
        monkeypatch.setattr(A, "growing_cache", counted)
        mine = rollout(bridge, vec, P, C, window=24, batch_size=4)
    finally:
        gen.eos_token_id = old
    assert made and all(A.is_growing(c) for c in made)
    assert any(r.eos and r.length < 24 for r in ref) and any(r.length == 24 for r in ref)
    assert [r.tokens for r in mine] == [r.tokens for r in ref]
    assert [r.eos for r in mine] == [r.eos for r in ref]


# ---- the growing cache on its own -------------------------------------------------------------------------------
def test_growing_cache_decode_steps_equal_dynamic_cache():
    """HF's model decoding step by step, a row dropped half-way: the same logits at every step, bit for bit."""
    from transformers import AutoModelForCausalLM, DynamicCache

    hf = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32).eval()
    ids, mask, pos = padded()
    runs = []
    for cache in (DynamicCache(), A.growing_cache(), A.growing_cache(capacity=16)):
        m, logits, seen = mask, [], []
        with torch.no_grad():
            out = hf(input_ids=ids, attention_mask=m, position_ids=pos, past_key_values=cache, use_cache=True)
            for step in range(12):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                if step == 6:  # row 0 leaves
                    keep = torch.tensor([1])
                    out.past_key_values.batch_select_indices(keep)
                    nxt, m = nxt[keep], m[keep]
                m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
                out = hf(input_ids=nxt, attention_mask=m, position_ids=m.sum(1, keepdim=True) - 1,
                         past_key_values=out.past_key_values, use_cache=True)
                logits.append(out.logits[:, -1])
                seen.append(out.past_key_values.get_seq_length())
        runs.append((logits, seen))
    assert A.is_growing(A.growing_cache())
    for logits, seen in runs[1:]:
        assert seen == runs[0][1]
        assert all(torch.equal(a, b) for a, b in zip(logits, runs[0][0]))


def test_growing_cache_falls_back_to_a_plain_dynamic_cache(monkeypatch):
    from transformers.cache_utils import DynamicLayer

    monkeypatch.setitem(A._GROWING, "layer", None)  # what the version guard leaves when its self-check fails
    c = A.growing_cache()
    assert c.layer_class_to_replicate is DynamicLayer and not A.is_growing(c)


def test_growing_cache_honours_inherited_methods():
    """crop (an inherited DynamicLayer method replacing keys) before further updates: still DynamicLayer's K/V."""
    from transformers.cache_utils import DynamicLayer

    g = torch.Generator().manual_seed(1)
    kv = [(torch.randn(2, 2, t, 4, generator=g), torch.randn(2, 2, t, 4, generator=g)) for t in (70, 1, 1, 3)]
    ref, mine = DynamicLayer(), A._growing_layer_class()()
    for i, (k, v) in enumerate(kv):
        a, b = ref.update(k, v), mine.update(k, v)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        if i == 1:
            ref.crop(-2)
            mine.crop(-2)
    assert mine.get_seq_length() == ref.get_seq_length() == 73


@pytest.mark.parametrize("select", [[1, 3, 4], [0, 1, 2], [2], [0, 2, 3, 4], [4, 1, 3], [1, 1, 0],
                                    [False, True, False, True, True]])
def test_growing_cache_row_selection_equals_dynamic_layer(select):
    """Rows leaving (increasing indices: compacted inside the buffer), a reorder and a repeat (fresh copies), then
    more steps and a second selection: K/V equal to DynamicLayer's bit for bit at every step."""
    from transformers.cache_utils import DynamicLayer

    g = torch.Generator().manual_seed(2)

    def kv(b, t):
        return torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g)

    ref, mine = DynamicLayer(), A._growing_layer_class()(capacity=40)
    for k, v in (kv(5, 9), kv(5, 1), kv(5, 1)):
        ref.update(k, v)
        mine.update(k, v)
    buffer = mine._kb.data_ptr()
    idx = torch.tensor(select)
    ref.batch_select_indices(idx)
    mine.batch_select_indices(idx)
    increasing = idx.dtype != torch.bool and all(a < b for a, b in zip(select, select[1:]))
    select = idx.nonzero().flatten().tolist() if idx.dtype == torch.bool else select  # a boolean mask: a copy
    assert (mine._kb.data_ptr() == buffer) == increasing  # compacted in place only when rows just leave
    for step in range(3):
        k, v = kv(len(select), 1)
        a, b = ref.update(k, v), mine.update(k, v)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert b[0].stride() == A._growing_layer_class()(capacity=40).update(*kv(len(select), 12))[0].stride()
    keep = torch.tensor([len(select) - 1])
    ref.batch_select_indices(keep)
    mine.batch_select_indices(keep)
    k, v = kv(1, 1)
    assert all(torch.equal(x, y) for x, y in zip(ref.update(k, v), mine.update(k, v)))
    assert mine.get_seq_length() == ref.get_seq_length() == 15


def test_growing_cache_never_writes_into_tensors_it_adopted():
    """After an inherited method hands the layer tensors it did not allocate (crop's view, here replaced by a
    caller's own tensors), a row selection copies instead of compacting into them."""
    from transformers.cache_utils import DynamicLayer

    g = torch.Generator().manual_seed(3)
    mine = A._growing_layer_class()()
    mine.update(torch.randn(3, 2, 6, 4, generator=g), torch.randn(3, 2, 6, 4, generator=g))
    theirs_k, theirs_v = torch.randn(3, 2, 6, 4, generator=g), torch.randn(3, 2, 6, 4, generator=g)
    mine.keys, mine.values = theirs_k, theirs_v
    before = theirs_k.clone(), theirs_v.clone()
    ref = DynamicLayer()
    ref.update(theirs_k.clone(), theirs_v.clone())
    mine.batch_select_indices(torch.tensor([1, 2]))
    ref.batch_select_indices(torch.tensor([1, 2]))
    assert torch.equal(theirs_k, before[0]) and torch.equal(theirs_v, before[1])
    assert torch.equal(mine.keys, ref.keys) and torch.equal(mine.values, ref.values)


# ---- the fast path ----------------------------------------------------------------------------------------------
IDS = torch.tensor([[5, 17, 230, 44, 9, 301, 77, 12, 600, 41, 8, 90, 33, 250]])
# the hook points each shortcut skips while they are quiet: a norm's, a linear's (in attention and in the MLP)
SHORTCUT_HOOKS = ["blocks.0.ln1_post.hook_normalized", "blocks.1.attn.q_norm.hook_scale", "blocks.0.attn.q.hook_out",
                  "blocks.2.mlp.out.hook_in"]


def logits_of(m, hooks=()):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TransformerLens warns when a norm hook edits (its reconstruction path)
        with m.hooks(fwd_hooks=list(hooks)):
            return m(IDS)


def test_fast_path_is_exact_and_per_instance(plain):
    ref = logits_of(plain)
    try:
        assert A.use_fast_path(plain) > 0 and A.use_fast_path(plain) == 0  # idempotent
        assert torch.equal(logits_of(plain), ref)  # bridge attention, fast path alone: bit for bit
        fresh = load_model(device="cpu", native_attention=False, fast_path=False)
        assert not A.fast_path_enabled(fresh)  # another bridge in the process keeps TransformerLens's classes
        from transformer_lens.model_bridge.generalized_components.linear import LinearBridge

        q = plain.blocks[0].attn.q
        assert isinstance(q, LinearBridge) and type(q).__name__ == "LinearBridge"
    finally:
        A.use_hooked_path(plain)
    assert not A.fast_path_enabled(plain)
    assert torch.equal(logits_of(plain), ref)


def test_shortcuts_are_taken_only_while_quiet(plain, monkeypatch):
    """With no hook, the skipped hook points and accelerate's align_module_device are not entered; an accelerate
    `_hf_hook` on a wrapped module sends that component back through align_module_device."""
    from contextlib import nullcontext

    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components import base as tl_base

    called, aligned = [], []
    fwd = HookPoint.forward
    monkeypatch.setattr(HookPoint, "forward", lambda self, x: (called.append(self.name), fwd(self, x))[1])
    monkeypatch.setattr(tl_base, "align_module_device", lambda m: (aligned.append(m), nullcontext())[1])
    skipped = ["blocks.0.attn.q.hook_in", "blocks.0.attn.q.hook_out", "blocks.0.ln1_post.hook_normalized",
               "blocks.0.ln1_post.hook_scale"]
    logits_of(plain)
    assert set(skipped) <= set(called) and aligned
    q = plain.blocks[0].attn.q.original_component
    try:
        A.use_fast_path(plain)
        called.clear(), aligned.clear()
        logits_of(plain)
        assert not set(skipped) & set(called) and not aligned
        assert "blocks.0.hook_out" in called  # block-level hook points (hook_resid_post) still run
        q.__dict__["_hf_hook"] = object()  # what accelerate's add_hook_to_module leaves
        logits_of(plain)
        assert aligned == [q]
    finally:
        q.__dict__.pop("_hf_hook", None)
        A.use_hooked_path(plain)


@pytest.mark.parametrize("name", SHORTCUT_HOOKS)
def test_hooks_on_skipped_points_fire_and_edit(model, plain, name):
    """A hook attached to a point a shortcut skips takes the original path: it fires and its edit counts, equal
    to the same edit on the bridge with every lever off (native attention on `model`: to kernel rounding)."""
    fired = []

    def watch(x, hook):
        fired.append(hook.name)

    def edit(x, hook):  # additive: a rescaling would vanish in the RMS norms OLMo-2 puts after q and the MLP
        return x + 0.5

    base = logits_of(model)
    assert torch.equal(logits_of(model, [(name, watch)]), base) and fired == [name]
    edited, ref = logits_of(model, [(name, edit)]), logits_of(plain, [(name, edit)])
    assert float((edited - base).abs().max()) > 1e-3
    assert float((edited - ref).abs().max()) < TOL
    try:
        A.use_fast_path(plain)
        assert torch.equal(logits_of(plain, [(name, edit)]), ref)  # bridge attention: exact
    finally:
        A.use_hooked_path(plain)


def test_a_raw_torch_hook_on_a_hook_point_still_fires(model):
    hp = model.hook_dict["blocks.0.attn.q.hook_out"]
    seen = []
    h = hp.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    try:
        logits_of(model)
    finally:
        h.remove()
    assert seen


# ---- bare layers -------------------------------------------------------------------------------------------------
BARE = {"gpt2": False, "granite": False, "cohere": False, "cohere2": False}  # every other family: every block


def test_bare_layers_where_every_component_hands_through(pair):
    """Families whose blocks hold only block / linear / norm / MLP / native-attention bridges get a bare layer per
    block; GPT-2 (joint QKV, bridge attention) and the families with other components keep the bridge's path. The
    zoo's HF-parity tests above (logits, steering hook vs a plain torch hook on the HF layer) run through it."""
    family, bridge, _ = pair
    assert [("_tl_isokl_bare" in b.__dict__) for b in bridge.blocks] == [BARE.get(family, True)] * len(bridge.blocks)


def _inner_points_called(m, monkeypatch, hooks=()):
    from transformer_lens.hook_points import HookPoint

    called = []
    fwd = HookPoint.forward
    monkeypatch.setattr(HookPoint, "forward", lambda self, x: (called.append(self.name), fwd(self, x))[1])
    out = logits_of(m, hooks)
    monkeypatch.setattr(HookPoint, "forward", fwd)
    return out, {n for n in called if n.startswith("blocks.0.") and n != "blocks.0.hook_out"}


def test_bare_layer_is_bit_exact_and_resid_post_hook_still_edits(model, monkeypatch):
    """With only hook_resid_post hooked (what steering attaches), every block runs bare (no inner hook point is
    entered) and the logits equal the bridge's own path bit for bit, with and without the edit."""
    def steer(x, hook):
        return x + 0.5

    hooks = [("blocks.2.hook_resid_post", steer)]
    bare = {b: b.__dict__["_tl_isokl_bare"] for b in model.blocks}
    fast, inner = _inner_points_called(model, monkeypatch)
    fast_steered, inner_steered = _inner_points_called(model, monkeypatch, hooks)
    assert not inner and not inner_steered
    try:
        for b in model.blocks:
            del b.__dict__["_tl_isokl_bare"]
        slow, inner = _inner_points_called(model, monkeypatch)
        slow_steered = logits_of(model, hooks)
        assert inner  # the bridge's path enters them
    finally:
        for b, layer in bare.items():
            object.__setattr__(b, "_tl_isokl_bare", layer)
    assert torch.equal(fast, slow) and torch.equal(fast_steered, slow_steered)
    assert float((fast_steered - fast).abs().max()) > 1e-3


def test_anything_else_attached_sends_the_block_back_through_the_bridge(model, monkeypatch):
    """An inner HookPoint's hook, a torch hook on a component, or the bridge's own attention: the block takes
    TransformerLens's path again (its inner hook points run) and the hook fires."""
    fired = []
    _, inner = _inner_points_called(model, monkeypatch, [("blocks.0.attn.hook_in", lambda x, hook: fired.append(1))])
    assert inner and fired
    h = model.blocks[0].mlp.register_forward_hook(lambda mod, args, out: fired.append(2))
    try:
        _, inner = _inner_points_called(model, monkeypatch)
    finally:
        h.remove()
    assert inner and fired[-1] == 2
    _, inner = _inner_points_called(model, monkeypatch)
    assert not inner  # removed: bare again


def test_a_component_mode_sends_the_block_back_through_the_bridge(model, monkeypatch):
    """Compatibility mode or processed weights on any component of the block (checked per call, from the
    instance): the bridge's path, whose computation those modes change."""
    q = model.blocks[0].attn.q
    for flag in ("compatibility_mode", "_use_processed_weights"):
        object.__setattr__(q, flag, True)
        try:
            _, inner = _inner_points_called(model, monkeypatch)
        finally:
            del q.__dict__[flag]
        assert inner, flag
        _, inner = _inner_points_called(model, monkeypatch)
        assert not inner


def test_bare_layers_follow_the_attention_mode_and_the_hooked_path(plain, monkeypatch):
    ref = logits_of(plain)
    try:
        A.use_fast_path(plain)  # bridge attention: bare layers are built but not used
        assert all("_tl_isokl_bare" in b.__dict__ for b in plain.blocks)
        out, inner = _inner_points_called(plain, monkeypatch)
        assert inner and torch.equal(out, ref)
        A.use_native_attention(plain)
        out, inner = _inner_points_called(plain, monkeypatch)
        assert not inner and float((out - ref).abs().max()) < TOL
    finally:
        A.use_bridge_attention(plain)
        A.use_hooked_path(plain)
    assert not any("_tl_isokl_bare" in b.__dict__ for b in plain.blocks)
    assert torch.equal(logits_of(plain), ref)


# ---- native attention -------------------------------------------------------------------------------------------
def test_native_attention_switches_both_ways(plain):
    ref = logits_of(plain)
    pattern = "blocks.0.attn.hook_pattern"
    fired = []

    def watch(x, hook):
        fired.append(hook.name)

    try:
        assert A.use_native_attention(plain) == int(plain.cfg.n_layers)
        assert A.attention_mode(plain) == model_info(plain)["attention"] == "sdpa"
        native = logits_of(plain, [(pattern, watch)])
        assert not fired  # the attention-internal hooks are what native attention gives up
        assert float((native - ref).abs().max()) < TOL
    finally:
        assert A.use_bridge_attention(plain) == int(plain.cfg.n_layers)
    assert A.attention_mode(plain) == "bridge"
    assert torch.equal(logits_of(plain, [(pattern, watch)]), ref) and fired == [pattern]


def test_bf16_native_equals_hf_sdpa_bf16_exactly():
    """bf16 with native attention: HF's attention casts the rotated q/k itself (the bridge's rotary fix is for its
    own re-implementation); the bridge reproduces HF's sdpa bf16 forward bit for bit."""
    from transformers import AutoModelForCausalLM

    m = load_model(device="cpu", dtype="bfloat16")
    hf = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    assert model_info(m)["attention"] == "sdpa"
    with torch.no_grad():
        ours, ref = m(IDS), hf(IDS, attention_mask=torch.ones_like(IDS)).logits
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)

"""KV-cached generation under steering: the cached path must agree with the uncached one and with a
teacher-forced forward, and the hook must steer every decode step (it sees [B, 1, d] after the prefill).

fp32 tolerance, logits: 1e-4 absolute. Cached decoding computes each step's attention against stored K/V
instead of re-running the whole sequence, so the matmul shapes (and fp32 summation order) differ; on the test
bed the gap is ~1e-6 (tl4 brief §2: 5e-7 on a similar model). A broken cache is off by ~1 (brief §0).
"""

from types import SimpleNamespace

import pytest
import torch

from tl_isokl.extract import extract
from tl_isokl.steer import Steering, steer
from tl_isokl.testbed.corpus import concept_prompts
from tl_isokl.vector import Gate

L = 2
N = 8  # new tokens
TOL = 1e-4
GEN = dict(max_new_tokens=N, do_sample=False, stop_at_eos=False, verbose=False, output_logits=True)


@pytest.fixture(scope="module")
def vectors(model):
    pos, neg = concept_prompts("cheerful")[:6], concept_prompts("gloomy")[:6]
    return {m: extract(model, pos, neg, method=m, layer=L) for m in ("mean_diff", "directional_ablation")}


@pytest.fixture(scope="module")
def prompt_ids(model):
    return model.tokenizer(concept_prompts("animal")[2], return_tensors="pt").input_ids


def max_logit_gap(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def generate(model, inp, cache, **kw):
    with torch.no_grad():
        return model.generate(inp, use_past_kv_cache=cache, **GEN, **kw)


@pytest.mark.parametrize("method,gate,coeff", [
    ("mean_diff", None, 0.4),
    ("mean_diff", Gate("soft", 0.05), -0.6),
    ("directional_ablation", None, 1.0),
    ("directional_ablation", Gate("hard", 0.0), 0.5),  # sign with an ablation is refused
])
def test_cached_steered_generation_equals_uncached(model, vectors, prompt_ids, method, gate, coeff):
    v = vectors[method].with_gate(gate)
    with steer(model, v, coeff):
        cached = generate(model, prompt_ids, True)
        uncached = generate(model, prompt_ids, False)
    with torch.no_grad():
        base = generate(model, prompt_ids, True)
    assert torch.equal(cached.sequences, uncached.sequences)
    gap = max_logit_gap(cached.logits, uncached.logits)
    assert gap < TOL, f"cached vs uncached steered logits differ by {gap:.2e}"
    assert max_logit_gap(cached.logits, base.logits) > 1e-2  # steering is on, so parity is not vacuous


def test_cached_per_row_coefficients_on_a_left_padded_batch(model, vectors):
    """List input: generate left-pads and masks; each row follows its own dose, cached == uncached == alone."""
    prompts = [concept_prompts("animal")[0], concept_prompts("machine")[3], concept_prompts("cheerful")[1]]
    lengths = {len(model.tokenizer(p).input_ids) for p in prompts}
    assert len(lengths) > 1, "prompts must differ in length so the batch is padded"
    coeffs = torch.tensor([0.0, 0.5, -0.5])
    v = vectors["mean_diff"]
    with steer(model, v, coeffs):
        cached = generate(model, prompts, True)
        uncached = generate(model, prompts, False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert max_logit_gap(cached.logits, uncached.logits) < TOL
    for i, p in enumerate(prompts):
        with steer(model, v, coeffs[i: i + 1]):
            alone = generate(model, [p], True)
        assert torch.equal(alone.sequences[0, -N:], cached.sequences[i, -N:])
        assert max(float((a[0] - b[i]).abs().max()) for a, b in zip(alone.logits, cached.logits)) < TOL


def test_generated_positions_under_cache_match_a_teacher_forced_hand_hook(model, vectors, prompt_ids):
    """positions="generated", start=T: the prompt is unsteered, every generated token is steered. Reference:
    one forward over the final sequence with a hand-written hook that adds c*v at positions >= T."""
    T, c, v = prompt_ids.shape[1], 0.8, vectors["mean_diff"]
    with steer(model, v, c, positions="generated", start=T):
        out = generate(model, prompt_ids, True)
    seq = out.sequences

    def hand(r, hook):
        r = r.clone()
        r[:, T:] += c * v.direction
        return r

    with torch.no_grad():
        tf = model.run_with_hooks(seq, fwd_hooks=[(v.hook_name, hand)])
        base_prompt = model(prompt_ids)
    gen_logits = torch.stack(out.logits, 1)  # step t predicts token T+t from position T+t-1
    torch.testing.assert_close(gen_logits, tf[:, T - 1: T - 1 + N], rtol=0, atol=TOL)
    # the first token comes from the unsteered prompt
    torch.testing.assert_close(gen_logits[:, 0], base_prompt[:, -1], rtol=0, atol=TOL)
    assert float((gen_logits[:, 1:] - torch.stack(generate(model, prompt_ids, True).logits, 1)[:, 1:])
                 .abs().max()) > 1e-2


def test_decode_steps_are_steered_and_seen_one_position_at_a_time(model, vectors, prompt_ids):
    v, c = vectors["mean_diff"], 0.8
    shapes = []
    every = Steering(v, c)
    prefill_only = Steering(v, c)

    def record(h, hook):
        shapes.append(tuple(h.shape))
        return every.hook(h, hook)

    def skip_decode(h, hook):
        return prefill_only.hook(h, hook) if h.shape[1] > 1 else None

    with torch.no_grad():
        with model.hooks(fwd_hooks=[(v.hook_name, record)]):
            a = generate(model, prompt_ids, True)
        with model.hooks(fwd_hooks=[(v.hook_name, skip_decode)]):
            b = generate(model, prompt_ids, True)
    B, T, d = prompt_ids.shape[0], prompt_ids.shape[1], int(model.cfg.d_model)
    assert shapes == [(B, T, d)] + [(B, 1, d)] * (N - 1)  # one call per decode step
    assert every.position == T + N - 1
    assert torch.equal(a.logits[0], b.logits[0])  # same prefill
    later = max_logit_gap(a.logits[1:], b.logits[1:])
    assert later > 1e-2, f"steering the decode steps changed later logits by only {later:.2e}"


def test_manual_cached_loop_on_original_model_matches_full_forward(model, vectors):
    """original_model + DynamicCache, left-padded batch, steered: each decode step == the full forward."""
    from transformers import DynamicCache

    prompts = [concept_prompts("animal")[0], concept_prompts("cheerful")[1]]
    seqs = [model.tokenizer(p).input_ids for p in prompts]
    cont = torch.tensor([[200, 260, 286, 27, 261], [15, 200, 431, 27, 423]])  # any continuation tokens
    T = max(len(s) for s in seqs)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (T - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs])
    full_ids = torch.cat([ids, cont], 1)
    full_mask = torch.cat([mask, torch.ones_like(cont)], 1)
    full_pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    v = vectors["mean_diff"]
    with torch.no_grad(), steer(model, v, torch.tensor([0.5, -0.7])):
        full = model(full_ids, attention_mask=full_mask, position_ids=full_pos)
        cache = DynamicCache()
        om = model.original_model
        step = om(input_ids=ids, attention_mask=mask, position_ids=full_pos[:, :T], past_key_values=cache,
                  use_cache=True).logits
        assert cache.get_seq_length() == T  # an empty cache here is the transformers >= 5.24 bug (brief §0)
        got = [step[:, -1]]
        for t in range(cont.shape[1] - 1):
            k = T + t
            step = om(input_ids=cont[:, t: t + 1], attention_mask=full_mask[:, : k + 1],
                      position_ids=full_pos[:, k: k + 1], past_key_values=cache, use_cache=True).logits
            got.append(step[:, -1])
    torch.testing.assert_close(torch.stack(got, 1), full[:, T - 1: -1], rtol=0, atol=TOL)
    assert cache.get_seq_length() == T + cont.shape[1] - 1


# ---- the transformers >= 5.24 shim, proven without that version ------------------------------------------------

def test_patch_kv_cache_routes_cache_kwarg_into_past_key_values(monkeypatch):
    import transformers
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    from transformers import DynamicCache

    from tl_isokl.model import _patch_kv_cache

    version = f"installed transformers {transformers.__version__}"
    seen = []

    def stub(self, k, v, **kw):
        seen.append(kw)
        return k, v

    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", stub)
    _patch_kv_cache()
    patched = AttentionBridge._update_kv_cache
    assert patched is not stub and getattr(patched, "_tl_isokl_patched", False), version
    _patch_kv_cache()
    assert AttentionBridge._update_kv_cache is patched, f"patch applied twice ({version})"

    k = v = torch.zeros(1, 2, 3, 4)
    cache, other = object(), object()
    patched(None, k, v, cache=cache)
    patched(None, k, v, cache=cache, past_key_values=other)
    patched(None, k, v)
    assert seen[0]["past_key_values"] is cache, f"cache= not routed ({version})"
    assert seen[1]["past_key_values"] is other, f"explicit past_key_values overridden ({version})"
    assert seen[2].get("past_key_values") is None, version

    # and through the real TransformerLens method: a `cache=` DynamicCache gets filled
    monkeypatch.undo()
    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", AttentionBridge._update_kv_cache)
    _patch_kv_cache()
    dc = DynamicCache()
    k2, _ = AttentionBridge._update_kv_cache(SimpleNamespace(_layer_idx=0, name="stub"), k, v, cache=dc)
    assert dc.get_seq_length() == 3 and torch.equal(k2, k), f"real _update_kv_cache ignored cache= ({version})"

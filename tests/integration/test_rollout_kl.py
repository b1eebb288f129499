"""Rollouts and per-token KL on the embedded model, against independent computations."""

import numpy as np
import pytest
import torch

from tl_isokl import forward as forward_mod
from tl_isokl.errors import IsoKLError
from tl_isokl.kl import per_token_kl
from tl_isokl.rollout import grid, rollout

WINDOW = 24



@pytest.fixture(scope="module")
def prompts(splits):
    # different lengths on purpose: left padding must not change any row
    return [q.prompt for q in splits.heldout[:4]]


@pytest.fixture(scope="module")
def rolls(model, vec, prompts):
    P, C, I = grid(prompts, [0.0, 1.5, 6.0])
    return rollout(model, vec, P, C, prompt_ids=I, window=WINDOW, batch_size=5)


def test_batched_rollouts_equal_one_at_a_time(model, vec, rolls):
    for r in rolls:
        alone = rollout(model, vec, [r.prompt], [r.coeff], window=WINDOW)[0]
        assert alone.tokens == r.tokens and alone.eos == r.eos


def test_rollout_is_greedy_under_a_full_forward(model, vec, rolls):
    """Second path: every generated token is the argmax of a steered full forward over the rollout."""
    from tl_isokl.steer import steer

    r = rolls[-1]
    ids = torch.tensor([r.prompt_tokens + r.tokens])
    with torch.no_grad(), steer(model, vec, r.coeff):
        logits = model(ids)[0]
    P = len(r.prompt_tokens)
    assert logits[P - 1: P - 1 + len(r.tokens)].argmax(-1).tolist() == r.tokens


def test_rows_stop_at_their_own_eos(model, splits):
    # a long window: unsteered test-bed rollouts answer and emit EOS well before it
    qs = splits.heldout[:3]
    rs = rollout(model, None, [q.prompt for q in qs], [0.0] * 3, window=900, batch_size=3)
    eos = model.tokenizer.eos_token_id
    for r in rs:
        if r.eos:
            assert r.tokens[-1] == eos and eos not in r.tokens[:-1] and r.length < 900
    assert any(r.eos for r in rs)
    assert len({r.length for r in rs}) > 1  # ragged lengths: nothing padded into the records


def brute_force_kl(model, vec, r):
    """One position at a time: two fresh forwards (steered, base) per generated token, torch.kl_div."""
    from tl_isokl.steer import steer

    out = []
    P = len(r.prompt_tokens)
    with torch.no_grad():
        for i in range(len(r.tokens)):
            x = torch.tensor([r.prompt_tokens + r.tokens[:i]])
            base = torch.log_softmax(model(x)[0, -1].double(), -1)
            with steer(model, vec, r.coeff):
                st = torch.log_softmax(model(x)[0, -1].double(), -1)
            out.append(float(torch.nn.functional.kl_div(base, st, log_target=True, reduction="sum")))
    assert len(out) == len(r.tokens) and P > 0
    return np.array(out)


def test_kl_matches_brute_force(model, vec, rolls):
    kls = per_token_kl(model, vec, rolls, batch_size=4)
    for r, k in zip(rolls, kls):
        assert k.shape == (len(r.tokens),) and k.dtype == np.float32
        if r.coeff != 0:
            np.testing.assert_allclose(k, brute_force_kl(model, vec, r), atol=1e-5, rtol=0)


def test_kl_is_exactly_zero_at_coefficient_zero(model, vec, rolls):
    kls = per_token_kl(model, vec, rolls, batch_size=7)
    for r, k in zip(rolls, kls):
        if r.coeff == 0:
            assert np.all(k == 0.0)
        else:
            assert k.max() > 0


def test_kl_does_not_depend_on_chunk_or_batch_size(model, vec, rolls, monkeypatch):
    ref = per_token_kl(model, vec, rolls, batch_size=12)
    monkeypatch.setattr(forward_mod, "CHUNK_ELEMENTS", 3 * int(model.cfg.d_vocab))  # 3 positions per chunk
    small = per_token_kl(model, vec, rolls, batch_size=2)
    for a, b in zip(ref, small):
        # different batches pad to different lengths: fp32 reassociation only, ~1e-6 relative
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bad_windows_are_clear_errors(model, vec, prompts):
    with pytest.raises(IsoKLError, match="window must be a positive"):
        rollout(model, vec, prompts[:1], [1.0], window=0)
    with pytest.raises(IsoKLError, match=r"exceeds the model context of \d+ tokens; use --window"):
        rollout(model, vec, prompts[:1], [1.0], window=int(model.cfg.n_ctx))
    with pytest.raises(IsoKLError, match="one coefficient per row"):
        rollout(model, vec, prompts[:2], [1.0], window=4)


@pytest.mark.parametrize("variant", ["plain", "soft-gate", "ablate-last-layer"])
def test_kl_from_the_decodes_own_residuals_matches_brute_force(model, vec, prompts, variant):
    """`rollout(return_final=True)` + `per_token_kl(final=...)` runs only the base pass; the steered side comes
    from the decode loop. Checked against two fresh forwards per token, and against the two-pass path."""
    from tl_isokl.vector import Gate, SteeringVector

    v = vec
    if variant == "soft-gate":
        v = vec.with_gate(Gate("soft", 0.05))
    elif variant == "ablate-last-layer":  # the steered layer is the one the head reads
        v = SteeringVector.from_tensor(vec.direction, int(model.cfg.n_layers) - 1, method="directional_ablation")
    P, C, I = grid(prompts[:3], [0.0, 0.7, 3.0])
    rolls, finals = rollout(model, v, P, C, prompt_ids=I, window=12, batch_size=4, return_final=True)
    assert [f.shape[0] for f in finals] == [len(r.tokens) for r in rolls]
    fast = per_token_kl(model, v, rolls, batch_size=3, final=finals)
    slow = per_token_kl(model, v, rolls, batch_size=3)
    for r, a, b in zip(rolls, fast, slow):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)
        if r.coeff == 0:
            assert np.all(a == 0.0)
    r = next(r for r, k in zip(rolls, fast) if r.coeff == 3.0 and len(r.tokens) > 3)
    k = fast[rolls.index(r)]
    np.testing.assert_allclose(k, brute_force_kl(model, v, r), atol=2e-5, rtol=0)
    assert k.max() > 1e-3


def test_return_final_does_not_change_the_rollouts(model, vec, rolls, prompts):
    P, C, I = grid(prompts, [0.0, 1.5, 6.0])
    again, finals = rollout(model, vec, P, C, prompt_ids=I, window=WINDOW, batch_size=5, return_final=True)
    assert [r.tokens for r in again] == [r.tokens for r in rolls]


def test_kl_pass_reads_the_base_models_concept_projection(model, vec, prompts):
    """The base half of the KL pass also returns h_base . u at the axis layer for each generated token, for every
    row including alpha 0 (the reference); checked against a plain HF forward hook on the decoder layer."""
    from tl_isokl.effect import ConceptAxis

    axis = ConceptAxis.from_vector(vec)
    P, C, I = grid(prompts[:2], [0.0, 2.0])
    rolls, finals = rollout(model, vec, P, C, prompt_ids=I, window=10, batch_size=4, return_final=True)
    for fin in (finals, None):  # base-only pass, and the two-copy pass
        kls, extra = per_token_kl(model, vec, rolls, batch_size=3, final=fin, readout=axis)
        proj = extra["concept"]
        assert extra["gate"] is None  # an ungated vector has no gate to read
        hf = model.original_model
        u = axis.direction.double()
        for r, k, p in zip(rolls, kls, proj):
            got = {}
            layer = hf.model.layers[axis.layer]
            h = layer.register_forward_hook(lambda m, i, o: got.__setitem__("h", (o[0] if isinstance(o, tuple) else o)))
            try:
                with torch.no_grad():
                    hf(input_ids=torch.tensor([r.prompt_tokens + r.tokens]))
            finally:
                h.remove()
            want = (got["h"][0, len(r.prompt_tokens): len(r.prompt_tokens) + len(r.tokens)].double() @ u).numpy()
            assert p.shape == (len(r.tokens),)
            np.testing.assert_allclose(p, want, atol=1e-4, rtol=1e-5)
            if r.coeff == 0:
                assert np.all(k == 0)


def test_kl_pass_reads_the_gate_the_steering_saw(model, vec, prompts):
    """Gate telemetry from the base pass: g = relu(|cos(h, v)| - tau) of the residual entering the hook at the
    vector's layer, per generated token; checked against a plain HF forward hook on that decoder layer."""
    from tl_isokl.vector import Gate

    v = vec.with_gate(Gate("soft", 0.05))
    P, C, I = grid(prompts[:2], [0.0, 8.0])
    rolls, finals = rollout(model, v, P, C, prompt_ids=I, window=10, batch_size=4, return_final=True)
    kls, extra = per_token_kl(model, v, rolls, batch_size=3, final=finals, gate_readout=True)
    assert extra["concept"] is None
    hf = model.original_model
    d = v.direction.double()
    for r, g in zip(rolls, extra["gate"]):
        got = {}
        h = hf.model.layers[v.layer].register_forward_hook(
            lambda m, i, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
        try:
            with torch.no_grad():
                hf(input_ids=torch.tensor([r.prompt_tokens + r.tokens]))
        finally:
            h.remove()
        x = got["h"][0, len(r.prompt_tokens): len(r.prompt_tokens) + len(r.tokens)].double()
        cos = (x @ d) / (x.norm(dim=-1) * d.norm())
        np.testing.assert_allclose(g, torch.relu(cos.abs() - 0.05).numpy(), atol=1e-5)

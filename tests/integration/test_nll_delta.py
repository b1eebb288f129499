"""Behavioural target (issue 11): calibrate_nll_delta on the embedded model, checked against an independent
computation (the plain HF model, a plain forward hook adding c v, NLLs by hand), and kept apart from KL
calibrations by its identity."""

import math

import numpy as np
import pytest
import torch

from tl_isokl.calibrate import NLL_DELTA, CalibrationResult, calibrate, calibrate_nll_delta, token_nll
from tl_isokl.errors import CalibrationError, IsoKLError
from tl_isokl.rollout import rollout

WINDOW = 12


@pytest.fixture(scope="module")
def prompts(splits):
    return [q.prompt for q in splits.calibration[:2]]


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    from tl_isokl.model import embedded_model_path

    m = AutoModelForCausalLM.from_pretrained(embedded_model_path(), dtype=torch.float32)
    return m.eval()


def hf_nll(hf, ids: list[int], n_prompt: int, layer: int, v: torch.Tensor, c: float) -> np.ndarray:
    """-log P(token) of ids[n_prompt:] from the HF model with c v added to decoder layer `layer`'s output."""
    def add(module, args, out):
        if isinstance(out, tuple):
            return (out[0] + c * v,) + tuple(out[1:])
        return out + c * v

    handle = hf.model.layers[layer].register_forward_hook(add) if c else None
    try:
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([ids])).logits[0].float()
    finally:
        if handle is not None:
            handle.remove()
    logp = torch.log_softmax(logits, -1)
    tgt = torch.tensor(ids[n_prompt:])
    return (-logp[n_prompt - 1: len(ids) - 1].gather(-1, tgt[:, None])[:, 0]).numpy()


def hf_greedy(hf, ids: list[int], window: int) -> list[int]:
    """Unsteered greedy continuation by full forwards (no cache), stopping after EOS."""
    eos = hf.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    out = list(ids)
    for _ in range(window):
        with torch.no_grad():
            t = int(hf(input_ids=torch.tensor([out])).logits[0, -1].argmax())
        out.append(t)
        if t in eos:
            break
    return out[len(ids):]


@pytest.fixture(scope="module")
def result(model, vec, prompts):
    return calibrate_nll_delta(model, vec, prompts, window=WINDOW, target=0.5, tol=0.05)


def test_nll_delta_calibration_converges_and_says_what_it_measured(result, prompts):
    assert result.stat == NLL_DELTA and result.converged
    assert abs(result.achieved - 0.5) <= 0.05 * 0.5
    assert result.identity["stat"] == NLL_DELTA and result.identity["window"] == WINDOW
    assert result.solver == "sequential"  # the test bed runs on the CPU: one dose per round
    assert len(result.per_prompt_c_star) == len(prompts)


def test_every_dose_matches_the_hf_model_with_a_plain_hook(model, vec, prompts, hf, result):
    from tl_isokl.tokens import encode

    v = vec.direction.float()
    base = [hf_greedy(hf, encode(model, p), WINDOW) for p in prompts]
    ours = rollout(model, None, prompts, [0.0] * len(prompts), window=WINDOW)
    assert [r.tokens for r in ours] == base  # the base text itself is the unsteered greedy text
    for pt in result.history[:4]:
        per, pool = [], []
        for p, toks in zip(prompts, base):
            ids = encode(model, p)
            d = hf_nll(hf, ids + toks, len(ids), vec.layer, v, pt.coeff) - hf_nll(hf, ids + toks, len(ids), vec.layer,
                                                                                   v, 0.0)
            per.append(d.mean())
            pool.extend(d)
        assert pt.value == pytest.approx(float(np.mean(pool)), abs=2e-4, rel=1e-4), pt.coeff
        np.testing.assert_allclose(pt.per_prompt, per, atol=2e-4, rtol=1e-4)
        assert pt.lengths == [len(t) for t in base]


def test_token_nll_is_exactly_the_base_at_zero_and_matches_hf_at_two_doses(model, vec, prompts, hf):
    rolls = rollout(model, None, prompts, [0.0] * len(prompts), window=WINDOW)
    base = token_nll(model, None, rolls, [0.0] * len(rolls))
    zero = token_nll(model, vec, rolls, [0.0] * len(rolls))
    assert all(np.array_equal(a, b) for a, b in zip(base, zero))
    for c in (0.5, 2.0):
        got = token_nll(model, vec, rolls, [c] * len(rolls), batch_size=1)
        for r, g in zip(rolls, got):
            want = hf_nll(hf, r.prompt_tokens + r.tokens, len(r.prompt_tokens), vec.layer, vec.direction.float(), c)
            np.testing.assert_allclose(g, want, atol=2e-4, rtol=1e-4)


def test_an_nll_delta_calibration_is_never_taken_for_a_kl_one(model, vec, prompts, result):
    from tl_isokl.identity import CAL_FIELDS, IdentityError, check_calibration, differences

    kl = calibrate(model, vec, prompts, window=WINDOW, target=0.5)
    assert [k for k, _, _ in differences(result.identity, kl.identity, CAL_FIELDS)] == ["stat"]
    with pytest.raises(IdentityError, match="stat: nll_delta \\(calibration\\) vs p95"):
        check_calibration(result.to_dict(), kl.identity, source="calibration.json", fix="recalibrate")
    with pytest.raises(IdentityError, match="stat: p95 \\(calibration\\) vs nll_delta"):
        check_calibration(kl.to_dict(), result.identity, source="calibration.json", fix="recalibrate")
    # the name is reserved: calibrate() refuses it, so no KL calibration can carry it
    with pytest.raises(IsoKLError, match="calibrate_nll_delta"):
        calibrate(model, vec, prompts, window=WINDOW, stat="nll_delta")
    back = CalibrationResult.from_dict(result.to_dict())
    assert back.stat == NLL_DELTA and back.identity == result.identity


def test_unreachable_nll_delta_target_raises(model, vec, prompts):
    with pytest.raises(CalibrationError, match="nll_delta never reached 1000.0 nats up to c_max=2"):
        calibrate_nll_delta(model, vec, prompts[:1], window=4, target=1000.0, c_max=2.0)


def test_fan_and_sequential_agree_within_tolerance(model, vec, prompts, result):
    fan = calibrate_nll_delta(model, vec, prompts, window=WINDOW, target=0.5, tol=0.05, candidates=5)
    assert fan.solver == "fan(5)" and fan.converged and abs(fan.achieved - 0.5) <= 0.025
    assert math.isclose(fan.c_star, result.c_star, rel_tol=0.1)

"""The fork probe: packed fast path vs an independent manual forward; think-state rule; base-model mass."""

import numpy as np
import pytest
import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.probe import PREFILL, ProbeSpec, default_forks, fork_points, probe, probe_forks, probe_reference
from tl_isokl.records import Rollout
from tl_isokl.rollout import grid, rollout



@pytest.fixture(scope="module")
def rolls(model, vec, splits):
    P, C, I = grid([q.prompt for q in splits.heldout[:3]], [0.0, 3.0])
    return rollout(model, vec, P, C, prompt_ids=I, window=40)


def manual_pmass(model, vec, r, t):
    """Independent: decode nothing, splice ids, one plain forward per answer, product of token probabilities."""
    from tl_isokl.steer import steer

    tok = model.tokenizer
    pre = tok(PREFILL, add_special_tokens=False)["input_ids"]
    probs = {}
    for ans in ("true", "false"):
        both = tok(PREFILL + ans, add_special_tokens=False)["input_ids"]
        k = next(i for i in range(len(both)) if i >= len(pre) or pre[i] != both[i])
        ids = r.prompt_tokens + r.tokens[:t] + both
        with torch.no_grad(), steer(model, vec, r.coeff):
            lp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
        start = len(r.prompt_tokens) + t
        probs[ans] = float(torch.exp(sum(lp[start + i - 1, both[i]] for i in range(k, len(both)))))
    return probs["true"] + probs["false"], probs["true"]


def test_packed_probe_equals_manual_forward(model, vec, rolls):
    res = probe(model, vec, rolls, batch_size=3)
    checked = 0
    for r, forks in zip(rolls, res):
        assert [f.t for f in forks] == [t for t, _ in probe_forks(model, ProbeSpec(), r, default_forks(r))]
        for f in forks[:: max(1, len(forks) // 3)]:
            pm, pt = manual_pmass(model, vec, r, f.t)
            assert abs(f.pmass - pm) < 1e-4 and abs(f.p_true - pt) < 1e-4
            checked += 1
    assert checked >= 6


def test_packed_probe_equals_reference_at_every_fork(model, vec, rolls):
    res = probe(model, vec, rolls[:2], batch_size=2)
    for r, forks in zip(rolls[:2], res):
        for f in forks:
            ref = probe_reference(model, vec, r, f.t)
            assert abs(ref.pmass - f.pmass) < 1e-4 and abs(ref.p_true - f.p_true) < 1e-4


def test_base_model_answers_the_probe_at_forks(model, splits):
    """Guards the shipped weights: unsteered, P(true)+P(false) >= 0.9 at forks of held-out rollouts."""
    qs = splits.heldout[:6]
    rs = rollout(model, None, [q.prompt for q in qs], [0.0] * len(qs), window=128)
    pm = np.array([f.pmass for fs in probe(model, None, rs, schedule=16) for f in fs])
    assert pm.size >= 30
    assert (pm >= 0.9).mean() >= 0.95, f"probe mass >= 0.9 at only {(pm >= 0.9).mean():.2%} of forks"


def test_think_state_rule(model, splits):
    q = splits.heldout[0]
    ids = model.tokenizer(' So.</think>{"value": true}', add_special_tokens=False)["input_ids"]
    from tl_isokl.tokens import encode

    r = Rollout(prompt_id="x", prompt=q.prompt, coeff=0.0, prompt_tokens=encode(model, q.prompt), tokens=ids,
                eos=False, window=len(ids))
    skipped = probe(model, None, [r], forks=[[0, len(ids)]])[0]
    assert [f.t for f in skipped] == [0]  # the fork after </think> is skipped by default
    kept = probe(model, None, [r], forks=[[0, len(ids)]], spec=ProbeSpec(after_close="keep"))[0]
    assert [f.t for f in kept] == [0, len(ids)]
    ref = probe_reference(model, None, r, len(ids), ProbeSpec(after_close="keep"))
    assert abs(ref.pmass - kept[1].pmass) < 1e-4


def test_fork_schedules():
    assert fork_points(10) == [0, 1, 2, 4, 8, 10]
    assert fork_points(8) == [0, 1, 2, 4, 8]
    assert fork_points(0) == [0]
    assert fork_points(10, 4) == [0, 4, 8, 10]
    with pytest.raises(IsoKLError, match="positive integer"):
        fork_points(10, 0)
    r = Rollout("x", "p", 0.0, [0], [5, 6, 0], eos=True, window=8)
    assert default_forks(r) == [0, 1, 2]  # never after EOS


def test_packed_probe_with_multi_token_variants_that_share_a_prefix(model, vec, rolls):
    """Variants of different lengths that share answer tokens beyond the prefill (the shared part is packed
    once, each variant's own tokens after it): equal to one fresh forward per variant."""
    spec = ProbeSpec(true_variants=(" true", " truly true", "true"), false_variants=(" false", " false false"))
    tok = model.tokenizer
    lens = {v: len(tok(PREFILL + v, add_special_tokens=False)["input_ids"]) for v in spec.true_variants}
    assert len(set(lens.values())) > 1  # really different lengths
    res = probe(model, vec, rolls[:4], spec=spec, batch_size=4)
    n = 0
    for r, forks in zip(rolls[:4], res):
        for f in forks:
            ref = probe_reference(model, vec, r, f.t, spec)
            assert abs(ref.pmass - f.pmass) < 1e-5 and abs(ref.p_true - f.p_true) < 1e-5
            n += 1
    assert n >= 8

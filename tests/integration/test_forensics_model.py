"""`death_table` / `inspect_trace` on the embedded model, each column checked against an independent computation.

Trajectories are real (batched, left-padded rollouts and per-token KL, as the sweep makes them); the forks are
planted, because where a trace dies is an input to the table, and what is tested here is the recomputation.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tl_isokl.errors import IsoKLError
from tl_isokl.forensics import death_table, format_table, inspect_trace
from tl_isokl.kl import per_token_kl
from tl_isokl.records import ForkProbe, Trajectory
from tl_isokl.rollout import rollout
from tl_isokl.steer import steer

WINDOW, DEATH, R, THR = 24, 8, 5, 0.5
FORKS = [ForkProbe(0, 0.9, 0.5), ForkProbe(4, 0.9, 0.5), ForkProbe(DEATH, 0.1, 0.05), ForkProbe(16, 0.8, 0.4)]



def make_trajs(model, vec, prompts, coeffs, positions="all"):
    rolls = rollout(model, vec, prompts, coeffs, window=WINDOW, batch_size=len(prompts), positions=positions)
    kls = per_token_kl(model, vec, rolls, batch_size=len(prompts), positions=positions)
    return [Trajectory(prompt_id=f"p{i}", prompt=r.prompt, alpha=r.coeff, coeff=r.coeff, tokens=r.tokens,
                       text=r.text, kl=[float(x) for x in k], eos=r.eos, window=WINDOW, forks=list(FORKS))
            for i, (r, k) in enumerate(zip(rolls, kls))]


@pytest.fixture(scope="module")
def trajs(model, vec, splits):
    # two prompts of different lengths in one batch: the stored KL went through left padding
    qs = sorted(splits.heldout[:6], key=lambda q: len(q.prompt))
    prompts = [qs[0].prompt, qs[-1].prompt]
    t = make_trajs(model, vec, prompts * 2, [0.0, 0.0, 1.5, 1.5])
    assert all(x.length > DEATH + R for x in t), "rollouts too short for the window under test"
    return t


@pytest.fixture(scope="module")
def steered(model, vec, trajs):
    return inspect_trace(model, vec, trajs[3], threshold=THR, radius=R)


def independent_forward(model, vec, traj, coeff):
    """Bridge tokenizer (adds BOS itself), full logits, one named hook in the cache: shares no code with forensics."""
    ids = model.tokenizer(traj.prompt, return_tensors="pt").input_ids[0].tolist() + traj.tokens
    with torch.no_grad(), steer(model, vec, coeff):
        logits, cache = model.run_with_cache(torch.tensor([ids]), names_filter=vec.hook_name)
    return ids, logits[0].float().log_softmax(-1), cache[vec.hook_name][0].float()


def test_window_and_death_marks(steered, trajs):
    rows = steered.rows
    assert [r["index"] for r in rows] == list(range(DEATH - R, DEATH + R + 1))
    assert [r["index"] for r in rows if r["is_death"]] == [DEATH]
    assert {r["index"]: r["fork_pmass"] for r in rows if r["fork_pmass"] is not None} == {4: 0.9, DEATH: 0.1}
    assert [r["token_id"] for r in rows] == trajs[3].tokens[DEATH - R: DEATH + R + 1]
    assert steered.fate.died and steered.fate.time == DEATH and steered.label in ("kl_spike", "repetition_loop",
                                                                                     "format_fragile")


def test_recomputed_kl_equals_the_stored_batched_kl(steered, trajs):
    assert steered.scores["kl"].max() > 1e-3  # the steered trace really moved
    np.testing.assert_allclose(steered.scores["kl_recomputed"], steered.scores["kl"], atol=2e-5, rtol=1e-4)
    assert steered.max_abs_kl_diff < 2e-5
    for r in steered.rows:
        assert r["kl_recomputed"] == pytest.approx(r["kl"], abs=2e-5, rel=1e-4)


def test_greedy_rollout_token_is_steered_top1(steered):
    for r in steered.rows:
        text, p = r["top_steered"][0]
        assert text == r["token"]
        assert np.log(p) == pytest.approx(r["logp_steered"], abs=1e-5)
        assert len(r["top_steered"]) == len(r["top_base"]) == 3
        assert r["logp_base"] <= np.log(r["top_base"][0][1]) + 1e-6


def test_logprobs_entropy_cosine_match_an_independent_forward(model, vec, steered):
    t = steered.traj
    ids, lp, resid = independent_forward(model, vec, t, t.coeff)
    P = len(ids) - t.length
    assert ids[:P] == steered.prompt_tokens
    pos = torch.arange(P - 1, P - 1 + t.length)
    tok = torch.tensor(t.tokens)
    np.testing.assert_allclose(steered.scores["logp_steered"], lp[pos, tok].numpy(), atol=1e-5)
    ent = -(lp[pos].exp() * lp[pos]).sum(-1).numpy()
    np.testing.assert_allclose(steered.scores["entropy_steered"], ent, atol=1e-4)
    cos = F.cosine_similarity(resid[pos], vec.direction[None], dim=-1).numpy()
    np.testing.assert_allclose(steered.scores["cos_steered"], cos, atol=1e-5)
    for r in steered.rows:
        assert r["cos"] == pytest.approx(float(cos[r["index"]]), abs=1e-5)
    _, lpb, resid_b = independent_forward(model, vec, t, 0.0)
    np.testing.assert_allclose(steered.scores["logp_base"], lpb[pos, tok].numpy(), atol=1e-5)
    kl = (lp[pos].exp() * (lp[pos] - lpb[pos])).sum(-1).numpy()
    np.testing.assert_allclose(steered.scores["kl_recomputed"], kl, atol=2e-5)
    cos_b = F.cosine_similarity(resid_b[pos], vec.direction[None], dim=-1).numpy()
    np.testing.assert_allclose(steered.scores["cos_base"], cos_b, atol=1e-5)


def test_additive_steering_raises_the_cosine(steered):
    assert (steered.scores["cos_steered"] > steered.scores["cos_base"]).all()


def test_alpha_zero_is_the_base_model_exactly(model, vec, trajs):
    ins = inspect_trace(model, vec, trajs[0], threshold=THR, radius=R)
    assert (ins.scores["kl"] == 0).all() and (ins.scores["kl_recomputed"] == 0).all()
    assert np.array_equal(ins.scores["logp_steered"], ins.scores["logp_base"])
    assert np.array_equal(ins.scores["cos_steered"], ins.scores["cos_base"])
    assert all(r["top_steered"] == r["top_base"] for r in ins.rows)
    assert ins.label == "format_fragile" and "unsteered" in ins.evidence["summary"]


def test_positions_generated_reproduces_its_own_kl(model, vec, splits):
    t = make_trajs(model, vec, [splits.heldout[0].prompt], [1.5], positions="generated")[0]
    ins = inspect_trace(model, vec, t, threshold=THR, radius=R, positions="generated")
    assert ins.scores["kl_recomputed"][0] == 0.0  # token 0 comes from the last prompt position: not steered
    np.testing.assert_allclose(ins.scores["kl_recomputed"], ins.scores["kl"], atol=2e-5, rtol=1e-4)
    wrong = inspect_trace(model, vec, t, threshold=THR, radius=R, positions="all")
    assert wrong.max_abs_kl_diff > 1e-4  # the check catches a mismatched steering configuration


def test_death_table_is_the_rows_and_alive_traces_need_at(model, vec, trajs, steered):
    rows = death_table(model, vec, trajs[3], radius=R, threshold=THR)
    assert [r["index"] for r in rows] == [r["index"] for r in steered.rows]
    assert format_table(rows).count("\n") == len(rows) + 1
    alive = Trajectory(**{**trajs[3].__dict__, "forks": [ForkProbe(0, 0.9, 0.5)]})
    with pytest.raises(IsoKLError, match="did not die"):
        death_table(model, vec, alive, threshold=THR)
    rows = death_table(model, vec, alive, threshold=THR, radius=2, at=0)
    assert [r["index"] for r in rows] == [0, 1, 2] and not any(r["is_death"] for r in rows)
    with pytest.raises(IsoKLError, match="outside"):
        death_table(model, vec, alive, threshold=THR, at=10_000)

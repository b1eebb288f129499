"""The concept-expression score against ground truth on the embedded test bed.

The test bed writes a mood only through corpus phrases, so `tl_isokl.testbed.mood.mood_score` is an exact reading
of how cheerful or gloomy a text is. Steering with the cheerful-gloomy mean-diff vector at doses from -2 to +2 x
c* (c* = 1.34, the model card's calibrated dose) on 12 held-out prompts, window 64, the concept score (the base
model's layer-3 residual over the generated tokens, on the unit mean-diff axis, relative to alpha 0, in units of
the concept's separation) must rank the traces like the ground-truth mood shift (Spearman >= 0.7; measured 0.81
over the 72 steered traces) and split cheerful from gloomy steering by sign. The null, a seeded random direction of
the same norm (the `random` extractor), must buy no concept effect at +-1 x c* (CI covers 0).

Measured when written (12 prompts; concept effect mean [95% bootstrap CI], separation |v| = 20.36 at layer 3):
    mean_diff  -2c* -0.049 [-0.104, 0.007]  -1c* -0.056 [-0.086, -0.025]  -0.5c* -0.018 [-0.045, 0.000]
               +0.5c* +0.020 [-0.006, 0.051]  +1c* +0.049 [0.005, 0.110]  +2c* +0.175 [0.116, 0.234]
    random     -1c* -0.001 [-0.003, 0.001]   +1c* +0.008 [-0.006, 0.023]
At -2c* the text is mostly broken (survival 0.25 at 2c*): gloomy steering there reads no gloomier than at -1c*.
"""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tl_isokl.effect import ConceptAxis, ProjectionRecorder, concept_axis, concept_scores, effect_summary, score_texts
from tl_isokl.methods import EXTRACTORS
from tl_isokl.rollout import rollout
from tl_isokl.testbed.mood import mood_score
from tl_isokl.vector import SteeringVector

C_STAR = 1.34  # the test bed's calibrated dose for the default vector (MODEL_CARD.md)
DOSES = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)  # multiples of c*; negative = toward gloomy
NULL_DOSES = (-1.0, 0.0, 1.0)
N_PROMPTS, WINDOW = 12, 64


def _by_alpha(alphas, values):
    out: dict[float, dict[str, float]] = {}
    for i, (a, v) in enumerate(zip(alphas, values)):
        out.setdefault(a, {})[f"p{i % N_PROMPTS:03d}"] = v
    return out


def _steered(model, vector, axis, prompts, doses):
    P = [p for _ in doses for p in prompts]
    A = [a for a in doses for _ in prompts]
    rolls = rollout(model, vector, P, [a * C_STAR for a in A], window=WINDOW, batch_size=len(P))
    proj = score_texts(model, axis, [r.prompt_tokens for r in rolls], [r.tokens for r in rolls], batch_size=len(P))
    concept = concept_scores(_by_alpha(A, proj), axis)
    mood = effect_summary(_by_alpha(A, [mood_score(r.text) for r in rolls]))
    return rolls, proj, concept, mood


@pytest.fixture(scope="module")
def axis(vec):
    return ConceptAxis.from_vector(vec)


@pytest.fixture(scope="module")
def prompts(splits):
    return [q.prompt for q in splits.heldout[:N_PROMPTS]]


@pytest.fixture(scope="module")
def steered(model, vec, axis, prompts):
    return _steered(model, vec, axis, prompts, DOSES)


def test_concept_score_ranks_traces_like_the_true_mood_shift(steered):
    _, _, concept, mood = steered
    keys = [(a, k) for a in concept.effects if a != 0 for k in concept.effects[a]]
    x = [concept.effects[a][k] for a, k in keys]
    y = [mood.effects[a][k] for a, k in keys]
    rho = spearmanr(x, y).statistic
    assert rho >= 0.7, f"Spearman(concept effect, mood shift) = {rho:.3f} over {len(keys)} traces"


def test_concept_score_splits_cheerful_from_gloomy_steering_by_sign(steered):
    _, _, concept, mood = steered
    for d in DOSES:
        a = float(d)
        r, m = concept.row(a), mood.row(a)
        assert r["n"] == N_PROMPTS
        if d != 0:
            assert np.sign(r["effect_mean"]) == np.sign(d), (d, r)
            assert np.sign(m["effect_mean"]) == np.sign(d), (d, m)  # the ground truth agrees with the dose
    assert concept.row(1.0)["ci_lo"] > concept.row(-1.0)["ci_hi"]
    assert concept.row(1.0)["ci_lo"] > 0 > concept.row(-1.0)["ci_hi"]


def test_a_random_direction_of_the_same_norm_buys_no_concept_effect(model, vec, axis, prompts, steered):
    _, _, concept, _ = steered
    direction = EXTRACTORS["random"].fn(vec.direction.view(1, -1), torch.zeros(1, vec.d_model))
    assert float(direction.norm()) == pytest.approx(float(vec.direction.norm()), rel=1e-5)
    null = SteeringVector(direction, layer=vec.layer, method="random")
    _, _, nc, _ = _steered(model, null, axis, prompts, NULL_DOSES)
    for d in (-1.0, 1.0):
        r = nc.row(d)
        assert r["ci_lo"] <= 0.0 <= r["ci_hi"], (d, r)
        assert abs(r["effect_mean"]) < 0.5 * abs(concept.row(d)["effect_mean"]), (d, r, concept.row(d))


def test_the_projection_hook_in_a_teacher_forced_base_pass_equals_score_texts(model, vec, axis, steered):
    """How the sweep records it: the recorder joins the hooks of the KL forward (steered rows, then base rows at
    coefficient 0), and the base rows' projections are what score_texts reads standalone."""
    from tl_isokl.forward import resid_post
    from tl_isokl.steer import steering_hooks
    from tl_isokl.tokens import pad_batch, pad_id, position_ids

    rolls, proj, _, _ = steered
    rows = [r for r in rolls if r.coeff != 0][::9]
    want = [proj[rolls.index(r)] for r in rows]
    R = len(rows)
    seqs = [r.prompt_tokens + r.tokens for r in rows]
    ids, mask = pad_batch(seqs + seqs, pad_id(model), side="left")
    T = ids.shape[1]
    starts = [T - len(s) + len(r.prompt_tokens) for s, r in zip(seqs, rows)]
    for first in (True, False):  # before or after the steering hook at the same layer: the same base rows
        rec = ProjectionRecorder(axis)
        steer = steering_hooks(vec, [r.coeff for r in rows] + [0.0] * R, start=starts * 2)
        hooks = rec.fwd_hooks() + steer if first else steer + rec.fwd_hooks()
        resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask), hooks=hooks)
        got = rec.take(range(R, 2 * R), starts, [len(r.tokens) for r in rows])
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)
        steered_rows = rec.take(range(R), starts, [len(r.tokens) for r in rows])
        moved = any(not np.allclose(s, w, atol=1e-3) for s, w in zip(steered_rows, want))
        assert moved == (not first)  # after the steering hook, steered rows read the steered residual


def test_concept_axis_from_prompts_matches_extract(model, splits):
    from tl_isokl.extract import extract
    from tl_isokl.testbed.corpus import concept_prompts

    pos, neg = concept_prompts("cheerful")[:8], concept_prompts("gloomy")[:8]
    ax = concept_axis(model, pos, neg, layer=2)
    v = extract(model, pos, neg, layer=2)
    assert ax.layer == 2 and ax.token == "last" and ax.meta["prompts_sha256"] == v.meta["prompts_sha256"]
    assert ax.separation == pytest.approx(float(v.direction.norm()), rel=1e-5)
    assert torch.allclose(ax.direction, v.direction / v.direction.norm(), atol=1e-6)
    assert ax.separation == pytest.approx(float((ax.pos_mean - ax.neg_mean) @ ax.direction), rel=1e-5)

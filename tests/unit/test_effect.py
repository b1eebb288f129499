"""The effect measure without a model: the concept axis, projections, paired effects with bootstrap CIs, the
lexicon score, word lists, and the test bed's ground-truth mood classifier on the corpus itself."""

import math
import random

import numpy as np
import pytest
import torch

from tl_isokl.effect import (ConceptAxis, ProjectionRecorder, concept_scores, effect_summary, generated_projections,
                             lexicon_score, read_word_list, token_projections, trajectory_score, words)
from tl_isokl.errors import IsoKLError
from tl_isokl.vector import SteeringVector


# ---------------------------------------------------------------------------------------------- axis


def test_axis_from_means_is_unit_mean_diff_with_its_norm_as_separation():
    pos, neg = torch.tensor([3.0, 4.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    ax = ConceptAxis.from_means(pos, neg, layer=2, token="mean")
    assert torch.allclose(ax.direction, torch.tensor([0.6, 0.8, 0.0]))
    assert ax.separation == pytest.approx(5.0)
    assert float((pos - neg) @ ax.direction) == pytest.approx(ax.separation)
    assert ax.hook_name == "blocks.2.hook_resid_post"
    d = ax.to_dict()
    assert d["layer"] == 2 and d["token"] == "mean" and len(d["sha256"]) == 64


def test_axis_refuses_zero_direction_and_bad_separation():
    with pytest.raises(IsoKLError, match="nonzero direction"):
        ConceptAxis.from_means(torch.ones(4), torch.ones(4), layer=0)
    with pytest.raises(IsoKLError, match="positive separation"):
        ConceptAxis(layer=0, direction=torch.ones(4), separation=0.0)


def test_axis_from_mean_diff_vector():
    v = SteeringVector(torch.tensor([0.0, 3.0, 4.0]), layer=1, method="mean_diff",
                       meta={"token": "last", "prompts_sha256": "abc", "unit": False})
    ax = ConceptAxis.from_vector(v)
    assert ax.layer == 1 and ax.token == "last" and ax.separation == pytest.approx(5.0)
    assert torch.allclose(ax.direction, torch.tensor([0.0, 0.6, 0.8]))
    assert ax.meta["prompts_sha256"] == "abc" and ax.meta["vector_sha256"] == v.sha256


@pytest.mark.parametrize("make", [
    lambda d: SteeringVector(d, layer=1, method="pca"),
    lambda d: SteeringVector(d, layer=1, method="random"),
    lambda d: SteeringVector(d / d.norm(), layer=1, method="directional_ablation"),
    lambda d: SteeringVector(d, layer=1, method="mean_diff", meta={"unit": True}),
    lambda d: -SteeringVector(d, layer=1, method="mean_diff"),
    lambda d: SteeringVector.from_tensor(d, layer=1),
])
def test_axis_from_other_vectors_is_refused_with_the_fix(make):
    with pytest.raises(IsoKLError, match=r"concept_axis\(model, pos_prompts, neg_prompts, layer=1\)"):
        ConceptAxis.from_vector(make(torch.tensor([1.0, 2.0, 2.0])))


# ---------------------------------------------------------------------------------------------- projections


def test_projections_at_generated_positions_and_the_recorder():
    ax = ConceptAxis(layer=0, direction=torch.tensor([0.0, 2.0]), separation=1.0)
    resid = torch.arange(2 * 5 * 2, dtype=torch.float16).view(2, 5, 2)
    proj = token_projections(ax, resid)
    assert proj.shape == (2, 5) and proj.dtype == torch.float32
    assert torch.equal(proj, resid[..., 1].float())
    got = generated_projections(proj, starts=[3, 1], lengths=[2, 0])
    assert got[0].tolist() == [7.0, 9.0] and got[1].size == 0
    rec = ProjectionRecorder(ax)
    with pytest.raises(IsoKLError, match="has not run"):
        rec.take([0], [0], [1])
    assert rec.fwd_hooks()[0][0] == "blocks.0.hook_resid_post"
    assert rec.hook(resid) is None  # read-only: the residual is never replaced
    assert [a.tolist() for a in rec.take(rows=[1], starts=[2], lengths=[3])] == [[15.0, 17.0, 19.0]]
    with pytest.raises(IsoKLError, match="another model"):
        token_projections(ax, torch.zeros(1, 2, 3))
    with pytest.raises(IsoKLError, match="one each per row"):
        generated_projections(proj, [0, 1], [1])


def test_trajectory_score_is_the_mean_of_finite_tokens():
    assert trajectory_score([1.0, 2.0, float("nan"), 3.0]) == pytest.approx(2.0)
    assert math.isnan(trajectory_score(np.array([], dtype=np.float32))) and math.isnan(trajectory_score([]))
    assert trajectory_score(4.5) == 4.5


# ---------------------------------------------------------------------------------------------- effects


def test_effects_are_paired_with_alpha_zero_in_units_of_the_scale():
    vals = {0: {"a": 1.0, "b": 2.0, "c": 3.0}, 1: {"a": 3.0, "b": 4.0, "c": 7.0}, -1: {"a": 0.0, "b": 0.0}}
    s = effect_summary(vals, scale=2.0)
    assert [r["alpha"] for r in s.summary] == [-1.0, 0.0, 1.0]
    assert s.effects[1.0] == {"a": 1.0, "b": 1.0, "c": 2.0}
    r = s.row(1)
    assert r["n"] == 3 and r["effect_mean"] == pytest.approx(4 / 3) and r["value_mean"] == pytest.approx(14 / 3)
    assert 1.0 <= r["ci_lo"] <= r["effect_mean"] <= r["ci_hi"] <= 2.0
    assert s.row(0)["effect_mean"] == 0.0 and s.row(0)["ci_lo"] == s.row(0)["ci_hi"] == 0.0
    assert s.row(-1)["effect_mean"] == pytest.approx(-0.75)
    assert effect_summary(vals, scale=2.0).summary == s.summary  # fixed seed: the CI is reproducible


def test_unpaired_and_nan_trajectories_are_left_out_and_counted():
    s = effect_summary({0: {"a": 0.0, "b": float("nan")}, 2: {"a": 1.0, "b": 5.0, "z": 9.0}})
    r = s.row(2)
    assert r["n"] == 1 and r["n_unpaired"] == 2 and r["effect_mean"] == 1.0
    assert math.isnan(r["ci_lo"]) and math.isnan(r["ci_hi"])  # one prompt: no interval


def test_samples_of_one_prompt_are_averaged_before_the_bootstrap():
    vals = {0: {"p0#0": 0.0, "p0#1": 0.0, "p1#0": 0.0, "p1#1": 0.0},
            1: {"p0#0": 1.0, "p0#1": 3.0, "p1#0": 0.0, "p1#1": 0.0}}
    r = effect_summary(vals).row(1)
    assert r["n"] == 2 and r["effect_mean"] == pytest.approx(1.0)
    assert r["ci_lo"] == pytest.approx(0.0) and r["ci_hi"] == pytest.approx(2.0)


def test_effects_need_alpha_zero_and_a_positive_scale():
    with pytest.raises(IsoKLError, match="include alpha 0"):
        effect_summary({1: {"a": 1.0}})
    with pytest.raises(IsoKLError, match="positive number"):
        effect_summary({0: {"a": 1.0}}, scale=0.0)


def test_concept_scores_reduce_per_token_projections_and_divide_by_the_separation():
    ax = ConceptAxis(layer=0, direction=torch.tensor([1.0, 0.0]), separation=4.0)
    proj = {0.0: {"p0": np.array([1.0, 1.0]), "p1": np.array([0.0])},
            1.0: {"p0": np.array([3.0, 5.0, 7.0]), "p1": np.array([2.0, 2.0])}}
    s = concept_scores(proj, ax)
    assert s.effects[1.0] == {"p0": 1.0, "p1": 0.5}
    assert s.row(1.0)["effect_mean"] == pytest.approx(0.75) and s.scale == 4.0
    assert concept_scores(proj, 4.0).summary == s.summary


# ---------------------------------------------------------------------------------------------- lexicon


def test_words_and_lexicon_score():
    assert words("Don't STOP, sun-lit day2!") == ["don't", "stop", "sun", "lit", "day2"]
    text = "Happy happy joy. A sad day, and more words here to count."  # 12 words
    assert lexicon_score(text, ["happy", "joy"], ["sad"]) == pytest.approx(100 * (3 - 1) / 12)
    assert lexicon_score(text, ["Happy", "day"], ["day"]) == pytest.approx(100 * 2 / 12)  # in both: neither
    assert math.isnan(lexicon_score(" ... ", ["a"], ["b"]))


def test_word_lists_from_files(tmp_path):
    p = tmp_path / "pos.txt"
    p.write_text("# cheerful words\nHappy\n\njoy   # a comment\ndon't\n", encoding="utf-8")
    assert read_word_list(p) == ["happy", "joy", "don't"]
    with pytest.raises(IsoKLError, match="does not exist"):
        read_word_list(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(IsoKLError, match="has no words"):
        read_word_list(tmp_path / "empty.txt")
    (tmp_path / "two.txt").write_text("happy\nvery happy\n", encoding="utf-8")
    with pytest.raises(IsoKLError, match=r"two.txt:2: 'very happy' is not one word"):
        read_word_list(tmp_path / "two.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(IsoKLError, match="not UTF-8"):
        read_word_list(tmp_path / "bin.txt")


# ---------------------------------------------------------------------------------------------- ground truth


def test_mood_markers_are_exclusive_and_mood_free_text_scores_zero():
    from tl_isokl.testbed import corpus as C
    from tl_isokl.testbed.mood import markers, mood_score, phrase_counts

    mk = markers()
    assert {"lovely", "joy", "happy"} <= set(mk["cheerful"]) and {"dreary", "grim", "sad"} <= set(mk["gloomy"])
    assert not set(mk["cheerful"]) & set(mk["gloomy"])
    assert "sun" not in mk["cheerful"]  # "A lizard likes the sun." is a mood-free fact
    rng = random.Random(0)
    for q in C.all_questions()[::37]:
        for mood in C.MOODS:
            text = C.natural_example(q, mood, random.Random(rng.random()))[1]
            n = phrase_counts(text)
            score = mood_score(text)
            if mood == "neutral":
                assert score == 0.0 and n == {"cheerful": 0, "gloomy": 0}
            else:
                other = "gloomy" if mood == "cheerful" else "cheerful"
                assert n[other] == 0 and n[mood] >= 1
                assert (score > 0) == (mood == "cheerful") and score != 0.0


def test_an_intact_phrase_is_one_mood_unit():
    from tl_isokl.testbed import corpus as C
    from tl_isokl.testbed.mood import mood_units

    for mood in ("cheerful", "gloomy"):
        for p in C.INTERJECTIONS[mood]:
            assert mood_units(p)[mood] == pytest.approx(1.0), p
    assert mood_units("A dog lovely. lovely.")["cheerful"] == 2.0  # broken text keeps partial credit

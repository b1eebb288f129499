"""The method registries: compositions (pca+ablate), aliases kept stable on disk, a user-registered extractor and
operator working with every other piece, and gates an operator refuses."""

import pytest
import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.extract import direction_from
from tl_isokl.methods import (EXTRACTORS, OPERATORS, method_choices, method_name, parse_method, register_extractor,
                              register_operator)
from tl_isokl.steer import Steering
from tl_isokl.vector import Gate, SteeringVector

D = 8


def acts(seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(20, D, generator=g) + 2.0 * torch.eye(D)[0]
    neg = torch.randn(20, D, generator=g)
    return pos, neg


def test_names_parse_and_round_trip():
    assert [x.name for x in parse_method("mean_diff")] == ["mean_diff", "add"]
    assert [x.name for x in parse_method("directional_ablation")] == ["mean_diff", "ablate"]
    assert [x.name for x in parse_method("pca+ablate")] == ["pca", "ablate"]
    assert method_name("mean_diff", "ablate") == "directional_ablation"  # the alias: names on disk never change
    assert method_name("pca", "ablate") == "pca+ablate" and method_name("pca") == "pca"
    assert {"mean_diff", "pca", "directional_ablation", "pca+ablate"} <= set(method_choices())
    with pytest.raises(IsoKLError, match=r"unknown steering method 'pca\+nope'"):
        parse_method("pca+nope")


def test_pca_ablate_is_a_unit_pca_direction_applied_as_ablation():
    pos, neg = acts()
    r = direction_from(pos, neg, "pca+ablate")
    assert float(r.norm()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(r, direction_from(pos, neg, "pca", unit=True), rtol=0, atol=1e-6)
    vec = SteeringVector(r, 0, "pca+ablate")
    h = torch.randn(2, 3, D)
    out = Steering(vec, 1.0).hook(h.clone())
    torch.testing.assert_close(out @ r, torch.zeros(2, 3), rtol=0, atol=1e-5)  # c = 1 removes the component
    hand = h - (h @ r).unsqueeze(-1) * r
    torch.testing.assert_close(out, hand, rtol=0, atol=1e-6)


def test_sign_gate_is_refused_with_ablation_and_allowed_with_add():
    pos, neg = acts()
    r = direction_from(pos, neg, "directional_ablation")
    with pytest.raises(IsoKLError, match="gate 'sign' has no meaning with method 'directional_ablation'"):
        SteeringVector(r, 0, "directional_ablation", Gate("sign"))
    SteeringVector(r, 0, "mean_diff", Gate("sign"))
    SteeringVector(r, 0, "directional_ablation", Gate("soft", 0.1))


def test_a_registered_extractor_and_operator_compose_with_everything():
    @register_extractor("test_first_pos")
    def first_pos(pos, neg):
        return pos[0] - neg[0]

    @register_operator("test_double", c_init=0.25)
    def double(h, v):
        return 2.0 * v.view(1, 1, -1).expand_as(h)

    try:
        pos, neg = acts(1)
        v = direction_from(pos, neg, "test_first_pos+test_double")
        torch.testing.assert_close(v, pos[0] - neg[0])
        vec = SteeringVector(v, 0, "test_first_pos+test_double", Gate("hard", 0.0))
        assert vec.operator.c_init == 0.25 and not vec.additive
        h = torch.randn(1, 4, D)
        assert Steering(vec, 0.0).hook(h) is None  # identity at c = 0, whatever the operator
        out = Steering(SteeringVector(v, 0, "test_first_pos+test_double"), 0.5).hook(h.clone())
        torch.testing.assert_close(out, h + v, rtol=0, atol=1e-6)
        assert "test_first_pos" in method_choices()
    finally:
        EXTRACTORS.pop("test_first_pos")
        OPERATORS.pop("test_double")


def test_random_null_has_the_norm_of_mean_diff_is_seeded_and_unrelated():
    pos, neg = acts(2)
    r = direction_from(pos, neg, "random")
    md = direction_from(pos, neg, "mean_diff")
    assert float(r.norm()) == pytest.approx(float(md.norm()), rel=1e-5)
    torch.testing.assert_close(r, direction_from(pos * 2, neg, "random") * md.norm() / (pos * 2).mean(0).sub(
        neg.mean(0)).norm(), rtol=1e-5, atol=1e-6)  # same direction whatever the sets: a fixed seed
    big = direction_from(torch.randn(4, 4096), torch.randn(4, 4096), "random")
    assert abs(float(torch.nn.functional.cosine_similarity(big, torch.ones(4096), dim=0))) < 0.1

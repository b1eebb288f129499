"""Extractors on planted signals (no model): the direction each method returns is known in advance.

pos_i = base_i + delta + noise_i and neg_j = base_j + noise_j, with base drawn from one distribution for both
sets, so the only between-set difference is `delta`.
"""

import pytest
import torch
import torch.nn.functional as F

from tl_isokl.errors import IsoKLError
from tl_isokl.extract import direction_from
from tl_isokl.methods import mean_diff
from tl_isokl.methods import pca as pca_direction

D = 32


def planted(n_pos=400, n_neg=400, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(D, generator=g)
    delta = 2.0 * delta / delta.norm()
    center = torch.randn(D, generator=g)  # a shared offset: extraction must be translation invariant
    pos = center + delta + noise * torch.randn(n_pos, D, generator=g)
    neg = center + noise * torch.randn(n_neg, D, generator=g)
    return pos, neg, delta


def cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def test_mean_diff_recovers_planted_delta():
    pos, neg, delta = planted()
    md = mean_diff(pos, neg)
    assert cos(md, delta) > 0.999
    # the noise mean shrinks like noise/sqrt(n): 0.05 * sqrt(2/400) * sqrt(D) ~ 0.02 in norm
    assert float((md - delta).norm()) < 0.05


def test_mean_diff_is_exact_for_paired_noise_free_sets():
    g = torch.Generator().manual_seed(1)
    neg = torch.randn(7, D, generator=g)
    delta = torch.randn(D, generator=g)
    torch.testing.assert_close(mean_diff(neg + delta, neg), delta, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_pos,n_neg", [(400, 400), (50, 350), (300, 20)])
def test_pca_aligns_with_delta_and_has_mean_diff_norm(n_pos, n_neg):
    pos, neg, delta = planted(n_pos, n_neg)
    v = pca_direction(pos, neg)
    md = mean_diff(pos, neg)
    assert cos(v, delta) > 0.99
    assert float(v.norm()) == pytest.approx(float(md.norm()), rel=1e-5)
    assert float(direction_from(pos, neg, "pca", unit=True).norm()) == pytest.approx(1.0, abs=1e-6)


def test_pca_sign_follows_mean_diff_when_sets_are_swapped():
    """Swapping pos and neg flips mean_diff; the PCA axis must flip with it (SVD's own sign is arbitrary)."""
    pos, neg, delta = planted()
    v, w = pca_direction(pos, neg), pca_direction(neg, pos)
    assert cos(v, delta) > 0.99
    assert cos(w, -delta) > 0.99


def test_pca_sign_is_fixed_even_when_svd_returns_the_flipped_axis(monkeypatch):
    """Force the SVD to hand back -axis: the result must still agree in sign with mean_diff."""
    pos, neg, delta = planted()
    reference = pca_direction(pos, neg)
    real_svd = torch.linalg.svd

    def flipped_svd(X, full_matrices=True):
        U, S, Vh = real_svd(X, full_matrices=full_matrices)
        return -U, S, -Vh

    monkeypatch.setattr(torch.linalg, "svd", flipped_svd)
    v = pca_direction(pos, neg)
    assert float(v @ mean_diff(pos, neg)) > 0
    torch.testing.assert_close(v, reference, rtol=0, atol=1e-6)


def test_pca_finds_between_class_axis_not_largest_within_class_axis():
    """A within-class spread smaller than the class gap: PCA must pick the gap, not the spread axis."""
    g = torch.Generator().manual_seed(3)
    e0, e1 = torch.eye(D)[0], torch.eye(D)[1]
    spread = 0.6 * torch.randn(200, 1, generator=g) * e1  # std 0.6 along e1; gap 2 along e0 (var 1 pooled)
    pos = 2.0 * e0 + spread + 0.01 * torch.randn(200, D, generator=g)
    neg = spread.flip(0) + 0.01 * torch.randn(200, D, generator=g)
    assert cos(pca_direction(pos, neg), e0) > 0.99


@pytest.mark.parametrize("method", ["mean_diff", "pca"])
def test_direction_from_unit_option(method):
    pos, neg, delta = planted()
    raw = direction_from(pos, neg, method)
    unit = direction_from(pos, neg, method, unit=True)
    assert float(raw.norm()) == pytest.approx(float(mean_diff(pos, neg).norm()), rel=1e-5)
    assert float(unit.norm()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(unit, raw / raw.norm(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("unit", [False, True])
def test_directional_ablation_is_unit_mean_diff(unit):
    pos, neg, _ = planted()
    r = direction_from(pos, neg, "directional_ablation", unit=unit)
    md = mean_diff(pos, neg)
    assert float(r.norm()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(r, md / md.norm(), rtol=0, atol=1e-6)


def test_unknown_method_names_value_and_choices():
    pos, neg, _ = planted(10, 10)
    with pytest.raises(IsoKLError, match=r"'mean'.*mean_diff, pca.*directional_ablation"):
        direction_from(pos, neg, "mean")

"""The steering operators, called directly on tensors (no model): each output is checked against the formula
written out here independently (einsum, norms), not against the library's own helpers."""

import math

import pytest
import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.steer import Steering, gate_values
from tl_isokl.vector import Gate, SteeringVector

D = 16
G = torch.Generator().manual_seed(0)
V = torch.randn(D, generator=G) * 3.0  # deliberately not unit norm


def sv(method="mean_diff", gate=None, direction=V):
    return SteeringVector(direction=direction, layer=0, method=method, gate=gate)


def resid(B=3, T=5, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed)) * 2.0


# Residuals whose cosine with V is planted exactly: h = |h| (cos u + sin w), u = V/|V|, w unit and orthogonal to u.
COS = [-0.9, -0.3, 0.1, 0.2, 0.5, 0.95]
TAU = 0.25
SOFT = [0.65, 0.05, 0.0, 0.0, 0.25, 0.70]  # relu(|cos| - tau), by hand
HARD = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]      # 1[cos > tau], one-sided
SIGN = [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]    # sign(h . v)


def planted_cos_resid(B=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    u = V / V.norm()
    rows = []
    for _ in range(B):
        toks = []
        for c in COS:
            w = torch.randn(D, generator=g, dtype=torch.float64)
            w = w - (w @ u.double()) * u.double()
            w = w / w.norm()
            norm = 0.5 + 4 * torch.rand(1, generator=g, dtype=torch.float64)
            toks.append(norm * (c * u.double() + math.sqrt(1 - c * c) * w))
        rows.append(torch.stack(toks))
    return torch.stack(rows).float()


def hand_cos(h, v):
    return torch.einsum("btd,d->bt", h.double(), v.double()) / (h.double().norm(dim=-1) * v.double().norm())


# ---- additive ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mean_diff", "pca"])
def test_additive_is_h_plus_c_v(method):
    h = resid()
    out = Steering(sv(method), 2.5).hook(h)
    torch.testing.assert_close(out, h + 2.5 * V, rtol=0, atol=1e-6)
    assert out.dtype == h.dtype and out.shape == h.shape


def test_negative_coefficient_subtracts():
    h = resid()
    torch.testing.assert_close(Steering(sv(), -1.5).hook(h), h - 1.5 * V, rtol=0, atol=1e-6)


def test_hook_does_not_modify_its_input():
    h = resid()
    before = h.clone()
    Steering(sv(), 3.0).hook(h)
    Steering(sv("directional_ablation"), 1.0).hook(h)
    assert torch.equal(h, before)


# ---- ablation ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [0.5, 1.0, 2.0, -1.0])
def test_ablation_formula(c):
    h = resid()
    r = V / V.norm()
    proj = torch.einsum("btd,d->bt", h, r)
    expected = h - c * proj.unsqueeze(-1) * r
    torch.testing.assert_close(Steering(sv("directional_ablation"), c).hook(h), expected, rtol=0, atol=1e-5)


def test_ablation_at_one_removes_the_component_and_keeps_the_rest():
    h = resid()
    r = V / V.norm()
    out = Steering(sv("directional_ablation"), 1.0).hook(h)
    assert torch.einsum("btd,d->bt", out, r).abs().max() < 1e-5
    # the orthogonal part is untouched
    perp = h - torch.einsum("btd,d->bt", h, r).unsqueeze(-1) * r
    torch.testing.assert_close(out, perp, rtol=0, atol=1e-5)


def test_ablation_ignores_direction_scale():
    h = resid()
    a = Steering(sv("directional_ablation", direction=V), 1.0).hook(h)
    b = Steering(sv("directional_ablation", direction=V * 1000), 1.0).hook(h)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


# ---- per-row coefficients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["mean_diff", "directional_ablation"])
def test_per_row_coefficients_equal_scalar_runs_row_by_row(method):
    h = resid(B=4)
    coeffs = torch.tensor([0.0, 1.0, -2.0, 0.5])
    out = Steering(sv(method), coeffs).hook(h)
    for i, c in enumerate(coeffs.tolist()):
        single = Steering(sv(method), c).hook(h[i: i + 1])
        single = h[i: i + 1] if single is None else single
        torch.testing.assert_close(out[i: i + 1], single, rtol=0, atol=1e-6)
    assert torch.equal(out[0], h[0])  # a zero-dose row is untouched, bit for bit


def test_per_row_coefficient_count_must_match_batch():
    with pytest.raises(IsoKLError, match="coeff has 2 rows but the batch has 3"):
        Steering(sv(), torch.tensor([1.0, 2.0])).hook(resid(B=3))


@pytest.mark.parametrize("coeff,match", [(torch.ones(2, 2), r"scalar or a \[batch\].*\(2, 2\)"),
                                         (float("nan"), "finite"), (torch.tensor([1.0, float("inf")]), "finite")])
def test_bad_coefficients(coeff, match):
    with pytest.raises(IsoKLError, match=match):
        Steering(sv(), coeff)


def test_bad_positions():
    with pytest.raises(IsoKLError, match=r"'all' or 'generated', not 'prompt'"):
        Steering(sv(), 1.0, positions="prompt")


# ---- identity at c = 0 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,gate", [
    (m, g) for m in ["mean_diff", "pca", "directional_ablation", "pca+ablate"]
    for g in [None, Gate("soft", 0.0), Gate("hard", 0.0), Gate("sign")]
    if not (m.endswith("ablation") or m.endswith("ablate")) or g is None or g.kind != "sign"])  # sign+ablate: refused
@pytest.mark.parametrize("coeff", [0.0, torch.zeros(3)])
def test_zero_coefficient_returns_none(method, gate, coeff):
    """None tells TransformerLens to keep the activation object itself: alpha = 0 is the base model exactly."""
    s = Steering(sv(method, gate), coeff)
    assert s.hook(resid(B=3)) is None
    assert s.position == 5  # the counter still advances, so a later nonzero phase stays aligned
    assert s.telemetry.tokens == 0


# ---- positions="generated" with the position counter ----------------------------------------------------------

def simulate_decode(s, B=2, T=7, steps=4, seed=3):
    """A [B, T] prefill then `steps` [B, 1] calls, as the hook sees them under KV-cached generation.
    Returns (inputs, outputs) concatenated along positions."""
    ins, outs = [], []
    for i, S in enumerate([T] + [1] * steps):
        h = resid(B=B, T=S, seed=seed + i)
        o = s.hook(h)
        ins.append(h)
        outs.append(h if o is None else o)
    return torch.cat(ins, 1), torch.cat(outs, 1)


@pytest.mark.parametrize("start", [0, 3, 7, 9, 11, 50])
def test_generated_positions_steer_exactly_positions_from_start(start):
    s = Steering(sv(), 2.0, positions="generated", start=start)
    h, out = simulate_decode(s)
    assert s.position == 11
    steered = torch.zeros(11, dtype=torch.bool)
    steered[start:] = True
    torch.testing.assert_close(out[:, steered], h[:, steered] + 2.0 * V, rtol=0, atol=1e-6)
    assert torch.equal(out[:, ~steered], h[:, ~steered])


def test_generated_positions_with_per_row_coefficients_and_ablation():
    c = torch.tensor([1.0, 0.0])
    s = Steering(sv("directional_ablation"), c, positions="generated", start=7)
    h, out = simulate_decode(s)
    r = V / V.norm()
    assert torch.equal(out[:, :7], h[:, :7]) and torch.equal(out[1], h[1])
    assert torch.einsum("td,d->t", out[0, 7:], r).abs().max() < 1e-5
    assert torch.einsum("td,d->t", h[0, 7:], r).abs().min() > 1e-3  # there was something to remove


def test_generated_positions_with_a_start_per_row():
    """Left-padded rows have different prompt lengths, so generation starts at a different position per row."""
    s = Steering(sv(), torch.tensor([1.0, -2.0]), positions="generated", start=torch.tensor([3, 8]))
    h, out = simulate_decode(s)
    assert torch.equal(out[0, :3], h[0, :3]) and torch.equal(out[1, :8], h[1, :8])
    torch.testing.assert_close(out[0, 3:], h[0, 3:] + V, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1, 8:], h[1, 8:] - 2.0 * V, rtol=0, atol=1e-6)


def test_select_rows_keeps_the_doses_and_starts_of_the_remaining_rows():
    s = Steering(sv(), torch.tensor([1.0, 2.0, 3.0]), positions="generated", start=torch.tensor([0, 5, 2]))
    s.hook(resid(B=3, T=4))  # positions 0..3
    s.select_rows(torch.tensor([0, 2]))  # row 1 finished and left the batch
    h = resid(B=2, T=1, seed=9)  # position 4: row 0 (start 0) and old row 2 (start 2) are both generating
    torch.testing.assert_close(s.hook(h), h + torch.tensor([1.0, 3.0]).view(2, 1, 1) * V, rtol=0, atol=1e-6)


def test_reset_rewinds_the_counter_for_a_new_sequence():
    s = Steering(sv(), 1.0, positions="generated", start=7)
    simulate_decode(s)
    assert s.reset() is s and s.position == 0
    h, out = simulate_decode(s)  # the second sequence is steered exactly like the first
    assert torch.equal(out[:, :7], h[:, :7])
    torch.testing.assert_close(out[:, 7:], h[:, 7:] + V, rtol=0, atol=1e-6)
    s.reset(5)
    h = resid(B=2, T=3)
    out = s.hook(h)  # positions 5, 6, 7: only the last is generated
    assert torch.equal(out[:, :2], h[:, :2])
    torch.testing.assert_close(out[:, 2], h[:, 2] + V, rtol=0, atol=1e-6)


def test_all_positions_steer_every_decode_step():
    s = Steering(sv(), 1.0)
    h, out = simulate_decode(s)
    torch.testing.assert_close(out, h + V, rtol=0, atol=1e-6)


# ---- gates ------------------------------------------------------------------------------------------------

def test_planted_residuals_have_the_planted_cosines():
    h = planted_cos_resid()
    torch.testing.assert_close(hand_cos(h, V), torch.tensor(COS, dtype=torch.float64).expand(2, -1),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,expected", [("soft", SOFT), ("hard", HARD), ("sign", SIGN)])
def test_gate_values_match_hand_computed_gates(kind, expected):
    h = planted_cos_resid()
    g = gate_values(h, V, Gate(kind, TAU))
    torch.testing.assert_close(g, torch.tensor(expected).expand(2, -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["soft", "hard", "sign"])
def test_gate_values_on_random_residuals_match_einsum_cosine(kind):
    h = resid(B=4, T=9)
    c = hand_cos(h, V).float()
    expected = {"soft": torch.relu(c.abs() - 0.1), "hard": (c > 0.1).float(), "sign": torch.sign(c)}[kind]
    torch.testing.assert_close(gate_values(h, V, Gate(kind, 0.1)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method,kind,expected", [
    ("mean_diff", "soft", SOFT), ("mean_diff", "hard", HARD), ("mean_diff", "sign", SIGN),
    ("directional_ablation", "soft", SOFT), ("directional_ablation", "hard", HARD)])  # sign+ablation: refused
def test_gated_hook_output_and_telemetry(method, kind, expected):
    h = planted_cos_resid(B=3)
    coeffs = torch.tensor([1.5, 0.0, -2.0])
    s = Steering(sv(method, Gate(kind, TAU)), coeffs)
    out = s.hook(h)
    g = torch.tensor(expected).view(1, -1, 1)
    c = coeffs.view(-1, 1, 1)
    if method == "mean_diff":
        want = h + c * g * V
    else:
        r = V / V.norm()
        want = h - c * g * torch.einsum("btd,d->bt", h, r).unsqueeze(-1) * r
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    # telemetry counts the positions of rows with a nonzero dose: rows 0 and 2, 6 tokens each
    n_on = sum(1 for x in expected if x != 0)
    assert s.telemetry.tokens == 12
    assert s.telemetry.on == 2 * n_on
    assert s.telemetry.fraction_on == pytest.approx(n_on / 6)
    assert s.telemetry.mean_gate == pytest.approx(sum(expected) / 6, abs=1e-5)
    assert s.telemetry.to_dict() == {"tokens": 12, "fraction_on": s.telemetry.fraction_on,
                                     "mean_gate": s.telemetry.mean_gate}


def test_telemetry_accumulates_over_decode_steps_and_counts_only_steered_positions():
    s = Steering(sv(gate=Gate("hard", TAU)), 1.0, positions="generated", start=4)
    h = planted_cos_resid(B=2)  # 6 positions; cos > tau at positions 4 and 5 only
    s.hook(h[:, :5])  # positions 0..4, steered: 4
    s.hook(h[:, 5:6])  # position 5
    assert s.telemetry.tokens == 2 * 2 and s.telemetry.on == 2 * 2 and s.telemetry.mean_gate == 1.0


def test_telemetry_is_nan_before_any_token():
    s = Steering(sv(gate=Gate("soft")), 1.0)
    assert math.isnan(s.telemetry.fraction_on) and math.isnan(s.telemetry.mean_gate)


@pytest.mark.parametrize("kind", ["soft", "hard", "sign"])
def test_zero_residual_gets_gate_zero_not_nan(kind):
    """A residual that is exactly zero (e.g. a zero-initialised pad/BOS embedding) must not produce NaN."""
    h = torch.zeros(1, 2, D)
    g = gate_values(h, V, Gate(kind, 0.0))
    assert torch.equal(g, torch.zeros(1, 2))
    assert torch.equal(Steering(sv(gate=Gate(kind, 0.0)), 3.0).hook(h), h)


# ---- dtypes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("method", ["mean_diff", "directional_ablation"])
def test_output_dtype_is_preserved(dtype, method):
    h = resid().to(dtype)
    out = Steering(sv(method, Gate("soft", 0.1)), 1.0).hook(h)
    assert out.dtype == dtype
    ref = Steering(sv(method, Gate("soft", 0.1)), 1.0).hook(h.float())  # the op runs in fp32 and casts back
    assert torch.equal(out, ref.to(dtype))

"""`cosine_profile` on the embedded model against an einsum/norm computation on cached activations, its
identities (coeff 0 == base, layers below the steered one untouched) and the additive dose response; plus the
heatmap drawn from it."""

import io

import numpy as np
import pytest
import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.figures.cosine import cosine_heatmap
from tl_isokl.geometry import cosine_profile, format_profile, layer_summary, profile_to_json
from tl_isokl.steer import steer
from tl_isokl.vector import Gate

TEXT = "What a lovely question about a ship! I will check 3 facts."



def einsum_cos(model, vec, coeff):
    """cos by hand: (R . v) / (|R| |v|) over every resid_post, the bridge's own tokenizer, one steer() context."""
    ids = model.tokenizer(TEXT, return_tensors="pt").input_ids
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    with torch.no_grad(), steer(model, vec, coeff):
        _, cache = model.run_with_cache(ids, names_filter=names)
    R = torch.stack([cache[n][0] for n in names]).double()  # [layer, T, d]
    v = vec.direction.double()
    dot = torch.einsum("ltd,d->lt", R, v)
    den = R.norm(dim=-1) * v.norm()
    return ids[0].tolist(), torch.where(den > 0, dot / den, torch.zeros_like(dot)).numpy()


@pytest.mark.parametrize("coeff", [0.0, 2.0])
def test_cosine_equals_einsum_on_cached_activations(model, vec, coeff):
    prof = cosine_profile(model, vec, TEXT, coeff=coeff)
    ids, base = einsum_cos(model, vec, 0.0)
    _, steered = einsum_cos(model, vec, coeff)
    assert prof["ids"] == ids
    assert prof["base"].shape == (model.cfg.n_layers, len(ids))
    np.testing.assert_allclose(prof["base"], base, atol=1e-5)
    np.testing.assert_allclose(prof["steered"], steered, atol=1e-5)


def test_coeff_zero_steered_is_base_exactly(model, vec):
    prof = cosine_profile(model, vec, TEXT, coeff=0.0)
    assert np.array_equal(prof["steered"], prof["base"])
    assert prof["summary"]["steered"] == prof["summary"]["base"] and prof["gate"] is None


def test_positive_additive_coeff_raises_the_steered_layer_cosine(model, vec):
    L = vec.layer
    profs = [cosine_profile(model, vec, TEXT, coeff=c) for c in (0.0, 0.5, 2.0, 8.0)]
    means = [p["summary"]["steered"][L]["mean"] for p in profs]
    assert means == sorted(means) and means[-1] > means[0] + 0.1
    real = np.linalg.norm(profs[0]["base"], axis=0) > 0  # zero residuals stay at cos 0
    for lo, hi in zip(profs, profs[1:]):
        assert (hi["steered"][L][real] > lo["steered"][L][real]).all()
    for p in profs:  # blocks below the hook never see the steering
        np.testing.assert_array_equal(p["steered"][:L], p["base"][:L])


def test_ids_input_and_summary(model, vec):
    ids = model.tokenizer(TEXT).input_ids
    prof = cosine_profile(model, vec, ids, coeff=1.0)
    assert prof["ids"] == ids and prof["summary_skips_bos"]
    s = layer_summary(prof["steered"], skip_first=True)
    assert s == prof["summary"]["steered"]
    row = prof["steered"][vec.layer, 1:]
    assert s[vec.layer]["mean_abs"] == pytest.approx(np.abs(row).mean())
    assert s[vec.layer]["max"] == pytest.approx(row.max())
    table = format_profile(prof)
    assert table.count("\n") == 1 + model.cfg.n_layers and "<- steered" in table
    js = profile_to_json(prof)
    assert isinstance(js["base"], list) and len(js["base"]) == model.cfg.n_layers


def test_gated_vector_reports_gate_telemetry(model, vec):
    gated = vec.with_gate(Gate("hard", 0.2))
    prof = cosine_profile(model, gated, TEXT, coeff=2.0)
    g = prof["gate"]
    T = len(prof["ids"])
    assert g["tokens"] == T and 0.0 <= g["fraction_on"] <= 1.0
    # hard gate at the steered layer: on iff cos(h, v) > tau *before* steering, i.e. the base cosine there
    assert g["fraction_on"] == pytest.approx(float((prof["base"][vec.layer] > 0.2).mean()))
    assert "gate: fraction_on" in format_profile(prof)


def test_bad_inputs(model, vec):
    with pytest.raises(IsoKLError, match="at least one token"):
        cosine_profile(model, vec, [])
    with pytest.raises(IsoKLError, match="context"):
        cosine_profile(model, vec, [1] * (int(model.cfg.n_ctx) + 1))


def test_heatmap_draws_both_panels_with_a_symmetric_scale(model, vec):
    prof = cosine_profile(model, vec, TEXT, coeff=4.0)
    fig = cosine_heatmap(prof)
    ax_b, ax_s = fig.axes[:2]
    assert len(fig.axes) == 3  # two panels + colour bar
    for ax in (ax_b, ax_s):
        im = ax.images[0]
        lo, hi = im.get_clim()
        assert lo == -hi and hi >= np.abs(prof["steered"]).max() - 1e-9
        assert im.get_cmap().name == "RdBu_r"
    labels = [t.get_text() for t in ax_b.get_yticklabels()]
    assert labels[vec.layer] == f"L{vec.layer} ▸" and ax_b.get_yticklabels()[vec.layer].get_fontweight() == "bold"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.getvalue()[:4] == b"\x89PNG"


# ---- cosine_report: `tl-isokl cosine` as one call ---------------------------------------------------------------


def test_cosine_report_writes_png_and_json_and_matches_the_profile(model, vec, tmp_path):
    import json

    from tl_isokl.geometry import cosine_report

    rep = cosine_report(model, vec, text=TEXT, coeff=2.0, out=tmp_path)
    assert (rep.coeff, rep.coeff_from, rep.source, rep.text) == (2.0, "coeff given", "--text", TEXT)
    assert rep.png == tmp_path / "cosine.png" and rep.png.read_bytes()[:4] == b"\x89PNG"
    js = json.loads(rep.json.read_text())
    assert js["vector_sha256"] == vec.sha256 and js["coeff_from"] == "coeff given" and js["gated"] is False
    np.testing.assert_array_equal(np.asarray(js["steered"]), cosine_profile(model, vec, TEXT, coeff=2.0)["steered"])
    first = cosine_report(model, vec, out=tmp_path / "default-text")  # no text: held-out prompt 0, coeff 0
    assert first.source.startswith("held-out prompt 0") and first.coeff == 0.0
    np.testing.assert_array_equal(first.profile["base"], first.profile["steered"])


def test_cosine_report_dose_from_a_calibration(model, vec, tmp_path):
    from tl_isokl.errors import IsoKLError
    from tl_isokl.geometry import PromptIndexError, cosine_report, steered_coeff
    from tl_isokl.identity import IdentityError, calibration_identity

    ident = calibration_identity(model, vec, ["p"], stat="p95", target=1.0, tol=0.05, window=8, positions="all",
                                 c_min=1e-4, c_max=1e4)
    cal = {"c_star": 1.5, "identity": ident}
    assert steered_coeff(alpha=2.0, calibration=cal) == (3.0, "alpha 2 x c* 1.5")
    assert steered_coeff() == (0.0, "no --coeff: steered == base")
    rep = cosine_report(model, vec, text=TEXT, alpha=2.0, calibration=cal, out=tmp_path)
    assert rep.coeff == 3.0 and rep.profile["coeff"] == 3.0
    for kw, err, needle in [
        (dict(coeff=1.0, alpha=1.0, calibration=cal), IsoKLError, "not both"),
        (dict(alpha=1.0), IsoKLError, "go together"),
        (dict(coeff=float("inf")), IsoKLError, "finite"),
        (dict(alpha=1.0, calibration={"target": 1.0}), IsoKLError, "numeric c_star"),
        (dict(alpha=1.0, calibration={"c_star": 1.0}), IdentityError, "records no identity"),
        (dict(alpha=1.0, calibration={"c_star": 1.0, "identity": {**ident, "layer": ident["layer"] + 1}}),
         IdentityError, "layer"),
        (dict(prompt_index=10_000), PromptIndexError, "out of range"),
        (dict(text=TEXT, prompt_index=0), IsoKLError, "not both"),
    ]:
        with pytest.raises(err, match=needle):
            cosine_report(model, vec, out=tmp_path / "bad", **kw)
    assert not (tmp_path / "bad").exists()  # every refusal comes before a file is written

"""The dose-response view (issue 11): the curve's shape from (dose, value) pairs alone, its record in
CalibrationResult (round trip, old files), the warnings, and the figure. No model."""

import json
import math
import warnings

import numpy as np
import pytest

from tl_isokl.calibrate import (QUADRATIC_BAND, SATURATION_SLOPE, CalibrationPoint, CalibrationResult, _result,
                                dose_response, local_slopes, loglog_points)
from tl_isokl.errors import IsoKLWarning


def s_curve(c):
    """c^2 up to c = 1, c^6 (steep) up to c = 2, then flat at 64 x 0.1 (saturated)."""
    if c <= 1:
        return 0.1 * c ** 2
    if c <= 2:
        return 0.1 * c ** 6
    return 6.4 * (c / 2) ** 0.1


def test_pure_quadratic_has_slope_two_and_never_leaves_or_saturates():
    cs = [0.1, 0.3, 1.0, 3.0]
    shape = dose_response(cs, [0.2 * c * c for c in cs], target=1.0)
    assert shape.low_dose_slope == pytest.approx(2.0)
    assert shape.leaves_quadratic_at is None and shape.saturates_from is None and shape.monotone


def test_s_curve_leaves_the_quadratic_regime_then_saturates():
    cs = [0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0]
    shape = dose_response(cs, [s_curve(c) for c in cs], target=1.0)
    # below the target: 0.25, 0.5, 1.0 (all c^2) and 1.5 (0.1 * 1.5^6 = 1.14 is above): fit over the lowest 3
    assert shape.low_dose_slope == pytest.approx(2.0)
    assert shape.leaves_quadratic_at == 1.5  # first local slope outside 2 +- 0.5 (segment 1 -> 1.5: slope 6)
    assert shape.saturates_from == 2.0  # segments 2 -> 4 -> 8 have slope 0.1
    ups, slopes = local_slopes(cs, [s_curve(c) for c in cs])
    assert list(ups) == cs[1:]
    np.testing.assert_allclose(slopes, [2, 2, 6, 6, 0.1, 0.1], rtol=1e-9)


def test_band_and_saturation_thresholds_are_the_documented_ones():
    cs = [1.0, 2.0, 4.0]
    inside = dose_response(cs, [1.0, 2 ** (2 + 0.9 * QUADRATIC_BAND), 4 ** (2 + 0.9 * QUADRATIC_BAND)], 1e9)
    outside = dose_response(cs, [1.0, 2 ** 2, 4 ** 2 * 2 ** (1.1 * QUADRATIC_BAND)], 1e9)
    assert inside.leaves_quadratic_at is None and outside.leaves_quadratic_at == 4.0
    flat = dose_response(cs, [1.0, 2 ** 2, 4 * 2 ** (0.9 * SATURATION_SLOPE)], 1e9)
    not_flat = dose_response(cs, [1.0, 2 ** 2, 4 * 2 ** (1.1 * SATURATION_SLOPE)], 1e9)
    assert flat.saturates_from == 2.0 and not_flat.saturates_from is None


def test_a_flat_stretch_below_a_steep_top_is_not_saturation():
    cs = [1.0, 2.0, 4.0, 8.0]
    shape = dose_response(cs, [1.0, 1.05, 1.1, 10.0], 5.0)  # flat, then steep at the high end
    assert shape.saturates_from is None


def test_low_dose_slope_falls_back_to_the_lowest_doses_and_needs_two_points():
    # only one dose below the target: the lowest three doses are fitted
    shape = dose_response([1.0, 2.0, 4.0], [0.5, 2.0, 8.0], target=1.0)
    assert shape.low_dose_slope == pytest.approx(2.0)
    assert dose_response([1.0], [0.5], 1.0).low_dose_slope is None
    assert dose_response([], [], 1.0) == dose_response([], [], 1.0)  # nothing to say, but no error


def test_zero_negative_and_nan_values_are_left_out_of_the_log_log_quantities():
    cs = [0.01, 0.1, 0.5, 1.0, 2.0, 3.0]
    vs = [0.0, -0.02, 0.25 * 0.25, 0.25, float("nan"), 2.25]  # 0.25 c^2 where usable
    c, v = loglog_points(cs, vs)
    assert list(c) == [0.5, 1.0, 3.0]
    shape = dose_response(cs, vs, target=1.0)
    assert shape.low_dose_slope == pytest.approx(2.0) and shape.leaves_quadratic_at is None
    assert shape.monotone  # 0.0 -> -0.02: nothing measurable getting more so is no drop; NaN is skipped
    assert dose_response([1, 2, 3], [0.1, float("nan"), 0.05], 1.0).monotone is False
    assert dose_response([1, 2, 3], [0.1, -0.01, 0.05], 1.0).monotone is False  # from > 0 down: a drop
    assert dose_response([1, 2, 3], [0.1, float("nan"), 0.2], 1.0).monotone is True


# ---- CalibrationResult: recorded, round-tripped, recomputed for old files; warnings -------------------------------


def points(cs, curve, rounds=None):
    return [CalibrationPoint(coeff=c, value=curve(c), stats={"n": 10}, per_prompt=[curve(c)], round=r,
                             kl=[[curve(c)]], lengths=[1])
            for c, r in zip(cs, rounds or [1] * len(cs))]


def make(cs, curve, c_star, target=1.0, **kw):
    hist = points(cs, curve)
    best = next(p for p in hist if p.coeff == c_star)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        res = _result(best, True, hist, target, kw.get("stat", "p95"), 0.05, 16, ["a"], ["0"], 3, 0.0)
    return res, [str(w.message) for w in ws if issubclass(w.category, IsoKLWarning)]


def test_result_records_the_shape_and_round_trips():
    cs = [0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0]
    res, ws = make(cs, s_curve, 1.5)
    assert ws == []
    assert res.low_dose_slope == pytest.approx(2.0) and res.leaves_quadratic_at == 1.5
    assert res.saturates_from == 2.0 and res.monotone is True
    res.solver = "sequential"
    d = json.loads(json.dumps(res.to_dict()))
    assert d["doses"] == 7 and d["solver"] == "sequential"
    back = CalibrationResult.from_dict(d)
    for k in ("low_dose_slope", "leaves_quadratic_at", "saturates_from", "monotone", "solver", "c_star"):
        assert getattr(back, k) == getattr(res, k), k
    assert back.doses == 7


def test_old_calibration_json_without_the_new_fields_loads_and_gets_them_from_its_history():
    cs = [0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0]
    res, _ = make(cs, s_curve, 1.5)
    d = res.to_dict()
    for k in ("low_dose_slope", "leaves_quadratic_at", "saturates_from", "monotone", "solver", "doses"):
        d.pop(k)
    old = CalibrationResult.from_dict(d)
    assert old.solver == "" and old.low_dose_slope == pytest.approx(2.0) and old.saturates_from == 2.0
    assert old.monotone is True
    # recorded values are taken as recorded, None included (nothing is recomputed over them)
    d2 = {**res.to_dict(), "saturates_from": None}
    assert CalibrationResult.from_dict(d2).saturates_from is None
    # a hand-made dict with c_star alone still loads
    bare = CalibrationResult.from_dict({"c_star": 1.0})
    assert bare.low_dose_slope is None and bare.monotone is None and bare.history == []


def test_warns_when_c_star_lies_in_the_saturated_regime():
    curve = lambda c: 1.3 * c * c / (c * c + 1.0)  # noqa: E731  plateau at 1.3: slope 2 / (1 + c^2)
    cs = [0.5, 1.0, 1.5, 1.8, 1.83, 2.5, 4.0]  # target 1 crossed at c = 1.826, where the slope is 0.46
    res, ws = make(cs, curve, 1.83)
    assert res.saturates_from is not None and res.saturates_from <= 1.83
    assert any("saturated" in w and "poorly determined" in w for w in ws), ws
    # the same curve with a low target: c* sits on the steep part, no warning
    res, ws = make([0.1, 0.3, 0.5, 1.0, 4.0], curve, 0.3, target=0.1)
    assert not any("saturated" in w for w in ws), ws


def test_warns_when_the_sampled_curve_is_not_monotone():
    curve = lambda c: {1.0: 0.5, 1.2: 0.97, 1.4: 0.9, 2.0: 3.0}[c]  # noqa: E731
    res, ws = make([1.0, 1.2, 1.4, 2.0], curve, 1.2)
    assert res.monotone is False
    assert any("not monotone" in w and "c=1.2 -> 0.97" in w for w in ws), ws


def test_nll_delta_messages_do_not_call_it_kl():
    curve = lambda c: {1.0: 0.5, 1.2: 0.97, 1.4: 0.9, 2.0: 3.0}[c]  # noqa: E731
    _, ws = make([1.0, 1.2, 1.4, 2.0], curve, 1.2, stat="nll_delta")
    assert any(w.startswith("nll_delta is not monotone") for w in ws), ws


# ---- the figure --------------------------------------------------------------------------------------------------


def gid_artists(fig, gid):
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def test_figure_draws_every_dose_the_reference_and_c_star_on_log_axes(tmp_path):
    from tl_isokl.figures.dose_response import dose_response_plot

    cs = [0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0]
    hist = points(cs, s_curve, rounds=[1, 1, 2, 2, 3, 3, 4])
    hist[0] = CalibrationPoint(coeff=0.1, value=0.0, stats={}, per_prompt=[0.0], round=1)  # cannot be drawn
    res = _result(hist[3], True, hist, 1.0, "p95", 0.05, 16, ["a"], ["0"], 4, 0.0)
    res.solver = "sequential"
    fig = dose_response_plot(res)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    (sc,) = gid_artists(fig, "doses")
    assert len(sc.get_offsets()) == 6  # every positive dose; the zero one is counted in the legend
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("1 not drawn" in t for t in legend) and any("c* = 1.5" in t for t in legend)
    (ref,) = gid_artists(fig, "quadratic")
    x, y = ref.get_xdata(), ref.get_ydata()
    np.testing.assert_allclose(y, s_curve(0.5) * (x / 0.5) ** 2)  # through the lowest drawn dose, slope 2
    assert gid_artists(fig, "c_star")[0].get_xdata()[0] == 1.5
    assert gid_artists(fig, "leaves_quadratic") and gid_artists(fig, "saturates")
    assert "sequential, 7 doses" in ax.get_title()
    fig.savefig(tmp_path / "dose_response.png")
    assert (tmp_path / "dose_response.png").stat().st_size > 0


def test_figure_takes_calibration_json_and_an_nll_delta_history():
    from tl_isokl.figures.dose_response import dose_response_plot

    cs = [0.1, 0.5, 1.0, 2.0]
    curve = lambda c: 0.3 * c - 0.05  # noqa: E731  negative at the lowest dose
    res, _ = make(cs, curve, 2.0, target=0.5, stat="nll_delta")
    fig = dose_response_plot(json.loads(json.dumps(res.to_dict())))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "nll_delta" and "nll_delta vs c" in ax.get_title()
    assert len(gid_artists(fig, "doses")[0].get_offsets()) == 3
    assert not math.isnan(ax.get_ylim()[0])

"""Dose-response of a calibration: the statistic against the dose c, log-log, every evaluated dose.

What it shows: each dose the solver evaluated (coloured by round), the target line with its tolerance band, c*
(the answer, ringed), and the quadratic reference KL ~ c^2 through the lowest dose (the small-dose law: a curve
running parallel to it is in that regime; steeper has left it; flat has saturated). Where
`tl_isokl.calibrate.dose_response` found the curve leaving the quadratic regime or saturating, a dotted vertical
line marks it. Doses whose value is zero, negative (an NLL delta can be) or not finite cannot sit on a log axis:
they are counted in the legend instead. Draws a `CalibrationResult` (or its calibration.json dict); computes only
what `dose_response` computes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from tl_isokl.calibrate import CalibrationResult, dose_response, loglog_points

COLOUR_REF = "0.45"


def _result(cal: CalibrationResult | Mapping[str, Any]) -> CalibrationResult:
    return cal if isinstance(cal, CalibrationResult) else CalibrationResult.from_dict(cal)


def dose_response_plot(cal: CalibrationResult | Mapping[str, Any], *, ax: Any = None, title: str | None = None):
    """Draw a calibration's history as a log-log dose-response figure.

    Args:
        cal: a CalibrationResult or its `to_dict()` (calibration.json).
        ax: Axes to draw on; a new Figure's Axes otherwise.
        title: default "dose-response: <stat> vs c (<solver>, <n> doses)".

    Returns:
        The Figure. Artists carry gids for tests and readers: "doses" (the evaluated doses), "c_star",
        "quadratic" (the c^2 reference), "target", "leaves_quadratic", "saturates".
    """
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    res = _result(cal)
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6.4, 4.2), layout="constrained").add_subplot()
    fig = ax.figure
    doses = [p.coeff for p in res.history]
    values = [p.value for p in res.history]
    rounds = [p.round for p in res.history]
    c, v = loglog_points(doses, values)
    what = res.stat if res.stat == "nll_delta" else f"{res.stat} KL"
    hidden = len(doses) - int(c.size)
    if c.size:
        rnd_of = {float(d): r for d, r in zip(doses, rounds)}
        rr = np.array([rnd_of.get(float(x), 1) for x in c], float)
        n_rounds = max(int(rr.max()), 1)
        cmap = colormaps["viridis"]
        colours = [cmap(0.85 * (r - 1) / max(n_rounds - 1, 1)) for r in rr]
        ax.plot(c, v, color="0.75", lw=0.8, zorder=1, label="_nolegend_")
        ax.scatter(c, v, c=colours, s=26, zorder=3, edgecolors="white", linewidths=0.5, gid="doses")
        # the small-dose law through the lowest dose, over the plotted range
        lo_c, lo_v = float(c[0]), float(v[0])
        xs = np.geomspace(float(c.min()), float(c.max()), 50) if c.size > 1 else np.array([lo_c / 2, lo_c * 2])
        ys = lo_v * (xs / lo_c) ** 2
        keep = (ys >= float(v.min()) / 10) & (ys <= float(v.max()) * 10)  # do not let the reference set the scale
        xs, ys = xs[keep], ys[keep]
        ax.plot(xs, ys, ls="--", color=COLOUR_REF, lw=1.0, zorder=2, gid="quadratic",
                label="_nolegend_")
    t = res.target
    if math.isfinite(t) and t > 0:
        ax.axhline(t, color="tab:red", lw=1.0, zorder=0, gid="target")
        if math.isfinite(res.tol) and 0 < res.tol < 1:
            ax.axhspan(t * (1 - res.tol), t * (1 + res.tol), color="tab:red", alpha=0.08, lw=0, zorder=0)
    if math.isfinite(res.achieved) and res.achieved > 0 and res.c_star > 0:
        ax.plot([res.c_star], [res.achieved], "o", ms=11, mfc="none", mec="tab:red", mew=1.6, zorder=4,
                gid="c_star", label="_nolegend_")
    shape = dose_response(doses, values, t if math.isfinite(t) else math.inf)
    if shape.leaves_quadratic_at is not None:
        ax.axvline(shape.leaves_quadratic_at, color="tab:orange", ls=":", lw=1.0, zorder=0, gid="leaves_quadratic")
    if shape.saturates_from is not None:
        ax.axvline(shape.saturates_from, color="tab:purple", ls=":", lw=1.0, zorder=0, gid="saturates")
    ax.set_xscale("log")
    ax.set_yscale("log")
    slope = "n/a" if shape.low_dose_slope is None else f"{shape.low_dose_slope:.2f}"
    handles = [
        Line2D([], [], color="0.3", marker="o", ls="none", ms=5,
               label=f"evaluated doses ({c.size}, colour = round)"
               + (f"; {hidden} not drawn (value <= 0 or not finite)" if hidden else "")),
        Line2D([], [], color=COLOUR_REF, ls="--", lw=1.0, label=f"∝ c² through the lowest dose (fitted slope {slope})"),
        Line2D([], [], color="tab:red", lw=1.0, label=f"target {t:g} ± {res.tol:.0%}" if math.isfinite(res.tol)
               else f"target {t:g}"),
        Line2D([], [], color="tab:red", marker="o", mfc="none", ls="none", ms=8,
               label=f"c* = {res.c_star:.4g} ({what} = {res.achieved:.3g}"
               + ("" if res.converged is not False else ", not converged") + ")"),
    ]
    if shape.leaves_quadratic_at is not None:
        handles.append(Line2D([], [], color="tab:orange", ls=":", label=f"leaves c² at c = {shape.leaves_quadratic_at:.3g}"))
    if shape.saturates_from is not None:
        handles.append(Line2D([], [], color="tab:purple", ls=":", label=f"saturated from c = {shape.saturates_from:.3g}"))
    ax.legend(handles=handles, fontsize=7.5, loc="upper left", frameon=False)
    ax.set_xlabel("dose c", fontsize=10)
    ax.set_ylabel(what if res.stat == "nll_delta" else f"{what} (nats)", fontsize=10)
    solver = f"{res.solver}, " if res.solver else ""
    ax.set_title(title if title is not None else f"dose-response: {what} vs c ({solver}{len(doses)} doses)",
                 fontsize=10.5)
    ax.grid(True, which="both", lw=0.3, color="0.9")
    ax.tick_params(labelsize=9)
    return fig

"""Kaplan-Meier curves per alpha: how long rollouts stay able to answer, at each dose.

Draws `tl_isokl.survival.SurvivalCurve`s as they are (plus the number at risk under the axis, counted from them).
Curves that coincide, e.g. several doses with no deaths at S = 1, are drawn `DODGE` apart so each stays visible.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from tl_isokl.survival import SurvivalCurve


def _colours(n: int) -> list:
    """Sequential colours ordered by alpha rank (not value: alphas are rarely evenly spaced). viridis is cut at
    0.9 so the highest dose is not a pale yellow on white."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in (np.linspace(0.0, 0.9, n) if n > 1 else [0.0])]


DODGE = 0.012  # vertical offset between neighbouring curves, in S units (display only)


def at_risk(curve: SurvivalCurve, t: float) -> int:
    """Traces still under observation just before token t: n minus deaths and censorings before t."""
    dead = int(curve.deaths[curve.times < t].sum()) if curve.times.size else 0
    return int(curve.n - dead - np.count_nonzero(curve.censor_times < t))


def _at_risk_table(tab: Any, cs: Sequence[SurvivalCurve], colours: Sequence, xmax: float, ticks: Sequence) -> None:
    """The number-at-risk table, on its own Axes under the plot: one row per dose, at the plot's x ticks."""
    tab.set_xlim(0, xmax * 1.02)
    tab.set_ylim(len(cs) - 0.5, -0.5)
    for i, (c, colour) in enumerate(zip(cs, colours)):
        for t in ticks:
            tab.text(t, i, str(at_risk(c, float(t))), color=colour, fontsize=8, ha="center", va="center")
    tab.set_yticks(range(len(cs)), [f"α = {c.alpha:g}" for c in cs], fontsize=8)
    for label, colour in zip(tab.get_yticklabels(), colours):
        label.set_color(colour)
    tab.set_xticks([])
    tab.tick_params(left=False)
    for side in tab.spines.values():
        side.set_visible(False)
    tab.set_title("number at risk", fontsize=8, loc="left", color="0.3")


def survival_plot(curves: Mapping[float, SurvivalCurve] | Sequence[SurvivalCurve], *, window: int | None = None,
                  ax: Any = None, threshold: str | float | None = None, notes: Mapping[float, str] | None = None):
    """Step plot of S(t) per alpha with its pointwise confidence band and a tick at every censoring time.

    Args:
        curves: from `survival.km_curves` (a dict by alpha) or a list of curves.
        window: rollout window in tokens; marked with a dotted vertical line and used as the x limit.
        ax: Axes to draw on; a new Figure's Axes otherwise.
        threshold: the pmass threshold the curves were computed at (a number, or `survival.threshold_text`,
            which says when it was re-derived); shown in the title.
        notes: per alpha, extra text for its legend label (e.g. "alive & right 3/8": alive is not right).

    Returns:
        The Axes (of the curves; with no `ax` given, its Figure also holds the number-at-risk table under it, on a
        second Axes). Each alpha's step line carries the label "α = a  (died d/n)", plus ", <note>" when given.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from matplotlib.figure import Figure

    cs = sorted(curves.values() if isinstance(curves, Mapping) else curves, key=lambda c: c.alpha)
    tab = None  # the number-at-risk table, drawn when this function makes the Figure
    if ax is None:
        fig = Figure(figsize=(6.4, 4.3 + 0.2 * len(cs)), layout="constrained")
        if cs:
            ax, tab = fig.subplots(2, 1, gridspec_kw={"height_ratios": [4.0, 0.3 + 0.22 * len(cs)]})
        else:
            ax = fig.add_subplot()
    ends = [max([*c.times, *c.censor_times, 0]) for c in cs]
    xmax = window if window is not None else max(ends + [1])
    colours = _colours(len(cs))
    # curves that coincide (typically several doses at S = 1 with no deaths) are drawn a hair apart, in dose order,
    # so each one stays visible; the numbers (tables, legend) are unchanged
    dodge = [DODGE * (i - (len(cs) - 1) / 2) for i in range(len(cs))]
    for c, colour, end, dy in zip(cs, colours, ends, dodge):
        end = max(end, window or 0)
        x = np.r_[0, c.times, end]
        y = np.r_[1.0, c.survival, c.survival[-1] if c.survival.size else 1.0] + dy
        note = next((v for k, v in (notes or {}).items() if abs(float(k) - c.alpha) < 1e-9), None)
        ax.step(x, y, where="post", color=colour, lw=2.0,
                label=f"α = {c.alpha:g}  (died {c.died}/{c.n}{', ' + note if note else ''})", zorder=3)
        if c.times.size:
            lo = np.r_[1.0, c.ci_low, c.ci_low[-1]]
            hi = np.r_[1.0, c.ci_high, c.ci_high[-1]]
            ax.fill_between(x, lo, hi, step="post", color=colour, alpha=0.1, lw=0, zorder=1)
        if c.censor_times.size:
            ct = np.unique(c.censor_times)
            ax.plot(ct, c.at(ct) + dy, "|", color=colour, ms=9, mew=1.4, zorder=4, label="_nolegend_")
    level = cs[0].confidence_level if cs else 0.95
    method = cs[0].ci_method if cs else "log-log"
    extra = [Patch(color="0.5", alpha=0.3, lw=0, label=f"{level:.0%} CI ({method})"),
             Line2D([], [], color="0.3", marker="|", ls="none", ms=9, mew=1.4, label="censored (last probed fork)")]
    if window is not None:
        ax.axvline(window, color="0.4", ls=":", lw=1.0, zorder=0)
        extra.append(Line2D([], [], color="0.4", ls=":", lw=1.0, label=f"window ({window})"))
    ax.set_xlim(0, xmax * 1.02)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("generated token", fontsize=10)
    if tab is not None:
        _at_risk_table(tab, cs, colours, xmax, [t for t in ax.get_xticks() if 0 <= t <= xmax])
    ax.set_ylabel("S(t) = P(alive after t tokens)", fontsize=10)
    if threshold is None:
        ax.set_title("Kaplan-Meier survival by dose", fontsize=10.5)
    else:
        thr = f"{threshold:g}" if isinstance(threshold, (int, float)) else str(threshold)
        ax.set_title(f"Kaplan-Meier survival by dose\nalive: pmass ≥ {thr}", fontsize=10.5)
    ax.grid(True, lw=0.3, color="0.88")
    ax.tick_params(labelsize=9)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + extra, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return ax

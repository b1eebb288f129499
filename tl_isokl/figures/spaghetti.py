"""Spaghetti plot: per-token KL of every rollout, one panel per alpha, coloured by the alive/dead probe.

Why this view: the p95 budget is one number per alpha; the spaghetti shows what the tokens behind it did, and
whether traces die where KL spikes or while KL stays low (the seed's "random dead traces at low alpha").
All numbers come from `tl_isokl.survival` and `tl_isokl.records.fate`; this module only draws.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tl_isokl.errors import IsoKLError
from tl_isokl.records import fate
from tl_isokl.figures.series import normalised_kl, rolling_mean, running_median
from tl_isokl.survival import group_by_alpha, is_rederived, km_curves, resolve_threshold, run_threshold, run_window

ALIVE, DEAD = "#3a7ca5", "#d97706"  # steel blue / amber: distinct for the common colour-vision deficiencies
MODES = ("raw", "normalised")
N_EARLY = 20  # tokens behind the normalised view's denominator (the seed's "first 20 tokens")


def _grid(n: int) -> tuple[int, int]:
    nrows = math.ceil(n / 4)
    ncols = math.ceil(n / nrows)  # balanced rows: 5 panels as 3 + 2, not 4 + 1
    return nrows, ncols


def _linthresh(values: np.ndarray) -> float:
    """symlog's linear region: a decade below the bulk of the positive values, within [1e-4, 0.1]. Why symlog:
    KL spans decades between alphas, and alpha = 0's exactly-zero KL has no place on a log axis."""
    pos = values[np.isfinite(values) & (values > 0)]
    if pos.size == 0:
        return 0.01
    return float(np.clip(10 ** math.floor(math.log10(np.quantile(pos, 0.05))), 1e-4, 0.1))


def spaghetti(run: Any, *, mode: str = "raw", threshold: float | None = None, roll: int = 1, axes: Any = None):
    """Draw per-token KL vs token index for every trajectory, one panel per alpha (all alphas, alpha = 0 included).

    Blue up to the death fork, amber from it on (death = first fork with pmass below the threshold, absorbing),
    an amber x at the death fork, a black tick at an EOS end, a black median over the traces still running at
    each token, and a dashed reference: the calibration target in nats (raw) or 1 = each trace's own early p95
    (normalised; see `figures.series.normalised_kl`). Panels share both axes; y is symlog.

    Args:
        run: a loaded `Run`.
        mode: "raw" (nats) or "normalised" (divided by each trace's p95 over its first 20 raw tokens).
        threshold: pmass threshold for alive/dead; defaults to the run's. Another one re-derives every fate from
            the stored pmass, and the title says so.
        roll: centred rolling-mean width for display only (the normaliser and the colours use raw values).
        axes: optional array of at least one Axes per alpha (ascending alpha order); a new Figure otherwise.

    Returns:
        The Figure.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if mode not in MODES:
        raise IsoKLError(f"mode={mode!r} is not one of {MODES}")
    if int(roll) < 1:
        raise IsoKLError(f"roll={roll} must be >= 1 (1 = no smoothing)")
    thr = resolve_threshold(run, threshold)
    groups = group_by_alpha(run)
    curves = km_curves(run, thr)
    window = run_window(run)
    target = float((run.calibration or {}).get("target", 1.0) or 1.0) if mode == "raw" else 1.0

    n = len(groups)
    if axes is None:
        nrows, ncols = _grid(n)
        fig = Figure(figsize=(max(3.3 * ncols, 5.0), 2.5 * nrows + 0.9), layout="constrained")
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    axes_flat = list(np.asarray(axes, dtype=object).ravel())
    if len(axes_flat) < n:
        raise IsoKLError(f"spaghetti needs {n} axes (one per alpha), got {len(axes_flat)}")
    fig = axes_flat[0].figure

    # series to draw per alpha: (y, fate); traces without a normaliser are kept at y=0 only when their KL is 0
    panels: dict[float, list] = {}
    notes: dict[float, list[str]] = {}
    all_zero: dict[float, bool] = {}
    for a, ts in groups.items():
        drawn, zero, skipped = [], 0, 0
        for t in ts:
            raw = np.asarray(t.kl, float)
            y = raw
            if mode == "normalised":
                y = normalised_kl(raw, n_early=N_EARLY)
                if y is None:
                    if np.all(np.nan_to_num(raw) == 0):
                        y, zero = np.zeros_like(raw), zero + 1
                    else:
                        skipped += 1
                        continue
            drawn.append((rolling_mean(y, roll), fate(t, thr), t.eos))
        panels[a] = drawn
        all_zero[a] = all(np.all(np.nan_to_num(np.asarray(t.kl, float)) == 0) for t in ts)
        notes[a] = (["KL = 0 at every token" + (" (0/0: drawn at 0)" if mode == "normalised" else "")]
                    if all_zero[a] else [])
        if zero and not all_zero[a]:
            notes[a].append(f"{zero} with KL = 0 drawn at 0")
        if skipped:
            notes[a].append(f"{skipped} without early KL not drawn")

    visible = np.concatenate([y for d in panels.values() for y, _, _ in d] or [np.zeros(1)])
    visible = visible[np.isfinite(visible)]
    ytop = max(1.3 * float(visible.max()) if visible.size else 0.0, 1.6 * target, 1e-3)
    max_len = max((y.size for d in panels.values() for y, _, _ in d), default=1)
    xmax = min(window, max(20, math.ceil(1.05 * max_len)))
    linthresh = _linthresh(visible)

    for i, (a, drawn) in enumerate(panels.items()):
        ax = axes_flat[i]
        c = curves[a]
        lw_alpha = float(np.clip(8 / max(len(drawn), 1), 0.25, 0.8))
        alive_segs, dead_segs, eos_pts, death_pts = [], [], [], []
        for y, f, eos in drawn:
            if y.size == 0:
                continue
            x = np.arange(y.size)
            pts = np.column_stack([x, y])
            cut = min(f.time, y.size - 1) if f.died else y.size
            if cut > 0:
                alive_segs.append(pts[: cut + 1])
            if f.died:
                dead_segs.append(pts[cut:])
                death_pts.append(pts[cut])
            if eos and y.size:
                eos_pts.append(pts[-1])
        # the minority colour on top, so few dead traces at low alpha (few alive at high alpha) stay visible
        dead_on_top = len(dead_segs) <= len(alive_segs)
        ax.add_collection(LineCollection(dead_segs, colors=DEAD, linewidths=0.7, alpha=lw_alpha,
                                         zorder=3 if dead_on_top else 2))
        ax.add_collection(LineCollection(alive_segs, colors=ALIVE, linewidths=0.7, alpha=lw_alpha,
                                         zorder=2 if dead_on_top else 3))
        if death_pts:
            dp = np.array(death_pts)
            ax.plot(dp[:, 0], dp[:, 1], "x", color=DEAD, ms=4, mew=1.0, zorder=5)
        if eos_pts:
            ep = np.array(eos_pts)
            ax.plot(ep[:, 0], ep[:, 1], "|", color="black", ms=7, mew=1.0, zorder=5)
        if drawn and not all_zero[a]:  # an all-zero median would only hide the alive/dead colours at y = 0
            med = running_median([y for y, _, _ in drawn])
            ax.plot(np.arange(med.size), med, color="black", lw=1.3, zorder=6)
        ax.axhline(target, color="0.3", ls="--", lw=0.9, zorder=1)
        ax.set_title(f"α = {a:g}   n = {c.n}   died = {c.died}   cens = {c.censored}", fontsize=9.5)
        if notes[a]:
            ax.text(0.97, 0.95, "\n".join(notes[a]), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                    color="0.25", bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.8", alpha=0.9), zorder=7)
        ax.set_yscale("symlog", linthresh=linthresh, linscale=0.4)
        ax.set_ylim(-0.4 * linthresh, ytop)  # margin below 0: KL = 0 lines clear of the spine
        ax.set_xlim(0, xmax)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", axis="y", lw=0.3, color="0.85")
    for ax in axes_flat[n:]:
        ax.set_visible(False)

    spec = axes_flat[0].get_subplotspec()
    ncols = spec.get_gridspec().ncols if spec is not None else n
    ylabel = "KL(steered ‖ base) [nats]" if mode == "raw" else "KL / own p95 (first 20 tokens)"
    for i, ax in enumerate(axes_flat[:n]):
        if i % ncols == 0:
            ax.set_ylabel(ylabel, fontsize=9)
        if i + ncols >= n:
            ax.set_xlabel("generated token", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)

    ref_label = (f"calibration target ({target:g} nat)" if mode == "raw" else "own early p95 = 1")
    handles = [
        Line2D([], [], color=ALIVE, lw=1.5, label=f"alive (pmass ≥ {thr:g})"),
        Line2D([], [], color=DEAD, lw=1.5, label="dead (after death fork)"),
        Line2D([], [], color=DEAD, marker="x", ls="none", label="death fork"),
        Line2D([], [], color="black", marker="|", ls="none", ms=7, label="EOS"),
        Line2D([], [], color="black", lw=1.3, label="median (running traces)"),
        Line2D([], [], color="0.3", ls="--", lw=0.9, label=ref_label),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols={1: 2, 2: 3}.get(ncols, 6), fontsize=8,
               frameon=False)
    smooth = f", rolling mean {roll}" if roll > 1 else ""
    what = "per-token KL" if mode == "raw" else "per-token KL, normalised by each trace's early p95"
    rederived = (f"; alive/dead re-derived at threshold {thr:g} from the stored pmass (the run's is "
                 f"{run_threshold(run):g})" if is_rederived(run, thr) else "")
    fig.suptitle(f"{what}{smooth}{rederived}", fontsize=10.5)
    return fig

"""Figures of `tl-isokl compare`: the effect/survival frontier, effect vs alpha, and KM curves per spec.

Each takes compare rows (`tl_isokl.compare.compare_rows`) or loaded runs and returns a matplotlib Figure (None when
there is nothing to draw, e.g. no effect was measured), so notebooks can show them and the CLI can save them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _err(v: float, lo: Any, hi: Any):
    """errorbar's [[below], [above]] for an interval around v; None when the interval is unknown (NaN where the
    band is undefined, e.g. at S = 0). Clipped at 0: matplotlib refuses a negative extent."""
    if not (_finite(lo) and _finite(hi)):
        return None
    return [[max(0.0, v - lo)], [max(0.0, hi - v)]]


def _specs(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["spec"] for r in rows))


def effect_vs_survival(rows: Sequence[dict[str, Any]]):
    """One panel per alpha other than 0 (the reference of every effect): a point per spec at (S(window), effect)
    with both intervals. Up (down, for a negative alpha) and to the right is better: more concept for the same
    budget, fewer deaths."""
    rows = [r for r in rows if r["alpha"] != 0 and _finite(r.get("effect"))]
    if not rows:
        return None
    plt = _plt()
    alphas = sorted({r["alpha"] for r in rows})
    specs = _specs(rows)
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(specs)}
    fig, axes = plt.subplots(1, len(alphas), figsize=(3.2 * len(alphas), 3.4), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], alphas):
        for r in (r for r in rows if r["alpha"] == a):
            x, y = r["S_end"], r["effect"]
            ax.errorbar([x], [y], xerr=_err(x, r.get("S_end_low"), r.get("S_end_high")),
                        yerr=_err(y, r.get("effect_low"), r.get("effect_high")), fmt="o", color=colors[r["spec"]],
                        label=r["spec"], capsize=2)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set_xlim(-0.05, 1.05)
        ax.set_title(f"α = {a:g}")
        ax.set_xlabel("S(window)")
    axes[0][0].set_ylabel("concept effect (separations)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=min(len(uniq), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def effect_vs_alpha(rows: Sequence[dict[str, Any]]):
    """Effect per spec against the dose in units of c*, with 95% bands."""
    rows = [r for r in rows if _finite(r.get("effect"))]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, s in enumerate(_specs(rows)):
        rs = sorted((r for r in rows if r["spec"] == s), key=lambda r: r["alpha"])
        a = np.array([r["alpha"] for r in rs])
        y = np.array([r["effect"] for r in rs], float)
        lo = np.array([r.get("effect_low") if _finite(r.get("effect_low")) else np.nan for r in rs], float)
        hi = np.array([r.get("effect_high") if _finite(r.get("effect_high")) else np.nan for r in rs], float)
        c = plt.get_cmap("tab10")(i % 10)
        ax.plot(a, y, "o-", color=c, label=s)
        ax.fill_between(a, lo, hi, color=c, alpha=0.15)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xlabel("alpha (units of each spec's c*)")
    ax.set_ylabel("concept effect (separations)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def km_by_spec(runs: dict[str, Any], alphas: Sequence[float] = (1.0, 2.0)):
    """Kaplan-Meier survival per spec at the given alphas (one panel each; alphas a run lacks are skipped)."""
    from tl_isokl.survival import km_curves

    curves = {name: km_curves(run) for name, run in runs.items()}
    alphas = [a for a in alphas if any(a in c for c in curves.values())]
    if not alphas:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.2 * len(alphas), 3.4), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], alphas):
        for i, (name, cs) in enumerate(curves.items()):
            if a not in cs:
                continue
            c = cs[a]
            window = int(runs[name].window)
            t = np.concatenate([[0], c.times, [window]])
            s = np.concatenate([[1.0], c.survival, [c.survival[-1] if c.survival.size else 1.0]])
            ax.step(t, s, where="post", color=plt.get_cmap("tab10")(i % 10), label=f"{name} ({c.died}/{c.n})")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"α = {a:g}")
        ax.set_xlabel("generated tokens")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("S(t): alive")
    fig.tight_layout()
    return fig

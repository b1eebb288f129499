"""Cosine heatmap: cos(resid_post, direction), layer x token, base and steered side by side.

Diverging colours centred at 0 with one symmetric scale for both panels (so equal colours mean equal cosines),
the steered layer marked on both. Draws a `tl_isokl.geometry.cosine_profile` dict; computes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_isokl.errors import IsoKLError

MAX_TICKS = 48  # token labels: at least this many before thinning to every k-th (more on wide axes)
SIDE_BY_SIDE_MAX = 40  # tokens; longer texts stack base above steered


def _label(s: str, width: int = 10) -> str:
    s = s.replace("\n", "↵").replace("\t", "→") or "∅"
    s = s.replace("$", r"\$")  # matplotlib mathtext
    return s if len(s) <= width else s[: width - 1] + "…"


def cosine_heatmap(profile: dict[str, Any], *, axes: Any = None, vmax: float | None = None):
    """Draw base and steered cos[layer, token] as two heatmaps sharing one colour bar.

    Args:
        profile: output of `tl_isokl.geometry.cosine_profile`.
        axes: two Axes (base, steered); a new Figure otherwise.
        vmax: colour-scale limit (symmetric, +-vmax); default: max |cos| over both panels, at least 0.05.

    Returns:
        The Figure.
    """
    from matplotlib.figure import Figure

    base, steered = np.asarray(profile["base"], float), np.asarray(profile["steered"], float)
    if base.ndim != 2 or base.shape != steered.shape:
        raise IsoKLError(f"profile base {base.shape} and steered {steered.shape} must both be [n_layers, T]")
    n_layers, T = base.shape
    tokens = list(profile.get("tokens") or [str(i) for i in range(T)])
    L = int(profile["layer"])
    if vmax is None:
        both = np.abs(np.concatenate([base.ravel(), steered.ravel()]))
        vmax = max(float(np.nanmax(both)) if both.size else 0.0, 0.05)
    stacked = T > SIDE_BY_SIDE_MAX
    if axes is None:
        label_h = 0.07 * min(max(len(_label(t)) for t in tokens), 10)  # rotated tick labels
        if stacked:  # long texts: one wide panel above the other, so layers stay tall enough to read
            w = float(np.clip(3.0 + 0.13 * T, 9.0, 16.0))
            fig = Figure(figsize=(w, 2 * (0.8 + 0.3 * n_layers) + label_h + 1.0), layout="constrained")
            axes = fig.subplots(2, 1, sharex=True, sharey=True)
        else:
            w = float(np.clip(2.0 + 0.22 * T, 5.0, 8.0))
            fig = Figure(figsize=(2 * w + 1.0, 1.2 + 0.32 * n_layers + label_h), layout="constrained")
            axes = fig.subplots(1, 2, sharey=True)
    ax_b, ax_s = list(np.asarray(axes, dtype=object).ravel())[:2]
    fig = ax_b.figure
    width_in = ax_b.get_position().width * fig.get_figwidth()
    step = max(1, int(np.ceil(T / max(MAX_TICKS, int(width_in * 9)))))
    coeff = float(profile.get("coeff", 0.0))
    titles = ("base", f"steered (coeff {coeff:g})")
    im = None
    for ax, data, title in ((ax_b, base, titles[0]), (ax_s, steered, titles[1])):
        im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest",
                       origin="lower")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(0, T, step))
        ax.set_xticklabels([_label(tokens[i]) for i in range(0, T, step)], rotation=90, fontsize=7,
                           fontfamily="monospace")
        ax.set_yticks(range(n_layers))
        ax.add_patch(_row_frame(L, T))  # the steered layer: framed on both panels, bold tick label
        texts = ax.set_yticklabels([f"L{i} ▸" if i == L else f"L{i}" for i in range(n_layers)], fontsize=8)
        if 0 <= L < len(texts):
            texts[L].set_fontweight("bold")
        if not stacked or ax is ax_s:
            ax.set_xlabel("token" + (f" (one label every {step} tokens)" if step > 1 else ""), fontsize=9)
        if stacked or ax is ax_b:
            ax.set_ylabel("layer (resid_post)", fontsize=9)
    if stacked:
        ax_b.tick_params(labelbottom=False)
    cb = fig.colorbar(im, ax=[ax_b, ax_s], shrink=0.9, pad=0.01)
    cb.set_label("cos(resid_post, v)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    method = profile.get("method", "")
    fig.suptitle(f"cosine to the {method} direction per layer and token; steered layer L{L} framed", fontsize=10.5)
    return fig


def _row_frame(layer: int, T: int):
    from matplotlib.patches import Rectangle

    return Rectangle((-0.5, layer - 0.5), T, 1.0, fill=False, ec="black", lw=1.4, zorder=5)

"""Figures on a small synthetic run: one panel per alpha (alpha 0 drawn), one survival line per alpha, PNGs."""

import numpy as np
import pytest
from helpers_runs import make_run

from tl_isokl.errors import IsoKLError
from tl_isokl.rundir import load_run
from tl_isokl.survival import km_curves

ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(make_run(tmp_path_factory.mktemp("fig") / "run", alphas=ALPHAS, n=6, window=48))


def panels_with_data(fig):
    """Visible axes that drew something: line segments (LineCollection) or Line2D data."""
    out = []
    for ax in fig.axes:
        n_seg = sum(len(c.get_segments()) for c in ax.collections if hasattr(c, "get_segments"))
        n_pts = sum(len(ln.get_xdata()) for ln in ax.get_lines())
        if ax.get_visible() and (n_seg or n_pts):
            out.append(ax)
    return out


@pytest.mark.parametrize("mode", ["raw", "normalised"])
def test_spaghetti_one_panel_per_alpha_alpha0_drawn(run, mode):
    from tl_isokl.figures.spaghetti import spaghetti

    fig = spaghetti(run, mode=mode)
    axes = panels_with_data(fig)
    assert len(axes) == len(ALPHAS)
    curves = km_curves(run)
    for ax, a in zip(axes, ALPHAS):
        c = curves[a]
        assert ax.get_title() == f"α = {a:g}   n = {c.n}   died = {c.died}   cens = {c.censored}"
    zero = axes[0]
    segs = [s for col in zero.collections for s in col.get_segments()]
    assert len(segs) >= 6 and all(np.all(s[:, 1] == 0) for s in segs)  # alpha 0: drawn at KL = 0
    assert any("KL = 0" in t.get_text() for t in zero.texts)
    assert zero.get_ylim()[0] < 0  # the zero lines sit above the bottom spine
    assert len({ax.get_ylim() for ax in axes}) == 1  # shared y
    ref = 1.0  # raw: calibration target from calibration.json (1.0); normalised: 1 by construction
    assert all(any(set(ln.get_ydata()) == {ref} and ln.get_linestyle() == "--" for ln in ax.get_lines())
               for ax in axes)


def test_spaghetti_colours_split_at_death_fork(run):
    from tl_isokl.figures.spaghetti import ALIVE, DEAD, spaghetti
    from tl_isokl.records import fate

    fig = spaghetti(run, mode="raw")
    ax = panels_with_data(fig)[ALPHAS.index(4.0)]
    trajs = run.by_alpha()[4.0]
    deaths = sorted(min(fate(t, run.threshold).time, t.length - 1) for t in trajs if fate(t, 0.75).died)
    from matplotlib.colors import to_hex

    dead_cols = [c for c in ax.collections if to_hex(c.get_edgecolor()[0]) == DEAD]
    starts = sorted(int(s[0, 0]) for s in dead_cols[0].get_segments())
    assert starts == deaths
    alive_cols = [c for c in ax.collections if len(c.get_segments()) and to_hex(c.get_edgecolor()[0]) == ALIVE]
    for col in alive_cols:  # alive pieces never run past their trace's death fork
        assert all(int(s[-1, 0]) <= max(deaths) for s in col.get_segments())


def test_spaghetti_on_given_axes_and_bad_mode(run):
    from matplotlib.figure import Figure

    from tl_isokl.figures.spaghetti import spaghetti

    axes = Figure().subplots(1, len(ALPHAS))
    assert spaghetti(run, axes=axes) is axes[0].figure
    with pytest.raises(IsoKLError, match="mode"):
        spaghetti(run, mode="log")
    with pytest.raises(IsoKLError, match="axes"):
        spaghetti(run, axes=axes[:2])


def test_survival_plot_one_line_per_alpha(run):
    from tl_isokl.figures.survival import DODGE, survival_plot

    curves = km_curves(run)
    ax = survival_plot(curves, window=run.window)
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("α")]
    assert [ln.get_label().split("  ")[0] for ln in lines] == [f"α = {a:g}" for a in ALPHAS]
    assert len({ln.get_color() for ln in lines}) == len(ALPHAS)
    for ln, a in zip(lines, ALPHAS):  # each step line ends at the curve's last S value
        c = curves[a]
        # drawn at S, up to the small offset that keeps coinciding curves apart (DODGE)
        assert ln.get_ydata()[-1] == pytest.approx(c.at(10**9), abs=DODGE * len(ALPHAS) / 2 + 1e-9)
    assert any(np.all(np.asarray(ln.get_xdata()) == run.window) for ln in ax.get_lines())  # window marker


def test_draw_figures_writes_pngs_atomically(run, tmp_path):
    from tl_isokl.report import draw_figures

    rd = make_run(tmp_path / "r", alphas=(0.0, 1.0), n=3, window=24)
    paths = draw_figures(rd)
    assert [p.name for p in paths] == ["spaghetti_raw.png", "spaghetti_normalised.png", "survival.png",
                                      "dose_response.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(x.name for x in (rd / "figures").iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_survival_plot_number_at_risk_table(run):
    from tl_isokl.figures.survival import at_risk, survival_plot

    curves = km_curves(run)
    ax = survival_plot(curves, window=run.window)
    tab = [a for a in ax.figure.axes if a is not ax]
    assert len(tab) == 1 and tab[0].get_title(loc="left") == "number at risk"
    assert [t.get_text() for t in tab[0].get_yticklabels()] == [f"α = {a:g}" for a in ALPHAS]
    texts = {(t.get_position()[0], t.get_position()[1]): t.get_text() for t in tab[0].texts}
    for i, a in enumerate(ALPHAS):
        c = curves[a]
        assert texts[(0.0, i)] == str(c.n)  # everyone is at risk at token 0
        assert all(v == str(at_risk(c, x)) for (x, row), v in texts.items() if row == i)
    last = curves[ALPHAS[-1]]  # alpha 4: all dead by the window
    assert at_risk(last, run.window + 1) == 0

"""Headless Chromium opens report.html offline (file://, no host resolves) and renders its tables and inline
figures; and the inline circuitsvis view the dead-traces notebook displays (`RenderedHTML.local_src`, the bundle
inlined) renders its tokens with no network.

Install Chromium with `apt-get install -y chromium` (Debian); without it these tests are skipped.
"""

import re
import subprocess
import tempfile

import numpy as np
import pytest
from test_html_browser import CHROMIUM, FLAGS, dump_dom, widget_texts

from tl_isokl.report import draw_figures, write_report

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")]


def screenshot(path, out, size=(1200, 5000)):
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                            "--hide-scrollbars", f"--screenshot={out}", path.resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    import matplotlib.image

    return matplotlib.image.imread(str(out))


def test_report_html_renders_offline_with_its_figures(synthetic_run, tmp_path):
    draw_figures(synthetic_run)
    write_report(synthetic_run)
    page = synthetic_run / "report.html"
    dom = dump_dom(page)
    text = re.sub(r"<[^>]+>", " ", dom)
    for heading in ("Run", "Calibration", "Threshold sensitivity", "Figures", "Manifest"):
        assert f"<h2>{heading}" in dom, heading
    assert "testbed-tiny" in text and dom.count("<img") == 4 and dom.count("<table>") >= 5

    img = screenshot(page, tmp_path / "report.png")
    rows = img[..., :3].min(axis=2) < 0.9  # pixels that are not (near) white
    painted = rows.mean(axis=1) > 0.02
    # the page is long (tables, then four figures) and drawn all the way down: ink in every third of the page
    first_last = np.flatnonzero(painted)
    assert first_last.size and first_last[-1] > 0.6 * img.shape[0], "figures did not render below the tables"
    # figures are mostly colour/ink-dense rows: at least a few hundred rows of the screenshot
    assert painted.sum() > 800


def test_notebook_inline_token_view_renders_offline(tmp_path):
    from types import SimpleNamespace

    from tl_isokl.figures.tokens_html import INLINE_METRICS, inline_trace
    from tl_isokl.records import ForkProbe

    toks = ["What", " a", " lovely", " day", "!", "\n", " <b>x</b>"]
    ins = SimpleNamespace(  # the fields of a TraceInspection that the view reads
        traj=SimpleNamespace(forks=[ForkProbe(0, 0.9, 0.5), ForkProbe(4, 0.9, 0.5), ForkProbe(5, 0.1, 0.0)]),
        fate=SimpleNamespace(died=True, time=5), threshold=0.75, token_strs=toks,
        scores={k: np.linspace(0, 1, len(toks)) * (i + 1) for i, k in enumerate(INLINE_METRICS)})
    view = inline_trace(ins)  # what the dead-traces notebook displays
    src = view._repr_html_()
    assert "unpkg.com" not in src and "<script" in src and len(repr(view)) < 100
    page = tmp_path / "cell.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{src}</body></html>")
    blocks = widget_texts(dump_dom(page))
    assert blocks == [["¦What", " a", " lovely", " day", "¦!", "†↵", " <b>x</b>"]]  # escaped: text, not markup

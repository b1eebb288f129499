"""Headless Chromium renders a trace page offline (file://, shared bundle, background networking off) and the
rollout's tokens appear in the rendered DOM, inside circuitsvis's colored-tokens widgets.

Install Chromium with `apt-get install -y chromium` (Debian); without it this test is skipped.
"""

import html
import re
import shutil
import subprocess
import tempfile

import pytest

from tl_isokl.figures.tokens_html import index_page, trace_page, write_bundle, write_html
from tl_isokl.records import ForkProbe

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND"]  # no host resolves: the widgets can only come from the local bundle
TOKENS = ["What", " a", " lovely", " question", " about", " a", " ship", "!", "\n", "Fact", " 1", ":", " </think>",
          " <b>x</b>", " café"]


def dump_dom(path) -> str:
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                            "--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def widget_texts(dom: str) -> list[list[str]]:
    """Token texts of each rendered colored-tokens block, in order (spaces come back as &nbsp;)."""
    out = []
    for block in re.findall(r'<div class="colored-tokens"[^>]*>(.*?)</div>', dom, flags=re.S):
        spans = re.findall(r"<span style=[^>]*>(.*?)</span>", block, flags=re.S)
        out.append([html.unescape(s).replace("\xa0", " ") for s in spans])
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders_rollout_tokens_offline(tmp_path):
    n = len(TOKENS)
    kl = [0.01 * i for i in range(n)]
    kl[9] = 2.5
    h = trace_page(TOKENS, {"KL": kl, "logp steered": [-0.1 * i for i in range(n)]}, title="browser test",
                   header={"alpha": 1.0}, forks=[ForkProbe(0, 0.9, 0.5), ForkProbe(8, 0.9, 0.5),
                                                 ForkProbe(12, 0.1, 0.0)], threshold=0.5, death=12)
    write_bundle(tmp_path)
    page = write_html(tmp_path / "trace.html", h)
    write_html(tmp_path / "index.html", index_page([{"alpha": 1.0, "page": "trace.html"}], title="index"))

    dom = dump_dom(page)
    blocks = widget_texts(dom)
    assert len(blocks) == 2, "both widgets (ColoredTokens, ColoredTokensMulti) must render from the one bundle"
    expected = ["¦What", " a", " lovely", " question", " about", " a", " ship", "!", "¦↵", "Fact", " 1", ":",
                "† </think>", " <b>x</b>", " café"]
    for texts in blocks:
        assert texts == expected
    text = re.sub(r"<[^>]+>", "", dom)
    assert "browser test" in text and "KL" in text

    idx = dump_dom(tmp_path / "index.html")
    assert 'href="trace.html"' in idx

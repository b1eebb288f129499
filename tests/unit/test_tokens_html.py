"""`tl_isokl.figures.tokens_html`: offline pages that share one circuitsvis bundle. No model, no browser
(tests/integration/test_html_browser.py renders them)."""

import json
import re
from pathlib import Path

import circuitsvis
import pytest

from tl_isokl.figures.tokens_html import _js as _js_safe
from tl_isokl.figures.tokens_html import (
    BUNDLE_NAME, index_page, marked_tokens, trace_page, widget, write_bundle, write_html,
)
from tl_isokl.records import ForkProbe

TOKENS = ["Hello", " world", "\n", "</script>", " <b>bold</b>", " é"]


def page(**kw):
    args = dict(metrics={"KL": [0.1, 0.2, 3.0, 0.0, 0.5, 0.1], "logp": [-1, -2, -3, -4, -5, -6]}, title="t",
                header={"alpha": 1.0, "prompt": "Is <it> true?"},
                forks=[ForkProbe(0, 0.9, 0.5), ForkProbe(2, 0.95, 0.5), ForkProbe(4, 0.2, 0.1),
                       ForkProbe(5, 0.9, 0.4)], threshold=0.5, death=4)
    args.update(kw)
    return trace_page(TOKENS, **args)


def widget_props(html_text, wid):
    m = re.search(r'CircuitsVis\.render\("' + wid + r'", CircuitsVis\.(\w+), (.*?)\);</script>', html_text)
    assert m, f"no widget {wid}"
    return m.group(1), json.loads(m.group(2).replace("<\\/", "</"))


def test_page_references_the_shared_bundle_and_inlines_nothing():
    h = page()
    assert f'<script src="{BUNDLE_NAME}"></script>' in h
    assert len(h.encode()) < 30_000  # the bundle is 1.3 MB; a page must not carry it
    assert "unpkg" not in h and "cdn" not in h.lower() and "http" not in h


def test_tokens_and_markers_in_widget_props():
    h = page()
    name, props = widget_props(h, "tokens-main")
    assert name == "ColoredTokens"
    # escaped: circuitsvis renders token strings as HTML
    assert props["tokens"] == ["¦Hello", " world", "¦↵", "&lt;/script&gt;", "† &lt;b&gt;bold&lt;/b&gt;", " é"]
    assert props["values"] == [0.1, 0.2, 3.0, 0.0, 0.5, 0.1] and props["minValue"] == 0 and props["maxValue"] == 3.0
    name, props = widget_props(h, "tokens-multi")
    assert name == "ColoredTokensMulti" and props["labels"] == ["KL", "logp"]
    assert props["values"][2] == [3.0, -3.0]


def test_script_breakout_and_html_are_escaped():
    h = page()
    assert "</script>\"" not in h and "<b>bold" not in h  # a token can neither close the <script> nor be markup
    assert "Is &lt;it&gt; true?" in h
    assert _js_safe("a</script>b<!--c") == '"a<\\/script>b<\\!--c"'


def test_fork_states_absorbing_death():
    h = page()
    assert "after death (recovered; death is absorbing)" in h  # fork 5: pmass above threshold after death
    assert h.count(">alive<") == 2 and h.count(">dead<") == 1


def test_constant_metric_gets_a_note_not_a_broken_widget():
    h = page(metrics={"KL": [0.0] * 6, "logp": [-1, -2, -3, -4, -5, -6]}, scale_max=1.0)
    _, props = widget_props(h, "tokens-main")
    assert props["maxValue"] == 1.0  # an explicit scale: 0/0 would make every token invisible
    _, props = widget_props(h, "tokens-multi")
    assert props["labels"] == ["logp"] and "Constant at every token: KL = 0" in h


def test_death_after_the_last_token_is_a_pseudo_token():
    assert marked_tokens(["a", "b"], {0: True}, 2) == ["¦a", "b", "†(end)"]
    h = page(death=6, forks=[ForkProbe(6, 0.1, 0.0)])
    _, props = widget_props(h, "tokens-main")
    assert props["tokens"][-1] == "†(end)" and len(props["values"]) == 7


def test_mismatched_metric_length_is_an_error():
    with pytest.raises(ValueError, match="3 values for 6 tokens"):
        page(metrics={"KL": [1, 2, 3]})


def test_bundle_written_once_and_byte_identical(tmp_path):
    p = write_bundle(tmp_path)
    src = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    assert p.name == BUNDLE_NAME and p.read_bytes() == src.read_bytes()
    before = p.stat().st_mtime_ns
    write_bundle(tmp_path)
    assert p.stat().st_mtime_ns == before
    assert sorted(x.name for x in tmp_path.iterdir()) == [BUNDLE_NAME]  # no temp files left behind


def test_index_links_and_write(tmp_path):
    h = index_page([{"alpha": 1.0, "prompt id": "p0", "label": "kl_spike", "page": "trace-r0001.html"}],
                   title="idx", header={"run": "r"})
    assert '<a href="trace-r0001.html">open</a>' in h and "kl_spike" in h and "<script" not in h
    out = write_html(tmp_path / "sub" / "index.html", h)
    assert out.read_text(encoding="utf-8") == h


def test_widget_ids_are_deterministic():
    assert page() == page()
    assert widget("w", "ColoredTokens", tokens=["a"], values=[float("nan")]).count("null") == 1

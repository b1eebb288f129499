"""Offline HTML pages of rollouts, tokens coloured by per-token KL, through circuitsvis's React widgets.

Offline and small: circuitsvis's own `RenderedHTML` inlines its 1.3 MB bundle into every widget, and its `str()`
/ `_repr_html_` reach for a CDN or ping the internet. Here the bundle (`dist/cdn/iife.js`, a classic script that
defines the global `CircuitsVis`) is copied once into the output folder and every page loads it with
`<script src>`, then calls `CircuitsVis.render(id, CircuitsVis.ColoredTokensMulti, props)`. Pages are a few
kB, work from `file://` with no network, and are deterministic (widget ids are counters, not uuids).

Markers in the token strings: `¦` before a token = a fork was probed there and was alive; `†` = the death fork
(the first fork below threshold: the model had written the tokens before it and could no longer answer).
A death after the last token shows as a final `†(end)` pseudo-token with value 0.

Token strings are HTML-escaped before they reach circuitsvis, which renders them as HTML: unescaped, a rollout
token such as `<b>` becomes markup and `</think>` disappears (and a crafted one could inject script).

This module builds strings and writes them atomically through `tl_isokl.files`; it computes nothing.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from tl_isokl.files import atomic_write_bytes, atomic_write_text
from tl_isokl.rundir import HTML_BUNDLE

BUNDLE_NAME = HTML_BUNDLE  # the run directory owns the name
FORK_MARK, DEATH_MARK = "¦", "†"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.2em 2em;color:#222;max-width:1200px}
h1{font-size:1.25em;margin:.2em 0 .6em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.death td{background:#fde2c4}tr.fork td:first-child{border-left:3px solid #3a7ca5}
code,.tok{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
table.header td{white-space:pre-wrap}.dead{color:#b45309;font-weight:600}.alive{color:#3a7ca5}.muted{color:#777}
"""


def bundle_source() -> Path:
    """circuitsvis's browser bundle (the file `RenderedHTML.local_src` would inline)."""
    import circuitsvis

    p = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not p.is_file():
        from tl_isokl.errors import IsoKLError

        raise IsoKLError(f"circuitsvis bundle {p} is missing; reinstall circuitsvis (pip install circuitsvis>=1.43)")
    return p


def write_bundle(out_dir: str | Path) -> Path:
    """Copy the circuitsvis bundle into `out_dir` once (rewritten only when it differs); returns its path."""
    dst = Path(out_dir) / BUNDLE_NAME
    data = bundle_source().read_bytes()
    if not (dst.is_file() and dst.stat().st_size == len(data) and dst.read_bytes() == data):
        atomic_write_bytes(dst, data)
    return dst


def display_token(s: str) -> str:
    """Token text made visible: newlines and tabs as arrows, an empty token as ∅."""
    return s.replace("\n", "↵").replace("\t", "→").replace("\r", "␍") or "∅"


def marked_tokens(tokens: Sequence[str], forks: Mapping[int, bool], death: int | None) -> list[str]:
    """Token strings with fork (`¦`) and death (`†`) markers; `forks` maps fork t -> alive."""
    out = []
    for i, s in enumerate(tokens):
        mark = DEATH_MARK if death == i else (FORK_MARK if forks.get(i) else "")
        out.append(mark + display_token(s))
    if death is not None and death >= len(tokens):
        out.append(DEATH_MARK + "(end)")
    return out


def _js(obj: Any) -> str:
    """JSON for inside a <script>: '</' escaped so a token like '</script>' cannot end the element."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(obj), ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def widget(widget_id: str, component: str, **props: Any) -> str:
    """A div plus the call that renders circuitsvis `component` into it (needs the bundle loaded first)."""
    return (f'<div id="{widget_id}" class="cv-widget" style="margin:12px 0"></div>\n'
            f'<script>CircuitsVis.render("{widget_id}", CircuitsVis.{component}, {_js(props)});</script>\n')


def _page(title: str, body: str, bundle: str | None) -> str:
    script = f'<script src="{html.escape(bundle)}"></script>\n' if bundle else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n{script}</head>\n<body>\n{body}</body></html>\n")


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _kv_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in items.items())
    return f"<table class=\"header\">{rows}</table>\n"


def _top(pairs: Sequence[Sequence[Any]]) -> str:
    return " ".join(f"<span class=\"tok\">{html.escape(display_token(str(s)))}</span>&nbsp;{float(p):.2f}"
                    for s, p in pairs)


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ("<tr><th>i</th><th>token</th><th>KL</th><th>KL recomputed</th><th>logp steered</th><th>logp base</th>"
            "<th>H steered</th><th>cos L</th><th>fork pmass</th><th>steered top-k</th><th>base top-k</th></tr>")
    body = []
    for r in rows:
        cls = "death" if r.get("is_death") else ("fork" if r.get("fork_pmass") is not None else "")
        pm = r.get("fork_pmass")
        pm_s = "" if pm is None else f"<span class=\"{'alive' if r.get('fork_alive') else 'dead'}\">{pm:.3f}</span>"
        body.append(
            f"<tr class=\"{cls}\"><td class=\"num\">{r['index']}</td>"
            f"<td class=\"tok\">{html.escape(display_token(r['token']))}</td>"
            + "".join(f"<td class=\"num\">{_fmt(float(r[k]))}</td>" for k in
                      ("kl", "kl_recomputed", "logp_steered", "logp_base", "entropy_steered", "cos"))
            + f"<td class=\"num\">{pm_s}</td><td>{_top(r['top_steered'])}</td><td>{_top(r['top_base'])}</td></tr>")
    return f"<table class=\"death-table\">{head}{''.join(body)}</table>\n"


def trace_page(
    tokens: Sequence[str],
    metrics: Mapping[str, Sequence[float]],
    *,
    title: str,
    header: Mapping[str, Any] | None = None,
    forks: Sequence[Any] = (),
    threshold: float | None = None,
    death: int | None = None,
    rows: Sequence[Mapping[str, Any]] = (),
    bundle: str = BUNDLE_NAME,
    index_href: str | None = "index.html",
    scale_max: float | None = None,
) -> str:
    """One trace as a self-describing HTML page (returned as a string; write it with `write_html`).

    Args:
        tokens: decoded generated tokens.
        metrics: name -> one value per token (e.g. KL, logp steered, logp base); the first colours by default.
        header: key/value pairs shown in a table at the top (alpha, prompt, died at, label, evidence...).
        forks: ForkProbe-like objects (t, pmass, p_true); listed in a table and marked in the token strings.
        threshold: pmass threshold for the alive/dead marks (forks are all "alive" marks when None).
        death: the death fork t, or None.
        rows: `tl_isokl.forensics.death_table` rows, shown as the death-window table.
        bundle: path of the circuitsvis bundle relative to the page.
        scale_max: top of the colour scale of the first metric's widget (default: its max |value|); e.g. the
            calibration target, so that a page with small KL stays pale instead of saturating.

    Two widgets share the bundle: ColoredTokens of the first metric on an explicit scale (a constant metric,
    like KL = 0 at alpha 0, would otherwise give 0/0 colours: invisible text), and ColoredTokensMulti to
    switch between the metrics that are not constant (constant ones are listed instead).
    """
    names = list(metrics)
    if not names:
        raise ValueError("trace_page needs at least one metric to colour tokens by")
    for k in names:
        if len(metrics[k]) != len(tokens):
            raise ValueError(f"metric {k!r} has {len(metrics[k])} values for {len(tokens)} tokens")
    alive = {int(f.t): (threshold is None or f.alive(threshold)) and (death is None or f.t < death) for f in forks}
    # circuitsvis puts token strings into the DOM as HTML (seen in Chromium: " <b>x</b>" rendered bold and
    # "</think>" vanished), so they are escaped here: model output must never become markup or script
    toks = [html.escape(t, quote=False) for t in marked_tokens(tokens, alive, death)]
    values = [[float(metrics[k][i]) for k in names] for i in range(len(tokens))]
    if len(toks) > len(tokens):
        values.append([0.0] * len(names))
    parts = []
    if index_href:
        parts.append(f'<p class="muted"><a href="{html.escape(index_href)}">← all traces</a></p>\n')
    parts.append(f"<h1>{html.escape(title)}</h1>\n")
    if header:
        parts.append(_kv_table(header))
    parts.append("<h2>Rollout, coloured per token</h2>\n"
                 f'<p class="muted">Hover a token for its value. '
                 f'<code>{FORK_MARK}</code> = alive fork before this token, <code>{DEATH_MARK}</code> = death '
                 f"fork (first probe below threshold).</p>\n")
    first = [v[0] for v in values]
    finite = [abs(x) for x in first if math.isfinite(x)]
    top = max([scale_max or 0.0] + finite) or 1.0
    low = -top if any(x < 0 for x in first if math.isfinite(x)) else 0.0
    parts.append(f"<p><b>{html.escape(names[0])}</b> <span class=\"muted\">(scale {low:.3g} to {top:.3g})</span></p>\n")
    parts.append(widget("tokens-main", "ColoredTokens", tokens=toks, values=first, minValue=low, maxValue=top))
    varying = [j for j, k in enumerate(names)
               if len({round(float(x), 12) for x in metrics[k] if math.isfinite(float(x))}) > 1]
    constant = [f"{k} = {_fmt(float(metrics[k][0]))}" for j, k in enumerate(names) if j not in varying and len(tokens)]
    if varying:  # the same strip again, so folded: open it to switch the colouring between metrics
        parts.append("<details><summary><b>All metrics</b> <span class=\"muted\">(the same tokens; buttons switch "
                     "the colouring)</span></summary>\n")
        parts.append(widget("tokens-multi", "ColoredTokensMulti", tokens=toks,
                            values=[[v[j] for j in varying] for v in values], labels=[names[j] for j in varying]))
        parts.append("</details>\n")
    if constant:
        parts.append(f"<p class=\"muted\">Constant at every token: {html.escape('; '.join(constant))}.</p>\n")
    if rows:
        parts.append("<h2>Death window</h2>\n"
                     '<p class="muted">Row i: token i and the distribution that produced it. KL recomputed by '
                     "teacher forcing must equal the stored KL.</p>\n")
        parts.append(_rows_table(rows))
    if forks:
        fr = "".join(
            f"<tr><td class=\"num\">{int(f.t)}</td><td class=\"num\">{f.pmass:.4f}</td><td class=\"num\">"
            f"{f.p_true:.4f}</td><td>{_state(f, threshold, death)}</td></tr>" for f in sorted(forks, key=lambda f: f.t))
        parts.append("<h2>Fork probes</h2>\n<table><tr><th>t</th><th>pmass</th><th>p_true</th><th>state</th></tr>"
                     f"{fr}</table>\n")
    return _page(title, "".join(parts), bundle)


def _state(f: Any, threshold: float | None, death: int | None) -> str:
    if threshold is None:
        return ""
    if death is not None and f.t > death:
        return "after death" + (" (recovered; death is absorbing)" if f.alive(threshold) else "")
    return "alive" if f.alive(threshold) else "dead"


def index_page(entries: Sequence[Mapping[str, Any]], *, title: str, header: Mapping[str, Any] | None = None,
               columns: Sequence[str] | None = None, link_key: str = "page") -> str:
    """A run's index: one table row per inspected trace, the `link_key` column linking to its page."""
    cols = list(columns or [k for k in (entries[0] if entries else {}) if k != link_key])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "<th>page</th>"
    body = []
    for e in entries:
        cells = "".join(f"<td>{html.escape(_fmt(e.get(c)))}</td>" for c in cols)
        link = e.get(link_key)
        a = f'<a href="{html.escape(str(link))}">open</a>' if link else ""
        body.append(f"<tr>{cells}<td>{a}</td></tr>")
    parts = [f"<h1>{html.escape(title)}</h1>\n"]
    if header:
        parts.append(_kv_table(header))
    parts.append(f"<h2>Traces ({len(entries)})</h2>\n")
    parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>\n" if entries else "<p>No traces.</p>\n")
    return _page(title, "".join(parts), None)


def inspection_page(ins: Any, *, header: Mapping[str, Any] | None = None, bundle: str = BUNDLE_NAME,
                    index_href: str | None = "index.html", scale_max: float | None = None) -> str:
    """`trace_page` for a `tl_isokl.forensics.TraceInspection`: KL / logp steered / logp base / cos L."""
    t = ins.traj
    s = ins.scores
    metrics = {"KL(steer||base)": s["kl"], "logp steered": s["logp_steered"], "logp base": s["logp_base"],
               "cos(resid L, v) steered": s["cos_steered"]}
    died = ins.fate.died
    head = {"alpha": t.alpha, "coeff": t.coeff, "prompt id": t.prompt_id, "prompt": t.prompt,
            "tokens": t.length, "EOS": t.eos, "threshold": ins.threshold,
            "died at fork": ins.fate.time if died else None,
            "censored at": None if died else ins.fate.time,
            "label": ins.label, "evidence": ins.evidence.get("summary") if ins.evidence else None,
            "max |KL recomputed − KL|": ins.max_abs_kl_diff}
    head.update(header or {})
    title = f"α={t.alpha:g} · {t.prompt_id}" + (f" · died at {ins.fate.time} · {ins.label}" if died else "")
    return trace_page(ins.token_strs, metrics, title=title, header=head, forks=t.forks, threshold=ins.threshold,
                      death=ins.fate.time if died else None, rows=ins.rows, bundle=bundle, index_href=index_href,
                      scale_max=scale_max)


def write_html(path: str | Path, text: str) -> Path:
    """Atomic write of one page."""
    return atomic_write_text(path, text)


class InlineHTML:
    """HTML for a notebook cell: Jupyter displays `_repr_html_`; `html` is the string. Self-contained (the
    circuitsvis bundle is inlined), so it renders offline."""

    def __init__(self, text: str):
        self.html = text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"<InlineHTML: {len(self.html)} characters; display it in a notebook>"


INLINE_METRICS = ("kl", "logp_steered", "logp_base", "cos_steered")


def inline_trace(ins: Any, metrics: Sequence[str] = INLINE_METRICS) -> InlineHTML:
    """One inspected trace (`tl_isokl.forensics.TraceInspection`, e.g. from `DeathReport.inspections`) as a
    circuitsvis ColoredTokensMulti widget for a notebook: tokens coloured by each of `metrics` (its `scores`), with
    the fork (`¦`) and death (`†`) marks of the inspect pages and the same HTML escaping. Uses circuitsvis's
    `RenderedHTML.local_src` (its bundle inlined: no network, no CDN), never its `_repr_html_`."""
    import torch
    from circuitsvis.tokens import colored_tokens_multi

    t = ins.traj
    death = ins.fate.time if ins.fate.died else None
    alive = {int(f.t): f.alive(ins.threshold) and (death is None or f.t < death) for f in t.forks}
    toks = [html.escape(s, quote=False) for s in marked_tokens(ins.token_strs, alive, death)]
    n = len(ins.token_strs)
    values = torch.tensor([[float(ins.scores[k][i]) if i < n else 0.0 for k in metrics] for i in range(len(toks))],
                          dtype=torch.float32).nan_to_num(0.0)
    return InlineHTML(colored_tokens_multi(toks, values, list(metrics)).local_src)

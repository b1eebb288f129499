"""report.md and figures/ of a run directory, rebuilt from the run directory alone.

Why from the directory only: a report must be reproducible on a laptop without the model, and redrawing must
never need the sweep to be rerun. Every file is written atomically through `tl_isokl.files`.

Another threshold (`threshold=`, the CLI's `--threshold`): every fate is re-derived from the pmass stored at each
fork, nothing is recomputed and no model is loaded. The run's own files (report.md, figures/, summary.csv,
forks.csv, inspect/) say what happened at the run's threshold and are never overwritten by a re-derivation: the
outputs at another threshold go to ``RUN/threshold=<value>/`` (`output_dir`), which has the run directory's layout
(report.md, figures/, inspect/), and each of them says that it was re-derived and from which threshold.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from tl_isokl.identity import run_notes
from tl_isokl.files import atomic_write_bytes, atomic_write_text
from tl_isokl.rundir import FIGURES, FIGURES_DIR, INSPECT_INDEX, Run, RunDir, load_run
from tl_isokl.survival import (is_rederived, kl_summary, km_curves, resolve_threshold, run_window,
                               sensitivity_table, sensitivity_thresholds, survival_table, threshold_text)

DPI = 160
REDERIVED_PREFIX = "threshold="  # RUN/threshold=<value>/: outputs re-derived at a threshold not the run's


def rederived_name(threshold: float) -> str:
    """Folder name of the outputs re-derived at `threshold`: "threshold=0.5" (the float's shortest exact form)."""
    return f"{REDERIVED_PREFIX}{float(threshold)!r}"


def output_dir(run_dir: str | Path, threshold: float | None = None, *, run: Run | None = None) -> Path:
    """Where the outputs at `threshold` go: the run directory itself at the run's own threshold (or None), else
    RUN/threshold=<value>/ (a re-derivation never overwrites the run's own report, figures or tables)."""
    run = run if run is not None else load_run(run_dir)
    thr = resolve_threshold(run, threshold)
    return Path(run_dir) / rederived_name(thr) if is_rederived(run, thr) else Path(run_dir)


def figure_paths(run_dir: str | Path, threshold: float | None = None, *, run: Run | None = None) -> list[Path]:
    """Where `draw_figures` puts its PNGs (they may not exist yet)."""
    out = Path(run_dir) if threshold is None and run is None else output_dir(run_dir, threshold, run=run)
    return [RunDir(out).figure_path(key) for key in FIGURES]


def _save(fig: Any, path: Path, run: Run | None = None) -> Path:
    if run is not None:  # a figure says which run it came from, wherever it ends up
        model = run.manifest.get("model")
        model = model.get("name") if isinstance(model, dict) else model
        fig.text(0.995, 0.003, f"run: {Path(run.path).resolve().name} · {model} · "
                 f"{run.manifest.get('method')} L{run.manifest.get('layer')}", ha="right", va="bottom", fontsize=6,
                 color="#777")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # Figure objects use the Agg canvas: no pyplot, no GUI backend
    return atomic_write_bytes(path, buf.getvalue())


def draw_figures(run_dir: str | Path, *, roll: int = 1, threshold: float | None = None) -> list[Path]:
    """(Re)draw spaghetti (raw and normalised), survival and the calibration's dose-response PNGs into
    RUN/figures/; returns their paths.

    Args:
        run_dir: a run directory (see `tl_isokl.rundir`).
        roll: rolling-mean width for the spaghetti lines, display only.
        threshold: pmass threshold for alive/dead (default: the run's). Another one re-derives every fate from the
            stored pmass and draws into RUN/threshold=<value>/figures/ (see `output_dir`).
    """
    from tl_isokl.figures.spaghetti import spaghetti
    from tl_isokl.figures.survival import survival_plot
    from tl_isokl.outcomes import outcome_columns

    run = load_run(run_dir)
    thr = resolve_threshold(run, threshold)
    raw, norm, surv, dose = figure_paths(run_dir, thr, run=run)
    out = [_save(spaghetti(run, mode="raw", roll=roll, threshold=thr), raw, run),
           _save(spaghetti(run, mode="normalised", roll=roll, threshold=thr), norm, run)]
    notes = {}
    for a, ts in run.by_alpha().items():
        acc = outcome_columns(run, ts, thr)
        if acc:
            notes[a] = f"alive & right {acc['alive_right']}/{acc['answered']}"
    out.append(_save(survival_plot(km_curves(run, thr), window=run_window(run),
                                   threshold=threshold_text(run, thr), notes=notes).figure, surv, run))
    from tl_isokl.figures.dose_response import dose_response_plot

    cal = run.calibration or {"c_star": float("nan"), "target": float("nan"), "history": []}
    out.append(_save(dose_response_plot(cal), dose, run))
    return out


# --------------------------------------------------------------------------------------------------- text


def fmt(v: Any) -> str:
    """One cell: None -> '—' (not applicable / not reached), NaN -> 'n/a' (undefined), floats to 4 significant
    digits, p-values below 1e-4 in scientific form, a dict as "key value · key value"."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-4 else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    if isinstance(v, dict):  # e.g. a gate or a model record: "kind soft · tau 0.1", never a raw Python dict
        return " · ".join(f"{k} {fmt(x)}" for k, x in v.items())
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A padded Markdown table: valid Markdown, and readable as plain text in a terminal."""
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in cols]
    line = lambda vals: "| " + " | ".join(  # noqa: E731
        v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, width, numeric)) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1)) for w, num in zip(width, numeric))
    return "\n".join([line(cols), rule + "|", *(line(r) for r in cells)]) + "\n"


_MANIFEST_FIELDS: list[tuple[str, str]] = [
    ("model", "model"),
    ("revision", "revision"),
    ("dtype", "dtype"),
    ("layer", "layer"),
    ("method", "method"),
    ("gate", "gate"),
    ("vector hash", "vector_sha256"),
    ("prompts hash", "prompts_sha256"),
    ("window", "window"),
    ("threshold", "threshold"),
    ("seed", "seed"),
    ("package version", "package_version"),
    ("created", "created"),
]


def _manifest_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"field": name, "value": manifest.get(key)} for name, key in _MANIFEST_FIELDS]
    history = manifest.get("history")
    if isinstance(history, list) and history:  # every command that wrote into the run, oldest first
        for i, h in enumerate(history, 1):
            argv = " ".join(map(str, h.get("argv") or []))
            rows.append({"field": f"command {i}", "value": f"`{argv}` ({h.get('time') or '?'})"})
    elif manifest.get("argv"):
        rows.append({"field": "command line", "value": "`" + " ".join(map(str, manifest["argv"])) + "`"})
    return rows


def _calibration_rows(cal: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not cal:
        return [{"field": "calibration", "value": "missing (no calibration.json)"}]
    names = [("c*", "c_star"), ("statistic", "stat"), ("target (nats)", "target"), ("achieved (nats)", "achieved"),
             ("tolerance (relative)", "tol"), ("converged", "converged"), ("calibration window", "window"),
             ("rounds", "rounds"), ("per-prompt c* spread", "per_prompt_spread")]
    return [{"field": label, "value": _spread_text(cal[key]) if key == "per_prompt_spread" else cal.get(key)}
            for label, key in names if key in cal]


def _spread_text(sp: Any) -> Any:
    """The per-prompt c* spread as one readable cell: "min 0.8308 · median 1.1 · max 1.5 (ratio 1.8); 1 prompt
    never crossed the target" (a raw dict never reaches the report)."""
    if not isinstance(sp, dict):
        return sp
    parts = [f"{k} {fmt(sp.get(k))}" for k in ("min", "median", "max") if k in sp]
    text = " · ".join(parts) + (f" (ratio {fmt(sp['ratio'])})" if sp.get("ratio") is not None else "")
    nb = sp.get("not_bracketed")
    if nb:
        text += f"; {nb} prompt{'s' if nb != 1 else ''} never crossed the target"
    return text


def _section(title: str, body: Iterable[str]) -> str:
    return f"## {title}\n\n" + "\n\n".join(b.rstrip("\n") for b in body) + "\n"


ACCURACY_NOTES = [
    "Three fates, where the prompts carry answers: alive_right / alive_wrong = never died, and at its last probed "
    "fork the more probable of P(true), P(false) is / is not the prompt's answer (a tie is not right); dead as "
    "above. alive_right + alive_wrong + died = answered when every prompt has an answer (a fork stored without "
    "p_true counts in neither).",
    "acc_end = alive_right / answered (a dead trace gave no answer: not right), read at the last probed fork; "
    "acc_t0 = the same at fork t = 0, right after the prompt (alive there and the more probable answer is right); "
    "acc_alive = alive_right / (alive_right + alive_wrong): how often the survivors are right.",
]
def _base_rate_note(run: Run) -> str:
    """What answering the same thing every time would score: the yardstick for every accuracy column."""
    from tl_isokl.outcomes import answer_for, answers

    known = answers(run)
    first = {}
    for t in run.trajectories:  # one answer per row id (every alpha has the same rows)
        a = answer_for(known, t.prompt_id)
        if a is not None:
            first.setdefault(t.prompt_id, a)
    n, n_true = len(first), sum(first.values())
    return (f"Yardstick: {n_true} of the {n} answered rows are true and {n - n_true} false, so a probe that prefers "
            f"the same answer whatever the question has acc_alive {n_true / n:.3g} (always true) or "
            f"{(n - n_true) / n:.3g} (always false); judge each row against this and the alpha = 0 row (the "
            f"unsteered model), not against 1. "
            f"The probe reads the answer the model would commit to if made to answer at that fork; before the model "
            f"has reasoned this can be a default answer (on the embedded test bed the unsteered model prefers false "
            f"at most forks while it thinks), so the accuracy columns say whether a dose changes that answer, "
            f"not how often the finished rollout is right.") if n else ""


NO_ANSWER_NOTE = ("The prompts of this run carry no answers (manifest `prompts[i].answer`), so accuracy is not "
                  "reported: alive means the probe can still answer true or false, not that it answers right.")


def _sensitivity_section(run: Run, thr: float) -> str:
    ths = sensitivity_thresholds(run, thr)
    return _section("Threshold sensitivity", [
        markdown_table(sensitivity_table(run, ths)),
        f"Deaths (died/n) and Kaplan-Meier median death token (— = not reached) per alpha at thresholds "
        f"{', '.join(f'{t:g}' for t in ths)}, each re-derived from the pmass stored at every fork (nothing "
        f"recomputed); \"(run)\" marks the threshold the run was swept at. A death count that moves a lot between "
        f"columns means traces sit near the threshold rather than collapse.",
    ])


def write_report(run_dir: str | Path, threshold: float | None = None, *, html: bool = True) -> Path:
    """Write report.md (run identity, calibration, survival table with the three fates and accuracy where answers
    exist, threshold sensitivity, KL table, figure links) atomically, and next to it report.html (the same as one
    self-contained page, see `write_report_html`; `html=False` skips it); returns report.md's path.

    At the run's threshold (default) it is RUN/report.md; at another it is RUN/threshold=<value>/report.md, and it
    says that every fate was re-derived from the stored pmass. Figures are linked, not drawn: call `draw_figures`
    with the same threshold first (the CLI does when they are missing).
    """
    run = load_run(run_dir)
    thr = resolve_threshold(run, threshold)
    rd = RunDir(output_dir(run_dir, thr, run=run))
    path = atomic_write_text(rd.report_path, report_markdown(run, thr))
    if html:
        atomic_write_text(rd.report_html_path, report_html(run, thr))
    return path


def report_markdown(run: Run, thr: float) -> str:
    """The text of report.md for a loaded run at threshold `thr` (what `write_report` writes)."""
    rederived = is_rederived(run, thr)
    rows = survival_table(run, thr)
    kl = [s.to_dict() for s in kl_summary(run)]
    figs = "\n".join(f"![{key}]({FIGURES_DIR}/{name})" for key, name in FIGURES.items())
    with_acc = bool(rows) and "acc_end" in rows[0]
    title = f"# tl-isokl report: `{Path(run.path).name}`" + (f" at threshold {thr:g} (re-derived)" if rederived else "")
    intro = ([f"Every fate in this report (deaths, censoring, medians, log-rank tests, accuracy, figures) is "
              f"re-derived at threshold {thr:g} from the pmass stored at each fork; nothing was recomputed. The run "
              f"was swept at threshold {run.threshold:g}: its own report.md, summary.csv, forks.csv and figures "
              f"(in `{run.path}`) use {run.threshold:g} and are unchanged.\n"] if rederived else [])
    text = "\n".join([
        title + "\n",
        *intro,
        _section("Run", [markdown_table(_manifest_rows(run.manifest), ["field", "value"])]),
        _section("Calibration", [markdown_table(_calibration_rows(run.calibration), ["field", "value"]),
                                 "alpha = 1 means c*: the coefficient whose per-token KL statistic meets the target "
                                 "(tolerance relative to the target)."]),
        *([_section("Caveats", ["\n".join(f"- {n}" for n in notes)])] if (notes := run_notes(run)) else []),
        _section(f"Survival (threshold {threshold_text(run, thr)})", [
            markdown_table(rows),
            "Death = first fork with pmass < threshold (absorbing; NaN pmass counts as dead). A trace alive at "
            "the end is right-censored at its last probed fork, where it was last seen alive (forks after EOS or "
            "after the model's own `</think>` are not probed; `eos` counts the censored traces that ended at EOS).",
            *([*ACCURACY_NOTES, _base_rate_note(run)] if with_acc else [NO_ANSWER_NOTE]),
            "Death times are interval-censored at fork resolution: a trace dead at fork t was alive at the "
            "previous probed fork and failed somewhere in between (forks.csv gives each death's "
            "(last_alive_fork, death_fork]). Kaplan-Meier places each death at its fork, so S@t and the median "
            "are upper bounds on the true failure token by at most one fork interval (with log2 forks a median "
            "of 64 means a first failure between tokens 33 and 64).",
            "S@t: Kaplan-Meier S just after token t. median: first token with S <= 0.5 (— = not reached), with "
            "its 95% band (median_low, median_high) from the pointwise log-log band.",
            "p_vs_0 / p_vs_1: two-sided log-rank p against alpha = 0 / alpha = 1 (— = no such comparison, "
            "n/a = undefined: no deaths in either group).",
        ]),
        _sensitivity_section(run, thr),
        _section("Per-token KL(steered ‖ base), nats", [
            markdown_table(kl, ["alpha", "n_traj", "n_tokens", "mean", "p50", "p95", "max"]),
            "Pooled over every generated token of every trajectory at that alpha (non-finite values left out; "
            "independent of the threshold).",
        ]),
        _section("Figures", [figs]),
        *([_section("Inspect pages", [pages])] if (pages := _inspect_links(run, thr)) else []),
    ])
    return text


def _inspect_links(run: Run, thr: float) -> str:
    """Markdown list of the inspect pages written for this run at this threshold (relative links), or ""."""
    out = Path(output_dir(run.path, thr, run=run))
    idx = RunDir(out).inspect_dir / INSPECT_INDEX
    if not idx.is_file():
        return ""
    rel = lambda p: p.relative_to(out).as_posix()  # noqa: E731
    traces = sorted(RunDir(out).inspect_dir.glob("trace-r*.html"))
    return "\n".join([f"- [index of the dead traces]({rel(idx)}) (`tl-isokl inspect`)",
                      *(f"- [{p.stem}]({rel(p)})" for p in traces)])


# --------------------------------------------------------------------------------------------------- html

_HTML_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;color:#222;max-width:1100px;
padding:0 1.5em;line-height:1.45}
h1{font-size:1.45em;border-bottom:2px solid #3a7ca5;padding-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;
border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.86em;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
vertical-align:top}th{background:#f4f4f4}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;background:#f6f6f6;padding:0 .2em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}p{max-width:70em}.muted{color:#777;font-size:.85em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.8em}
"""


def _inline(text: str) -> str:
    """Markdown inline markup of the report (code spans, links, bold) as HTML, everything else escaped."""
    import html
    import re

    out, pos = [], 0
    for m in re.finditer(r"`([^`]*)`", text):  # code spans first: nothing inside them is markup
        out.append(_inline_plain(text[pos:m.start()]))
        out.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    out.append(_inline_plain(text[pos:]))
    return "".join(out)


def _inline_plain(text: str) -> str:
    import html
    import re

    t = html.escape(text, quote=False)
    t = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def _split_row(line: str) -> list[str]:
    import re

    return [c.strip() for c in re.split(r"\s\|\s", " " + line.strip()[1:-1].strip() + " ")]


def _html_table(lines: list[str]) -> str:
    head, rule, *body = lines
    cols = _split_row(head)
    right = [c.strip().endswith(":") and not c.strip().startswith(":") for c in rule.strip("|").split("|")]
    right += [False] * (len(cols) - len(right))
    cls = lambda i: ' class="num"' if right[i] else ""  # noqa: E731
    rows = ["<tr>" + "".join(f"<th{cls(i)}>{_inline(c)}</th>" for i, c in enumerate(cols)) + "</tr>"]
    for line in body:
        cells = _split_row(line)
        rows.append("<tr>" + "".join(f"<td{cls(i) if i < len(right) else ''}>{_inline(c)}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _data_uri(path: Path) -> str | None:
    import base64

    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" if path.is_file() else None


def markdown_to_html(text: str, base: Path) -> str:
    """The report's Markdown (headings, padded tables, paragraphs, lists, images, links, code spans) as an HTML
    body. Images are inlined as base64 PNG from `base` (a missing one is said, not linked)."""
    import html
    import re

    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.strip("\n").splitlines()
        first = lines[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            out.append(f"<h{level}>{_inline(first[level:].strip())}</h{level}>")
            if len(lines) > 1:
                out.append(f"<p>{_inline(' '.join(lines[1:]))}</p>")
        elif all(line.startswith("|") for line in lines) and len(lines) >= 2:
            out.append(_html_table(lines))
        elif all(re.fullmatch(r"!\[[^\]]*\]\([^)]+\)", line) for line in lines):
            for line in lines:
                alt, src = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line).groups()
                uri = _data_uri(base / src)
                out.append(f'<figure><img alt="{html.escape(alt)}" src="{uri}"><figcaption class="muted">'
                           f"{html.escape(src)}</figcaption></figure>" if uri else
                           f'<p class="muted">figure {html.escape(src)} is missing (run <code>tl-isokl plot</code>)'
                           f"</p>")
        elif all(line.startswith("- ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def report_html(run: Run, thr: float) -> str:
    """report.html: the report (as report.md says it) with every figure inline, links to the inspect pages, and
    the full manifest; one self-contained page that opens offline (no script, no external resource)."""
    import html
    import json

    out = Path(output_dir(run.path, thr, run=run))
    body = markdown_to_html(report_markdown(run, thr), out)
    manifest = json.dumps(run.manifest, indent=1, ensure_ascii=False, default=str)
    title = f"tl-isokl report: {Path(run.path).name}"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_HTML_CSS}</style>\n</head>\n<body>\n{body}\n"
            f"<h2>Manifest</h2>\n<details><summary>manifest.json (every setting and command of this run)</summary>"
            f"<pre>{html.escape(manifest)}</pre></details>\n"
            f'<p class="muted">Written by tl-isokl from {html.escape(str(Path(run.path).resolve()))}; '
            f"report.md next to this page has the same content.</p>\n</body></html>\n")


def write_report_html(run_dir: str | Path, threshold: float | None = None) -> Path:
    """Write report.html next to report.md (RUN/, or RUN/threshold=<value>/): the same report as one
    self-contained page, figures inline as base64 PNG, tables, links to the inspect pages where they exist, the
    manifest. Figures are read from the folder's figures/: draw them first (`draw_figures`, or `report_run`,
    which draws missing ones). Returns its path."""
    run = load_run(run_dir)
    thr = resolve_threshold(run, threshold)
    return atomic_write_text(RunDir(output_dir(run_dir, thr, run=run)).report_html_path, report_html(run, thr))


@dataclass(frozen=True)
class ReportOutput:
    """What `report_run` wrote and what the CLI prints: the report's path, the threshold used, the run's own,
    whether the fates were re-derived, and the survival and sensitivity tables as Markdown."""

    path: Path
    threshold: float
    run_threshold: float
    rederived: bool
    table: str
    sensitivity: str
    html: Path | None = None  # report.html, next to report.md

    @property
    def threshold_text(self) -> str:
        return (f"{self.threshold:g} (re-derived from the stored pmass; the run's is {self.run_threshold:g})"
                if self.rederived else f"{self.threshold:g} (the run's)")


def report_run(run_dir: str | Path, threshold: float | None = None) -> ReportOutput:
    """What `tl-isokl report` does: draw missing figures, write report.md and report.html (RUN/threshold=<value>/
    at a threshold other than the run's), and return what to print."""
    run = load_run(run_dir)  # fails early, with one line, on a folder that is not a run
    thr = resolve_threshold(run, threshold)
    if not all(p.is_file() for p in figure_paths(run_dir, thr, run=run)):
        draw_figures(run_dir, threshold=thr)
    path = write_report(run_dir, thr)
    return ReportOutput(path=path, html=RunDir(path.parent).report_html_path, threshold=thr, run_threshold=run.threshold,
                        rederived=is_rederived(run, thr),
                        table=markdown_table(survival_table(run, thr)),
                        sensitivity=markdown_table(sensitivity_table(run, sensitivity_thresholds(run, thr))))

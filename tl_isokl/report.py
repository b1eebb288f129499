"""report.md and figures/ of a run directory, rebuilt from the run directory alone.

Why from the directory only: a report must be reproducible on a laptop without the model, and redrawing must
never need the sweep to be rerun. Every file is written atomically through `tl_isokl.files`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from tl_isokl.identity import run_notes
from tl_isokl.files import atomic_write_bytes, atomic_write_text
from tl_isokl.rundir import FIGURES, FIGURES_DIR, RunDir, load_run
from tl_isokl.survival import kl_summary, km_curves, run_window, survival_table

DPI = 160


def figure_paths(run_dir: str | Path) -> list[Path]:
    """Where `draw_figures` puts its PNGs (they may not exist yet)."""
    return [RunDir(run_dir).figure_path(key) for key in FIGURES]


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # Figure objects use the Agg canvas: no pyplot, no GUI backend
    return atomic_write_bytes(path, buf.getvalue())


def draw_figures(run_dir: str | Path, *, roll: int = 1) -> list[Path]:
    """(Re)draw spaghetti (raw and normalised) and survival PNGs into RUN/figures/; returns their paths.

    Args:
        run_dir: a run directory (see `tl_isokl.rundir`).
        roll: rolling-mean width for the spaghetti lines, display only.
    """
    from tl_isokl.figures.spaghetti import spaghetti
    from tl_isokl.figures.survival import survival_plot

    run = load_run(run_dir)
    raw, norm, surv = figure_paths(run_dir)
    out = [_save(spaghetti(run, mode="raw", roll=roll), raw),
           _save(spaghetti(run, mode="normalised", roll=roll), norm)]
    out.append(_save(survival_plot(km_curves(run), window=run_window(run)).figure, surv))
    return out


# --------------------------------------------------------------------------------------------------- text


def fmt(v: Any) -> str:
    """One cell: None -> '—' (not applicable / not reached), NaN -> 'n/a' (undefined), floats to 4 significant
    digits, p-values below 1e-4 in scientific form."""
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
    return [{"field": label, "value": cal.get(key)} for label, key in names if key in cal]


def _section(title: str, body: Iterable[str]) -> str:
    return f"## {title}\n\n" + "\n\n".join(b.rstrip("\n") for b in body) + "\n"


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.md (run identity, calibration, survival table, KL table, figure links) atomically.

    Figures are linked, not drawn: call `draw_figures` first (the CLI does when they are missing).
    """
    run = load_run(run_dir)
    rows = survival_table(run)
    kl = [s.to_dict() for s in kl_summary(run)]
    figs = "\n".join(f"![{key}]({FIGURES_DIR}/{name})" for key, name in FIGURES.items())
    text = "\n".join([
        f"# tl-isokl report: `{Path(run.path).name}`\n",
        _section("Run", [markdown_table(_manifest_rows(run.manifest), ["field", "value"])]),
        _section("Calibration", [markdown_table(_calibration_rows(run.calibration), ["field", "value"]),
                                 "alpha = 1 means c*: the coefficient whose per-token KL statistic meets the target "
                                 "(tolerance relative to the target)."]),
        *([_section("Caveats", ["\n".join(f"- {n}" for n in notes)])] if (notes := run_notes(run)) else []),
        _section(f"Survival (threshold {run.threshold:g})", [
            markdown_table(rows),
            "Death = first fork with pmass < threshold (absorbing; NaN pmass counts as dead). A trace alive at "
            "the end is right-censored at its last probed fork, where it was last seen alive (forks after EOS or "
            "after the model's own `</think>` are not probed; `eos` counts the censored traces that ended at EOS).",
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
        _section("Per-token KL(steered ‖ base), nats", [
            markdown_table(kl, ["alpha", "n_traj", "n_tokens", "mean", "p50", "p95", "max"]),
            "Pooled over every generated token of every trajectory at that alpha (non-finite values left out).",
        ]),
        _section("Figures", [figs]),
    ])
    return atomic_write_text(RunDir(run_dir).report_path, text)


def report_run(run_dir: str | Path) -> tuple[Path, float, str]:
    """What `tl-isokl report` does: draw missing figures, write report.md, and return (its path, the run's
    threshold, the survival table as markdown) for printing."""
    run = load_run(run_dir)  # fails early, with one line, on a folder that is not a run
    if not all(p.is_file() for p in figure_paths(run_dir)):
        draw_figures(run_dir)
    return write_report(run_dir), run.threshold, markdown_table(survival_table(run))

"""Where the dead traces of a run die: `inspect_run` is `tl-isokl inspect` as one Python call.

It selects the dead traces of a run directory (all, one alpha, or one row), reloads the model the manifest records
and the run's vector, recomputes each trace around its death fork (`tl_isokl.forensics.inspect_trace`: stored KL
re-derived by teacher forcing, top-k, entropy, cosine, a cause label) and writes, into RUN/inspect/ by default
(`RunDir.inspect_dir`):

    index.html            one row per dead trace, linking to its page
    trace-r<row>.html     one offline circuitsvis page per dead trace
    circuitsvis.iife.js   the widgets' bundle, shared by the pages
    deaths.json           {"run", "threshold", "run_threshold", "rederived", "radius", "deaths": [one record per
                          dead trace]}
    deaths.csv            the same records, flat

Every check that needs no model (alpha, index, threshold, writable output folder) runs before the model loads.
A run with no dead trace (at the chosen threshold and alpha) is not an error: the files are written empty.

Which traces are dead is decided from the pmass stored at each fork, at the run's threshold or at another one
(`threshold=`: re-derived, nothing about the fates is recomputed; the model is only loaded for the pages of the dead
traces). At another threshold the default folder is RUN/threshold=<value>/inspect (`report.output_dir`), so the
run's own inspect/ is never overwritten by a re-derivation; deaths.json and index.html record the threshold used,
the run's own and whether the fates were re-derived.

    >>> from tl_isokl.deaths import inspect_run
    >>> rep = inspect_run("runs/demo", alpha=2.0)          # loads the model the run recorded
    >>> [(d["row"], d["death_t"], d["label"]) for d in rep.deaths]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tl_isokl.errors import IsoKLError, IsoKLWarning, ModelLoadError, RunDirError
from tl_isokl.forensics import TraceInspection
from tl_isokl.records import Trajectory, fate
from tl_isokl.rundir import DEATHS_CSV, DEATHS_JSON, INSPECT_INDEX, Run, RunDir, alpha_key, load_run, trace_page

CSV_COLUMNS = ("row", "alpha", "coeff", "prompt_id", "death_t", "death_token", "label", "evidence", "max_kl_window",
               "p95", "max_abs_kl_diff", "page")


@dataclass
class DeathReport:
    """What `inspect_run` found and wrote.

    Attributes:
        run: the loaded run directory.
        threshold, radius: the pmass threshold and death-window radius used.
        run_threshold: the run's own threshold; rederived: threshold differs from it (fates re-derived from the
            stored pmass).
        alpha: the alpha the selection was restricted to (None: every alpha).
        inspections: (row in the run, TraceInspection) per dead trace, in table order.
        deaths: one record per dead trace, as in deaths.json (row, alpha, coeff, prompt_id, prompt, death_t,
            death_token, label, evidence, max_kl_window, p95, loop, also, max_abs_kl_diff, page).
        out: the output folder; index, json, csv, pages: the files written there.
    """

    run: Run
    threshold: float
    radius: int
    alpha: float | None
    out: Path
    index: Path
    json: Path
    csv: Path
    run_threshold: float = 0.75
    rederived: bool = False
    inspections: list[tuple[int, TraceInspection]] = field(default_factory=list)
    deaths: list[dict[str, Any]] = field(default_factory=list)
    pages: list[Path] = field(default_factory=list)


def select_deaths(run: Run, *, alpha: float | None = None, index: int | None = None,
                  threshold: float) -> list[tuple[int, Trajectory]]:
    """[(row, trajectory)] of the dead traces to inspect; needs no model.

    Args:
        alpha: only traces at this alpha (must be one of the run's).
        index: one trace: its row in the run, or its position within `alpha`; it must have died.

    Raises:
        RunDirError: the alpha is not in the run, the index is out of range, or the chosen trace did not die.
    """
    rows = list(enumerate(run.trajectories))
    where = f"{run.path}"
    if alpha is not None:
        have = {alpha_key(a): a for a in run.alphas}
        if alpha_key(alpha) not in have:
            raise RunDirError(f"alpha {alpha:g} is not in {where}; it has alphas "
                              f"{', '.join(alpha_key(a) for a in run.alphas)}")
        a = have[alpha_key(alpha)]
        rows = [(r, t) for r, t in rows if t.alpha == a]
        where = f"alpha {alpha:g} of {run.path}"
    if index is not None:
        if not 0 <= index < len(rows):
            raise RunDirError(f"--index {index} is out of range: {where} has traces 0..{len(rows) - 1}")
        r, t = rows[index]
        f = fate(t, threshold)
        if not f.died:
            raise RunDirError(
                f"trace {r} (alpha {t.alpha:g}, prompt {t.prompt_id}) did not die at threshold {threshold:g} "
                f"(censored at token {f.time}{', EOS' if f.eos else ''}); pick a dead one or raise --threshold")
        return [(r, t)]
    return [(r, t) for r, t in rows if fate(t, threshold).died]


def death_token(ins: TraceInspection) -> str:
    """The token written right before the death fork, as repr, or '(prompt)' for a death at fork 0."""
    t = ins.fate.time
    return "(prompt)" if t == 0 else repr(ins.token_strs[t - 1])


def page_name(row: int) -> str:
    return trace_page(row)


def death_record(row: int, ins: TraceInspection) -> dict[str, Any]:
    """One deaths.json record."""
    t, ev = ins.traj, ins.evidence
    return {"row": row, "alpha": t.alpha, "coeff": t.coeff, "prompt_id": t.prompt_id, "prompt": t.prompt,
            "death_t": ins.fate.time, "death_token": death_token(ins), "label": ins.label,
            "evidence": ev["summary"], "max_kl_window": ev["max_kl"], "p95": ev["p95"],
            "loop": ev["loop"], "also": ev["also"], "max_abs_kl_diff": ins.max_abs_kl_diff,
            "page": page_name(row)}


TABLE_HEADER = f"{'row':>4} {'alpha':>6} {'prompt':<16} {'death':>5} {'after token':<14} {'label':<16} evidence"


def format_death(d: dict[str, Any]) -> str:
    """One line of the terminal table (columns of TABLE_HEADER) for a deaths.json record."""
    return (f"{d['row']:>4} {d['alpha']:>6g} {d['prompt_id'][:16]:<16} {d['death_t']:>5} {d['death_token'][:14]:<14} "
            f"{d['label']:<16} {d['evidence']}")


def kl_tolerance(traj: Trajectory) -> float:
    """How far the recomputed KL may be from the stored one before `inspect_run` warns."""
    return 1e-4 + 1e-3 * max(max((abs(x) for x in traj.kl if x == x), default=0.0), 1.0)


def inspect_run(
    run_dir: str | Path,
    *,
    alpha: float | None = None,
    index: int | None = None,
    radius: int = 16,
    threshold: float | None = None,
    out: str | Path | None = None,
    model: Any = None,
    model_name: str | None = None,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
    on_death: Callable[[dict[str, Any]], None] | None = None,
) -> DeathReport:
    """Recompute every dead trace of a run (or the chosen ones), label it, and write pages plus deaths.json/csv.

    Args:
        run_dir: a sweep's run directory.
        alpha: only traces at this alpha (one of the run's).
        index: one trace: its row in the run, or its position within `alpha`.
        radius: tokens either side of the death fork in each death table.
        threshold: pmass threshold for alive/dead (default: the run's); another one re-derives every fate from
            the stored pmass.
        out: output folder (default RUN/inspect; RUN/threshold=<value>/inspect at a threshold not the run's).
        model: an already loaded model to use (the run's model, e.g. in a notebook); nothing is loaded then.
        model_name: load this model (hub name or folder) instead of the one the manifest records, e.g. because
            the folder moved; loaded with the run's dtype.
        device: where a loaded model goes (default: cuda if available).
        log: called with a status line before the model loads (e.g. `print`).
        on_death: called with each deaths.json record as soon as its trace is done (e.g. to print a table row).

    Returns:
        A DeathReport. A recomputed KL that differs from the stored one beyond `kl_tolerance` is an IsoKLWarning
        (another device, dtype or library version than the sweep's).

    Raises:
        RunDirError: not a run directory, an alpha or index the run does not have, a chosen trace that did not
            die, a missing or modified vector.safetensors.
        ModelLoadError: the recorded model cannot be loaded (the message names `--model`, the CLI's fix).
        IsoKLError: bad arguments, or an output folder that cannot be written.
    """
    from tl_isokl.files import check_writable_dir

    if model is not None and model_name is not None:
        raise IsoKLError("pass either a loaded model or model_name to load, not both")
    if radius < 0:
        raise IsoKLError(f"radius {radius} must be >= 0 tokens")
    from tl_isokl.report import output_dir
    from tl_isokl.survival import is_rederived, resolve_threshold

    if threshold is not None:
        resolve_threshold(None, threshold)  # a bad value fails before the run is read
    run = load_run(run_dir)
    thr = resolve_threshold(run, threshold)
    chosen = select_deaths(run, alpha=alpha, index=index, threshold=thr)
    out = Path(out) if out is not None else RunDir(output_dir(run_dir, thr, run=run)).inspect_dir
    check_writable_dir(out, what="--out")  # before the model loads
    report = dict(run=run, threshold=thr, radius=radius, alpha=alpha, out=out, run_threshold=run.threshold,
                  rederived=is_rederived(run, thr))
    if not chosen:
        return DeathReport(**report, **_write(out, run, thr, [], radius))

    vec = _run_vector(run)
    if model is None:
        model = _load_model(run, model_name, device, len(chosen), log or (lambda s: None))
    vec.check_model(model)

    from tl_isokl.forensics import inspect_trace

    positions = run.manifest.get("positions", "all")
    results = []
    for r, t in chosen:
        ins = inspect_trace(model, vec, t, threshold=thr, radius=radius, positions=positions)
        results.append((r, ins))
        if on_death is not None:
            on_death(death_record(r, ins))
        if not ins.max_abs_kl_diff <= kl_tolerance(t):
            warnings.warn(f"row {r}: recomputed KL differs from the stored KL by {ins.max_abs_kl_diff:.3g} "
                          f"(different device, dtype or library versions than the sweep?)", IsoKLWarning,
                          stacklevel=2)
    return DeathReport(**report, **_write(out, run, thr, results, radius), inspections=results)


def _run_vector(run: Run):
    """The run's vector.safetensors, checked against the manifest's vector_sha256."""
    from tl_isokl.vector import SteeringVector

    vpath = RunDir(run.path).vector_path
    if not vpath.is_file():
        raise RunDirError(f"{vpath} is missing; inspect needs the run's steering vector")
    vec = SteeringVector.load(vpath)
    want = run.manifest.get("vector_sha256")
    if want and vec.sha256 != want:
        raise RunDirError(f"{vpath} does not match the manifest's vector_sha256; the run directory was "
                          f"modified after the sweep")
    return vec


def _load_model(run: Run, model_name: str | None, device: str | None, n: int, log: Callable[[str], None]):
    """`model_name` in the run's dtype, or the model the manifest records."""
    import tl_isokl.model as models  # module attributes, looked up now (tests swap the loaders)

    if model_name is not None:
        log(f"loading model {model_name} (--model; the run recorded {run.manifest.get('model')}) for "
            f"{n} dead trace(s)")
        return models.load_model(model_name, device=device, dtype=run.manifest.get("dtype") or "float32")
    log(f"loading model {run.manifest.get('model')} for {n} dead trace(s)")
    try:
        return models.load_recorded_model(run.manifest, device=device)
    except ModelLoadError as e:
        raise ModelLoadError(f"{e}; or pass --model NAME_OR_PATH to load another copy of it") from None


def _earlier_deaths(out: Path, run: Run, thr: float, radius: int) -> list[dict[str, Any]]:
    """deaths.json records of an earlier inspect of this run into `out` at the same threshold and radius."""
    import json

    p = out / DEATHS_JSON
    try:
        old = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, ValueError):
        return []  # unreadable: rewritten from this call's traces
    if not isinstance(old, dict) or old.get("run") != str(run.path) or old.get("threshold") != thr \
            or old.get("radius") != radius:
        return []
    return [d for d in old.get("deaths") or [] if isinstance(d, dict) and {"row", "page"} <= d.keys()]


def _write(out: Path, run: Run, thr: float, results: list[tuple[int, TraceInspection]],
           radius: int) -> dict[str, Any]:
    """The pages, index.html, deaths.json and deaths.csv; the DeathReport fields that name them."""
    from tl_isokl.figures.tokens_html import index_page, inspection_page, write_bundle, write_html
    from tl_isokl.files import atomic_write_json, atomic_write_text, csv_text

    write_bundle(out)
    target = (run.calibration or {}).get("target") or 1.0  # KL colour scale: at least the per-token budget
    entries, deaths, pages = [], [], []
    for r, ins in results:
        t = ins.traj
        d = death_record(r, ins)
        pages.append(write_html(out / d["page"], inspection_page(ins, header={"row": r, "run": str(run.path)},
                                                                 scale_max=float(target))))
        deaths.append(d)
        entries.append({"row": r, "alpha": t.alpha, "prompt id": t.prompt_id, "prompt": t.prompt,
                        "died at": d["death_t"], "after token": d["death_token"], "label": d["label"],
                        "evidence": d["evidence"], "page": d["page"]})
    from tl_isokl.survival import is_rederived, threshold_text

    # one index per run: traces inspected by earlier calls (another --alpha or --index) stay listed while their
    # pages exist and were made at the same threshold and radius
    mine = {d["row"] for d in deaths}
    written = deaths
    for d in _earlier_deaths(out, run, thr, radius):
        if d["row"] not in mine and (out / d["page"]).is_file() and 0 <= d["row"] < len(run.trajectories):
            t = run.trajectories[d["row"]]
            written = written + [d]
            entries.append({"row": d["row"], "alpha": t.alpha, "prompt id": t.prompt_id, "prompt": t.prompt,
                            "died at": d["death_t"], "after token": d["death_token"], "label": d["label"],
                            "evidence": d["evidence"], "page": d["page"]})
    order = sorted(range(len(written)), key=lambda i: written[i]["row"])
    written, entries = [written[i] for i in order], [entries[i] for i in order]
    m = run.manifest
    header = {"run": str(run.path), "model": m.get("model") if not isinstance(m.get("model"), dict)
              else m["model"].get("name"), "method": m.get("method"), "layer": m.get("layer"),
              "c*": m.get("c_star"), "window": m.get("window"), "threshold": threshold_text(run, thr),
              "radius": radius, "dead traces": len(written), "traces in run": len(run.trajectories)}
    idx = write_html(out / INSPECT_INDEX, index_page(entries, title=f"Dead traces of {run.path.name}",
                                                    header=header))
    js = atomic_write_json(out / DEATHS_JSON, {"run": str(run.path), "threshold": thr,
                                                 "run_threshold": run.threshold,
                                                 "rederived": is_rederived(run, thr), "radius": radius,
                                                 "deaths": written})
    cs = atomic_write_text(out / DEATHS_CSV, csv_text(written, CSV_COLUMNS))
    return {"index": idx, "json": js, "csv": cs, "deaths": deaths, "pages": pages}

"""`tl-isokl inspect RUN`: where the dead traces of a run die, as a table, offline HTML pages and deaths.json/csv."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.main import friendly_errors


def _select(run, alpha, index, threshold):
    """[(row, trajectory)] to inspect; every check that needs no model happens here, before loading one."""
    from tl_isokl.records import fate
    from tl_isokl.rundir import alpha_key

    rows = list(enumerate(run.trajectories))
    where = f"{run.path}"
    if alpha is not None:
        have = {alpha_key(a): a for a in run.alphas}
        if alpha_key(alpha) not in have:
            raise click.ClickException(f"alpha {alpha:g} is not in {where}; it has alphas "
                                       f"{', '.join(alpha_key(a) for a in run.alphas)}")
        a = have[alpha_key(alpha)]
        rows = [(r, t) for r, t in rows if t.alpha == a]
        where = f"alpha {alpha:g} of {run.path}"
    if index is not None:
        if not 0 <= index < len(rows):
            raise click.ClickException(f"--index {index} is out of range: {where} has traces 0..{len(rows) - 1}")
        r, t = rows[index]
        f = fate(t, threshold)
        if not f.died:
            raise click.ClickException(
                f"trace {r} (alpha {t.alpha:g}, prompt {t.prompt_id}) did not die at threshold {threshold:g} "
                f"(censored at token {f.time}{', EOS' if f.eos else ''}); pick a dead one or raise --threshold")
        return [(r, t)]
    return [(r, t) for r, t in rows if fate(t, threshold).died]


def _death_token(ins) -> str:
    t = ins.fate.time
    return "(prompt)" if t == 0 else repr(ins.token_strs[t - 1])


@click.command("inspect")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alpha", type=float, default=None, help="Only traces at this alpha (must be one of the run's).")
@click.option("--index", type=click.IntRange(min=0), default=None,
              help="One trace: its row in the run (forks.csv / deaths.csv `row`), or its position within --alpha.")
@click.option("--radius", type=click.IntRange(min=0), default=16, show_default=True,
              help="Tokens either side of the death fork in the death table.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="pmass threshold for alive/dead (default: the run's).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN/inspect): index.html, one page per trace, deaths.json/csv.")
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda if available).")
@click.option("--model", "model_name", default=None, metavar="NAME_OR_PATH",
              help="Load this model instead of the one recorded in RUN/manifest.json (e.g. the folder moved).")
@friendly_errors
def command(run_dir: Path, alpha, index, radius, threshold, out, device, model_name) -> None:
    """Recompute every dead trace of RUN (or the chosen one) around its death fork, label it (kl_spike,
    repetition_loop, format_fragile), and write offline HTML pages plus deaths.json / deaths.csv.

    Loads the model recorded in RUN/manifest.json and the vector RUN/vector.safetensors.
    """
    from tl_isokl.rundir import RunDir, load_run

    run = load_run(run_dir)
    thr = float(threshold) if threshold is not None else run.threshold
    chosen = _select(run, alpha, index, thr)
    out = out or run_dir / "inspect"
    from tl_isokl.io import check_writable_dir

    check_writable_dir(out, what="--out")  # before the model loads
    if not chosen:
        click.echo(f"no dead traces at threshold {thr:g}" + (f" and alpha {alpha:g}" if alpha is not None else ""))
        _write(out, run, thr, [], radius)
        return
    vpath = RunDir(run_dir).vector_path
    if not vpath.is_file():
        raise click.ClickException(f"{vpath} is missing; inspect needs the run's steering vector")

    from tl_isokl.model import load_recorded_model
    from tl_isokl.vector import SteeringVector

    vec = SteeringVector.load(vpath)
    want = run.manifest.get("vector_sha256")
    if want and vec.sha256 != want:
        raise click.ClickException(f"{vpath} does not match the manifest's vector_sha256; the run directory was "
                                   f"modified after the sweep")
    if model_name is not None:
        from tl_isokl.model import load_model

        click.echo(f"loading model {model_name} (--model; the run recorded {run.manifest.get('model')}) for "
                   f"{len(chosen)} dead trace(s)", err=True)
        model = load_model(model_name, device=device, dtype=run.manifest.get("dtype") or "float32")
    else:
        click.echo(f"loading model {run.manifest.get('model')} for {len(chosen)} dead trace(s)", err=True)
        from tl_isokl.errors import ModelLoadError

        try:
            model = load_recorded_model(run.manifest, device=device)
        except ModelLoadError as e:
            raise click.ClickException(f"{e}; or pass --model NAME_OR_PATH to load another copy of it") from None
    vec.check_model(model)

    from tl_isokl.forensics import inspect_trace

    positions = run.manifest.get("positions", "all")
    results = []
    head = f"{'row':>4} {'alpha':>6} {'prompt':<16} {'death':>5} {'after token':<14} {'label':<16} evidence"
    click.echo(head)
    click.echo("-" * len(head))
    for r, t in chosen:
        ins = inspect_trace(model, vec, t, threshold=thr, radius=radius, positions=positions)
        results.append((r, ins))
        click.echo(f"{r:>4} {t.alpha:>6g} {t.prompt_id[:16]:<16} {ins.fate.time:>5} {_death_token(ins)[:14]:<14} "
                   f"{ins.label:<16} {ins.evidence['summary']}")
        tol = 1e-4 + 1e-3 * max(max((abs(x) for x in t.kl if x == x), default=0.0), 1.0)
        if not ins.max_abs_kl_diff <= tol:
            click.echo(f"warning: row {r}: recomputed KL differs from the stored KL by {ins.max_abs_kl_diff:.3g} "
                       f"(different device, dtype or library versions than the sweep?)", err=True)
    paths = _write(out, run, thr, results, radius)
    click.echo(f"wrote {paths['index']}, {len(results)} page(s), {paths['json'].name}, {paths['csv'].name}")


def _write(out: Path, run, thr: float, results, radius: int) -> dict[str, Path]:
    import csv
    import io as _io

    from tl_isokl.figures.tokens_html import index_page, inspection_page, write_bundle, write_html
    from tl_isokl.io import atomic_write_json, atomic_write_text

    write_bundle(out)
    target = (run.calibration or {}).get("target") or 1.0  # KL colour scale: at least the per-token budget
    entries, deaths = [], []
    for r, ins in results:
        t = ins.traj
        page = f"trace-r{r:04d}.html"
        write_html(out / page, inspection_page(ins, header={"row": r, "run": str(run.path)},
                                                    scale_max=float(target)))
        ev = ins.evidence
        deaths.append({"row": r, "alpha": t.alpha, "coeff": t.coeff, "prompt_id": t.prompt_id, "prompt": t.prompt,
                       "death_t": ins.fate.time, "death_token": _death_token(ins), "label": ins.label,
                       "evidence": ev["summary"], "max_kl_window": ev["max_kl"], "p95": ev["p95"],
                       "loop": ev["loop"], "also": ev["also"], "max_abs_kl_diff": ins.max_abs_kl_diff,
                       "page": page})
        entries.append({"row": r, "alpha": t.alpha, "prompt id": t.prompt_id, "prompt": t.prompt,
                        "died at": ins.fate.time, "after token": _death_token(ins), "label": ins.label,
                        "evidence": ev["summary"], "page": page})
    m = run.manifest
    header = {"run": str(run.path), "model": m.get("model") if not isinstance(m.get("model"), dict)
              else m["model"].get("name"), "method": m.get("method"), "layer": m.get("layer"),
              "c*": m.get("c_star"), "window": m.get("window"), "threshold": thr, "radius": radius,
              "dead traces": len(results), "traces in run": len(run.trajectories)}
    idx = write_html(out / "index.html", index_page(entries, title=f"Dead traces of {run.path.name}",
                                                    header=header))
    js = atomic_write_json(out / "deaths.json", {"run": str(run.path), "threshold": thr, "radius": radius,
                                                 "deaths": deaths})
    cols = ["row", "alpha", "coeff", "prompt_id", "death_t", "death_token", "label", "evidence", "max_kl_window",
            "p95", "max_abs_kl_diff", "page"]
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for d in deaths:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()})
    cs = atomic_write_text(out / "deaths.csv", buf.getvalue())
    return {"index": idx, "json": js, "csv": cs}

"""`tl-isokl sweep`: the seed's experiment end to end (calibrate if needed, alpha sweep, tables, figures)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.cmd_calibrate import calibration_options, check_bounds, run_calibration
from tl_isokl_cli.common import (Progress, allow_other_model_option, early_vector, fresh_option, get_prompts,
                                 get_vector, given, load, model_options, positions_option, refuse_unused,
                                 vector_options)
from tl_isokl_cli.main import friendly_errors


@click.command("sweep")
@model_options
@vector_options
@positions_option
@click.option("--calibration", "calibration_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="calibration.json from `tl-isokl calibrate` (default: calibrate first). It must have "
                                 "been made for this model, vector, gate and --positions.")
@click.option("--window", type=click.IntRange(min=1), default=256, show_default=True,
              help="Generated tokens per held-out rollout (and per calibration rollout when calibrating here).")
@click.option("--alphas", default="0,0.25,0.5,0.75,1,1.5,2,4", show_default=True,
              help="Doses in units of c*, comma-separated.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True,
              help="Alive iff P(true) + P(false) >= threshold at a fork.")
@click.option("--forks", "schedule", default="log2", show_default=True,
              help="Fork schedule: log2 (0,1,2,4,8,...) or a stride in tokens, e.g. 16.")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Held-out prompts (.txt or .jsonl); default: the model's held-out set.")
@click.option("--calibration-prompts", "cal_prompts_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Calibration prompts when calibrating here (default: the model's calibration set).")
@calibration_options
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded; greedy rollouts do not sample.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/sweep-<model>-<method>-L<layer>-w<window>-<hash of every setting>); "
                   "rerun the same command to resume.")
@fresh_option
@click.option("--allow-unconverged", is_flag=True,
              help="Use a calibration with converged=false (the manifest and report say so).")
@allow_other_model_option
@click.option("--no-figures", is_flag=True, help="Skip drawing figures and report.md at the end.")
@friendly_errors
def command(model_name, dtype, device, vector_path, method, layer, concept, gate, tau, positions, calibration_path,
            window, alphas, threshold, schedule, prompts_path, cal_prompts_path, target, stat, tol, c_min, c_max,
            batch_size, seed, out, fresh, allow_unconverged, allow_other_model, no_figures):
    """Calibrate (unless --calibration is given), sweep alpha on held-out prompts, write the run directory.

    Rerunning the same command resumes. A run directory (or --calibration file) made with other settings is
    refused with one line naming each differing field; --fresh deletes the folder's tl-isokl files first.
    Everything that needs no model (flags, files, a writable --out) is checked before the model loads.
    """
    from tl_isokl.statistics import statistic
    from tl_isokl.identity import (calibration_identity, check_calibration, check_converged, heldout_transfer,
                                   transfer_message)
    from tl_isokl.io import read_json, sha256_json
    from tl_isokl.probe import fork_points
    from tl_isokl.prompts import read_prompts
    from tl_isokl.runpolicy import (choose_calibration, default_run_path, file_sha, model_spec, open_run,
                                    resolve_vector, start_fresh)
    from tl_isokl.sweep import format_summary, parse_alphas, summary_rows, sweep

    # ---- everything that needs no model
    alpha_list = parse_alphas(alphas)
    statistic(stat)
    check_bounds(c_min, c_max)
    if schedule != "log2":
        try:
            fork_points(1, int(schedule))
        except ValueError:
            raise click.BadParameter(f"{schedule!r} is neither 'log2' nor a positive integer stride",
                                     param_hint="--forks") from None
        schedule = int(schedule)
    file_vec = early_vector(vector_path, method, layer, concept, gate, tau)
    early = {path: read_prompts(path) for path in (prompts_path, cal_prompts_path) if path is not None}  # fail now
    if prompts_path is not None and cal_prompts_path is not None:
        overlap = set(early[prompts_path]) & set(early[cal_prompts_path])
        if overlap:
            raise click.UsageError(f"{len(overlap)} prompt(s) of --prompts {prompts_path} are also in "
                                   f"--calibration-prompts {cal_prompts_path}; held-out prompts must be disjoint "
                                   f"from the calibration prompts")
    ext_cal = None
    if calibration_path is not None:
        refuse_unused([f for f, n in (("--target-kl", "target"), ("--stat", "stat"), ("--tol", "tol"),
                                      ("--c-min", "c_min"), ("--c-max", "c_max"),
                                      ("--calibration-prompts", "cal_prompts_path")) if given(n)],
                      f"with --calibration {calibration_path} (they only apply when the sweep calibrates)")
        ext_cal = read_json(calibration_path, kind=dict)
        if not isinstance(ext_cal.get("c_star"), (int, float)):
            raise click.ClickException(f"{calibration_path} has no numeric c_star; it is not a calibration.json "
                                       f"written by `tl-isokl calibrate`")
        check_calibration(ext_cal, {}, source=str(calibration_path), fix="recalibrate with `tl-isokl calibrate`")
        if prompts_path is not None and set(early[prompts_path]) & set(ext_cal.get("prompts") or []):
            raise click.UsageError(f"--prompts {prompts_path} shares prompts with the calibration prompts of "
                                   f"--calibration {calibration_path}; held-out prompts must be disjoint from them")
        check_converged(ext_cal, allow=allow_unconverged, source=str(calibration_path))
    spec = model_spec(model_name)
    if out is None:
        request = {"model": spec, "dtype": dtype, "positions": positions, "window": window,
                   "vector": file_vec.sha256 if file_vec else {"method": method, "layer": layer, "concept": concept},
                   "gate": gate, "tau": tau, "threshold": threshold, "forks": schedule,
                   "heldout": file_sha(prompts_path),
                   "calibration": (sha256_json({k: ext_cal.get(k) for k in ("identity", "c_star")}) if ext_cal
                                   else {"target": target, "stat": stat, "tol": tol, "c_min": c_min,
                                         "c_max": c_max, "prompts": file_sha(cal_prompts_path)})}
        out = default_run_path("sweep", spec, Path(vector_path).stem if vector_path else method,
                               file_vec.layer if file_vec else layer, window, request)
    state = open_run(out, fresh=fresh, explicit_calibration=ext_cal is not None)
    rd = state.rd

    # ---- the model
    import torch

    torch.manual_seed(seed)
    model = load(model_name, dtype, device)
    vec = get_vector(model, file_vec, method, layer, concept, gate, tau, allow_other_model=allow_other_model)
    vec = resolve_vector(state, vec, extracted=file_vec is None)
    cids, cprompts = get_prompts(model, cal_prompts_path, "calibration")
    wanted = calibration_identity(model, vec, cprompts, stat=stat, target=target, tol=tol, window=window,
                                  positions=positions, c_min=c_min, c_max=c_max)
    cal = choose_calibration(state, wanted, explicit=ext_cal, explicit_source=str(calibration_path),
                             allow_unconverged=allow_unconverged,
                             explicit_fix=_cal_fix(calibration_path, vector_path) if ext_cal else "")
    if cal is not None and ext_cal is None:
        click.echo(f"resuming: using {rd.calibration_path} (c* = {cal['c_star']:.6g})")
    removed = start_fresh(state)
    if removed:
        click.echo(f"--fresh: removed {len(removed)} tl-isokl file(s) from {out}")
    if cal is None:
        cal = run_calibration(model, vec, cids, cprompts, window=window, target=target, stat=stat, tol=tol,
                              batch_size=batch_size, c_min=c_min, c_max=c_max, positions=positions)
        if cal["converged"] is False and not allow_unconverged:
            from tl_isokl.io import atomic_write_json

            vec.save(rd.vector_path)  # keep the work: a rerun with --allow-unconverged uses it
            atomic_write_json(rd.calibration_path, cal)
            check_converged(cal, allow=False, source=f"the calibration (kept in {rd.calibration_path})")
    ids, prompts = get_prompts(model, prompts_path, "heldout")
    click.echo(f"sweeping {len(alpha_list)} alphas x {len(prompts)} held-out prompts, window {window} -> {out}")
    prog = Progress()
    run = sweep(model, vec, cal, prompts, out, prompt_ids=ids, alphas=alpha_list, window=window,
                threshold=threshold, schedule=schedule, positions=positions, batch_size=batch_size, seed=seed,
                progress=prog, allow_unconverged=allow_unconverged, allow_other_model=allow_other_model,
                manifest_extra={"calibration_source": str(Path(calibration_path).resolve()) if calibration_path
                                else "calibrated in this run directory"})
    prog.close()
    click.echo(format_summary(summary_rows(run)))
    if cal.get("converged") is False:
        click.echo("Warning: the calibration did not converge; used because of --allow-unconverged (recorded in "
                   "the manifest and the report)", err=True)
    check = heldout_transfer(run)
    if check is not None and check["off"]:
        click.echo(f"Warning: {transfer_message(check)}", err=True)
    if not no_figures:
        from tl_isokl.report import draw_figures, write_report

        for p in draw_figures(out):
            click.echo(f"figure {p}")
        click.echo(f"report {write_report(out)}")
    click.echo(f"run directory: {out}")


def _cal_fix(calibration_path: Path, vector_path) -> str:
    """What to do when --calibration X was made for something else: the vector saved next to it, if any."""
    sibling = Path(calibration_path).parent / "vector.safetensors"
    if vector_path is None and sibling.is_file():
        return f"pass the vector it was made with (--vector {sibling}), or drop --calibration to calibrate here"
    return "pass a calibration made for this vector and model, or drop --calibration to calibrate here"

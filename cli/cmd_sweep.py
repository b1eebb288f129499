"""`tl-isokl sweep`: the seed's experiment end to end (calibrate if needed, alpha sweep, tables, figures)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.cmd_calibrate import calibration_options, calibration_target, check_bounds, round_printer
from tl_isokl_cli.common import (Progress, allow_other_model_option, early_vector, engine_from, engine_options,
                                 fresh_option, given, model_options, positions_option, probe_options, quiet_option,
                                 refuse_unused, sampling_options, talker, unescape, vector_options)
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
              help="Doses in units of c*, comma-separated; a negative alpha steers along -v at |alpha| c*.")
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
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of sampled rollouts (--temperature > 0) and of torch; recorded.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/sweep-<model>-<method>-L<layer>-w<window>-<hash of every setting>); "
                   "rerun the same command to resume.")
@fresh_option
@click.option("--two-sided", is_flag=True,
              help="Also calibrate -v; negative alphas are then doses of its own c* (a direction and its opposite "
                   "need not cost the same KL).")
@click.option("--allow-unconverged", is_flag=True,
              help="Use a calibration with converged=false (the manifest and report say so).")
@allow_other_model_option
@probe_options
@sampling_options
@click.option("--no-figures", is_flag=True, help="Skip drawing figures and report.md at the end.")
@engine_options
@quiet_option
@friendly_errors
def command(model_name, dtype, device, revision, vector_path, method, layer, concept, gate, tau,
            positions, calibration_path,
            window, alphas, threshold, schedule, prompts_path, cal_prompts_path, target, stat, target_nll_delta, tol,
            c_min, c_max,
            batch_size, seed, out, fresh, two_sided, allow_unconverged, allow_other_model, probe_preset, probe_file,
            probe_prefill, probe_true, probe_false, probe_think_close, skip_preflight, chat_template, temperature,
            top_p, samples_per_prompt, no_figures, engine, address, gpus_per_cell, cpus_per_cell, retries, quiet):
    """Calibrate (unless --calibration is given), sweep alpha on held-out prompts, write the run directory.

    Rerunning the same command resumes. A run directory (or --calibration file) made with other settings is
    refused with one line naming each differing field; --fresh deletes the folder's tl-isokl files first.
    Everything that needs no model (flags, files, a writable --out) is checked before the model loads.
    --engine ray runs the same sweep as a grid of one experiment (calibrate cell, alpha-group cells, merge) on Ray
    tasks, into the same run directory.
    """
    from tl_isokl.experiment import ExperimentSettings, run_sweep_experiment
    from tl_isokl.probe import fork_points
    from tl_isokl.sweep import parse_alphas

    # ---- flags: contradictions and values a library call cannot see (which flags were given)
    how = engine_from(engine, address, gpus_per_cell, cpus_per_cell, retries)
    alpha_list = parse_alphas(alphas)
    check_bounds(c_min, c_max)
    target, stat = calibration_target(target, stat, target_nll_delta)
    if schedule != "log2":
        try:
            fork_points(1, int(schedule))
        except ValueError:
            raise click.BadParameter(f"{schedule!r} is neither 'log2' nor a positive integer stride",
                                     param_hint="--forks") from None
        schedule = int(schedule)
    file_vec = early_vector(vector_path, method, layer, concept, gate, tau)
    if calibration_path is not None:
        refuse_unused([f for f, n in (("--target-kl", "target"), ("--stat", "stat"), ("--tol", "tol"),
                                      ("--target-nll-delta", "target_nll_delta"),
                                      ("--c-min", "c_min"), ("--c-max", "c_max"),
                                      ("--calibration-prompts", "cal_prompts_path")) if given(n)],
                      f"with --calibration {calibration_path} (they only apply when the sweep calibrates)")
    if temperature == 0:
        refuse_unused([f for f, n in (("--top-p", "top_p"), ("--samples-per-prompt", "samples_per_prompt"))
                       if given(n)], "without --temperature > 0 (greedy rollouts do not sample)")
    if two_sided and not any(a < 0 for a in alpha_list):
        refuse_unused(["--two-sided"], f"without a negative alpha in --alphas {alphas} (it calibrates -v for them)")
    settings = ExperimentSettings(
        model=model_name, revision=revision, dtype=dtype, device=device, vector_path=vector_path, vector=file_vec,
        method=method, layer=layer,
        concept=concept, gate=gate, tau=tau, positions=positions, window=window, target=target, stat=stat, tol=tol,
        c_min=c_min, c_max=c_max, calibration_prompts=cal_prompts_path, batch_size=batch_size, seed=seed, out=out,
        fresh=fresh, allow_other_model=allow_other_model, calibration_path=calibration_path,
        heldout_prompts=prompts_path, alphas=alphas, threshold=threshold, schedule=schedule,
        allow_unconverged=allow_unconverged, figures=not no_figures, probe_preset=probe_preset,
        probe_file=probe_file, probe_prefill=unescape(probe_prefill), probe_true=tuple(map(unescape, probe_true)),
        probe_false=tuple(map(unescape, probe_false)), probe_think_close=unescape(probe_think_close),
        skip_preflight=skip_preflight, chat_template=chat_template, temperature=temperature, top_p=top_p,
        samples_per_prompt=samples_per_prompt, two_sided=two_sided)
    prog, cal_prog = Progress(enabled=not quiet), Progress(enabled=not quiet)
    done = [0]

    def cal_tick(k):
        done[0] += k
        cal_prog("calibration rollouts", done[0], None)

    run = run_sweep_experiment(settings, echo=talker(quiet), warn=lambda m: click.echo(f"Warning: {m}", err=True),
                               on_round=None if quiet else round_printer(stat, target, tol), cal_progress=cal_tick, progress=prog,
                               before_cells=cal_prog.close, engine=how)
    prog.close()
    click.echo(f"run directory: {run.path}")

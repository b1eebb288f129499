"""`tl-isokl sweep`: the seed's experiment end to end (calibrate if needed, alpha sweep, tables, figures)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.cmd_calibrate import run_calibration
from tl_isokl_cli.common import (Progress, get_prompts, get_vector, load, model_options, positions_option, slug,
                                 vector_options)
from tl_isokl_cli.main import friendly_errors


@click.command("sweep")
@model_options
@vector_options
@positions_option
@click.option("--calibration", "calibration_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="calibration.json from `tl-isokl calibrate` (default: calibrate first).")
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
@click.option("--target-kl", "target", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--stat", default="p95", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded; greedy rollouts do not sample.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/sweep-<model>-<method>-L<layer>-w<window>); rerun to resume.")
@click.option("--no-figures", is_flag=True, help="Skip drawing figures and report.md at the end.")
@friendly_errors
def command(model_name, dtype, device, vector_path, method, layer, concept, gate, tau, positions, calibration_path,
            window,
            alphas, threshold, schedule, prompts_path, cal_prompts_path, target, stat, batch_size, seed, out,
            no_figures):
    """Calibrate (unless --calibration is given), sweep alpha on held-out prompts, write the run directory."""
    from tl_isokl.calibrate import parse_stat
    from tl_isokl.io import read_json
    from tl_isokl.model import model_info
    from tl_isokl.probe import fork_points
    from tl_isokl.sweep import format_summary, parse_alphas, summary_rows, sweep

    alpha_list = parse_alphas(alphas)
    parse_stat(stat)
    if schedule != "log2":
        try:
            fork_points(1, int(schedule))
        except ValueError:
            raise click.BadParameter(f"{schedule!r} is neither 'log2' nor a positive integer stride",
                                     param_hint="--forks") from None
        schedule = int(schedule)
    import torch

    torch.manual_seed(seed)
    model = load(model_name, dtype, device)
    info = model_info(model)
    if out is None:
        tag = method if vector_path is None else Path(vector_path).stem
        out = Path("runs") / f"sweep-{slug(info['name'])}-{tag}-L{layer if layer is not None else 'mid'}-w{window}"
    vec = get_vector(model, vector_path, method, layer, concept, gate, tau, reuse=out / "vector.safetensors")
    if calibration_path is not None:
        cal = read_json(calibration_path)
    elif (out / "calibration.json").is_file():
        cal = read_json(out / "calibration.json")
        click.echo(f"resuming: using {out / 'calibration.json'} (c* = {cal['c_star']:.6g})")
    else:
        cids, cprompts = get_prompts(model, cal_prompts_path, "calibration")
        cal = run_calibration(model, vec, cids, cprompts, window=window, target=target, stat=stat, tol=0.05,
                              batch_size=batch_size, c_min=1e-4, c_max=1e4, positions=positions)
    ids, prompts = get_prompts(model, prompts_path, "heldout")
    click.echo(f"sweeping {len(alpha_list)} alphas x {len(prompts)} held-out prompts, window {window} -> {out}")
    prog = Progress()
    run = sweep(model, vec, cal, prompts, out, prompt_ids=ids, alphas=alpha_list, window=window,
                threshold=threshold, schedule=schedule, positions=positions, batch_size=batch_size, seed=seed,
                progress=prog)
    prog.close()
    click.echo(format_summary(summary_rows(run)))
    if not no_figures:
        from tl_isokl.report import draw_figures, write_report

        for p in draw_figures(out):
            click.echo(f"figure {p}")
        click.echo(f"report {write_report(out)}")
    click.echo(f"run directory: {out}")

"""`tl-isokl calibrate`: find c*, the dose where a statistic of per-token KL(steered || base) hits the target."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.common import (Progress, allow_other_model_option, early_vector, fresh_option, get_prompts,
                                 get_vector, load, model_options, positions_option, vector_options)
from tl_isokl_cli.main import friendly_errors


def round_printer(stat: str, target: float, tol: float):
    def on_round(rnd, pts):
        for p in sorted(pts, key=lambda p: p.coeff):
            s = p.stats
            flag = " <-" if abs(p.value - target) <= tol * target else ""  # tol is relative to the target
            cols = " ".join(f"{k}={s[k]:<8.3g}" for k in ("mean", "p50", "p95", "max") if k != stat)
            click.echo(f"  round {rnd}  c={p.coeff:<10.5g} {stat}={p.value:<9.4g} {cols} n={s['n']}{flag}")
    return on_round


def check_bounds(c_min: float, c_max: float) -> None:
    if not c_min < c_max:
        raise click.BadParameter(f"--c-min {c_min:g} must be below --c-max {c_max:g}", param_hint="--c-min")


def calibration_options(fn):
    """--target-kl, --stat, --tol, --c-min, --c-max: shared by `calibrate` and `sweep` (which calibrates)."""
    fn = click.option("--c-max", type=click.FloatRange(min=0, min_open=True), default=1e4, show_default=True,
                      help="Largest dose the calibration may try.")(fn)
    fn = click.option("--c-min", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
                      help="Smallest dose the calibration may try.")(fn)
    fn = click.option("--tol", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                      show_default=True, help="Relative tolerance: accept |stat - target| <= tol x target.")(fn)
    fn = click.option("--stat", default="p95", show_default=True,
                      help="Statistic of the pooled per-token KL: p<q> (any quantile, e.g. p99.9), cvar<q> (mean "
                           "of the tokens at or above the q-th percentile), max, mean, or a registered one "
                           "(tl_isokl.statistics).")(fn)
    fn = click.option("--target-kl", "target", type=click.FloatRange(min=0, min_open=True), default=1.0,
                      show_default=True, help="Target value of the statistic, in nats.")(fn)
    return fn


def run_calibration(model, vec, ids, prompts, *, window, target, stat, tol, batch_size, c_min, c_max,
                    positions="all"):
    """Calibrate with a live round table; returns the result dict written to calibration.json."""
    from tl_isokl.calibrate import calibrate

    click.echo(f"calibrating {vec.method} L{vec.layer} on {len(prompts)} prompts, window {window}, "
               f"target {stat} = {target} nats")
    prog = Progress()
    done = [0]

    def tick(k):
        done[0] += k
        prog("calibration rollouts", done[0], None)

    res = calibrate(model, vec, prompts, prompt_ids=ids, window=window, target=target, stat=stat, tol=tol,
                    batch_size=batch_size, c_min=c_min, c_max=c_max, on_round=round_printer(stat, target, tol),
                    progress=tick, positions=positions)
    prog.close()
    sp = res.spread()
    click.echo(f"c* = {res.c_star:.6g}  ({stat} = {res.achieved:.4g}, converged={res.converged}, "
               f"{res.rounds} rounds, {res.seconds:.1f} s)")
    if sp["min"] is not None:
        click.echo(f"per-prompt c*: min {sp['min']:.4g}  median {sp['median']:.4g}  max {sp['max']:.4g}  "
                   f"(x{sp['ratio']:.3g} spread; {sp['not_bracketed']} prompt(s) never crossed the target)")
    return res.to_dict()


@click.command("calibrate")
@model_options
@vector_options
@positions_option
@click.option("--window", type=click.IntRange(min=1), default=256, show_default=True,
              help="Generated tokens per calibration rollout.")
@calibration_options
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Calibration prompts (.txt one per line, or .jsonl with a 'prompt' field).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded; greedy rollouts do not sample.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default runs/calibrate-<model>-<method>-L<layer>-w<window>-<hash of every "
                   "setting>).")
@fresh_option
@allow_other_model_option
@friendly_errors
def command(model_name, dtype, device, vector_path, method, layer, concept, gate, tau, positions, window, target,
            stat, tol, c_max, c_min, prompts_path, batch_size, seed, out, fresh, allow_other_model):
    """Find the iso-KL dose c* of a steering vector and write calibration.json + manifest.json.

    Everything that needs no model is checked first (flags, the vector and prompt files, that --out is writable).
    A folder already holding a calibration with other settings, or a sweep, is refused unless --fresh.
    """
    from tl_isokl.statistics import statistic
    from tl_isokl.identity import calibration_identity, same_model
    from tl_isokl.io import atomic_write_json
    from tl_isokl.model import model_info
    from tl_isokl.prompts import read_prompts
    from tl_isokl.rundir import Manifest
    from tl_isokl.runpolicy import (check_calibration_target, check_recalibration, default_run_path, file_sha,
                                    model_spec, open_run, start_fresh)

    statistic(stat)  # fail on a bad --stat before loading anything
    check_bounds(c_min, c_max)
    file_vec = early_vector(vector_path, method, layer, concept, gate, tau)
    if prompts_path is not None:
        read_prompts(prompts_path)  # a malformed prompt file fails now, not after the model loads
    spec = model_spec(model_name)
    if out is None:
        request = {"model": spec, "dtype": dtype, "positions": positions, "window": window, "target": target,
                   "stat": stat, "tol": tol, "c_min": c_min, "c_max": c_max, "prompts": file_sha(prompts_path),
                   "vector": file_vec.sha256 if file_vec else {"method": method, "layer": layer, "concept": concept},
                   "gate": gate, "tau": tau}
        out = default_run_path("calibrate", spec, file_vec.method if file_vec else method,
                               file_vec.layer if file_vec else layer, window, request)
    state = open_run(out, fresh=fresh, load_vector=False)
    check_calibration_target(state)
    rd = state.rd
    import torch

    torch.manual_seed(seed)
    model = load(model_name, dtype, device)
    vec = get_vector(model, file_vec, method, layer, concept, gate, tau, allow_other_model=allow_other_model)
    ids, prompts = get_prompts(model, prompts_path, "calibration")
    wanted = calibration_identity(model, vec, prompts, stat=stat, target=target, tol=tol, window=window,
                                  positions=positions, c_min=c_min, c_max=c_max)
    check_recalibration(state, wanted)
    removed = start_fresh(state)
    if removed:
        click.echo(f"--fresh: removed {len(removed)} tl-isokl file(s) from {out}")
    info = model_info(model)
    cal = run_calibration(model, vec, ids, prompts, window=window, target=target, stat=stat, tol=tol,
                          batch_size=batch_size, c_min=c_min, c_max=c_max, positions=positions)
    vec.save(rd.vector_path)
    atomic_write_json(rd.calibration_path, cal)
    rd.record(Manifest.of(
        "calibrate", model, vec, wanted["prompts_sha256"], len(prompts), window=window, seed=seed,
        positions=positions, target=target, stat=stat, tol=tol, c_min=c_min, c_max=c_max, identity=wanted,
        calibration_converged=cal["converged"], vector_model=vec.meta.get("model"),
        allow_other_model=bool(vec.meta.get("model") and not same_model(vec.meta.get("model"), info["name"]))))
    click.echo(f"wrote {rd.calibration_path}")

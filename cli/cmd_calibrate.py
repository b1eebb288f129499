"""`tl-isokl calibrate`: find c*, the dose where a statistic of per-token KL(steered || base) hits the target."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.common import (Progress, get_prompts, get_vector, load, model_options, positions_option, slug,
                                 vector_options)
from tl_isokl_cli.main import friendly_errors


def round_printer(stat: str, target: float, tol: float):
    def on_round(rnd, pts):
        for p in sorted(pts, key=lambda p: p.coeff):
            s = p.stats
            flag = " <-" if abs(p.value - target) <= tol else ""
            cols = " ".join(f"{k}={s[k]:<8.3g}" for k in ("mean", "p50", "p95", "max") if k != stat)
            click.echo(f"  round {rnd}  c={p.coeff:<10.5g} {stat}={p.value:<9.4g} {cols} n={s['n']}{flag}")
    return on_round


def run_calibration(model, vec, ids, prompts, *, window, target, stat, tol, batch_size, c_min, c_max,
                    positions="all"):
    """Calibrate with a live round table; returns the result dict written to calibration.json."""
    from tl_isokl.calibrate import calibrate
    from tl_isokl.io import sha256_json

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
    d = res.to_dict()
    d["prompts"] = list(prompts)
    d["prompts_sha256"] = sha256_json(list(prompts))
    d["positions"] = positions
    return d


@click.command("calibrate")
@model_options
@vector_options
@positions_option
@click.option("--window", type=click.IntRange(min=1), default=256, show_default=True,
              help="Generated tokens per calibration rollout.")
@click.option("--target-kl", "target", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Target value of the statistic, in nats.")
@click.option("--stat", default="p95", show_default=True, help="p<q> (any quantile), max or mean of pooled KL.")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Accept |stat - target| <= tol (nats).")
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Calibration prompts (.txt one per line, or .jsonl with a 'prompt' field).")
@click.option("--c-min", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--c-max", type=click.FloatRange(min=0, min_open=True), default=1e4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded; greedy rollouts do not sample.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default runs/calibrate-<model>-<method>-L<layer>-w<window>).")
@friendly_errors
def command(model_name, dtype, device, vector_path, method, layer, concept, gate, tau, positions, window, target,
            stat, tol, prompts_path, c_min, c_max, batch_size, seed, out):
    """Find the iso-KL dose c* of a steering vector and write calibration.json + manifest.json."""
    from tl_isokl.calibrate import parse_stat
    from tl_isokl.io import atomic_write_json, sha256_json
    from tl_isokl.model import model_info
    from tl_isokl.rundir import base_manifest

    parse_stat(stat)  # fail on a bad --stat before loading anything
    import torch

    torch.manual_seed(seed)
    model = load(model_name, dtype, device)
    vec = get_vector(model, vector_path, method, layer, concept, gate, tau)
    ids, prompts = get_prompts(model, prompts_path, "calibration")
    info = model_info(model)
    out = out or Path("runs") / f"calibrate-{slug(info['name'])}-{vec.method}-L{vec.layer}-w{window}"
    cal = run_calibration(model, vec, ids, prompts, window=window, target=target, stat=stat, tol=tol,
                          batch_size=batch_size, c_min=c_min, c_max=c_max, positions=positions)
    vec.save(out / "vector.safetensors")
    atomic_write_json(out / "calibration.json", cal)
    atomic_write_json(out / "manifest.json", base_manifest(
        "calibrate", model=info["name"], revision=info["revision"], dtype=info["dtype"], device=info.get("device"),
        layer=vec.layer, method=vec.method, gate=vec.gate.to_dict() if vec.gate else None,
        vector_sha256=vec.sha256, prompts_sha256=sha256_json(list(prompts)), n_prompts=len(prompts),
        window=window, target=target, stat=stat, tol=tol, positions=positions, seed=seed))
    click.echo(f"wrote {out / 'calibration.json'}")

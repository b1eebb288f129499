"""`tl-isokl calibrate`: find c*, the dose where a statistic of per-token KL(steered || base) hits the target."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from tl_isokl_cli.common import (Progress, allow_other_model_option, early_vector, fresh_option, given,
                                 model_options, positions_option, probe_options, refuse_unused, sampling_options,
                                 quiet_option, stat_option, talker, unescape, vector_options)
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
    fn = click.option("--target-nll-delta", type=click.FloatRange(min=0, min_open=True), default=None,
                      metavar="NATS", help="Calibrate to a behavioural target instead of KL: the mean per-token "
                      "NLL increase steering causes on the base model's own text (teacher forcing only).")(fn)
    fn = stat_option(fn)
    fn = click.option("--target-kl", "target", type=click.FloatRange(min=0, min_open=True), default=1.0,
                      show_default=True, help="Target value of the statistic, in nats.")(fn)
    return fn


def calibration_target(target: float, stat: str, target_nll_delta: float | None) -> tuple[float, str]:
    """(target, stat) from --target-kl/--stat or --target-nll-delta (which excludes both)."""
    if target_nll_delta is None:
        return target, stat
    refuse_unused([f for f, n in (("--target-kl", "target"), ("--stat", "stat")) if given(n)],
                  f"with --target-nll-delta {target_nll_delta:g} (it is its own statistic and target)")
    from tl_isokl.calibrate import NLL_DELTA

    return float(target_nll_delta), NLL_DELTA


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
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of sampled rollouts (--temperature > 0) and of torch; recorded.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default runs/calibrate-<model>-<method>-L<layer>-w<window>-<hash of every "
                   "setting>).")
@fresh_option
@allow_other_model_option
@probe_options
@functools.partial(sampling_options, samples=False)
@quiet_option
@friendly_errors
def command(model_name, dtype, device, revision, vector_path, method, layer, concept, gate, tau,
            positions, window, target,
            stat, target_nll_delta, tol, c_max, c_min, prompts_path, batch_size, seed, out, fresh, allow_other_model, probe_preset,
            probe_file, probe_prefill, probe_true, probe_false, probe_think_close, skip_preflight, chat_template,
            temperature, top_p, quiet):
    """Find the iso-KL dose c* of a steering vector and write calibration.json + manifest.json.

    Everything that needs no model is checked first (flags, the vector and prompt files, that --out is writable).
    A folder already holding a calibration with other settings, or a sweep, is refused unless --fresh.
    """
    from tl_isokl.experiment import ExperimentSettings, run_calibration_experiment

    check_bounds(c_min, c_max)
    target, stat = calibration_target(target, stat, target_nll_delta)
    file_vec = early_vector(vector_path, method, layer, concept, gate, tau)  # flag contradictions, before loading
    if temperature == 0 and given("top_p"):
        refuse_unused(["--top-p"], "without --temperature > 0 (greedy rollouts do not sample)")
    settings = ExperimentSettings(
        model=model_name, revision=revision, dtype=dtype, device=device, vector_path=vector_path, vector=file_vec,
        method=method, layer=layer,
        concept=concept, gate=gate, tau=tau, positions=positions, window=window, target=target, stat=stat, tol=tol,
        c_min=c_min, c_max=c_max, calibration_prompts=prompts_path, batch_size=batch_size, seed=seed, out=out,
        fresh=fresh, allow_other_model=allow_other_model, probe_preset=probe_preset, probe_file=probe_file,
        probe_prefill=unescape(probe_prefill), probe_true=tuple(map(unescape, probe_true)),
        probe_false=tuple(map(unescape, probe_false)), probe_think_close=unescape(probe_think_close),
        skip_preflight=skip_preflight, chat_template=chat_template, temperature=temperature, top_p=top_p)
    prog = Progress(enabled=not quiet)
    done = [0]

    def tick(k):
        done[0] += k
        prog("calibration rollouts", done[0], None)

    out = run_calibration_experiment(settings, echo=talker(quiet),
                                     on_round=None if quiet else round_printer(stat, target, tol),
                                     progress=tick)
    prog.close()
    click.echo(f"wrote {out / 'calibration.json'}")

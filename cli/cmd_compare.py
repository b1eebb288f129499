"""`tl-isokl compare`: several steering specs at the same KL budget, side by side (tl_isokl.compare)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.common import (Progress, check_concept, engine_from, engine_options, model_options,
                                 positions_option, probe_options, quiet_option, refuse_unused, talker, unescape)
from tl_isokl_cli.main import friendly_errors


def _check_stats(ctx, param, value):
    from tl_isokl.errors import IsoKLError
    from tl_isokl.statistics import statistic

    for v in value:
        try:
            statistic(v)
        except IsoKLError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return value


@click.command("compare")
@click.option("--spec", "specs", multiple=True, metavar="SPEC",
              help="A steering spec: METHOD[+GATE[:TAU]], e.g. mean_diff, pca, directional_ablation, "
                   "mean_diff+soft:0.1. Repeat for each spec (default: mean_diff, pca, directional_ablation).")
@click.option("--no-null", is_flag=True, help="Leave out the matched-KL null (`random`, added by default).")
@model_options
@click.option("--layer", type=int, default=None, help="Block every spec steers (default: the middle block).")
@click.option("--concept", default="cheerful/gloomy", show_default=True,
              help="POS/NEG contrastive sets every spec is extracted from.")
@positions_option
@click.option("--window", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--alphas", default="0,0.5,1,2,4", show_default=True,
              help="Doses in units of each spec's c*; a negative alpha steers along -v.")
@click.option("--two-sided", is_flag=True,
              help="Also calibrate -v of every spec; negative alphas are then doses of its own c* (iso-KL on both "
                   "sides: a direction and its opposite need not cost the same KL).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=0.75, show_default=True)
@click.option("--target-kl", "target", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--stat", "stats", multiple=True, default=("p95",), show_default=True, callback=_check_stats,
              help="Calibration statistic; repeat (--stat p95 --stat cvar95) to compare under several targets.")
@click.option("--tol", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True)
@click.option("--prompts", "prompts_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Held-out prompts (.txt or .jsonl); default: the model's held-out set.")
@click.option("--calibration-prompts", "cal_prompts_path",
              type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Compare directory: one run directory per spec, compare.md / compare.csv beside them. Rerun "
                   "to resume.")
@click.option("--fresh", is_flag=True,
              help="Start every spec over: delete the tl-isokl files in each spec's run directory and compare's own "
                   "(compare.csv/.md/.json, its figures; nothing else), then calibrate and sweep again.")
@probe_options
@click.option("--no-figures", is_flag=True, help="Skip each spec's own figures and report (compare's are drawn).")
@click.option("--effect-words", nargs=2, type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="POS NEG", help="Word lists (one word a line, # comments): adds the lexicon effect, positive "
                                      "minus negative words per 100 generated words, relative to alpha 0.")
@engine_options
@quiet_option
@friendly_errors
def command(specs, no_null, model_name, dtype, device, revision, layer, concept, positions, window, alphas,
            two_sided, threshold, target, stats, tol, prompts_path, cal_prompts_path, batch_size, seed, out, fresh,
            probe_preset, probe_file, probe_prefill, probe_true, probe_false, probe_think_close, skip_preflight,
            chat_template, no_figures, effect_words, engine, address, gpus_per_cell, cpus_per_cell, retries, quiet):
    """Give every spec the same KL budget (each calibrated to --target-kl of --stat on the same prompts), sweep
    them on the same held-out prompts, and tabulate what the budget bought: held-out KL, survival, median death,
    the concept effect, log-rank p against the null and mean_diff. Writes OUT/compare.md and OUT/compare.csv.

    Each spec is a run directory OUT/SPEC (OUT/STAT/SPEC with several --stat). Rerunning resumes: a finished spec
    costs nothing, a new --spec or alpha is added; other shared settings are refused (another --out, or --fresh).
    Flags, spec names, files and --out are checked before the model loads. --engine ray runs each spec (the null
    too) as grid cells on Ray tasks, then writes the same tables."""
    from tl_isokl.compare import COMPARE_MD, run_compare, specs_with_null
    from tl_isokl.experiment import ExperimentSettings
    from tl_isokl.sweep import parse_alphas

    how = engine_from(engine, address, gpus_per_cell, cpus_per_cell, retries)
    alpha_list = parse_alphas(alphas)  # a bad --alphas fails before the model loads
    if two_sided and not any(a < 0 for a in alpha_list):
        refuse_unused(["--two-sided"], f"without a negative alpha in --alphas {alphas} (it calibrates -v for them)")
    check_concept(concept)
    parsed = specs_with_null(specs or ("mean_diff", "pca", "directional_ablation"), null=not no_null)
    settings = ExperimentSettings(
        model=model_name, revision=revision, dtype=dtype, device=device, layer=layer, concept=concept,
        positions=positions, window=window, target=target, stat=stats[0], tol=tol,
        calibration_prompts=cal_prompts_path, heldout_prompts=prompts_path, batch_size=batch_size, seed=seed,
        fresh=fresh, alphas=alphas, threshold=threshold, figures=not no_figures, probe_preset=probe_preset,
        probe_file=probe_file, probe_prefill=unescape(probe_prefill), probe_true=tuple(map(unescape, probe_true)),
        probe_false=tuple(map(unescape, probe_false)), probe_think_close=unescape(probe_think_close),
        skip_preflight=skip_preflight, chat_template=chat_template, two_sided=two_sided)
    prog = Progress(enabled=not quiet)
    words = None
    if effect_words:
        from tl_isokl.effect import read_word_list

        words = (read_word_list(effect_words[0]), read_word_list(effect_words[1]))  # bad lists fail before loading
    res = run_compare(settings, parsed, out, stats=stats, null=not no_null, echo=talker(quiet),
                      warn=lambda m: click.echo(f"Warning: {m}", err=True), progress=prog, effect_words=words,
                      engine=how)
    prog.close()
    click.echo(f"compare: {Path(out) / COMPARE_MD} ({len(res['rows'])} rows, {len(res['figures'])} figures)")

"""`tl-isokl inspect RUN`: where the dead traces of a run die, as a table, offline HTML pages and deaths.json/csv.

The work is `tl_isokl.deaths.inspect_run`; this file parses, calls it and prints."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.cmd_report import threshold_option
from tl_isokl_cli.main import friendly_errors


@click.command("inspect")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--alpha", type=float, default=None, help="Only traces at this alpha (must be one of the run's).")
@click.option("--index", type=click.IntRange(min=0), default=None,
              help="One trace: its row in the run (forks.csv / deaths.csv `row`), or its position within --alpha.")
@click.option("--radius", type=click.IntRange(min=0), default=16, show_default=True,
              help="Tokens either side of the death fork in the death table.")
@threshold_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default RUN/inspect, or RUN/threshold=VALUE/inspect with another --threshold): "
                   "index.html, one page per trace, deaths.json/csv.")
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda if available).")
@click.option("--model", "model_name", default=None, metavar="NAME_OR_PATH",
              help="Load this model instead of the one recorded in RUN/manifest.json (e.g. the folder moved).")
@friendly_errors
def command(run_dir: Path, alpha, index, radius, threshold, out, device, model_name) -> None:
    """Recompute every dead trace of RUN (or the chosen one) around its death fork, label it (kl_spike,
    repetition_loop, format_fragile), and write offline HTML pages plus deaths.json / deaths.csv.

    Which traces died is read from the stored pmass (at --threshold: re-derived, nothing recomputed); the model
    recorded in RUN/manifest.json (or --model) and the vector RUN/vector.safetensors are loaded only for the pages
    of the dead traces.
    """
    from tl_isokl.deaths import TABLE_HEADER, format_death, inspect_run
    from tl_isokl.survival import threshold_text

    shown = []

    def row(d):  # each trace's line as soon as it is done (seconds per trace on a real model)
        if not shown:
            click.echo(f"{TABLE_HEADER}\n{'-' * len(TABLE_HEADER)}")
        shown.append(d)
        click.echo(format_death(d))

    rep = inspect_run(run_dir, alpha=alpha, index=index, radius=radius, threshold=threshold, out=out,
                      model_name=model_name, device=device, log=lambda s: click.echo(s, err=True), on_death=row)
    thr = threshold_text(rep.run, rep.threshold)
    if not rep.deaths:
        click.echo(f"no dead traces at threshold {thr}" + (f" and alpha {alpha:g}" if alpha is not None else ""))
        return
    click.echo(f"threshold {thr}")
    click.echo(f"wrote {rep.index}, {len(rep.deaths)} page(s), {rep.json.name}, {rep.csv.name}")

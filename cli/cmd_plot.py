"""`tl-isokl plot RUN`: redraw every figure of a run directory from its files (no model needed)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.cmd_report import threshold_option
from tl_isokl_cli.main import friendly_errors


@click.command("plot")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--roll", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rolling-mean width for the spaghetti lines (display only; 1 = raw).")
@threshold_option
@friendly_errors
def command(run: Path, roll: int, threshold: float | None) -> None:
    """Redraw RUN/figures/ (spaghetti raw + normalised, survival) and print the paths (on stdout; the threshold
    used is said on stderr). With --threshold other than the run's: RUN/threshold=VALUE/figures/."""
    from tl_isokl.report import draw_figures
    from tl_isokl.rundir import load_run
    from tl_isokl.survival import threshold_text

    click.echo(f"threshold {threshold_text(load_run(run), threshold)}", err=True)
    for p in draw_figures(run, roll=roll, threshold=threshold):
        click.echo(str(p))

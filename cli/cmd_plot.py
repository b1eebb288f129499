"""`tl-isokl plot RUN`: redraw every figure of a run directory from its files (no model needed)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.main import friendly_errors


@click.command("plot")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--roll", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rolling-mean width for the spaghetti lines (display only; 1 = raw).")
@friendly_errors
def command(run: Path, roll: int) -> None:
    """Redraw RUN/figures/ (spaghetti raw + normalised, survival) and print the paths."""
    from tl_isokl.report import draw_figures

    for p in draw_figures(run, roll=roll):
        click.echo(str(p))

"""`tl-isokl report RUN`: write RUN/report.md (drawing missing figures first) and print the survival table."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.main import friendly_errors


@click.command("report")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@friendly_errors
def command(run: Path) -> None:
    """Write RUN/report.md from the run directory and print its survival table."""
    from tl_isokl.report import draw_figures, figure_paths, markdown_table, write_report
    from tl_isokl.rundir import load_run
    from tl_isokl.survival import survival_table

    rd = load_run(run)  # fails early, with one line, on a folder that is not a run
    if not all(p.is_file() for p in figure_paths(run)):
        draw_figures(run)
    path = write_report(run)
    click.echo(f"survival (threshold {rd.threshold:g}):")
    click.echo(markdown_table(survival_table(rd)), nl=False)
    click.echo(f"wrote {path}")

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
    from tl_isokl.report import report_run

    path, threshold, table = report_run(run)
    click.echo(f"survival (threshold {threshold:g}):")
    click.echo(table, nl=False)
    click.echo(f"wrote {path}")

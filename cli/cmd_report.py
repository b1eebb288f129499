"""`tl-isokl report RUN`: write RUN/report.md and RUN/report.html (drawing missing figures first) and print the
survival table.

`--threshold` re-derives every fate from the stored pmass (no model, nothing recomputed) and writes into
RUN/threshold=<value>/ instead, so the run's own report.md and tables are never overwritten by a re-derivation."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.main import friendly_errors


class ThresholdType(click.ParamType):
    """A pmass threshold: a probability in (0, 1]. A bad value is click's one `Error:` line naming it and the fix."""

    name = "PROB"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            v = value
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = float("nan")
        if not 0.0 < v <= 1.0:  # NaN fails too
            self.fail(f"{value!r} is not a probability in (0, 1]; pass the share P(true) + P(false) a fork needs to "
                      f"count as alive, e.g. --threshold 0.75 (omit it to use the run's own)", param, ctx)
        return v


THRESHOLD_HELP = ("pmass threshold for alive/dead, in (0, 1] (default: the run's). Another value re-derives every "
                  "fate from the stored pmass (no model, nothing recomputed); the outputs go to RUN/threshold=VALUE/ "
                  "and say so.")


def threshold_option(fn):
    """--threshold for the commands that read a run (report, plot, inspect)."""
    return click.option("--threshold", type=ThresholdType(), default=None, help=THRESHOLD_HELP)(fn)


@click.command("report")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@threshold_option
@friendly_errors
def command(run: Path, threshold: float | None) -> None:
    """Write RUN/report.md and RUN/report.html (one self-contained page: figures inline, opens offline) from the run
    directory and print its survival and threshold-sensitivity tables."""
    from tl_isokl.report import report_run

    out = report_run(run, threshold)
    click.echo(f"survival at threshold {out.threshold_text}:")
    click.echo(out.table, nl=False)
    click.echo("deaths by threshold (re-derived from the stored pmass):")
    click.echo(out.sensitivity, nl=False)
    if out.html is not None:
        click.echo(f"wrote {out.html} (the report as one self-contained page: figures inline, opens offline)")
    click.echo(f"wrote {out.path}")

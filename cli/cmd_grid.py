"""`tl-isokl grid`: the product of GRID.toml's axes as sweep experiments, run as idempotent cells (tl_isokl.grid)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.common import engine_from, engine_options
from tl_isokl_cli.main import friendly_errors


@click.command("grid")
@click.argument("grid_file", required=False, type=click.Path(dir_okay=False, path_type=Path), metavar="GRID.toml")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Grid folder: one ordinary run directory per experiment (DIR/sweep-<model>-<spec>-L<layer>-"
                   "w<window>-<hash>), bookkeeping in DIR/.grid/. Rerun to resume.")
@engine_options
@click.option("--status", "status_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Print done / pending / failed per experiment of grid folder DIR (or of a run made "
                                  "by sweep/compare --engine), run nothing.")
@friendly_errors
def command(grid_file, out, engine, address, gpus_per_cell, cpus_per_cell, retries, status_dir):
    """Run every experiment of GRID.toml (the product of its axes: model, spec, layer, window, target, stat,
    prompts, calibration_prompts, seed, concept, threshold; one shared alphas list; shared settings in
    [settings]; `shards = N` splits each alpha group's prompts over N cells) as cells: one calibration per
    experiment, one sweep cell per alpha group (and shard), one merge. Finished cells are skipped, so rerunning
    resumes (and a second driver on the same --out waits, then skips). Every experiment is an ordinary run
    directory that report, plot and inspect read; DIR/grid.csv puts compare's columns side by side."""
    from tl_isokl import grid as G

    if status_dir is not None:
        if grid_file is not None or out is not None:
            raise click.UsageError("--status DIR runs nothing; drop GRID.toml/--out, or drop --status to run")
        click.echo(G.format_status(G.status(status_dir)))
        return
    if grid_file is None:
        raise click.UsageError("give GRID.toml (and --out DIR), or --status DIR")
    if out is None:
        raise click.UsageError(f"--out DIR is required: where the experiments of {grid_file} are written")
    how = engine_from(engine, address, gpus_per_cell, cpus_per_cell, retries)
    grid = G.parse_grid(grid_file)
    click.echo(f"grid {grid_file}: {len(grid.experiments)} experiment(s) x {len(grid.alphas)} alphas -> {out} "
               f"(engine {engine})")
    res = G.run_grid(grid, out, engine=how.name, address=how.address, gpus_per_cell=how.gpus_per_cell,
                     cpus_per_cell=how.cpus_per_cell, retries=how.retries, echo=click.echo)
    click.echo(f"grid: {len(res.done)} done, {len(res.failed)} failed; {res.computed} cell(s) computed, "
               f"{res.skipped} already done, {res.seconds:.1f} s")
    if res.failed:
        name, err = next(iter(res.failed.items()))
        raise click.ClickException(f"{len(res.failed)} experiment(s) failed, e.g. {name}: {err}; fix it and rerun "
                                   f"the same command (finished cells are kept), or see tl-isokl grid --status {out}")

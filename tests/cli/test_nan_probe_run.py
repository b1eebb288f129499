"""A NaN probe mass (no mass could be measured) is dead, in memory and on disk: it is written as JSON null, read
back as NaN, and every command that reads the run works on it."""

import csv
import json
import math

from click.testing import CliRunner
from helpers_runs import make_run, traj

from tl_isokl.records import fate
from tl_isokl.rundir import load_run
from tl_isokl.sweep import write_tables
from tl_isokl_cli.main import cli


def nan_run(path):
    nan = float("nan")
    trajs = [
        traj(0.0, [0.0] * 16, [(0, 0.9), (8, 0.9), (16, 0.9)], window=16, pid="a"),
        traj(1.0, [0.5] * 16, [(0, 0.9), (4, nan), (8, 0.95), (16, 0.9)], window=16, pid="a"),  # NaN at fork 4
        traj(1.0, [0.5] * 16, [(0, 0.9), (16, 0.9)], window=16, pid="b"),
    ]
    return make_run(path, alphas=(0.0, 1.0), window=16, trajectories=trajs)


def test_nan_pmass_round_trips_as_dead(tmp_path):
    run_dir = nan_run(tmp_path / "run")
    line = (run_dir / "cells" / "alpha=1.jsonl").read_text().splitlines()[0]
    assert json.loads(line)["forks"][1]["pmass"] is None  # JSON has no NaN: written as null
    run = load_run(run_dir)
    t = next(t for t in run.trajectories if t.alpha == 1.0 and t.prompt_id == "a")
    assert math.isnan(t.forks[1].pmass) and not t.forks[1].alive(0.75)
    f = fate(t, 0.75)
    assert f.died and f.time == 4 and f.interval == (0, 4)
    write_tables(run)
    rows = list(csv.DictReader((run_dir / "forks.csv").open()))
    nan_row = next(r for r in rows if r["alpha"] == "1" and r["t"] == "4" and r["prompt_id"] == "a")
    assert nan_row["pmass"] == "nan" and nan_row["alive"] == "0"
    assert nan_row["last_alive_fork"] == "0" and nan_row["death_fork"] == "4"
    summary = list(csv.DictReader((run_dir / "summary.csv").open()))
    assert [r["died"] for r in summary] == ["0", "1"]


def test_every_reading_command_works_on_a_run_with_nan(tmp_path):
    run_dir = nan_run(tmp_path / "run")
    for args in (["report", str(run_dir)], ["plot", str(run_dir)]):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert "Traceback" not in r.output
    md = (run_dir / "report.md").read_text()
    assert "interval-censored" in md

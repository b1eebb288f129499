"""`tl-isokl grid`: a run, --status, the other commands on its run directories, and one-line errors."""

import pytest
from helpers_cli import invoke, one_line_error, write_prompts

GRID = """spec = "mean_diff"
window = 8
alphas = [0, 2]
prompts = "held.txt"
calibration_prompts = "cal.txt"
[settings]
batch_size = 8
"""


@pytest.fixture
def grid_file(tmp_path, splits):
    write_prompts(tmp_path / "held.txt", splits.heldout[:2])
    write_prompts(tmp_path / "cal.txt", splits.calibration[:3])
    (tmp_path / "GRID.toml").write_text(GRID)
    return tmp_path / "GRID.toml"


@pytest.fixture
def fresh_cache(monkeypatch):
    from tl_isokl import grid

    monkeypatch.setattr(grid, "_MODELS", {})


def test_grid_run_status_and_report(grid_file, tmp_path, reuse_model, fresh_cache):
    out = tmp_path / "out"
    r = invoke("grid", grid_file, "--out", out)
    assert r.exit_code == 0, r.output
    assert "calibrate: done in" in r.output and "merge: done in" in r.output
    assert "grid: 1 done, 0 failed; 3 cell(s) computed" in r.output
    r = invoke("grid", "--status", out)
    assert r.exit_code == 0 and "1 experiments: 1 done, 0 pending, 0 failed" in r.output, r.output
    (run_dir,) = [p for p in out.iterdir() if p.name.startswith("sweep-")]
    assert (run_dir / "report.md").is_file() and (run_dir / "figures" / "survival.png").is_file()
    r = invoke("report", run_dir)  # an ordinary run directory
    assert r.exit_code == 0, r.output
    import csv

    rows = list(csv.DictReader(open(out / "grid.csv")))  # compare's columns per experiment x alpha
    assert [(r["axis_spec"], float(r["alpha"])) for r in rows] == [("mean_diff", 0.0), ("mean_diff", 2.0)]
    assert float(rows[1]["c_star"]) > 0 and rows[0]["median_death"] is not None
    r = invoke("grid", grid_file, "--out", out)  # resume: nothing to do
    assert r.exit_code == 0 and "0 cell(s) computed, 3 already done" in r.output, r.output


def test_a_failed_experiment_is_an_error_line_and_a_status(grid_file, tmp_path, reuse_model, fresh_cache,
                                                          monkeypatch):
    from tl_isokl import grid

    def boom(cell, model):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(grid, "compute_cell", boom)
    out = tmp_path / "out"
    r = invoke("grid", grid_file, "--out", out)
    one_line_error(r, 1, "1 experiment(s) failed", "disk full", "--status")
    r = invoke("grid", "--status", out)
    assert "failed" in r.output and "calibrate: disk full (simulated)" in r.output, r.output


@pytest.mark.parametrize("args, code, needles", [
    (["--status", "{tmp}/nowhere"], 1, ["not a grid folder", "--out DIR"]),
    (["{grid}"], 2, ["--out DIR is required"]),
    ([], 2, ["GRID.toml", "--status DIR"]),
    (["{grid}", "--out", "{tmp}/o", "--address", "auto"], 2, ["--address auto", "--engine ray"]),
    (["{grid}", "--out", "{tmp}/o", "--gpus-per-cell", "1"], 2, ["--engine ray"]),
    (["{grid}", "--out", "{tmp}/o", "--engine", "spark"], 2, ["spark"]),
    (["{tmp}/none.toml", "--out", "{tmp}/o"], 1, ["none.toml", "does not exist"]),
    (["{bad}", "--out", "{tmp}/o"], 1, ["spec = 'nope'"]),
])
def test_bad_input_is_one_line(grid_file, tmp_path, no_model, args, code, needles):
    bad = tmp_path / "bad.toml"
    bad.write_text('spec = "nope"\nalphas = [0, 1]\n')
    args = [a.format(tmp=tmp_path, grid=grid_file, bad=bad) for a in args]
    one_line_error(invoke("grid", *args), code, *needles)

"""Grids as idempotent cells: the local engine writes what an ordinary sweep writes; reruns skip finished cells; a
killed grid resumes to identical files; two drivers on one folder compute each cell once; Ray gives the same files.

Small on purpose: two experiments (mean_diff, pca) x two alphas, window 8, 3 held-out and 3 calibration prompts,
on the session model (the Ray test's workers load their own copy of the embedded model)."""

import filecmp
import json
import threading
from dataclasses import replace

import pytest
from helpers_cli import write_prompts

from tl_isokl import grid as G

GRID = """spec = ["mean_diff", "pca"]
window = 8
alphas = [0, 2]
prompts = "held.txt"
calibration_prompts = "cal.txt"
[settings]
batch_size = 8
figures = false
"""
FILES = ("cells/alpha=0.jsonl", "cells/alpha=2.jsonl", "vector.safetensors", "summary.csv", "forks.csv")


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory, splits):
    d = tmp_path_factory.mktemp("grid")
    write_prompts(d / "held.txt", splits.heldout[:3])
    write_prompts(d / "cal.txt", splits.calibration[:3])
    (d / "GRID.toml").write_text(GRID)
    return d / "GRID.toml"


@pytest.fixture(scope="module")
def session_model(model):
    """Cells get the session model (as `tl-isokl` commands do in the CLI tests), and a fresh per-process cache."""
    mp = pytest.MonkeyPatch()
    mp.setattr("tl_isokl.experiment.load", lambda *a, **k: model)
    mp.setattr(G, "_MODELS", {})
    yield model
    mp.undo()


@pytest.fixture(scope="module")
def reference(grid_file, session_model, tmp_path_factory):
    """The grid run once by the local engine."""
    out = tmp_path_factory.mktemp("ref")
    res = G.run_grid(G.parse_grid(grid_file), out)
    assert not res.failed and res.computed == 6 and sorted(res.done) == sorted(
        e.name for e in G.parse_grid(grid_file).experiments)
    return out


def same_files(a, b):
    for f in FILES:
        assert filecmp.cmp(a / f, b / f, shallow=False), f"{a / f} differs from {b / f}"
    ca, cb = (json.loads((d / "calibration.json").read_text()) for d in (a, b))
    ca.pop("seconds"), cb.pop("seconds")  # wall time of the solve
    assert ca == cb


def same_grid(a, b, grid_file):
    for e in G.parse_grid(grid_file).experiments:
        same_files(a / e.name, b / e.name)


def test_local_engine_writes_what_sweep_writes(reference, grid_file, session_model, tmp_path):
    from tl_isokl.experiment import run_sweep_experiment
    from tl_isokl.rundir import load_run

    e = G.parse_grid(grid_file).experiments[0]
    run_sweep_experiment(replace(e.settings, out=tmp_path / "plain"), model=session_model)
    same_files(reference / e.name, tmp_path / "plain")
    run = load_run(reference / e.name)  # an ordinary run directory: every command reads it
    assert run.manifest["command"] == "sweep" and run.manifest["alphas"] == [0.0, 2.0]
    assert [r["state"] for r in G.status(reference)] == ["done", "done"]


def test_rerun_computes_nothing(reference, grid_file, session_model, monkeypatch):
    calls = []
    real = G.compute_cell
    monkeypatch.setattr(G, "compute_cell", lambda cell, model: calls.append(cell.label) or real(cell, model))
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*.jsonl")}
    res = G.run_grid(G.parse_grid(grid_file), reference)
    assert calls == [] and res.computed == 0 and res.skipped == 6 and not res.failed
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*.jsonl")} == before


class Killed(BaseException):
    """A kill of the driver (not an error the grid records and steps over)."""


def test_killed_grid_resumes_to_identical_files(reference, grid_file, session_model, tmp_path, monkeypatch):
    from tl_isokl.rundir import RunDir

    real = RunDir.write_cell
    writes = []

    def dying(self, alpha, trajectories, threshold=None):
        if len(writes) == 1:  # killed after the first alpha file of the first sweep cell
            raise Killed()
        writes.append(alpha)
        return real(self, alpha, trajectories, threshold)

    monkeypatch.setattr(RunDir, "write_cell", dying)
    with pytest.raises(Killed):
        G.run_grid(G.parse_grid(grid_file), tmp_path)
    rows = G.status(tmp_path)
    assert [r["state"] for r in rows] == ["pending", "pending"] and sorted(r["cells"] for r in rows) == [0, 1]
    monkeypatch.setattr(RunDir, "write_cell", real)
    calls = []
    real_compute = G.compute_cell
    monkeypatch.setattr(G, "compute_cell", lambda cell, model: calls.append(cell.kind) or real_compute(cell, model))
    res = G.run_grid(G.parse_grid(grid_file), tmp_path)
    assert not res.failed and calls == ["sweep", "merge", "calibrate", "sweep", "merge"]  # the calibration is kept
    same_grid(reference, tmp_path, grid_file)


def test_a_failed_cell_is_recorded_and_the_grid_goes_on(grid_file, session_model, tmp_path, monkeypatch):
    real = G.compute_cell

    def flaky(cell, model):
        if cell.kind == "sweep" and "mean_diff" in cell.name:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cell, model)

    monkeypatch.setattr(G, "compute_cell", flaky)
    res = G.run_grid(G.parse_grid(grid_file), tmp_path)
    assert len(res.failed) == 1 and len(res.done) == 1
    states = {("mean_diff" if "mean_diff" in r["experiment"] else "pca"): r for r in G.status(tmp_path)}
    assert states["mean_diff"]["state"] == "failed" and "out of memory" in states["mean_diff"]["error"]
    assert states["pca"]["state"] == "done"
    monkeypatch.setattr(G, "compute_cell", real)
    res = G.run_grid(G.parse_grid(grid_file), tmp_path)
    assert not res.failed and res.computed == 2  # the failed sweep cell and its merge
    assert [r["state"] for r in G.status(tmp_path)] == ["done", "done"]


def test_two_drivers_on_one_folder(reference, grid_file, session_model, tmp_path):
    """Two drivers at once: each cell is computed once (the other waits on its lock, then skips), files intact."""
    results, errors = [], []

    def drive():
        try:
            results.append(G.run_grid(G.parse_grid(grid_file), tmp_path))
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and not any(r.failed for r in results)
    assert sum(r.computed for r in results) == 6 and sum(r.skipped for r in results) == 6
    assert not list(tmp_path.rglob("*.tmp"))
    same_grid(reference, tmp_path, grid_file)


def test_prompt_shards_merge_into_the_sweep_cells(reference, grid_file, session_model, tmp_path):
    """shards = 2: each alpha group's held-out rows in 2 cells, merged into the ordinary cells/alpha=<a>.jsonl, rows
    in the unsharded order; numbers equal the unsharded ones up to float rounding (smaller decode batches)."""
    import numpy as np

    from tl_isokl.rundir import load_run

    sharded = grid_file.parent / "SHARDED.toml"
    sharded.write_text("shards = 2\n" + GRID.replace('spec = ["mean_diff", "pca"]', 'spec = "pca"'))
    g = G.parse_grid(sharded)
    res = G.run_grid(g, tmp_path)
    assert not res.failed and [c["label"].split(" ", 1)[1] for c in res.cells] == [
        "calibrate", "sweep α=0,2 shard 1/2", "sweep α=0,2 shard 2/2", "merge"]
    name = g.experiments[0].name
    a, b = load_run(tmp_path / name), load_run(reference / name)
    assert [(t.alpha, t.prompt_id) for t in a.trajectories] == [(t.alpha, t.prompt_id) for t in b.trajectories]
    for x, y in zip(a.trajectories, b.trajectories):
        assert x.tokens == y.tokens
        np.testing.assert_allclose(x.kl, y.kl, atol=1e-4)
    assert not list((tmp_path / ".grid").rglob("*.shard-*"))  # merged, then removed
    assert G.run_grid(g, tmp_path).computed == 0


def test_sweep_as_cells_takes_a_vector_file_and_two_sided(grid_file, session_model, vec, tmp_path):
    """`sweep --engine` runs what the sweep would: the --vector file (not a vector extracted here) and, two-sided,
    -v's own calibration; the cells' files equal the ordinary sweep's (the local engine of cells, no Ray)."""
    from tl_isokl.experiment import ExperimentSettings, run_sweep_experiment

    (-vec).save(tmp_path / "v.safetensors")  # not the vector the cells would extract (cheerful - gloomy)
    s = ExperimentSettings(vector_path=tmp_path / "v.safetensors", window=8, alphas=(-2.0, 0.0, 2.0), two_sided=True,
                           heldout_prompts=grid_file.parent / "held.txt", batch_size=8, figures=False,
                           calibration_prompts=grid_file.parent / "cal.txt", out=tmp_path / "plain")
    run_sweep_experiment(s, model=session_model)
    run = G.run_sweep(replace(s, out=tmp_path / "cells"), G.Engine("local"))
    assert run.manifest["engine"] == "local" and run.manifest["alphas"] == [-2.0, 0.0, 2.0]
    for f in ("cells/alpha=-2.jsonl", "cells/alpha=0.jsonl", "cells/alpha=2.jsonl", "vector.safetensors",
              "summary.csv", "forks.csv"):
        assert filecmp.cmp(tmp_path / "plain" / f, tmp_path / "cells" / f, shallow=False), f
    for f in ("calibration.json", "calibration_neg.json"):
        a, b = (json.loads((tmp_path / d / f).read_text()) for d in ("plain", "cells"))
        a.pop("seconds"), b.pop("seconds")
        assert a == b, f
    assert (tmp_path / "cells" / ".grid" / "plan.json").is_file() and not (tmp_path / ".grid").exists()


def test_a_failed_sweep_cell_is_one_error_and_resumes(grid_file, session_model, tmp_path, monkeypatch):
    from tl_isokl.errors import IsoKLError

    s = G.parse_grid(grid_file).experiments[0].settings
    real = G.compute_cell

    def flaky(cell, model):
        if cell.kind == "sweep":
            raise RuntimeError("disk full (simulated)")
        return real(cell, model)

    monkeypatch.setattr(G, "compute_cell", flaky)
    with pytest.raises(IsoKLError, match=r"^run: its sweep cell failed: disk full \(simulated\); fix it and rerun"):
        G.run_sweep(replace(s, out=tmp_path / "run"), "local")
    (row,) = G.status(tmp_path / "run")  # `grid --status RUN` reads a sweep's own bookkeeping (RUN/.grid/)
    assert (row["experiment"], row["state"], row["calibrated"], row["cells"], row["alphas"]) == \
        ("run", "failed", True, 0, 2) and "disk full" in row["error"]
    calls = []
    monkeypatch.setattr(G, "compute_cell", lambda cell, model: calls.append(cell.kind) or real(cell, model))
    run = G.run_sweep(replace(s, out=tmp_path / "run"), G.Engine.of("local"))
    assert calls == ["sweep", "merge"]  # the calibration is kept
    assert run.manifest["alphas"] == [0.0, 2.0] and not (tmp_path / "run" / ".grid" / "failed.json").exists()
    assert [(r["state"], r["cells"], r["alphas"]) for r in G.status(tmp_path / "run")] == [("done", 2, 2)]


def test_ray_engine_gives_the_local_files(local_ray, reference, grid_file, tmp_path):
    res = G.run_grid(G.parse_grid(grid_file), tmp_path, engine="ray", cpus_per_cell=1)
    assert not res.failed and res.computed == 6
    again = G.run_grid(G.parse_grid(grid_file), tmp_path, engine="ray")  # a rerun skips every cell
    assert again.computed == 0 and again.skipped == 6
    same_grid(reference, tmp_path, grid_file)


def test_ray_retries_a_killed_worker(local_ray, reference, grid_file, tmp_path):
    """A worker killed in the middle of a sweep cell (preemption, OOM killer): Ray reruns the task on another
    worker; finished cells are not recomputed; the files are the local engine's."""
    marker = tmp_path / "killed-once"

    def dies_once(cell, *args):
        import os

        if cell.kind == "sweep" and "pca" in cell.name and not marker.exists():
            marker.write_text("x")
            os._exit(1)  # the worker process dies mid-task
        return G._ray_cell(cell, *args)

    res = G.run_grid(G.parse_grid(grid_file), tmp_path / "out", engine="ray", ray_task=dies_once, retries=2)
    assert marker.exists() and not res.failed and res.computed == 6
    same_grid(reference, tmp_path / "out", grid_file)

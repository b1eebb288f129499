"""`sweep --engine ray` and `compare --engine ray`: the same run directories as the local engine (a sweep is a grid of
one experiment, a compare one experiment per spec), and Ray-only options refused without it.

Small on purpose: window 8, 2 held-out and 3 calibration prompts, alphas 0 and 2 (compare: 0 and 1). The local runs
get the session model; the Ray workers load their own copy of the embedded model (as in test_grid.py)."""

import filecmp
import json
import sys

import pytest
from helpers_cli import invoke, one_line_error, write_prompts

RUN_FILES = ("vector.safetensors", "summary.csv", "forks.csv")


@pytest.fixture(scope="module")
def files(tmp_path_factory, splits):
    d = tmp_path_factory.mktemp("prompts")
    write_prompts(d / "held.txt", splits.heldout[:2])
    write_prompts(d / "cal.txt", splits.calibration[:3])
    return d


def same_run(a, b, alphas):
    """The files a sweep computes are byte-identical; calibration.json up to the solver's wall time; the manifests
    record the same run identity, and the Ray one its engine."""
    for f in (*RUN_FILES, *(f"cells/alpha={x}.jsonl" for x in alphas)):
        assert filecmp.cmp(a / f, b / f, shallow=False), f"{a / f} differs from {b / f}"
    ca, cb = (json.loads((d / "calibration.json").read_text()) for d in (a, b))
    ca.pop("seconds"), cb.pop("seconds")
    assert ca == cb
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["command"] == mb["command"] == "sweep"
    assert ma["identity"] == mb["identity"] and ma["config_sha256"] == mb["config_sha256"]
    assert ma["alphas"] == mb["alphas"] and ma["prompts"] == mb["prompts"]
    assert "engine" not in ma and mb["engine"] == "ray"
    # the command a researcher ran (the test's invocation), not the Ray worker's
    assert mb["argv"][0] == "tl-isokl" and "--engine" in mb["argv"], mb["argv"]  # sweep or compare
    assert mb["history"][-1]["argv"] == mb["argv"] and mb["history"][-1]["cwd"] == ma["history"][-1]["cwd"]


def test_sweep_on_ray_writes_the_local_files(local_ray, reuse_model, files, tmp_path):
    args = ["sweep", "--window", "8", "--alphas", "0,2", "--batch-size", "8", "--prompts", files / "held.txt",
            "--calibration-prompts", files / "cal.txt"]
    r = invoke(*args, "--no-figures", "--out", tmp_path / "local")
    assert r.exit_code == 0, r.output
    r = invoke(*args, "--engine", "ray", "--cpus-per-cell", "1", "--out", tmp_path / "ray")
    assert r.exit_code == 0, r.output
    assert "ray calibrate: done in" in r.output and "ray merge: done in" in r.output, r.output
    assert "median death" in r.output and f"run directory: {tmp_path / 'ray'}" in r.output  # the sweep's table
    same_run(tmp_path / "local", tmp_path / "ray", ("0", "2"))
    assert (tmp_path / "ray" / "report.md").is_file() and (tmp_path / "ray" / "figures" / "survival.png").is_file()
    assert invoke("report", tmp_path / "ray").exit_code == 0  # an ordinary run directory
    status = invoke("grid", "--status", tmp_path / "ray")  # a sweep's own cells: RUN/.grid/
    assert status.exit_code == 0 and "done     cal=yes cells 2/2  ray" in status.output, status.output
    again = invoke(*args, "--engine", "ray", "--out", tmp_path / "ray")  # resume: every cell is done
    assert again.exit_code == 0 and "done in" not in again.output and "already done" in again.output, again.output


def test_compare_on_ray_writes_the_local_files(local_ray, reuse_model, files, tmp_path):
    """mean_diff and the matched-KL null: each an experiment of cells, then compare's own tables."""
    args = ["compare", "--spec", "mean_diff", "--window", "8", "--alphas", "0,1", "--batch-size", "8", "--prompts",
            files / "held.txt", "--calibration-prompts", files / "cal.txt", "--no-figures"]
    r = invoke(*args, "--out", tmp_path / "local")
    assert r.exit_code == 0, r.output
    r = invoke(*args, "--engine", "ray", "--out", tmp_path / "ray")
    assert r.exit_code == 0, r.output
    assert "random merge: done in" in r.output and "(4 rows, 3 figures)" in r.output, r.output
    for spec in ("mean_diff", "random"):
        same_run(tmp_path / "local" / spec, tmp_path / "ray" / spec, ("0", "1"))
    for f in ("compare.csv", "compare.md", "compare.json"):
        assert filecmp.cmp(tmp_path / "local" / f, tmp_path / "ray" / f, shallow=False), f
    status = invoke("grid", "--status", tmp_path / "ray")  # compare's cells: OUT/.grid/<spec>/
    assert status.exit_code == 0 and "2 experiments: 2 done, 0 pending, 0 failed" in status.output, status.output
    assert "cells 2/2  mean_diff" in status.output and "cells 2/2  random" in status.output


@pytest.mark.parametrize("args, code, needles", [
    (["sweep", "--address", "auto"], 2, ["--address auto is for --engine ray", "add --engine ray or drop it"]),
    (["compare", "--gpus-per-cell", "1"], 2, ["--gpus-per-cell 1 is for --engine ray"]),
    (["sweep", "--engine", "local", "--cpus-per-cell", "2", "--retries", "5"], 2,
     ["--cpus-per-cell 2, --retries 5 are for --engine ray", "drop them"]),
    (["compare", "--engine", "spark"], 2, ["'spark'"]),
    (["sweep", "--engine", "ray", "--two-sided", "--alphas", "-1,0", "--calibration", "{cal}"], 2,
     ["--two-sided", "--calibration"]),  # the sweep's own checks, in the driver, before any cell
])
def test_engine_options_are_checked_before_the_model(args, code, needles, no_model, tmp_path):
    cal = tmp_path / "calibration.json"
    cal.write_text("{}")
    args = [a.format(cal=cal) for a in args]
    one_line_error(invoke(*args, "--out", tmp_path / "o"), code, *needles)
    assert not (tmp_path / "o").exists()


def test_engine_ray_without_ray_is_one_line(no_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    one_line_error(invoke("sweep", "--engine", "ray", "--out", tmp_path / "o"), 1, "pip install", "tl-isokl[ray]")

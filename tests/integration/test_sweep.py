"""The sweep: alpha = 0 is the base model, the largest dose kills, a killed run resumes to identical files."""

import importlib

import numpy as np
import pytest

from tl_isokl.errors import IsoKLError, RunDirError
from tl_isokl.records import fate
from tl_isokl.sweep import parse_alphas, sweep

sweep_mod = importlib.import_module("tl_isokl.sweep")  # the package exports a function of the same name
WINDOW = 48
ALPHAS = (0.0, 1.0, 8.0)


@pytest.fixture(scope="module")
def cal(model, vec, splits):
    from tl_isokl.calibrate import calibrate

    prompts = [q.prompt for q in splits.calibration[:6]]
    d = calibrate(model, vec, prompts, window=WINDOW).to_dict()
    d["prompts"] = prompts
    return d


@pytest.fixture(scope="module")
def heldout(splits):
    return [q.prompt for q in splits.heldout[:8]]


@pytest.fixture(scope="module")
def run(model, vec, cal, heldout, tmp_path_factory):
    return sweep(model, vec, cal, heldout, tmp_path_factory.mktemp("run"), alphas=ALPHAS, window=WINDOW)


def test_alpha_zero_is_the_base_model(run):
    base = run.by_alpha()[0.0]
    assert len(base) == 8
    assert all(np.all(np.asarray(t.kl) == 0.0) for t in base)
    assert not any(fate(t, run.threshold).died for t in base)


def test_largest_alpha_kills_most_traces(run):
    top = run.by_alpha()[max(ALPHAS)]
    died = sum(fate(t, run.threshold).died for t in top)
    assert died >= 0.75 * len(top), f"only {died}/{len(top)} died at alpha={max(ALPHAS)}"


def test_run_directory_files(run):
    import csv
    import json

    m = json.loads((run.path / "manifest.json").read_text())
    for key in ("model", "revision", "dtype", "layer", "method", "vector_sha256", "prompts_sha256", "seed",
                "package_version", "argv", "window", "threshold", "c_star"):
        assert key in m, key
    rows = list(csv.DictReader(open(run.path / "summary.csv")))
    assert [float(r["alpha"]) for r in rows] == list(ALPHAS)
    assert sum(int(r["died"]) + int(r["censored"]) for r in rows) == 24
    forks = list(csv.DictReader(open(run.path / "forks.csv")))
    assert len(forks) == sum(len(t.forks) for t in run.trajectories)


def test_killed_sweep_resumes_to_identical_cells(model, vec, cal, heldout, run, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = sweep_mod.run_cell
    calls = []

    def dies_on_second_cell(*a, **k):
        if len(calls) == 1:
            # simulate a kill mid-cell: a temp file left behind, no cell file
            (out / "cells").mkdir(parents=True, exist_ok=True)
            (out / "cells" / ".alpha=1.jsonl.abc.tmp").write_text('{"half": ')
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sweep_mod, "run_cell", dies_on_second_cell)
    with pytest.raises(KeyboardInterrupt):
        sweep(model, vec, cal, heldout, out, alphas=ALPHAS, window=WINDOW)
    assert [p.name for p in sorted((out / "cells").glob("alpha=*.jsonl"))] == ["alpha=0.jsonl"]
    monkeypatch.setattr(sweep_mod, "run_cell", real)
    resumed = sweep(model, vec, cal, heldout, out, alphas=ALPHAS, window=WINDOW)
    for a in ALPHAS:
        name = f"alpha={a:g}.jsonl"
        assert (out / "cells" / name).read_bytes() == (run.path / "cells" / name).read_bytes()
    assert (out / "summary.csv").read_bytes() == (run.path / "summary.csv").read_bytes()
    assert len(resumed.trajectories) == 24


def test_resume_refuses_a_different_configuration(model, vec, cal, heldout, run):
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=rf"other settings: window: {WINDOW} \(run\) vs {WINDOW + 1} \(this command\)"):
        sweep(model, vec, cal, heldout, run.path, alphas=ALPHAS, window=WINDOW + 1)
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before  # refused: nothing touched


def test_heldout_must_be_disjoint_from_calibration(model, vec, cal, tmp_path):
    with pytest.raises(IsoKLError, match="also appear in the calibration set"):
        sweep(model, vec, cal, cal["prompts"][:2], tmp_path / "x", alphas=(0,), window=4)


def test_parse_alphas():
    assert parse_alphas("1, 0,0.25") == (0.0, 0.25, 1.0)
    for bad, msg in (("a,b", "comma-separated"), ("-1", "invalid"), ("", "no alphas"), ("1,1", "duplicates")):
        with pytest.raises(IsoKLError, match=msg):
            parse_alphas(bad)

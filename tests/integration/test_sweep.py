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
    return calibrate(model, vec, prompts, window=WINDOW)  # the value type itself: no dict patching


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
        sweep(model, vec, cal, cal.prompts[:2], tmp_path / "x", alphas=(0,), window=4)


def test_parse_alphas():
    assert parse_alphas("1, 0,0.25") == (0.0, 0.25, 1.0)
    assert parse_alphas("-1,0,1") == (-1.0, 0.0, 1.0)  # a negative alpha steers along -v
    for bad, msg in (("a,b", "comma-separated"), ("nan", "invalid"), ("", "no alphas"), ("1,1", "duplicates")):
        with pytest.raises(IsoKLError, match=msg):
            parse_alphas(bad)


def test_calibration_result_carries_what_the_sweep_checks(cal, heldout, splits):
    from tl_isokl.calibrate import CalibrationResult

    assert cal.prompts == [q.prompt for q in splits.calibration[:6]] and cal.positions == "all"
    assert cal.identity["prompts_sha256"] == cal.prompts_sha256
    back = CalibrationResult.from_dict(cal.to_dict())
    assert back.to_dict() == cal.to_dict()  # calibration.json round-trips


def test_sweep_takes_a_probe_object(model, vec, cal, heldout, tmp_path):
    """A user probe: it is what the sweep asks at forks, and its to_dict identifies the run."""
    from tl_isokl.records import ForkProbe

    class EveryFourTokens:
        calls = 0

        def measure(self, model, vector, rollouts, *, positions="all", batch_size=8, progress=None):
            EveryFourTokens.calls += 1
            # dies at fork 4 when steered, alive otherwise: a probe with nothing to do with JSON answers
            return [[ForkProbe(t, 0.1 if (r.coeff > 0 and t >= 4) else 0.9, 0.0) for t in range(0, r.length, 4)]
                    for r in rollouts]

        def to_dict(self):
            return {"kind": "every-four", "schedule": 4}

    run = sweep(model, vec, cal, heldout[:2], tmp_path / "r", alphas=(0.0, 1.0), window=9,
                probe=EveryFourTokens())
    assert EveryFourTokens.calls == 2
    fates = {a: [fate(t, run.threshold) for t in ts] for a, ts in run.by_alpha().items()}
    assert [f.died for f in fates[0.0]] == [False, False]
    assert all(f.died and f.time == 4 and f.interval == (0, 4) for f in fates[1.0] if f.died)
    assert run.manifest["probe"] == {"kind": "every-four", "schedule": 4}


def test_negative_alpha_steers_the_opposite_way(model, vec, cal, heldout, tmp_path):
    """alpha = -1 is -c* along v: the rollout equals one steered by the negated vector at +c* (an independent
    path: SteeringVector arithmetic, not the sweep's sign)."""
    from tl_isokl.rollout import rollout

    run = sweep(model, vec, cal, heldout[:2], tmp_path / "neg", alphas=(-1.0, 0.0), window=12)
    neg = sorted(run.by_alpha()[-1.0], key=lambda t: t.prompt_id)
    assert all(t.coeff == pytest.approx(-cal.c_star) for t in neg)
    flipped = rollout(model, -vec, heldout[:2], [cal.c_star] * 2, window=12, prompt_ids=["p000", "p001"])
    assert [t.tokens for t in neg] == [r.tokens for r in sorted(flipped, key=lambda r: r.prompt_id)]
    assert all(np.asarray(t.kl).max() > 0 for t in neg)
    from tl_isokl.report import draw_figures, write_report

    import re

    assert len(draw_figures(run.path)) == 4  # spaghetti raw + normalised, survival, dose-response
    assert re.search(r"^\|\s*-1\s*\|", write_report(run.path).read_text(), flags=re.M)


def test_alpha_groups_are_a_fixed_partition():
    from tl_isokl.sweep import alpha_groups

    assert alpha_groups([0, 1, 2, 3, 4], 48, 128) == [(0, 1), (2, 3), (4,)]
    assert alpha_groups([0, 1, 2], 200, 128) == [(0,), (1,), (2,)]  # never fewer than one alpha
    assert alpha_groups([0, 1, 2], 8, 128) == [(0, 1, 2)]


def test_one_alpha_per_decode_batch_gives_the_same_cells(model, vec, cal, heldout, run, tmp_path):
    """Rows of all alphas in one decode batch (the default here) vs one alpha per batch of 8: same tokens,
    same deaths, KL equal up to float rounding of a different batch composition."""
    alone = sweep(model, vec, cal, heldout, tmp_path / "alone", alphas=ALPHAS, window=WINDOW, decode_batch_size=8)
    for a in ALPHAS:
        for x, y in zip(run.by_alpha()[a], alone.by_alpha()[a]):
            assert x.tokens == y.tokens
            np.testing.assert_allclose(x.kl, y.kl, atol=2e-5, rtol=1e-4)
            assert fate(x, run.threshold).died == fate(y, run.threshold).died
            np.testing.assert_allclose([f.pmass for f in x.forks], [f.pmass for f in y.forks], atol=1e-5)


def test_probe_in_the_decode_gives_the_cells_of_the_probe_after_it(model, vec, cal, heldout, run, tmp_path,
                                                                   monkeypatch):
    """The default sweep probes inside the decode (the packed probe is never called); a probe that is not an
    AnswerProbe is measured after the decode, as before. Same tokens, same forks, same deaths, pmass within 1e-4."""
    from tl_isokl.probe import AnswerProbe

    class After:  # the same probe through `measure`, as every probe ran before
        def measure(self, *a, **k):
            return AnswerProbe().measure(*a, **k)

        def to_dict(self):
            return AnswerProbe().to_dict()

    old = sweep(model, vec, cal, heldout, tmp_path / "after", alphas=ALPHAS, window=WINDOW, probe=After())
    probe_mod = importlib.import_module("tl_isokl.probe")

    def refuse(*a, **k):
        raise AssertionError("the packed probe ran after the decode")
    monkeypatch.setattr(probe_mod, "probe", refuse)
    new = sweep(model, vec, cal, heldout, tmp_path / "in", alphas=ALPHAS, window=WINDOW)
    assert sum(f.died for ts in new.by_alpha().values() for f in (fate(t, new.threshold) for t in ts)) > 0
    for a in ALPHAS:
        for x, y, z in zip(new.by_alpha()[a], old.by_alpha()[a], run.by_alpha()[a]):
            assert x.tokens == y.tokens == z.tokens
            assert [f.t for f in x.forks] == [f.t for f in y.forks]
            np.testing.assert_allclose([f.pmass for f in x.forks], [f.pmass for f in y.forks], atol=1e-4)
            np.testing.assert_allclose([f.p_true for f in x.forks], [f.p_true for f in y.forks], atol=1e-4)
            assert fate(x, new.threshold) == fate(y, old.threshold)

"""`tl_isokl.compare.run_compare` end to end on the embedded model: mean_diff, pca, a gated spec and the matched-KL
null, each calibrated to the same p95 KL on 6 calibration prompts and swept on 12 held-out prompts at alpha -1, 0, 1
(window 24; a negative alpha steers along -v at |alpha| c*). One comparison is shared by the module (about 16 s on a
2-core CPU; the resume about 7 s).

Measured when written (effect = the base model's concept reading of the steered text relative to alpha 0, in
separations; mean [95% bootstrap CI] over the 12 prompts; no deaths anywhere at this window):
    mean_diff           c* 1.28   -1: -0.078 [-0.119, -0.038]   +1: +0.048 [+0.012, +0.090]
    pca                 c* 1.29   identical to mean_diff: on the test bed the first principal axis IS the mean
                                  difference (cosine 0.99993), and greedy decoding writes the same tokens
    mean_diff+soft:0.1  c* 15.5   -1: -0.045 [-0.072, -0.022]   +1: +0.027 [-0.009, +0.067]
    random              c* 1.56   -1: -0.000 [-0.002, +0.001]   +1: -0.003 [-0.038, +0.031]
The null is null on these 12 prompts, not everywhere: on the default 48 held-out prompts at window 16 its +1 effect
is -0.026 [-0.049, -0.002], and the ground-truth mood (testbed.mood) moves the same way (16 texts gloomier, 11
more cheerful): the unsteered texts are 31/48 cheerful, and a random push that changes the opener the model picks
regresses the mood toward balance. A real (if small) effect of any perturbation, not an artefact of the score.
"""

import json
import time

import pytest
from helpers_cli import write_prompts

from tl_isokl.compare import COMPARE_CSV, COMPARE_JSON, COMPARE_MD, run_compare, spec_dir, specs_with_null
from tl_isokl.experiment import ExperimentSettings
from tl_isokl.rundir import load_run

SPECS = ("mean_diff", "pca", "mean_diff+soft:0.1")
ALPHAS = (-1.0, 0.0, 1.0)
N_HELD, N_CAL, WINDOW = 12, 6, 24


@pytest.fixture(scope="module")
def settings(splits, tmp_path_factory):
    d = tmp_path_factory.mktemp("compare-prompts")
    write_prompts(d / "held.txt", splits.heldout[:N_HELD])
    write_prompts(d / "cal.txt", splits.calibration[:N_CAL])
    return ExperimentSettings(window=WINDOW, alphas=",".join(f"{a:g}" for a in ALPHAS), heldout_prompts=d / "held.txt",
                              calibration_prompts=d / "cal.txt", figures=False)


@pytest.fixture(scope="module")
def compared(model, settings, tmp_path_factory):
    """The comparison's folder, its result, what it echoed, and how long it took."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    lines: list[str] = []
    t0 = time.perf_counter()
    res = run_compare(settings, SPECS, out, model=model, echo=lines.append)
    return out, res, lines, time.perf_counter() - t0


def rows_of(res, spec, alpha=None):
    return [r for r in res["rows"] if r["spec"] == spec and (alpha is None or r["alpha"] == alpha)]


def test_every_spec_calibrated_to_the_same_budget(compared, settings):
    out, res, _, _ = compared
    specs = specs_with_null(SPECS)
    assert [s.name for s in specs] == [*SPECS, "random"]
    for s in specs:
        cal = json.loads((spec_dir(out, s, "p95", 1) / "calibration.json").read_text())
        assert cal["converged"] is True, s.name
        assert cal["stat"] == "p95" and cal["target"] == settings.target
        assert abs(cal["achieved"] - settings.target) <= settings.tol * settings.target, (s.name, cal["achieved"])
        assert all(r["c_star"] == cal["c_star"] for r in rows_of(res, s.name))


def test_every_spec_is_a_run_directory_report_can_read(compared):
    from tl_isokl.report import report_run, write_report

    out, _, _, _ = compared
    axes, prompts = set(), set()
    for s in specs_with_null(SPECS):
        d = spec_dir(out, s, "p95", 1)
        run = load_run(d)
        assert run.alphas == list(ALPHAS) and run.window == WINDOW
        assert run.manifest["compare"] == {"dir": str(out.resolve()), "spec": s.name}
        assert run.manifest["gate"] == (None if s.gate is None else {"kind": s.gate, "tau": s.tau})
        axes.add(run.manifest["concept_axis"]["sha256"])
        prompts.add(run.manifest["prompts_sha256"])
        assert all(t.concept is not None for t in run.trajectories)
        steered = [t for t in run.trajectories if t.coeff != 0 and t.tokens]
        if s.gate is None:  # gate telemetry only where there is a gate, a share of tokens where there is
            assert all(t.gate_on is None for t in run.trajectories)
        else:
            assert steered and all(0.0 <= t.gate_on <= 1.0 and t.gate_mean >= 0.0 for t in steered)
        assert write_report(d).is_file()
    assert len(axes) == 1 and len(prompts) == 1  # one ruler and one prompt set for every spec
    rep = report_run(spec_dir(out, specs_with_null(SPECS)[2], "p95", 1))  # figures drawn too
    assert rep.path.is_file() and "| alpha" in rep.table


def test_compare_files(compared):
    out, res, _, _ = compared
    csv = (out / COMPARE_CSV).read_text().splitlines()
    got = sorted((ln.split(",")[0], float(ln.split(",")[2])) for ln in csv[1:])
    assert got == sorted((s, a) for s in (*SPECS, "random") for a in ALPHAS)
    assert json.loads((out / COMPARE_JSON).read_text())["specs"] == [*SPECS, "random"]
    md = (out / COMPARE_MD).read_text()
    for s in (*SPECS, "random"):
        assert f"| {s} " in md
    assert [f.name for f in res["figures"]] == ["effect_vs_survival.png", "effect_vs_alpha.png", "km_by_spec.png"]
    for f in res["figures"]:
        assert f.is_file() and f"](figures/{f.name})" in md


def test_the_null_buys_no_effect(compared):
    (r,) = rows_of(compared[1], "random", 1.0)
    assert r["effect_low"] <= 0 <= r["effect_high"], r


def test_the_effect_follows_the_sign_of_alpha(compared):
    res = compared[1]
    (neg,), (pos,) = rows_of(res, "mean_diff", -1.0), rows_of(res, "mean_diff", 1.0)
    assert neg["effect"] < 0 < pos["effect"], (neg, pos)
    assert neg["effect_high"] < 0 < pos["effect_low"]  # measured: [-0.119, -0.038] and [+0.012, +0.090]
    assert rows_of(res, "mean_diff", 0.0)[0]["effect"] == 0.0


def test_rerun_resumes_without_recalibrating(compared, model, settings):
    out, res, _, took = compared
    # calibration.json is rewritten with the same bytes on resume (the sweep's doing); cells are not touched
    state = lambda: {p: p.read_bytes() if p.suffix == ".json" else p.stat().st_mtime_ns  # noqa: E731
                     for p in out.rglob("*") if p.name == "calibration.json" or p.suffix == ".jsonl"}
    before = state()
    assert len(before) == 4 * (1 + len(ALPHAS))
    lines: list[str] = []
    t0 = time.perf_counter()
    again = run_compare(settings, SPECS, out, model=model, echo=lines.append)
    resumed = time.perf_counter() - t0
    print(f"compare {took:.1f} s, resume {resumed:.1f} s")
    assert state() == before
    assert not any(ln.startswith("calibrating") for ln in lines), lines
    assert sum(ln.startswith("resuming: using") for ln in lines) == 4
    assert json.dumps(again["rows"]) == json.dumps(res["rows"])  # the same numbers (the bootstrap is seeded)
    assert resumed < took

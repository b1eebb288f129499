"""`tl_isokl.compare` without a model: spec parsing, the null, the directory layout, the compare rows of hand-made
runs (deaths, S(window), log-rank p, concept effect and held-out KL p95 recomputed by hand), the Markdown, the
figures, and the checks that must come before a model loads."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2

from tl_isokl.compare import (COMPARE_CSV, COMPARE_JSON, COMPARE_MD, FIGURES, Spec, compare_markdown, compare_rows,
                              effects_of_runs, parse_spec, run_compare, spec_dir, specs_with_null, write_compare)
from tl_isokl.errors import IsoKLError
from tl_isokl.files import atomic_write_json
from tl_isokl.records import ForkProbe, Trajectory
from tl_isokl.rundir import Run, RunDir, base_manifest

WINDOW = 16
FORKS = (0, 1, 2, 4, 8, 16)
SEP = 2.0  # the concept axis' separation: effects are in units of it


# ------------------------------------------------------------------------------------------------ parse_spec


@pytest.mark.parametrize("text, method, gate, tau, name", [
    ("mean_diff", "mean_diff", None, None, "mean_diff"),
    ("pca", "pca", None, None, "pca"),
    ("pca+ablate", "pca+ablate", None, None, "pca+ablate"),
    ("mean_diff+soft:0.1", "mean_diff", "soft", 0.1, "mean_diff+soft:0.1"),
    ("directional_ablation+hard:0.2", "directional_ablation", "hard", 0.2, "directional_ablation+hard:0.2"),
    ("mean_diff+sign", "mean_diff", "sign", None, "mean_diff+sign"),
    ("pca+ablate+soft", "pca+ablate", "soft", None, "pca+ablate+soft"),
    ("random", "random", None, None, "random"),
    (" mean_diff+hard:-0.5 ", "mean_diff", "hard", -0.5, "mean_diff+hard:-0.5"),
    # one configuration, one name (and one run directory): the registry's canonical method names
    ("mean_diff+add", "mean_diff", None, None, "mean_diff"),
    ("mean_diff+ablate", "directional_ablation", None, None, "directional_ablation"),
    ("mean_diff+soft:1e-1", "mean_diff", "soft", 0.1, "mean_diff+soft:0.1"),
])
def test_parse_spec_good(text, method, gate, tau, name):
    s = parse_spec(text)
    assert (s.method, s.gate, s.tau, s.name) == (method, gate, tau, name)
    assert ":" not in s.slug and s.slug == name.replace(":", "@")


@pytest.mark.parametrize("text, needles", [
    ("bogus", ["'bogus'", "unknown steering method"]),
    ("mean_diff+bogus", ["'mean_diff+bogus'", "unknown steering method"]),  # neither a gate nor an operator
    ("MEAN_DIFF", ["'MEAN_DIFF'"]),
    ("mean_diff+soft:x", ["'x'", "not a number", "mean_diff+soft:0.1"]),
    ("mean_diff+soft:", ["''", "not a number"]),
    ("mean_diff+soft:nan", ["'nan'", "[-1, 1]"]),
    ("mean_diff+hard:2", ["'2'", "[-1, 1]"]),
    ("mean_diff+sign:0.3", ["sign gate has no threshold", "mean_diff+sign"]),
    ("directional_ablation+sign", ["'directional_ablation+sign'", "'sign'", "ablate"]),
    ("pca+ablate+sign", ["'sign'", "ablate"]),
    ("external", ["'external'", "tl-isokl sweep --vector"]),
    ("external+ablate", ["'external+ablate'", "tl-isokl sweep --vector"]),
    ("mean_diff+", ["'mean_diff+'", "empty '+' part"]),
    ("+soft", ["'+soft'", "empty '+' part"]),
    ("", ["empty --spec"]),
    ("   ", ["empty --spec"]),
])
def test_parse_spec_bad_is_one_line_naming_the_value(text, needles):
    with pytest.raises(IsoKLError) as e:
        parse_spec(text)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


def test_specs_with_null_adds_random_once():
    names = lambda specs: [s.name for s in specs]  # noqa: E731
    assert names(specs_with_null(["mean_diff", "pca"])) == ["mean_diff", "pca", "random"]
    assert names(specs_with_null(["random", "mean_diff"])) == ["random", "mean_diff"]  # present: not again
    assert names(specs_with_null(["mean_diff"], null=False)) == ["mean_diff"]
    assert names(specs_with_null([Spec("pca"), "mean_diff+soft:0.1"])) == ["pca", "mean_diff+soft:0.1", "random"]
    # a gated or ablated random direction is another spec, not the null
    assert names(specs_with_null(["random+ablate"])) == ["random+ablate", "random"]


@pytest.mark.parametrize("specs, needle", [
    (["mean_diff", "pca", "mean_diff"], "--spec mean_diff is given twice"),
    (["mean_diff", "mean_diff+add"], "--spec mean_diff is given twice"),
    (["directional_ablation", "mean_diff+ablate"], "--spec directional_ablation is given twice"),
    (["mean_diff+soft", "mean_diff+soft:0"], "--spec mean_diff+soft:0 is given twice (as mean_diff+soft)"),
    (["random", "random"], "--spec random is given twice"),
])
def test_specs_with_null_refuses_duplicates(specs, needle):
    with pytest.raises(IsoKLError, match="give each spec once") as e:
        specs_with_null(specs)
    assert needle in str(e.value)


def test_specs_with_null_refuses_none():
    with pytest.raises(IsoKLError, match="no --spec given"):
        specs_with_null([])


def test_spec_dir_layout(tmp_path):
    s = parse_spec("mean_diff+soft:0.1")
    assert spec_dir(tmp_path, s, "p95", 1) == tmp_path / "mean_diff+soft@0.1"
    assert spec_dir(tmp_path, s, "cvar95", 2) == tmp_path / "cvar95" / "mean_diff+soft@0.1"
    assert spec_dir(tmp_path, Spec("pca+ablate"), "p95", 1) == tmp_path / "pca+ablate"


# ------------------------------------------------------------------------------------------------ hand-made runs


def forks_dying_at(t_death=None):
    """(t, pmass) at the log2 forks: alive (0.95) before `t_death`, dead (0.1) from it on."""
    return [ForkProbe(t, 0.1 if t_death is not None and t >= t_death else 0.95, 0.4) for t in FORKS]


def traj(pid, alpha, kl, *, dies=None, concept=None):
    return Trajectory(prompt_id=pid, prompt=f"q {pid}", alpha=float(alpha), coeff=float(alpha),
                      tokens=list(range(len(kl))), text="x", kl=[float(k) for k in kl], eos=False, window=WINDOW,
                      forks=forks_dying_at(dies), concept=concept)


def kl_row(seed, scale):
    return (np.random.default_rng(seed).lognormal(-1, 1, WINDOW) * scale).tolist()


PIDS = ("p0", "p1", "p2", "p3")
BASE_CONCEPT = {"p0": 1.0, "p1": 2.0, "p2": 0.5, "p3": -1.0}
# per spec: alpha 1's concept value per prompt (None: not measured), death fork per prompt, KL scale
SPECS = {
    "mean_diff": ({"p0": 1.6, "p1": 2.2, "p2": 1.3, "p3": -0.4}, {"p0": 4}, 1.0),
    "random": ({"p0": 1.1, "p1": 1.9, "p2": 0.4, "p3": -0.9}, {"p0": 2, "p1": 4, "p2": 8}, 1.2),
    "pca": (None, {}, 0.8),
}


def make_trajs(spec, seed0=0):
    concept1, deaths, scale = SPECS[spec]
    out = []
    for i, pid in enumerate(PIDS):
        out.append(traj(pid, 0, [0.0] * WINDOW, concept=BASE_CONCEPT[pid] if concept1 else None))
        out.append(traj(pid, 1, kl_row(seed0 + i, scale), dies=deaths.get(pid),
                        concept=concept1[pid] if concept1 else None))
    return out


def manifest(spec):
    return {"window": WINDOW, "threshold": 0.75, "method": spec,
            **({"concept_axis": {"layer": 3, "separation": SEP}} if SPECS[spec][0] else {})}


def calibration(spec):
    return {"c_star": {"mean_diff": 1.25, "random": 1.5, "pca": 1.3}[spec], "stat": "p95", "target": 1.0,
            "converged": True, "per_prompt_c_star": [1.0, None, 1.5, 2.0]}


@pytest.fixture(scope="module")
def runs():
    return {s: Run(path=Path(s), manifest=manifest(s), calibration=calibration(s), trajectories=make_trajs(s, 10 * k))
            for k, s in enumerate(SPECS)}


@pytest.fixture(scope="module")
def rows(runs):
    return compare_rows(runs, effects=effects_of_runs(runs))


def row(rows, spec, alpha):
    (r,) = [r for r in rows if r["spec"] == spec and r["alpha"] == alpha]
    return r


def logrank_by_hand(a, b):
    """Two-sided log-rank p of two groups of (time, died), Mantel-Haenszel variance (the textbook formula)."""
    times = sorted({t for t, d in a + b if d})
    o = e = v = 0.0
    for t in times:
        na, nb = sum(1 for s, _ in a if s >= t), sum(1 for s, _ in b if s >= t)
        da, db = sum(1 for s, d in a if d and s == t), sum(1 for s, d in b if d and s == t)
        n, d = na + nb, da + db
        o += da
        e += d * na / n
        v += na * nb * d * (n - d) / (n * n * (n - 1)) if n > 1 else 0.0
    return float(chi2.sf((o - e) ** 2 / v, 1))


def test_rows_one_per_spec_and_alpha(rows):
    assert [(r["spec"], r["alpha"]) for r in rows] == [(s, a) for s in SPECS for a in (0.0, 1.0)]


def test_deaths_survival_and_median_by_hand(rows):
    md, rnd, pca = row(rows, "mean_diff", 1.0), row(rows, "random", 1.0), row(rows, "pca", 1.0)
    assert (md["died"], md["n"], rnd["died"], pca["died"]) == (1, 4, 3, 0)
    assert md["S_end"] == pytest.approx(3 / 4)
    assert rnd["S_end"] == pytest.approx(3 / 4 * 2 / 3 * 1 / 2)  # deaths at forks 2, 4, 8 among 4, 3, 2 at risk
    assert pca["S_end"] == 1.0 and (pca["S_end_low"], pca["S_end_high"]) == (1.0, 1.0)
    assert md["S_end_low"] < md["S_end"] < md["S_end_high"]
    assert (md["median_death"], rnd["median_death"], pca["median_death"]) == (None, 4, None)
    for spec in SPECS:
        assert row(rows, spec, 0.0)["died"] == 0 and row(rows, spec, 0.0)["S_end"] == 1.0


def test_logrank_p_by_hand_and_references(rows):
    # fates at alpha 1 as (time, died): a death at its fork, a survivor censored at its last fork (16)
    md = [(4, True), (16, False), (16, False), (16, False)]
    rnd = [(2, True), (4, True), (8, True), (16, False)]
    pca = [(16, False)] * 4
    r = row(rows, "mean_diff", 1.0)
    assert r["p_vs_random"] == pytest.approx(logrank_by_hand(md, rnd), rel=1e-6)
    assert r["p_vs_mean_diff"] is None  # the reference itself
    r = row(rows, "random", 1.0)
    assert r["p_vs_random"] is None
    assert r["p_vs_mean_diff"] == pytest.approx(logrank_by_hand(rnd, md), rel=1e-6)
    r = row(rows, "pca", 1.0)
    assert r["p_vs_random"] == pytest.approx(logrank_by_hand(pca, rnd), rel=1e-6)
    assert r["p_vs_mean_diff"] == pytest.approx(logrank_by_hand(pca, md), rel=1e-6)
    # alpha 0: no deaths in either group, the test is undefined (NaN), which is not "no comparison" (None)
    assert math.isnan(row(rows, "pca", 0.0)["p_vs_random"]) and math.isnan(row(rows, "pca", 0.0)["p_vs_mean_diff"])
    assert row(rows, "random", 0.0)["p_vs_random"] is None


def test_effect_by_hand(rows):
    for spec in ("mean_diff", "random"):
        concept1 = SPECS[spec][0]
        want = np.mean([(concept1[p] - BASE_CONCEPT[p]) / SEP for p in PIDS])
        r = row(rows, spec, 1.0)
        assert r["effect"] == pytest.approx(want)
        assert r["effect_low"] <= r["effect"] <= r["effect_high"] and r["effect_n"] == 4
        assert row(rows, spec, 0.0)["effect"] == 0.0
    assert row(rows, "mean_diff", 1.0)["effect"] == pytest.approx(0.275)
    # pca measured no concept values: no effect columns, not zeros
    assert "effect" not in row(rows, "pca", 1.0)


def test_heldout_kl_and_doses_by_hand(rows, runs):
    for spec, run in runs.items():
        kl = np.concatenate([t.kl for t in run.trajectories if t.alpha == 1.0])
        r = row(rows, spec, 1.0)
        assert r["kl_p95"] == pytest.approx(np.percentile(kl, 95))
        assert r["kl_p50"] == pytest.approx(np.median(kl)) and r["kl_max"] == pytest.approx(kl.max())
        assert row(rows, spec, 0.0)["kl_p95"] == 0.0
        c = run.calibration["c_star"]
        assert (r["c_star"], r["coeff"], r["stat"]) == (c, c, "p95")
        assert (r["c_prompt_min"], r["c_prompt_median"], r["c_prompt_max"]) == (1.0, 1.5, 2.0)  # None left out


def test_markdown_lists_every_spec_and_says_what_dashes_mean(rows):
    specs = [Spec(s) for s in SPECS]
    md = compare_markdown(rows, specs, ["p95"], [Path("/x/cmp/figures/km_by_spec.png")], out=Path("/x/cmp"))
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + len(rows)
    for s in SPECS:
        assert sum(ln.startswith(f"| {s} ") for ln in table) == 2
    assert "`—` = no such comparison (the row is that reference itself)" in md
    assert "`n/a` = the test is undefined: no deaths in either group" in md
    assert "`—` = not reached" in md
    assert "![km_by_spec](figures/km_by_spec.png)" in md  # relative: the folder can move


def test_markdown_drops_the_p_column_of_an_absent_reference(runs):
    sub = {k: v for k, v in runs.items() if k != "mean_diff"}
    md = compare_markdown(compare_rows(sub), [Spec(s) for s in sub], ["p95"])
    header = next(ln for ln in md.splitlines() if ln.startswith("| spec"))
    assert "p_vs_random" in header and "p_vs_mean_diff" not in header
    assert "effect" not in header  # no effects given


# ------------------------------------------------------------------------------------------------ figures


def test_figures_return_a_figure_or_none(rows, runs):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from tl_isokl.figures.compare import effect_vs_alpha, effect_vs_survival, km_by_spec

    for fig in (effect_vs_survival(rows), effect_vs_alpha(rows), km_by_spec(runs)):
        assert isinstance(fig, Figure)
        plt.close(fig)
    bare = compare_rows(runs)  # no effects measured
    assert effect_vs_survival(bare) is None and effect_vs_alpha(bare) is None
    assert km_by_spec(runs, alphas=(2.0, 4.0)) is None  # no run has those alphas
    # a negative alpha gets its own panel on the frontier (alpha 0 is every effect's reference: none)
    neg = [{**r, "alpha": -r["alpha"]} for r in rows if r["alpha"] > 0]
    fig = effect_vs_survival(rows + neg)
    assert [ax.get_title() for ax in fig.axes] == ["α = -1", "α = 1"]
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ write_compare


def write_spec_run(path, spec):
    rd = RunDir(path)
    rd.write_manifest(base_manifest("sweep", **manifest(spec)))
    atomic_write_json(rd.calibration_path, calibration(spec))
    trajs = make_trajs(spec)
    for a in (0.0, 1.0):
        rd.write_cell(a, [t for t in trajs if t.alpha == a])


def test_write_compare_files(tmp_path):
    specs = [Spec(s) for s in SPECS]
    for s in specs:
        write_spec_run(spec_dir(tmp_path, s, "p95", 1), s.name)
    stale = tmp_path / "figures" / FIGURES["effect"]
    res = write_compare(tmp_path, specs, ["p95"])
    assert len(res["rows"]) == 6 and stale.is_file()
    csv = (tmp_path / COMPARE_CSV).read_text().splitlines()
    assert len(csv) == 7 and csv[0].startswith("spec,stat,alpha,")
    assert json.loads((tmp_path / COMPARE_JSON).read_text())["specs"] == list(SPECS)
    md = (tmp_path / COMPARE_MD).read_text()
    for f in res["figures"]:
        assert f.is_file() and f"](figures/{f.name})" in md
    # the same folder without effects: the effect figures are not drawn, and their old copies go
    for s in ("mean_diff", "random"):
        m = json.loads((tmp_path / s / "manifest.json").read_text())
        del m["concept_axis"]
        (tmp_path / s / "manifest.json").write_text(json.dumps(m))
    res = write_compare(tmp_path, specs, ["p95"])
    assert [f.name for f in res["figures"]] == [FIGURES["km"]] and not stale.exists()
    assert "effect_vs_alpha" not in (tmp_path / COMPARE_MD).read_text()


def test_write_compare_on_an_empty_folder(tmp_path):
    with pytest.raises(IsoKLError, match="holds no finished spec runs"):
        write_compare(tmp_path, [Spec("mean_diff")], ["p95"])


# ------------------------------------------------------------------------------------------------ before the model


@pytest.fixture
def no_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded, but this error must come before it")
    monkeypatch.setattr("tl_isokl.experiment.load", boom)


def settings(**kw):
    from tl_isokl.experiment import ExperimentSettings

    return ExperimentSettings(**{"window": 8, "alphas": "0,1", **kw})


def test_alpha_zero_is_required(tmp_path, no_load):
    with pytest.raises(IsoKLError, match=r"--alphas 0.5,1 has no 0; .* add 0"):
        run_compare(settings(alphas="0.5,1"), ["mean_diff"], tmp_path / "c")


def test_a_run_directory_is_not_a_compare_folder(tmp_path, no_load):
    write_spec_run(tmp_path / "run", "mean_diff")
    with pytest.raises(IsoKLError, match="is a run directory"):
        run_compare(settings(), ["mean_diff"], tmp_path / "run")


def test_other_settings_are_refused_before_the_model(tmp_path, no_load):
    from tl_isokl.compare import compare_request

    out = tmp_path / "c"
    out.mkdir()
    (out / COMPARE_JSON).write_text(json.dumps({"specs": ["mean_diff"], "request": compare_request(settings())}))
    with pytest.raises(IsoKLError) as e:
        run_compare(settings(window=16), ["mean_diff"], out)
    assert "window: 8 -> 16" in str(e.value) and "--fresh" in str(e.value)
    with pytest.raises(AssertionError, match="model was loaded"):  # alphas may change; --fresh passes the check
        run_compare(settings(alphas="0,1,2"), ["mean_diff"], out)
    with pytest.raises(AssertionError, match="model was loaded"):
        run_compare(settings(window=16, fresh=True), ["mean_diff"], out)


def test_damaged_spec_files_fail_before_the_model(tmp_path, no_load):
    d = tmp_path / "c" / "mean_diff"
    d.mkdir(parents=True)
    (d / "calibration.json").write_text("{not json")
    with pytest.raises(IsoKLError, match="calibration.json"):
        run_compare(settings(), ["mean_diff"], tmp_path / "c")


def test_lexicon_effect_by_hand():
    """--effect-words: (pos - neg) per 100 words of each text, minus the same prompt's at alpha 0, mean over
    prompts; worked out by hand on two prompts."""
    from tl_isokl.compare import lexicon_effects

    def t(pid, alpha, text):
        return Trajectory(prompt_id=pid, prompt="q", alpha=float(alpha), coeff=float(alpha), tokens=[1],
                          text=text, kl=[0.0], eos=False, window=WINDOW, forks=forks_dying_at(None))

    run = Run(path=Path("lex"), manifest={"window": WINDOW, "threshold": 0.75}, calibration={"c_star": 1.0},
              trajectories=[t("a", 0, "the sun is nice"),             # +1 of 4 words: 25 per 100
                            t("a", 1, "sunny happy day, glad me"),    # +3 of 5: 60
                            t("b", 0, "a sad grey sky"),              # -2 of 4: -50
                            t("b", 1, "sad sad but nice")])           # -2 + 1 of 4: -25
    lex = lexicon_effects({"mean_diff": run}, ["nice", "sunny", "happy", "glad"], ["sad", "grey"])
    r = compare_rows({"mean_diff": run}, lexicon=lex)
    one = next(x for x in r if x["alpha"] == 1.0)
    assert one["lexicon"] == pytest.approx(((60 - 25) + (-25 - -50)) / 2)
    assert next(x for x in r if x["alpha"] == 0.0)["lexicon"] == 0.0


def test_gate_telemetry_column_only_for_gated_runs():
    def t(pid, alpha, gate_on):
        return Trajectory(prompt_id=pid, prompt="q", alpha=float(alpha), coeff=float(alpha), tokens=[1, 2],
                          text="x", kl=[0.0, 0.0], eos=False, window=WINDOW, forks=forks_dying_at(None),
                          gate_on=gate_on)

    gated = Run(path=Path("g"), manifest={"window": WINDOW, "threshold": 0.75}, calibration={"c_star": 1.0},
                trajectories=[t("a", 1, 0.5), t("b", 1, 0.25)])
    plain = Run(path=Path("p"), manifest={"window": WINDOW, "threshold": 0.75}, calibration={"c_star": 1.0},
                trajectories=[t("a", 1, None), t("b", 1, None)])
    rows = compare_rows({"mean_diff+soft:0.1": gated, "mean_diff": plain})
    assert rows[0]["gate_on"] == pytest.approx(0.375) and "gate_on" not in rows[1]

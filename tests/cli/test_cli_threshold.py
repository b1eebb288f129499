"""`--threshold` on report, plot and inspect: fates re-derived from the stored pmass (no model), outputs that say
which threshold they use, the run's own files never overwritten, and a bad value as one error line."""

import json

import pytest
from helpers_cli import invoke, one_line_error
from helpers_runs import make_run

from tl_isokl.records import ForkProbe, Trajectory

RUN_THR_TEXT = "0.75 (the run's)"
NINE_TEXT = "0.9 (re-derived from the stored pmass; the run's is 0.75)"


def tr(alpha, pid, forks, window=8):
    fs = [ForkProbe(t=t, pmass=p, p_true=pt) for t, p, pt in forks]
    return Trajectory(prompt_id=pid, prompt=f"prompt {pid}", alpha=float(alpha), coeff=float(alpha), tokens=[1] * window,
                      text="x" * window, kl=[0.1 * alpha] * window, eos=False, window=window, forks=fs)


@pytest.fixture
def run_dir(tmp_path):
    """alpha 0: two traces at pmass .85 (alive at 0.75, dead at fork 0 at 0.9); alpha 2: the test bed's alpha-2
    picture, pmass ~.79 with P(true) .01 (alive at 0.75 and answering false whatever the question, dead at 0.9),
    plus one trace that dies at fork 4 (pmass .6) at 0.75 and 0.9 but not at 0.5.
    By hand: died at 0.5 / 0.75 / 0.9 = alpha 0: 0 / 0 / 2; alpha 2: 0 / 1 / 3."""
    trajs = [tr(0.0, "a", [(0, .85, .8), (4, .85, .8)]), tr(0.0, "b", [(0, .85, .05), (4, .85, .05)]),
             tr(2.0, "a", [(0, .79, .01), (4, .8, .01)]), tr(2.0, "b", [(0, .79, .01), (4, .78, .01)]),
             tr(2.0, "c", [(0, .95, .01), (4, .6, .01)])]
    path = make_run(tmp_path / "run", alphas=(0.0, 2.0), window=8, trajectories=trajs)
    m = json.loads((path / "manifest.json").read_text())  # answers: a true, b false, c true
    m["prompts"] = [{"id": "a", "prompt": "prompt a", "answer": True}, {"id": "b", "prompt": "prompt b",
                                                                         "answer": False},
                    {"id": "c", "prompt": "prompt c", "answer": True}]
    (path / "manifest.json").write_text(json.dumps(m))
    return path


def died_column(output, header_start="| alpha | n | died"):
    lines = output.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    cols = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(cols, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_report_default_says_the_runs_threshold(run_dir):
    r = invoke("report", run_dir)
    assert r.exit_code == 0, r.output
    assert f"survival at threshold {RUN_THR_TEXT}:" in r.output
    rows = died_column(r.output)
    assert [x["died"] for x in rows] == ["0", "1"]
    # alpha 0: a says true (.8 vs .05), answer true; b says false (.8 vs .05), answer false: both alive and right
    # alpha 2 at 0.75: a alive says false (answer true): wrong; b alive says false: right; c dead -> acc_end 1/3
    assert [(x["alive_right"], x["alive_wrong"], x["acc_end"]) for x in rows] == [("2", "0", "1"),
                                                                                  ("1", "1", "0.3333")]
    sens = died_column(r.output, "| alpha | n | died@0.5")
    assert [(x["died@0.5"], x["died@0.75 (run)"], x["died@0.9"]) for x in sens] == [("0/2", "0/2", "2/2"),
                                                                                    ("0/3", "1/3", "3/3")]
    assert (run_dir / "report.md").is_file() and not list(run_dir.glob("threshold=*"))
    assert r.output.rstrip().endswith(f"wrote {run_dir / 'report.md'}")


def test_report_threshold_rederives_into_its_own_folder(run_dir):
    assert invoke("report", run_dir).exit_code == 0
    own = {p: p.read_bytes() for p in [run_dir / "report.md", *sorted((run_dir / "figures").iterdir())]}
    r = invoke("report", run_dir, "--threshold", "0.9")
    assert r.exit_code == 0, r.output
    assert f"survival at threshold {NINE_TEXT}:" in r.output
    assert [x["died"] for x in died_column(r.output)] == ["2", "3"]  # re-derived from the stored pmass
    sub = run_dir / "threshold=0.9"
    assert r.output.rstrip().endswith(f"wrote {sub / 'report.md'}")
    assert sorted(p.name for p in (sub / "figures").iterdir()) == ["dose_response.png", "spaghetti_normalised.png",
                                                                 "spaghetti_raw.png", "survival.png"]
    assert {p: p.read_bytes() for p in own} == own  # the run's own report and figures are untouched
    md = (sub / "report.md").read_text()
    assert "at threshold 0.9 (re-derived)" in md and "re-derived at threshold 0.9" in md
    # the run's own threshold passed explicitly: the run's own files, nothing re-derived
    r = invoke("report", run_dir, "--threshold", "0.75")
    assert r.exit_code == 0 and f"survival at threshold {RUN_THR_TEXT}:" in r.output
    assert sorted(p.name for p in run_dir.glob("threshold=*")) == ["threshold=0.9"]


def test_plot_threshold(run_dir):
    r = invoke("plot", run_dir, "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "threshold 0.5 (re-derived from the stored pmass; the run's is 0.75)"
    paths = r.stdout.split()
    assert len(paths) == 4 and all(p.startswith(str(run_dir / "threshold=0.5" / "figures")) for p in paths)
    assert not (run_dir / "figures").exists()  # the run's own figures were not drawn over


def test_inspect_threshold_rederives_without_a_model(run_dir, no_model):
    # alpha 0 has no death at the run's 0.75 and none at 0.5: nothing to load
    r = invoke("inspect", run_dir, "--alpha", "0", "--threshold", "0.5")
    assert r.exit_code == 0, r.output
    assert "no dead traces at threshold 0.5 (re-derived from the stored pmass; the run's is 0.75) and alpha 0" \
        in r.output
    d = json.loads((run_dir / "threshold=0.5" / "inspect" / "deaths.json").read_text())
    assert (d["threshold"], d["run_threshold"], d["rederived"], d["deaths"]) == (0.5, 0.75, True, [])
    assert not (run_dir / "inspect").exists()
    r = invoke("inspect", run_dir, "--alpha", "0")
    assert r.exit_code == 0 and f"no dead traces at threshold {RUN_THR_TEXT} and alpha 0" in r.output
    # at 0.9 both alpha-0 traces die at fork 0: inspect goes on to fetch the run's vector (none in this fake run),
    # which it only does when it found dead traces; the model is never loaded (no_model)
    one_line_error(invoke("inspect", run_dir, "--alpha", "0", "--threshold", "0.9"), 1, "vector.safetensors",
                   "is missing")


@pytest.mark.parametrize("cmd", ["report", "plot", "inspect"])
@pytest.mark.parametrize("bad", ["1.5", "0", "-0.2", "nan", "abc"])
def test_bad_threshold_is_one_line(run_dir, no_model, cmd, bad):
    r = invoke(cmd, run_dir, "--threshold", bad)
    one_line_error(r, 2, "--threshold", repr(bad), "not a probability in (0, 1]", "--threshold 0.75")
    assert not list(run_dir.glob("threshold=*")) and not (run_dir / "report.md").exists()


@pytest.mark.parametrize("cmd", ["report", "plot", "inspect"])
def test_help_documents_threshold(cmd):
    r = invoke(cmd, "--help")
    assert r.exit_code == 0 and "--threshold" in r.output and "re-derives" in r.output

"""Issue 11: fates re-derived at other thresholds, the threshold-sensitivity table, and alive-and-right vs
alive-and-wrong vs dead with the probe's accuracy. Every expected number below is worked out by hand in the
comments; no model is loaded."""

import json
import math

import pytest
from helpers_runs import make_run

from tl_isokl.errors import IsoKLError, RunDirError
from tl_isokl.outcomes import (ANSWER_COLUMNS, answer_for, answers, outcome, outcome_columns, parse_answer)
from tl_isokl.records import ForkProbe, Trajectory, fate
from tl_isokl.report import NO_ANSWER_NOTE, output_dir, write_report
from tl_isokl.rundir import RunDir, load_run
from tl_isokl.survival import sensitivity_table, survival_table, threshold_text

NAN = float("nan")


def tr(alpha, pid, forks, window=8):
    """A trajectory of `window` tokens with forks (t, pmass) or (t, pmass, p_true); p_true defaults to NaN."""
    fs = [ForkProbe(t=f[0], pmass=f[1], p_true=f[2] if len(f) > 2 else NAN) for f in forks]
    return Trajectory(prompt_id=pid, prompt=f"prompt {pid}", alpha=float(alpha), coeff=float(alpha), tokens=[1] * window,
                      text="x" * window, kl=[0.1 * alpha] * window, eos=False, window=window, forks=fs)


def with_answers(run_dir, ans):
    """Add manifest["prompts"] = [{"id", "prompt", "answer"}] (what the lead's sweep() writes)."""
    rd = RunDir(run_dir)
    m = json.loads(rd.manifest_path.read_text())
    m["prompts"] = [{"id": i, "prompt": f"prompt {i}", **({} if a is ... else {"answer": a})} for i, a in ans.items()]
    rd.write_manifest(m)
    return run_dir


# --------------------------------------------------------------------------------- fates at 0.5 / 0.75 / 0.9

# alpha 2: five traces. Fates by hand (death = first fork with pmass < thr, absorbing; NaN is dead; >= is alive):
#   A (0 .95)(1 .8)(2 .6)(4 .92)(8 .4)  0.5: dead at 8 (last alive 4)  0.75: dead at 2 (1)  0.9: dead at 1 (0)
#   B (0 .79)(1 .78)(2 .77)(4 .8)       0.5: censored at 4             0.75: censored at 4  0.9: dead at 0 (None)
#   C (0 .3)(1 .95)                     dead at 0 at every threshold (a later recovery does not matter)
#   D (0 .75)                           0.5 and 0.75: censored at 0 (0.75 >= 0.75)           0.9: dead at 0
#   E (0 .99)(2 nan)(4 .99)             dead at 2 at every threshold (last alive 0)
# alpha 0: F (0 .85)(4 .85): alive at 0.5 and 0.75 (censored at 4), dead at 0 at 0.9.
HAND = {
    "A": [(0, .95), (1, .8), (2, .6), (4, .92), (8, .4)],
    "B": [(0, .79), (1, .78), (2, .77), (4, .8)],
    "C": [(0, .3), (1, .95)],
    "D": [(0, .75)],
    "E": [(0, .99), (2, NAN), (4, .99)],
}
FATES = {  # (died, time, last_alive) per threshold
    0.5: {"A": (True, 8, 4), "B": (False, 4, 4), "C": (True, 0, None), "D": (False, 0, 0), "E": (True, 2, 0)},
    0.75: {"A": (True, 2, 1), "B": (False, 4, 4), "C": (True, 0, None), "D": (False, 0, 0), "E": (True, 2, 0)},
    0.9: {"A": (True, 1, 0), "B": (True, 0, None), "C": (True, 0, None), "D": (True, 0, None), "E": (True, 2, 0)},
}


def hand_trajs():
    return [tr(0.0, "F", [(0, .85), (4, .85)])] + [tr(2.0, k, v) for k, v in HAND.items()]


@pytest.fixture
def hand_run(tmp_path):
    return make_run(tmp_path / "run", alphas=(0.0, 2.0), window=8, threshold=0.75, trajectories=hand_trajs())


@pytest.mark.parametrize("thr", [0.5, 0.75, 0.9])
def test_fates_by_hand(thr):
    for pid, forks in HAND.items():
        f = fate(tr(2.0, pid, forks), thr)
        assert (f.died, f.time, f.last_alive) == FATES[thr][pid], (pid, thr)


def test_sensitivity_table_by_hand(hand_run):
    # alpha 2, Kaplan-Meier (deaths before censorings at a tie; at risk at t = every trace with time >= t):
    #   0.5:  C dead 0, D cens 0, E dead 2, B cens 4, A dead 8
    #         t=0: 1/5 die -> S .8; t=2: at risk A,B,E = 3, 1 dies -> .5333; t=8: A alone dies -> 0: median 8
    #   0.75: C dead 0, D cens 0, A and E dead 2, B cens 4
    #         t=0: S .8; t=2: at risk A,B,E = 3, 2 die -> .2667 <= .5: median 2
    #   0.9:  B, C, D dead 0, A dead 1, E dead 2: t=0: 3/5 die -> S .4: median 0
    # alpha 0: F alive at 0.5 / 0.75 (median not reached), dead at 0 at 0.9 (median 0)
    rows = sensitivity_table(load_run(hand_run))
    assert rows == [
        {"alpha": 0.0, "n": 1, "died@0.5": "0/1", "median@0.5": None, "died@0.75 (run)": "0/1",
         "median@0.75 (run)": None, "died@0.9": "1/1", "median@0.9": 0},
        {"alpha": 2.0, "n": 5, "died@0.5": "3/5", "median@0.5": 8, "died@0.75 (run)": "3/5",
         "median@0.75 (run)": 2, "died@0.9": "5/5", "median@0.9": 0},
    ]


def test_sensitivity_adds_the_runs_own_and_the_chosen_threshold(tmp_path):
    run = load_run(make_run(tmp_path / "r", alphas=(0.0, 2.0), window=8, threshold=0.6, trajectories=hand_trajs()))
    keys = [k for k in sensitivity_table(run)[0] if k.startswith("died@")]
    assert keys == ["died@0.5", "died@0.6 (run)", "died@0.75", "died@0.9"]
    from tl_isokl.survival import sensitivity_thresholds
    assert sensitivity_thresholds(run, 0.8) == [0.5, 0.6, 0.75, 0.8, 0.9]
    assert sensitivity_thresholds(run, 0.75) == [0.5, 0.6, 0.75, 0.9]


def test_survival_table_rederives_from_stored_pmass(hand_run):
    run = load_run(hand_run)
    died = {thr: [r["died"] for r in survival_table(run, thr)] for thr in (0.5, 0.75, 0.9)}
    assert died == {0.5: [0, 3], 0.75: [0, 3], 0.9: [1, 5]}
    assert [r["censored"] for r in survival_table(run, 0.5)] == [1, 2]  # B and D
    assert threshold_text(run) == "0.75 (the run's)" == threshold_text(run, 0.75)
    assert threshold_text(run, 0.9) == "0.9 (re-derived from the stored pmass; the run's is 0.75)"
    with pytest.raises(IsoKLError, match=r"threshold=1.5 is not a probability mass in \(0, 1\]"):
        survival_table(run, 1.5)


# --------------------------------------------------------------------------------- alive and right

def test_fork_prediction_and_p_false():
    f = ForkProbe(t=0, pmass=0.75, p_true=0.5)
    assert f.p_false == 0.25 and f.prediction() is True
    assert ForkProbe(0, 0.75, 0.25).prediction() is False
    assert ForkProbe(0, 0.5, 0.25).prediction() is None  # tie
    assert ForkProbe(0, 0.9, NAN).prediction() is None and math.isnan(ForkProbe(0, 0.9, NAN).p_false)
    assert ForkProbe(0, NAN, 0.1).prediction() is None


# alpha 2 (threshold 0.75 unless said), forks (t, pmass, p_true) with p_false = pmass - p_true; dyadic numbers, so
# the subtraction is exact:
#   R1 answer T: (0 .9375 .875)(4 .875 .75)   alive; t0 true > .0625 right; end true .75 > .125 right: alive_right
#   R2 answer T: (0 .8125 .0625)(4 .8125 .0625) alive; says false at both forks: wrong, wrong: alive_wrong
#   R3 answer F: same forks as R2            alive; says false: right, right: alive_right
#   R4 answer F: (0 .9375 .0625)(4 .5 .375)  t0 right (false .875); dead at 4 at 0.75: dead
#   R5 no answer: (0 .9375 .9375)            left out of every accuracy column
#   R6 answer T: (0 .875 .4375)(4 .9375 .75) t0 a tie (.4375 each): not right; end right: alive_right
#   => answered 5, alive_right 3 (R1 R3 R6), alive_wrong 1 (R2), dead 1 (R4)
#      acc_t0 = R1 R3 R4 right = 3/5, acc_end = 3/5, acc_alive = 3/4
# at 0.9: R1 alive at 0, dead at 4 (.875); R2 R3 R6 dead at 0 (.8125, .875 < .9); R4 alive at 0, dead at 4
#   => alive_right 0, alive_wrong 0; acc_t0 = R1 R4 = 2/5; acc_end 0; acc_alive None
# at 0.5: everyone alive; R4 at 4 says true (.375 > .125) but is false: alive_wrong
#   => alive_right 3 (R1 R3 R6), alive_wrong 2 (R2 R4); acc_t0 3/5; acc_end 3/5; acc_alive 3/5
# alpha 0: Q answer T, (0 .96875 .9375)(4 .96875 .9375): alive_right at every threshold, acc 1.
ACC = {
    "R1": (True, [(0, .9375, .875), (4, .875, .75)]),
    "R2": (True, [(0, .8125, .0625), (4, .8125, .0625)]),
    "R3": (False, [(0, .8125, .0625), (4, .8125, .0625)]),
    "R4": (False, [(0, .9375, .0625), (4, .5, .375)]),
    "R5": (None, [(0, .9375, .9375)]),
    "R6": (True, [(0, .875, .4375), (4, .9375, .75)]),
}
ACC_EXPECTED = {
    0.75: {"answered": 5, "alive_right": 3, "alive_wrong": 1, "acc_t0": 0.6, "acc_end": 0.6, "acc_alive": 0.75},
    0.9: {"answered": 5, "alive_right": 0, "alive_wrong": 0, "acc_t0": 0.4, "acc_end": 0.0, "acc_alive": None},
    0.5: {"answered": 5, "alive_right": 3, "alive_wrong": 2, "acc_t0": 0.6, "acc_end": 0.6, "acc_alive": 0.6},
}
ALPHA0 = {"answered": 1, "alive_right": 1, "alive_wrong": 0, "acc_t0": 1.0, "acc_end": 1.0, "acc_alive": 1.0}


def acc_trajs():
    return [tr(0.0, "Q", [(0, .96875, .9375), (4, .96875, .9375)])] + [tr(2.0, k, f) for k, (_, f) in ACC.items()]


@pytest.fixture
def acc_run(tmp_path):
    run_dir = make_run(tmp_path / "acc", alphas=(0.0, 2.0), window=8, trajectories=acc_trajs())
    return with_answers(run_dir, {"Q": True, **{k: a for k, (a, _) in ACC.items()}})


def test_outcome_kinds_by_hand():
    kinds = {k: outcome(tr(2.0, k, f), 0.75, a).kind for k, (a, f) in ACC.items() if a is not None}
    assert kinds == {"R1": "alive_right", "R2": "alive_wrong", "R3": "alive_right", "R4": "dead",
                     "R6": "alive_right"}
    o = outcome(tr(2.0, "R6", ACC["R6"][1]), 0.75, True)
    assert (o.right_t0, o.right_end) == (False, True)  # a tie at t = 0 is not right
    assert outcome(tr(2.0, "R5", ACC["R5"][1]), 0.75, None).right_end is None


@pytest.mark.parametrize("thr", [0.75, 0.9, 0.5])
def test_accuracy_columns_by_hand(acc_run, thr):
    rows = survival_table(load_run(acc_run), thr)
    got = [{k: r[k] for k in ANSWER_COLUMNS} for r in rows]
    assert got[0] == ALPHA0
    assert got[1] == ACC_EXPECTED[thr]  # 3/5 == 0.6 etc. exactly in floating point
    cols = list(rows[0])
    assert cols[:11] == ["alpha", "n", "died", "censored", "eos", *ANSWER_COLUMNS]  # beside the counts


def test_outcome_columns_for_summary_rows(acc_run, hand_run):
    run = load_run(acc_run)
    by = run.by_alpha()
    assert outcome_columns(run, by[2.0]) == ACC_EXPECTED[0.75]
    assert outcome_columns(run, by[2.0], 0.5) == ACC_EXPECTED[0.5]
    assert outcome_columns(load_run(hand_run), load_run(hand_run).by_alpha()[2.0]) == {}  # no answers: no columns


def test_no_answers_means_no_accuracy_columns(hand_run, tmp_path):
    base = ["alpha", "n", "died", "censored", "eos"]
    assert list(survival_table(load_run(hand_run))[0])[:6] == base + ["S@4"]  # window 8: S@4, S@8
    # answers, but no fork has p_true (a probe that cannot split its mass): still no columns, not zeros
    run_dir = with_answers(make_run(tmp_path / "nop", alphas=(2.0,), window=8, trajectories=[
        tr(2.0, "A", [(0, .9), (4, .9)])]), {"A": True})
    assert "acc_end" not in survival_table(load_run(run_dir))[0]
    # answers only for some prompts, null or absent for the others: only those are answered
    run_dir = with_answers(make_run(tmp_path / "some", alphas=(2.0,), window=8, trajectories=acc_trajs()[1:]),
                           {"R1": True, "R2": None, "R3": ...})
    row = survival_table(load_run(run_dir))[0]
    assert (row["answered"], row["alive_right"], row["alive_wrong"]) == (1, 1, 0)


def test_alive_fork_without_p_true_is_neither_right_nor_wrong():
    t = tr(2.0, "X", [(0, .9, .8), (4, .9)])  # last fork alive, p_true missing
    o = outcome(t, 0.75, True)
    assert o.kind == "alive" and o.right_end is None and o.right_t0 is True
    from tl_isokl.outcomes import accuracy_columns
    cols = accuracy_columns([t], {"X": True}, 0.75)
    assert cols == {"answered": 1, "alive_right": 0, "alive_wrong": 0, "acc_t0": 1.0, "acc_end": None,
                    "acc_alive": None}


def test_answers_from_manifest_and_sampled_rows(acc_run):
    run = load_run(acc_run)
    assert answers(run) == {"Q": True, "R1": True, "R2": True, "R3": False, "R4": False, "R6": True}
    assert answer_for({"q1": False}, "q1#3") is False and answer_for({"q1#0": True, "q1": False}, "q1#0") is True
    assert answer_for({"q1": False}, "q2#0") is None
    assert answers([tr(0.0, "a", [])]) == {}


def test_bad_answer_in_manifest_is_one_line(acc_run):
    with_answers(acc_run, {"Q": "yes"})
    with pytest.raises(RunDirError, match=r"prompts\[0\] \('Q'\): answer 'yes' is not true, false or null"):
        survival_table(load_run(acc_run))


def test_parse_answer():
    assert [parse_answer(v) for v in (True, False, "true", " FALSE ", None)] == [True, False, True, False, None]
    for bad in ("yes", 1, 0, 0.5, [True]):
        with pytest.raises(IsoKLError, match="is not true, false or null"):
            parse_answer(bad, "f.jsonl:3")


# --------------------------------------------------------------------------------- report

def table_header(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def test_report_shows_accuracy_only_with_answers(acc_run, hand_run):
    md = write_report(acc_run).read_text()
    head = table_header(md, "| alpha | n | died")
    assert all(c in head for c in ANSWER_COLUMNS) and NO_ANSWER_NOTE not in md
    assert "acc_alive = alive_right / (alive_right + alive_wrong)" in md
    # rows Q R1 R2 R6 true, R3 R4 false (R5 unknown): always-true scores 4/6, always-false 2/6
    assert "Yardstick: 4 of the 6 answered rows are true and 2 false" in md
    assert "has acc_alive 0.667 (always true) or 0.333 (always false)" in md
    md = write_report(hand_run).read_text()
    assert "acc_end" not in md and NO_ANSWER_NOTE in md
    assert "## Threshold sensitivity" in md
    assert "died@0.75 (run)" in table_header(md, "| alpha | n | died@0.5")


def test_report_at_another_threshold_goes_elsewhere_and_says_so(hand_run):
    own = write_report(hand_run)
    before = own.read_bytes()
    other = write_report(hand_run, 0.9)
    assert other == hand_run / "threshold=0.9" / "report.md" == output_dir(hand_run, 0.9) / "report.md"
    assert own.read_bytes() == before  # the run's own report is untouched
    md = other.read_text()
    assert md.startswith("# tl-isokl report: `run` at threshold 0.9 (re-derived)")
    assert "## Survival (threshold 0.9 (re-derived from the stored pmass; the run's is 0.75))" in md
    assert "re-derived at threshold 0.9 from the pmass stored at each fork" in md
    assert output_dir(hand_run, 0.75) == hand_run and output_dir(hand_run) == hand_run
    assert [p.name for p in other.parent.iterdir() if p.name.startswith(".")] == []  # atomic: no temp files


# --------------------------------------------------------------------------------- prompt-file answers

def test_read_answers_from_jsonl_and_txt(tmp_path):
    from tl_isokl.prompt_sets import prompt_answers, read_answers

    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a", "answer": true}\n\n{"prompt": "b", "answer": "false"}\n'
                 '{"prompt": "c"}\n{"prompt": "d", "answer": null}\n{"prompt": "e", "answer": "True"}\n')
    assert read_answers(p) == [True, False, None, None, True]
    assert prompt_answers(None, p, "heldout") == [True, False, None, None, True]
    q = tmp_path / "none.jsonl"
    q.write_text('{"prompt": "a"}\n{"prompt": "b", "answer": null}\n')
    assert read_answers(q) is None
    t = tmp_path / "p.txt"
    t.write_text("a\nb\n")
    assert read_answers(t) is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": true}\n{"prompt": "b", "answer": "yes"}\n')
    with pytest.raises(IsoKLError, match=r"bad.jsonl:2: answer 'yes' is not true, false or null"):
        read_answers(bad)
    with pytest.raises(IsoKLError, match="does not exist"):
        read_answers(tmp_path / "missing.jsonl")

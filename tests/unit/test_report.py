"""report.md from a run directory alone: identity, calibration, survival and KL tables, figure links."""

import json

from helpers_runs import make_run, traj

from tl_isokl.report import fmt, markdown_table, write_report
from tl_isokl.rundir import load_run
from tl_isokl.survival import kl_summary, survival_table


def table_rows(md, header_start):
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    out = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        out.append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_report_tables_match_the_numbers(synthetic_run):
    path = write_report(synthetic_run)
    assert path == synthetic_run / "report.md"
    md = path.read_text()
    run = load_run(synthetic_run)
    surv = survival_table(run)
    got = table_rows(md, "| alpha | n | died")
    assert got == [[fmt(v) for v in r.values()] for r in surv]
    kl = table_rows(md, "| alpha | n_traj")
    assert [row[5] for row in kl] == [fmt(s.p95) for s in kl_summary(run)]
    for needle in ("testbed-tiny", "abc123", "mean_diff", "f" * 64, "e" * 64, "| c*", "3.25", "0.998",
                   "figures/spaghetti_raw.png", "figures/spaghetti_normalised.png", "figures/survival.png"):
        assert needle in md, needle
    assert [p.name for p in synthetic_run.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_report_tolerates_flat_manifest_and_no_calibration(tmp_path):
    rd = make_run(tmp_path / "r", trajectories=[traj(1.0, [0.5, 0.7], [(0, 0.9)], window=2)], window=2)
    m = json.loads((rd / "manifest.json").read_text())
    m["model"] = "gpt2"  # a plain name instead of the model_info dict
    (rd / "manifest.json").write_text(json.dumps(m))
    (rd / "calibration.json").unlink()
    md = write_report(rd).read_text()
    assert "| model           | gpt2" in md and "missing (no calibration.json)" in md


def test_fmt_and_markdown_table():
    assert [fmt(v) for v in (None, float("nan"), 3e-6, 0.123456, 7, True)] == ["—", "n/a", "3.00e-06", "0.1235",
                                                                                 "7", "yes"]
    t = markdown_table([{"a": 1, "b": "x"}, {"a": 10, "b": "yy"}])
    assert t.splitlines() == ["|  a | b  |", "|---:|:---|", "|  1 | x  |", "| 10 | yy |"]

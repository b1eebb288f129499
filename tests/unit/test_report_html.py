"""report.html, the notebook views (Run / CalibrationResult reprs, _repr_html_, to_pandas) and the report polish
(no raw dicts in report.md, a numeric median column in summary.csv), from synthetic run directories alone."""

import csv
import json
import re

from helpers_runs import make_run

from tl_isokl.files import atomic_write_json
from tl_isokl.report import draw_figures, markdown_to_html, report_run, write_report
from tl_isokl.rundir import RunDir, load_run


def test_report_html_is_one_self_contained_page(synthetic_run):
    draw_figures(synthetic_run)
    md = write_report(synthetic_run).read_text()
    page = (synthetic_run / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # offline: nothing is fetched, nothing runs
    assert "<script" not in page and "<link" not in page and not re.search(r'src="(?!data:)', page)
    assert page.count('src="data:image/png;base64,') == 4  # spaghetti raw + normalised, survival, dose-response
    # the same tables as report.md, as HTML tables (numeric columns right-aligned)
    assert page.count("<table>") == md.count("\n|:") + md.count("\n|-")
    assert '<th class="num">alpha</th>' in page and "<h2>Survival (threshold 0.75 (the run&#x27;s))</h2>" in page \
        or "<h2>Survival (threshold 0.75 (the run's))</h2>" in page
    # the manifest, in full
    manifest = json.loads((synthetic_run / "manifest.json").read_text())
    assert "<h2>Manifest</h2>" in page and manifest["created"] in page and "f" * 64 in page


def test_report_html_escapes_and_says_when_a_figure_is_missing(tmp_path):
    rd = make_run(tmp_path / "r")
    m = json.loads((rd / "manifest.json").read_text())
    m["model"] = "<script>alert(1)</script>"
    (rd / "manifest.json").write_text(json.dumps(m))
    write_report(rd)  # no figures drawn
    page = (rd / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "figure figures/survival.png is missing" in page


def test_markdown_to_html_subset(tmp_path):
    body = markdown_to_html("# T `x<y`\n\n| a | b |\n|--:|:--|\n| 1 | [p](q.html) |\n\n- one **two**\n- three",
                            tmp_path)
    assert "<h1>T <code>x&lt;y</code></h1>" in body
    assert '<td class="num">1</td><td><a href="q.html">p</a></td>' in body
    assert "<ul><li>one <b>two</b></li><li>three</li></ul>" in body


def test_report_links_inspect_pages_when_they_exist(synthetic_run):
    assert "Inspect pages" not in write_report(synthetic_run).read_text()
    d = RunDir(synthetic_run).inspect_dir
    d.mkdir()
    (d / "index.html").write_text("<html></html>")
    (d / "trace-r0003.html").write_text("<html></html>")
    md = write_report(synthetic_run).read_text()
    assert "[index of the dead traces](inspect/index.html)" in md and "(inspect/trace-r0003.html)" in md
    assert '<a href="inspect/trace-r0003.html">' in (synthetic_run / "report.html").read_text()


def test_report_run_returns_both_pages_and_fresh_removes_html(synthetic_run):
    from tl_isokl.identity import clear_run

    out = report_run(synthetic_run)
    assert out.path.name == "report.md" and out.html == synthetic_run / "report.html" and out.html.is_file()
    other = report_run(synthetic_run, 0.5)  # re-derived: next to its own report.md
    assert other.html == synthetic_run / "threshold=0.5" / "report.html" and other.html.is_file()
    removed = {p.name for p in clear_run(synthetic_run)}
    assert "report.html" in removed and not (synthetic_run / "report.html").exists()
    assert not (synthetic_run / "threshold=0.5").exists()


def test_no_raw_dict_in_report_md(synthetic_run):
    cal = json.loads((synthetic_run / "calibration.json").read_text())
    cal["per_prompt_spread"] = {"min": 0.8307861427619585, "median": 1.1, "max": 1.5, "ratio": 1.8055,
                                "not_bracketed": 1}
    atomic_write_json(synthetic_run / "calibration.json", cal)
    md = write_report(synthetic_run).read_text()
    assert "{" not in md and "'min'" not in md
    assert "min 0.8308 · median 1.1 · max 1.5 (ratio 1.806); 1 prompt never crossed the target" in md


def test_summary_csv_median_column_is_numeric(synthetic_run):
    from tl_isokl.sweep import format_summary, summary_rows, write_tables

    run = load_run(synthetic_run)
    write_tables(run)
    rows = list(csv.DictReader((synthetic_run / "summary.csv").open()))
    meds = [r["median_death_token"] for r in rows]
    assert "" in meds and all(m == "" or m.isdigit() for m in meds), meds  # empty = not reached
    assert "not reached" in format_summary(summary_rows(run))  # the printed table still says it in words


def test_run_repr_html_and_pandas(synthetic_run):
    run = load_run(synthetic_run)
    text = repr(run)
    assert len(text) < 400 and text.startswith("Run(") and "c*=3.25" in text and "died by alpha {0: " in text
    page = run._repr_html_()
    assert "<table" in page and page.count('src="data:image/png;base64,') == 2  # survival, spaghetti (drawn)
    assert not (synthetic_run / "figures").exists()  # drawn in memory, nothing written
    tables = run.to_pandas()
    assert list(tables) == ["summary", "forks"]
    assert len(tables["summary"]) == len(run.alphas)
    assert len(tables["forks"]) == sum(len(t.forks) for t in run.trajectories)
    assert tables["summary"]["median_death_token"].dtype.kind in "fi"  # numeric, NaN = not reached


def test_calibration_result_repr_is_short():
    from tl_isokl.calibrate import CalibrationPoint, CalibrationResult

    hist = [CalibrationPoint(coeff=c, value=c * c, stats={"p95": c * c}, per_prompt=[c * c] * 50, round=i,
                             kl=[[0.1] * 256] * 50) for i, c in enumerate((0.5, 1.0, 1.5))]
    cal = CalibrationResult(c_star=1.0, achieved=1.0, target=1.0, stat="p95", tol=0.05, converged=True, window=256,
                            history=hist, per_prompt_c_star=[1.0] * 50, prompt_ids=[f"p{i}" for i in range(50)],
                            rounds=3, seconds=1.0, prompts=["x" * 100] * 50, identity={"model": {"name": "m"}})
    text = repr(cal)
    assert len(text) < 250 and text.startswith("CalibrationResult(c_star=1, p95=1 (target 1") and "model='m'" in text
    page = cal._repr_html_()
    assert len(page) < 3000 and "<table>" in page and "3 doses tried" in page


def test_saved_figures_name_their_run(synthetic_run, tmp_path):
    from matplotlib.figure import Figure

    from tl_isokl.report import _save

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    _save(fig, tmp_path / "f.png", load_run(synthetic_run))
    notes = [t.get_text() for t in fig.texts]
    assert notes == ["run: run · testbed-tiny · mean_diff L2"]


def test_cli_report_says_it_wrote_the_page(synthetic_run):
    from click.testing import CliRunner

    from tl_isokl_cli.main import cli

    r = CliRunner().invoke(cli, ["report", str(synthetic_run)])
    assert r.exit_code == 0, r.output
    assert f"wrote {synthetic_run / 'report.html'} (the report as one self-contained page" in r.output
    assert (synthetic_run / "report.html").is_file()

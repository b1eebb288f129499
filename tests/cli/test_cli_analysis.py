"""`tl-isokl plot` and `tl-isokl report` on synthetic runs, and their one-line errors."""

import pytest
from click.testing import CliRunner
from helpers_runs import make_run

from tl_isokl.rundir import RunDir
from tl_isokl_cli.main import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("cli") / "run", alphas=(0.0, 1.0, 4.0), n=4, window=32)


def test_plot_writes_and_prints_figures(run_dir):
    r = CliRunner().invoke(cli, ["plot", str(run_dir), "--roll", "3"])
    assert r.exit_code == 0, r.output
    printed = r.stdout.split()  # paths on stdout, the threshold used on stderr
    assert len(printed) == 4  # spaghetti raw + normalised, survival, dose-response
    assert r.stderr.strip() == "threshold 0.75 (the run's)"
    assert all(p.endswith(".png") and (run_dir / "figures" / p.rsplit("/", 1)[-1]).is_file() for p in printed)


def test_report_draws_missing_figures_writes_markdown_prints_table(synthetic_run):
    run_dir = synthetic_run  # fresh: no figures yet
    assert not (run_dir / "figures").exists()
    r = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    md = (run_dir / "report.md").read_text()
    assert "## Survival" in md and "figures/survival.png" in md and "mean_diff" in md
    header = next(line for line in r.output.splitlines() if line.startswith("| alpha"))
    assert "p_vs_0" in header and header in md
    assert sum(line.startswith("|") for line in r.output.splitlines()) == 2 * (2 + 5)  # survival, sensitivity
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == [
        "dose_response.png", "spaghetti_normalised.png", "spaghetti_raw.png", "survival.png"]


@pytest.mark.parametrize("cmd", ["plot", "report"])
def test_not_a_run_folder_is_one_line(tmp_path, cmd):
    r = CliRunner().invoke(cli, [cmd, str(tmp_path)])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and "not a run directory" in r.output
    assert "Traceback" not in r.output


def test_run_without_cells_is_one_line(tmp_path):
    RunDir(tmp_path).write_manifest({"window": 8})
    r = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert r.exit_code == 1 and "no finished alpha cells" in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("cmd", ["plot", "report"])
def test_missing_path_is_usage_error(tmp_path, cmd):
    r = CliRunner().invoke(cli, [cmd, str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("cmd", ["plot", "report"])
def test_help(cmd):
    r = CliRunner().invoke(cli, [cmd, "--help"])
    assert r.exit_code == 0 and "RUN" in r.output

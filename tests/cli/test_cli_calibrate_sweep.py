"""`tl-isokl calibrate` and `sweep` through click, on tiny windows; bad values are one-line errors."""

import json

import pytest
from click.testing import CliRunner
from helpers_cli import write_prompts

from tl_isokl_cli.main import cli


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def calibrated(runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal")
    res = runner.invoke(cli, ["calibrate", "--window", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res


def test_calibrate_writes_calibration_and_manifest(calibrated):
    out, res = calibrated
    cal = json.loads((out / "calibration.json").read_text())
    man = json.loads((out / "manifest.json").read_text())
    assert cal["converged"] and abs(cal["achieved"] - 1.0) <= 0.05
    assert "round 1" in res.output and "c* =" in res.output
    for key in ("model", "revision", "dtype", "layer", "method", "vector_sha256", "prompts_sha256", "window",
                "seed", "package_version", "argv"):
        assert key in man, key
    assert (out / "vector.safetensors").is_file()


def test_sweep_with_a_calibration_file(runner, calibrated, tmp_path, splits):
    cal_dir, _ = calibrated
    out = tmp_path / "run"
    args = ["sweep", "--calibration", str(cal_dir / "calibration.json"), "--vector",
            str(cal_dir / "vector.safetensors"), "--window", "16", "--alphas", "0,2", "--prompts", str(cal_dir / "p.txt"),
            "--out", str(out), "--no-figures"]
    write_prompts(cal_dir / "p.txt", splits.heldout[:2])  # held-out questions, newlines escaped as \n
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "median death" in res.output and (out / "summary.csv").is_file()
    assert len(list((out / "cells").glob("*.jsonl"))) == 2
    again = runner.invoke(cli, args)  # resume: nothing left to do, same table
    assert again.exit_code == 0 and again.output.splitlines()[-4:] == res.output.splitlines()[-4:]


@pytest.mark.parametrize("args,needle", [
    (["calibrate", "--window", "0"], "--window"),
    (["calibrate", "--target-kl", "0"], "--target-kl"),
    (["calibrate", "--stat", "p200"], "unknown statistic 'p200'"),
    (["calibrate", "--prompts", "/no/such/file.txt"], "/no/such/file.txt"),
    (["sweep", "--alphas", "0,x"], "comma-separated"),
    (["sweep", "--threshold", "1.5"], "--threshold"),
    (["sweep", "--forks", "zero"], "--forks"),
    (["calibrate", "--model", "nobody-here/no-such-model"], "huggingface-cli download"),
    (["calibrate", "--target-nll-delta", "0.3", "--target-kl", "2"], "--target-kl has no effect"),
    (["sweep", "--target-nll-delta", "-1"], "--target-nll-delta"),
])
def test_bad_values_are_one_line_errors(runner, args, needle):
    res = runner.invoke(cli, args)
    assert res.exit_code != 0
    assert needle in res.output
    assert "Traceback" not in res.output
    assert sum(1 for line in res.output.splitlines() if line.startswith("Error")) == 1


@pytest.mark.parametrize("cmd", ["calibrate", "sweep", "extract", "plot", "report", "inspect", "cosine"])
def test_help(runner, cmd):
    res = runner.invoke(cli, [cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_calibrate_to_a_base_text_nll_delta(runner, tmp_path):
    """--target-nll-delta: the behavioural target is its own statistic, recorded as such, and reached."""
    out = tmp_path / "nll"
    res = runner.invoke(cli, ["calibrate", "--target-nll-delta", "0.3", "--window", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["stat"] == "nll_delta" and cal["identity"]["stat"] == "nll_delta" and cal["target"] == 0.3
    assert cal["converged"] and abs(cal["achieved"] - 0.3) <= 0.05 * 0.3
    assert "nll_delta" in res.output


def test_quiet_prints_only_the_final_line(runner, tmp_path):
    out = tmp_path / "q"
    res = runner.invoke(cli, ["calibrate", "--window", "8", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines() == [f"wrote {out / 'calibration.json'}"]
    assert json.loads((out / "calibration.json").read_text())["converged"]

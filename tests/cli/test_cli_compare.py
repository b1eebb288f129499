"""`tl-isokl compare` through click: bad specs, flags and folders are one `Error:` line before any model loads;
--help; and one tiny real comparison (2 held-out and 2 calibration prompts, window 8, the session model) that is
resumed with another spec set, refused with another window, and started over with --fresh."""

import json

import pytest

from helpers_cli import invoke, one_line_error, patch_loaders, write_prompts

import tl_isokl_cli.main  # noqa: F401  (first: importing a command module before it is a circular import)


@pytest.mark.parametrize("spec, needles", [
    ("bogus", ["--spec 'bogus'", "unknown steering method"]),
    ("mean_diff+bogus", ["--spec 'mean_diff+bogus'"]),
    ("mean_diff+soft:x", ["--spec 'mean_diff+soft:x'", "'x' is not a number"]),
    ("mean_diff+hard:3", ["'3' is outside [-1, 1]"]),
    ("directional_ablation+sign", ["--spec 'directional_ablation+sign'", "'sign'"]),
    ("external", ["--spec 'external'", "tl-isokl sweep --vector FILE"]),
    ("mean_diff+", ["empty '+' part"]),
])
def test_bad_spec_is_one_line_before_the_model(spec, needles, no_model, tmp_path):
    one_line_error(invoke("compare", "--spec", "mean_diff", "--spec", spec, "--out", tmp_path / "c"), 1, *needles)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, needles", [
    (["--spec", "pca", "--spec", "pca"], ["--spec pca is given twice"]),
    (["--spec", "mean_diff", "--spec", "mean_diff+add"], ["--spec mean_diff is given twice"]),
    (["--alphas", "1,2"], ["has no 0", "add 0"]),
    (["--alphas", "0,x"], ["comma-separated"]),
    (["--stat", "p200"], ["unknown statistic 'p200'"]),
    (["--concept", "cheerful"], ["POS/NEG"]),
    (["--two-sided", "--alphas", "0,1"], ["--two-sided has no effect", "negative alpha"]),
])
def test_bad_flags_are_one_line_before_the_model(args, needles, no_model, tmp_path):
    r = invoke("compare", *args, "--out", tmp_path / "c")
    assert r.exit_code != 0
    one_line_error(r, r.exit_code, *needles)


def test_bad_out_is_one_line_before_the_model(no_model, synthetic_run, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(invoke("compare", "--out", tmp_path / "f" / "c"), 1, "--out", "is a file, not a folder")
    one_line_error(invoke("compare", "--out", synthetic_run), 1, "is a run directory", "a folder of its own")


def test_help_lists_the_options():
    r = invoke("compare", "--help")
    assert r.exit_code == 0
    for opt in ("--spec", "--no-null", "--stat", "--target-kl", "--alphas", "--two-sided", "--window", "--prompts",
                "--calibration-prompts", "--out", "--fresh", "--no-figures", "--probe-preset", "METHOD[+GATE[:TAU]]"):
        assert opt in r.output, opt


@pytest.fixture(scope="module")
def files(tmp_path_factory, splits):
    d = tmp_path_factory.mktemp("prompts")
    write_prompts(d / "held.txt", splits.heldout[:2])
    write_prompts(d / "cal.txt", splits.calibration[:2])
    return d


def test_tiny_compare_resume_refuse_fresh(model, files, tmp_path):
    out = tmp_path / "cmp"
    base = ["compare", "--alphas", "0,1", "--prompts", files / "held.txt", "--calibration-prompts",
            files / "cal.txt", "--no-null", "--no-figures", "--out", out]
    with pytest.MonkeyPatch.context() as mp:
        patch_loaders(mp, lambda *a, **k: model)
        r = invoke(*base, "--window", "8", "--spec", "mean_diff", "--spec", "pca")
        assert r.exit_code == 0, r.output
        assert f"compare: {out / 'compare.md'} (4 rows, 3 figures)" in r.output
        assert (out / "mean_diff" / "cells" / "alpha=1.jsonl").is_file()
        assert not (out / "pca" / "report.md").exists()  # --no-figures: no per-spec figures or report
        cal = (out / "mean_diff" / "calibration.json").read_bytes()

        # fewer specs: mean_diff resumes, pca is left on disk and said so
        r = invoke(*base, "--window", "8", "--spec", "mean_diff")
        assert r.exit_code == 0, r.output
        assert f"note: {out / 'pca'} is a spec run of an earlier comparison" in r.output
        assert "resuming: using" in r.output and "calibrating" not in r.output
        assert (out / "mean_diff" / "calibration.json").read_bytes() == cal
        assert json.loads((out / "compare.json").read_text())["specs"] == ["mean_diff"]
        assert "| pca " not in (out / "compare.md").read_text() and (out / "pca" / "manifest.json").is_file()

    def boom(*a, **k):
        raise AssertionError("the model was loaded, but this error must come before it")
    with pytest.MonkeyPatch.context() as mp:  # another shared setting: refused before the model loads
        patch_loaders(mp, boom)
        one_line_error(invoke(*base, "--window", "16", "--spec", "mean_diff"), 1, "window: 8 -> 16", "--fresh")

    with pytest.MonkeyPatch.context() as mp:
        patch_loaders(mp, lambda *a, **k: model)
        r = invoke(*base, "--window", "16", "--spec", "mean_diff", "--fresh")
        assert r.exit_code == 0, r.output
        assert "--fresh: removed" in r.output and "calibrating" in r.output
    assert json.loads((out / "mean_diff" / "calibration.json").read_text())["window"] == 16
    assert json.loads((out / "compare.json").read_text())["request"]["window"] == 16


def test_two_sided_negative_alphas_are_doses_of_minus_v(model, files, tmp_path):
    """--two-sided: each spec calibrates -v too; a negative alpha's row takes -v's own c* (read back from the spec's
    calibration_neg.json) and equals the coefficient its trajectories were steered at; compare.md says iso-KL.
    Without it, the row is in units of +v's c* and the note says negative alphas are not iso-KL doses."""
    import csv

    from tl_isokl.rundir import RunDir

    base = ["compare", "--alphas", "-1,0,1", "--prompts", files / "held.txt", "--calibration-prompts",
            files / "cal.txt", "--no-null", "--no-figures", "--window", "8", "--spec", "mean_diff"]
    with pytest.MonkeyPatch.context() as mp:
        patch_loaders(mp, lambda *a, **k: model)
        r = invoke(*base, "--two-sided", "--out", tmp_path / "two")
        assert r.exit_code == 0, r.output
        r = invoke(*base, "--out", tmp_path / "one")
        assert r.exit_code == 0, r.output
    for kind in ("two", "one"):
        out = tmp_path / kind
        rows = {float(r["alpha"]): r for r in csv.DictReader((out / "compare.csv").open())}
        pos = json.loads((out / "mean_diff" / "calibration.json").read_text())["c_star"]
        neg_file = out / "mean_diff" / "calibration_neg.json"
        assert neg_file.is_file() == (kind == "two")
        want = json.loads(neg_file.read_text())["c_star"] if kind == "two" else pos
        if kind == "two":
            assert abs(want / pos - 1) > 1e-3  # -v costs another dose than +v here: the test can tell them apart
        assert float(rows[-1.0]["c_star"]) == pytest.approx(want, rel=1e-6)
        assert float(rows[1.0]["c_star"]) == pytest.approx(pos, rel=1e-6)
        run = RunDir(out / "mean_diff").load()
        steered = {t.coeff for t in run.by_alpha()[-1.0]}
        assert len(steered) == 1 and float(rows[-1.0]["coeff"]) == pytest.approx(steered.pop(), rel=1e-6)
        md = (out / "compare.md").read_text()
        assert ("iso-KL doses on both sides" in md) == (kind == "two")
        assert ("not iso-KL doses" in md) == (kind == "one")
    assert json.loads((tmp_path / "two" / "compare.json").read_text())["request"].get("two_sided") is True

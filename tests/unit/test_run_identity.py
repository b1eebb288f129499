"""Run identity without a model (issue 9, points 6-8): field-by-field comparison messages, --fresh's deletion list,
the held-out transfer check, report caveats, default --out names."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from helpers_runs import make_run, synthetic_trajectories
from tl_isokl.errors import CalibrationError, RunDirError, VectorMismatchError
from tl_isokl.identity import (APPLIES, CAL_FIELDS, IdentityError, check_calibration, check_converged, check_run,
                               check_vector_model, clear_run, differences, heldout_transfer, reflection_message,
                               run_notes, show)
from tl_isokl.rundir import load_run

IDENT = {"model": "tl-isokl/testbed", "revision": None, "dtype": "float32", "method": "mean_diff", "layer": 3,
         "gate": None, "tau": None, "concept": "cheerful/gloomy", "vector_sha256": "a" * 64, "positions": "all",
         "stat": "p95", "target": 1.0, "tol": 0.05, "window": 256, "prompts_sha256": "b" * 64, "c_min": 1e-4,
         "c_max": 1e4}


def test_identity_fields_cover_the_issue_list():
    for f in ("vector_sha256", "method", "layer", "gate", "tau", "positions", "stat", "target", "tol", "window",
              "model", "revision", "dtype", "prompts_sha256", "c_min", "c_max", "concept"):
        assert f in CAL_FIELDS
    assert set(APPLIES) <= set(CAL_FIELDS) and "target" not in APPLIES


def test_mismatch_is_one_line_naming_each_field_both_values_and_the_fix():
    cal = {"c_star": 1.3, "identity": IDENT}
    wanted = {**IDENT, "gate": "soft", "tau": 0.1, "target": 0.5}
    with pytest.raises(IdentityError) as e:
        check_calibration(cal, wanted, source="runs/x/calibration.json", fix="pass another --out, or --fresh")
    msg = str(e.value)
    assert "\n" not in msg
    assert "gate: none (calibration) vs soft (this command)" in msg
    assert "tau: none (calibration) vs 0.1 (this command)" in msg
    assert "target: 1 (calibration) vs 0.5 (this command)" in msg
    assert msg.startswith("runs/x/calibration.json") and msg.endswith("pass another --out, or --fresh")
    assert "stat" not in msg and "window" not in msg  # only the differing fields


def test_applicability_subset_ignores_the_calibrations_own_settings():
    cal = {"c_star": 1.3, "identity": IDENT}
    check_calibration(cal, {**IDENT, "target": 0.5, "window": 64}, source="X", fix="f", fields=APPLIES)
    with pytest.raises(IdentityError, match="method: mean_diff \\(calibration\\) vs pca"):
        check_calibration(cal, {**IDENT, "method": "pca"}, source="X", fix="f", fields=APPLIES)
    with pytest.raises(IdentityError, match="vector_sha256: aaaaaaaaaaaa \\(calibration\\) vs cccccccccccc"):
        check_calibration(cal, {**IDENT, "vector_sha256": "c" * 64}, source="X", fix="f", fields=APPLIES)


def test_calibration_without_identity_is_refused():
    with pytest.raises(IdentityError, match="old.json records no identity .* unknown\\); do this"):
        check_calibration({"c_star": 1.0, "target": 1.0}, IDENT, source="old.json", fix="do this")


def test_missing_field_counts_as_different():
    ident = {k: v for k, v in IDENT.items() if k != "tol"}
    assert differences(ident, IDENT) == [("tol", "<missing>", 0.05)]


def test_unconverged_refused_unless_allowed():
    cal = {"c_star": 1.0, "converged": False, "stat": "p95", "achieved": 1.2, "target": 1.0, "tol": 0.05}
    with pytest.raises(CalibrationError, match="did not converge .*--allow-unconverged"):
        check_converged(cal, allow=False, source="c.json")
    check_converged(cal, allow=True, source="c.json")
    check_converged({**cal, "converged": True}, allow=False, source="c.json")


def test_run_identity_refusals():
    old = {"command": "sweep", "identity": {"window": 48, "threshold": 0.75, "calibration_target": 1.0}}
    check_run(old, dict(old["identity"]), "R")
    with pytest.raises(IdentityError) as e:
        check_run(old, {"window": 49, "threshold": 0.75, "calibration_target": 0.5}, "R")
    assert "window: 48 (run) vs 49 (this command)" in str(e.value)
    assert "calibration_target: 1 (run) vs 0.5 (this command)" in str(e.value) and "--fresh" in str(e.value)
    with pytest.raises(IdentityError, match="older tl-isokl .*--fresh"):
        check_run({"command": "sweep", "config_sha256": "x"}, {"window": 1}, "R")
    check_run({"command": "calibrate"}, {"window": 1}, "R")  # a calibration folder: its calibration is checked


def test_show_shortens_hashes_and_formats_values():
    assert show("f" * 64) == "f" * 12 and show(None) == "none" and show(0.1) == "0.1" and show(True) == "true"


def test_vector_recorded_for_another_model_is_refused_unless_allowed(tmp_path):
    model = SimpleNamespace(tl_isokl_info={"name": "tl-isokl/testbed", "revision": None, "dtype": "float32"})
    vec = SimpleNamespace(meta={"model": "someone/other-model", "revision": "abc"})
    with pytest.raises(VectorMismatchError) as e:
        check_vector_model(vec, model, allow=False, source="the --vector file")
    assert "'someone/other-model'" in str(e.value) and "'tl-isokl/testbed'" in str(e.value)
    assert "--allow-other-model" in str(e.value)
    check_vector_model(vec, model, allow=True, source="v")
    check_vector_model(SimpleNamespace(meta={}), model, allow=False, source="v")  # unknown: nothing to compare
    # the same folder recorded relative and absolute is the same model
    folder = tmp_path / "m"
    folder.mkdir()
    model2 = SimpleNamespace(tl_isokl_info={"name": str(folder), "revision": None, "dtype": "float32"})
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        check_vector_model(SimpleNamespace(meta={"model": "m"}), model2, allow=False, source="v")
    finally:
        os.chdir(cwd)


# ---- --fresh ------------------------------------------------------------------------------------------------------


def test_clear_run_deletes_only_our_files(tmp_path):
    run = make_run(tmp_path / "run", alphas=(0.0, 1.0), n=2, window=16)
    from tl_isokl.report import draw_figures, write_report
    from tl_isokl.sweep import write_tables

    write_tables(load_run(run))
    draw_figures(run)
    write_report(run)
    (run / "vector.safetensors").write_bytes(b"x")
    (run / "notes.txt").write_text("mine")
    (run / "figures" / "my_plot.png").write_bytes(b"png")
    (run / "cells" / ".alpha=2.jsonl.abc.tmp").write_text("{")  # a killed write
    (run / "inspect").mkdir()
    for name in ("index.html", "trace-r0001.html", "deaths.json", "deaths.csv", "circuitsvis.iife.js"):
        (run / "inspect" / name).write_text("x")
    (run / "other").mkdir()
    (run / "other" / "manifest.json").write_text("{}")  # not in a folder of ours: kept
    removed = clear_run(run)
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == ["figures", "figures/my_plot.png", "notes.txt", "other", "other/manifest.json"]
    assert len(removed) == 7 + 2 + 1 + 4 + 5  # top-level files (report.html too), two cells, a temp file, figures,
    #                                          inspect pages


def test_clear_run_on_missing_or_file(tmp_path):
    assert clear_run(tmp_path / "nope") == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match="is not a folder"):
        clear_run(tmp_path / "f")


# ---- held-out transfer, reflection, report caveats -----------------------------------------------------------------


def _scaled_run(tmp_path, scale, **kw):
    trajs = synthetic_trajectories((0.0, 1.0), n=4, window=32)
    for t in trajs:
        t.kl = [v * scale for v in t.kl]
    return make_run(tmp_path / f"run{scale}", trajectories=trajs, window=32, **kw)


def test_heldout_transfer_uses_the_calibration_statistic_on_alpha_one(tmp_path):
    run = load_run(_scaled_run(tmp_path, 1.0))
    cal = json.loads((run.path / "calibration.json").read_text())
    cal["stat"] = "p95"
    (run.path / "calibration.json").write_text(json.dumps(cal))
    run = load_run(run.path)
    pool = np.concatenate([np.asarray(t.kl) for t in run.trajectories if t.alpha == 1.0])
    t = heldout_transfer(run)
    assert t["value"] == pytest.approx(np.percentile(pool, 95)) and t["stat"] == "p95"
    assert t["ratio"] == pytest.approx(t["value"] / 1.0)
    assert t["off"] == (t["ratio"] > 2 or t["ratio"] < 0.5)


@pytest.mark.parametrize("target,off", [(1e-3, True), (1e3, True)])
def test_transfer_off_by_more_than_2x_is_a_report_caveat(tmp_path, target, off):
    run_dir = _scaled_run(tmp_path, 1.0, target=target)
    cal = json.loads((run_dir / "calibration.json").read_text())
    cal["stat"] = "p95"
    (run_dir / "calibration.json").write_text(json.dumps(cal))
    run = load_run(run_dir)
    assert heldout_transfer(run)["off"] is off
    from tl_isokl.report import write_report

    text = write_report(run_dir).read_text()
    assert "## Caveats" in text and "did not transfer" in text


def test_no_caveats_when_everything_is_in_order(synthetic_run):
    from tl_isokl.report import write_report

    cal = json.loads((synthetic_run / "calibration.json").read_text())
    cal["stat"] = "p95"  # helpers_runs writes a number here; a real calibration names its statistic
    pool = np.concatenate([np.asarray(t.kl) for t in load_run(synthetic_run).trajectories if t.alpha == 1.0])
    cal["target"] = float(np.percentile(pool, 95))
    (synthetic_run / "calibration.json").write_text(json.dumps(cal))
    assert run_notes(load_run(synthetic_run)) == []
    assert "## Caveats" not in write_report(synthetic_run).read_text()


def test_reflection_message_for_ablations_above_one():
    assert reflection_message("mean_diff", 3.0) is None
    assert reflection_message("directional_ablation", 0.9) is None
    msg = reflection_message("directional_ablation", 2.2)
    assert "c* = 2.2 > 1" in msg and "reflection" in msg and "not an ablation" in msg


def test_report_says_unconverged_and_reflection(tmp_path):
    run_dir = make_run(tmp_path / "run", alphas=(0.0, 1.0), n=2, window=16)
    man = json.loads((run_dir / "manifest.json").read_text())
    man.update(method="directional_ablation", gate=None, c_star=2.2)
    (run_dir / "manifest.json").write_text(json.dumps(man))
    cal = json.loads((run_dir / "calibration.json").read_text())
    cal.update(c_star=2.2, converged=False, stat="p95", achieved=1.3, target=1.0, tol=0.05)
    (run_dir / "calibration.json").write_text(json.dumps(cal))
    from tl_isokl.report import write_report

    text = write_report(run_dir).read_text()
    caveats = text.split("## Caveats", 1)[1].split("##", 1)[0]
    assert "did not converge" in caveats and "--allow-unconverged" in caveats
    assert "c* = 2.2 > 1" in caveats and "reflection" in caveats


def test_report_lists_every_command_line(tmp_path, monkeypatch):
    from tl_isokl.report import write_report
    from tl_isokl.rundir import RunDir, base_manifest, merge_manifest

    run_dir = make_run(tmp_path / "run", alphas=(0.0, 1.0), n=2, window=16)
    rd = RunDir(run_dir)
    monkeypatch.setattr("sys.argv", ["tl-isokl", "sweep", "--alphas", "0,1,2"])
    rd.write_manifest(merge_manifest(rd.read_manifest(), base_manifest("sweep", window=16, threshold=0.75)))
    text = write_report(run_dir).read_text()
    assert "| command 1 " in text and "| command 2 " in text and "--alphas 0,1,2" in text


# ---- default --out names ------------------------------------------------------------------------------------------


def test_default_out_names_differ_for_every_setting():
    from tl_isokl.runpolicy import default_run_path as default_out

    base = {"model": "m", "gate": None, "tau": None, "target": 1.0, "stat": "p95", "positions": "all",
            "vector": {"method": "mean_diff", "layer": None, "concept": "cheerful/gloomy"}}
    names = {default_out("sweep", "tl-isokl/testbed", "mean_diff", None, 256, base)}
    for k, v in [("gate", "soft"), ("tau", 0.1), ("target", 0.5), ("stat", "p90"), ("positions", "generated"),
                 ("vector", {"method": "mean_diff", "layer": None, "concept": "animal/machine"})]:
        names.add(default_out("sweep", "tl-isokl/testbed", "mean_diff", None, 256, {**base, k: v}))
    assert len(names) == 7
    again = default_out("sweep", "tl-isokl/testbed", "mean_diff", None, 256, dict(base))
    assert again in names and str(again).startswith("runs/sweep-tl-isokl_testbed-mean_diff-Lmid-w256-")

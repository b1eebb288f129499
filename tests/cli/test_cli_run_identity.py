"""Issue 9, points 6-8 through the CLI: a run directory or calibration made with other settings is refused with one
line naming each differing field and both values; bad flags, files and output folders fail before the model loads;
--fresh, --allow-unconverged, --allow-other-model, inspect --model.

One real tiny sweep (2 held-out prompts, 2 calibration prompts, window 8) is shared; the CLI is handed the session
model instead of loading its own. Tests that must fail before any model loads use `no_model`, which makes a load
an error.
"""

import hashlib
import json
import re
import shutil

import pytest

from helpers_cli import invoke, one_line_error, patch_loaders, write_prompts

BASE = ["--window", "8", "--alphas", "0,1", "--no-figures"]


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, splits):
    d = tmp_path_factory.mktemp("prompts")
    write_prompts(d / "held.txt", splits.heldout[:2])
    write_prompts(d / "held2.txt", splits.heldout[2:4])
    write_prompts(d / "cal.txt", splits.calibration[:2])
    return d


@pytest.fixture(scope="module")
def run(model, files, tmp_path_factory):
    """A finished sweep directory R (calibrated in place), and the command line that made it."""
    out = tmp_path_factory.mktemp("identity") / "R"
    args = ["sweep", *BASE, "--prompts", files / "held.txt", "--calibration-prompts", files / "cal.txt", "--out", out]
    with pytest.MonkeyPatch.context() as mp:
        patch_loaders(mp, lambda *a, **k: model)
        r = invoke(*args)
    assert r.exit_code == 0, r.output
    return out, args


@pytest.fixture
def run_copy(run, tmp_path):
    out, args = run
    dst = tmp_path / "R"
    shutil.copytree(out, dst)
    return dst, [dst if a == out else a for a in args]


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


# ---- 6. run identity ----------------------------------------------------------------------------------------------


def test_calibration_json_records_its_identity(run):
    out, _ = run
    cal = json.loads((out / "calibration.json").read_text())
    ident = cal["identity"]
    assert ident["method"] == "mean_diff" and ident["layer"] == 3 and ident["gate"] is None
    assert ident["positions"] == "all" and ident["stat"] == "p95" and ident["target"] == 1.0
    assert ident["tol"] == 0.05 and ident["window"] == 8 and ident["model"] == "tl-isokl/testbed"
    assert ident["dtype"] == "float32" and ident["concept"] == "cheerful/gloomy"
    assert ident["c_min"] == 1e-4 and ident["c_max"] == 1e4 and len(ident["prompts_sha256"]) == 64
    man = json.loads((out / "manifest.json").read_text())
    assert ident["vector_sha256"] == man["vector_sha256"]
    assert man["identity"]["calibration_target"] == 1.0 and man["calibration_converged"] is True


@pytest.mark.parametrize("extra, needles", [
    (["--gate", "soft", "--tau", "0.1"], ["gate: none (run) vs soft (this command)", "tau: none (run) vs 0.1"]),
    (["--target-kl", "0.5"], ["target: 1 (calibration) vs 0.5 (this command)"]),
    (["--stat", "p90"], ["stat: p95 (calibration) vs p90 (this command)"]),
    (["--concept", "animal/machine"], ["concept: cheerful/gloomy (run) vs animal/machine (this command)"]),
    (["--positions", "generated"], ["positions: all (calibration) vs generated (this command)"]),
    (["--tol", "0.1"], ["tol: 0.05 (calibration) vs 0.1 (this command)"]),
    (["--method", "pca"], ["method: mean_diff (run) vs pca (this command)"]),
    (["--layer", "2"], ["layer: 3 (run) vs 2 (this command)"]),
    (["--window", "9"], ["window: 8 (calibration) vs 9 (this command)"]),
    (["--threshold", "0.5"], ["threshold: 0.75 (run) vs 0.5 (this command)"]),
    (["--forks", "2"], ["schedule: log2 (run) vs 2 (this command)"]),
    (["--prompts", "HELD2"], ["prompts_sha256: "]),
])
def test_a_changed_setting_is_refused_and_the_run_is_untouched(run, files, reuse_model, extra, needles):
    out, args = run
    before = snapshot(out)
    extra = [files / "held2.txt" if a == "HELD2" else a for a in extra]
    r = invoke(*args, *extra)
    one_line_error(r, 1, *needles, "pass another --out", "--fresh")
    assert snapshot(out) == before


def test_rerunning_the_same_command_resumes_and_keeps_every_command_line(run_copy, reuse_model):
    out, args = run_copy
    first = json.loads((out / "manifest.json").read_text())
    r = invoke(*args, "--alphas", "0,1,2")
    assert r.exit_code == 0, r.output
    assert "resuming: using" in r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["argv"] == first["argv"] and man["created"] == first["created"]
    assert len(man["history"]) == 2 and man["history"][0] == first["history"][0]
    assert man["history"][0]["alphas"] == [0.0, 1.0] and man["history"][1]["alphas"] == [2.0]
    assert man["history"][1]["argv"][-2:] == ["--alphas", "0,1,2"]
    from importlib.metadata import version

    assert man["environment"]["transformer_lens"] == version("transformer-lens")


def test_fresh_starts_over_and_keeps_files_that_are_not_ours(run_copy, reuse_model):
    out, args = run_copy
    (out / "notes.txt").write_text("my notes")
    r = invoke(*args, "--gate", "soft", "--tau", "0.1", "--fresh")
    assert r.exit_code == 0, r.output
    assert "--fresh: removed" in r.output
    man = json.loads((out / "manifest.json").read_text())
    cal = json.loads((out / "calibration.json").read_text())
    assert man["gate"] == {"kind": "soft", "tau": 0.1} and cal["identity"]["gate"] == "soft"
    assert len(man["history"]) == 1 and "--fresh" in man["history"][0]["argv"]
    assert (out / "notes.txt").read_text() == "my notes"


def test_a_calibration_file_made_for_another_vector_is_refused(run, files, reuse_model, tmp_path):
    out, _ = run
    common = ["sweep", *BASE, "--prompts", files / "held.txt", "--calibration", out / "calibration.json"]
    r = invoke(*common, "--method", "pca", "--out", tmp_path / "a")
    one_line_error(r, 1, "method: mean_diff (calibration) vs pca (this command)",
                   f"--vector {out / 'vector.safetensors'}")
    r = invoke(*common, "--gate", "hard", "--out", tmp_path / "b")
    one_line_error(r, 1, "gate: none (calibration) vs hard (this command)")
    r = invoke(*common, "--positions", "generated", "--out", tmp_path / "c")
    one_line_error(r, 1, "positions: all (calibration) vs generated (this command)")
    r = invoke(*common, "--layer", "1", "--out", tmp_path / "d")
    one_line_error(r, 1, "layer: 3 (calibration) vs 1 (this command)")
    assert not any((tmp_path / x).exists() for x in "abcd")
    # the calibration's own stat/window are the user's choice: a longer held-out window is fine
    r = invoke(*common, "--vector", out / "vector.safetensors", "--window", "12", "--alphas", "0",
               "--out", tmp_path / "ok")
    assert r.exit_code == 0, r.output


def test_default_out_name_covers_every_setting(files, no_model, tmp_path, monkeypatch):
    """`runs` is a file here, so the command stops (before loading) with the default folder in its message."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")

    def name(*extra):
        r = invoke("sweep", *extra)
        assert r.exit_code == 1, r.output
        return re.search(r"'(runs/sweep-[^']+)'", r.output).group(1)

    variants = [(), ("--gate", "soft"), ("--gate", "soft", "--tau", "0.1"), ("--target-kl", "0.5"), ("--stat", "p90"),
                ("--concept", "animal/machine"), ("--positions", "generated"), ("--tol", "0.1"),
                ("--threshold", "0.5"), ("--forks", "8"), ("--prompts", files / "held.txt"), ("--dtype", "bfloat16")]
    names = [name(*v) for v in variants]
    assert len(set(names)) == len(variants), names
    assert name() == names[0]  # the same command finds its own folder again (resume)
    assert names[0].startswith("runs/sweep-tl-isokl_testbed-mean_diff-Lmid-w256-")


def test_unconverged_calibration_refused_unless_allowed(run, files, reuse_model, tmp_path, monkeypatch):
    out, _ = run
    cal = tmp_path / "unconverged.json"
    shutil.copy(out / "calibration.json", cal)
    edit_json(cal, converged=False, achieved=1.4)
    common = ["sweep", *BASE, "--prompts", files / "held.txt", "--vector", out / "vector.safetensors",
              "--calibration", cal]
    with monkeypatch.context() as mp:
        mp.setattr("tl_isokl.experiment.load", lambda *a, **k: pytest.fail("loaded the model"))
        one_line_error(invoke(*common, "--out", tmp_path / "a"), 1, "did not converge", "p95 = 1.4",
                       "--allow-unconverged")
    assert not (tmp_path / "a").exists()
    r = invoke(*common, "--out", tmp_path / "b", "--allow-unconverged")
    assert r.exit_code == 0, r.output
    assert "Warning: the calibration did not converge" in r.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["calibration_converged"] is False and man["allow_unconverged"] is True
    r = invoke("report", tmp_path / "b")
    assert r.exit_code == 0, r.output
    caveats = (tmp_path / "b" / "report.md").read_text().split("## Caveats", 1)[1].split("\n## ", 1)[0]
    assert "did not converge" in caveats and "--allow-unconverged" in caveats


def test_unconverged_calibration_in_the_run_directory(run_copy, reuse_model):
    out, args = run_copy
    edit_json(out / "calibration.json", converged=False)
    one_line_error(invoke(*args), 1, "calibration.json did not converge", "--allow-unconverged")
    assert invoke(*args, "--allow-unconverged").exit_code == 0


def test_files_from_before_identities_are_refused(run_copy, files, no_model, tmp_path):
    out, args = run_copy
    cal = json.loads((out / "calibration.json").read_text())
    cal.pop("identity")
    (tmp_path / "old.json").write_text(json.dumps(cal))
    one_line_error(invoke("sweep", "--calibration", tmp_path / "old.json", "--out", tmp_path / "x"), 1,
                   "old.json records no identity")
    (out / "calibration.json").write_text(json.dumps(cal))
    before = snapshot(out)
    one_line_error(invoke(*args), 1, "calibration.json records no identity", "--fresh")
    assert snapshot(out) == before


def test_a_run_manifest_from_before_identities_is_refused(run_copy, reuse_model):
    out, args = run_copy
    edit_json(out / "manifest.json", identity=None)
    before = snapshot(out)
    one_line_error(invoke(*args), 1, "older tl-isokl", "records no identity", "--fresh")
    assert snapshot(out) == before


# ---- 7. fail early, fail clearly ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["sweep", "calibrate", "cosine"])
def test_unwritable_out_fails_before_the_model_loads(cmd, no_model, tmp_path):
    one_line_error(invoke(cmd, "--out", "/etc/passwd/sub"), 1, "--out", "'/etc/passwd' is a file, not a folder")
    (tmp_path / "f").write_text("x")
    one_line_error(invoke(cmd, "--out", tmp_path / "f" / "run"), 1, "is a file, not a folder")


def test_extract_and_inspect_check_their_output_before_loading(no_model, synthetic_run, tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(invoke("extract", "-o", tmp_path / "f" / "v.safetensors"), 1, "is a file, not a folder")
    one_line_error(invoke("inspect", synthetic_run, "--out", tmp_path / "f" / "insp"), 1, "--out",
                   "is a file, not a folder")


def test_malformed_inputs_are_one_line_naming_the_file(no_model, synthetic_run, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"c_star": 1.2,\n')
    one_line_error(invoke("sweep", "--calibration", bad), 1, f"{bad}: not valid JSON", "line 2")
    one_line_error(invoke("cosine", "--alpha", "1", "--calibration", bad), 1, f"{bad}: not valid JSON")
    (tmp_path / "list.json").write_text("[1]")
    one_line_error(invoke("sweep", "--calibration", tmp_path / "list.json"), 1, "expected a JSON object")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    one_line_error(invoke("sweep", "--prompts", tmp_path / "p.jsonl"), 1, "p.jsonl:2: not valid JSON")
    one_line_error(invoke("calibrate", "--prompts", tmp_path / "p.jsonl"), 1, "p.jsonl:2: not valid JSON")
    (tmp_path / "v.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    one_line_error(invoke("sweep", "--vector", tmp_path / "v.safetensors"), 1, "v.safetensors", "not a tl-isokl vector")
    # a damaged file inside a run directory: cell, manifest, calibration
    run = tmp_path / "copy"
    shutil.copytree(synthetic_run, run)
    cell = run / "cells" / "alpha=1.jsonl"
    cell.write_text(cell.read_text().splitlines()[0] + "\n" + '{"prompt_id": "p1", "tok\n')
    for cmd in ("report", "plot", "inspect"):
        one_line_error(invoke(cmd, run), 1, "alpha=1.jsonl:2: not valid JSON")
    shutil.copy(synthetic_run / "cells" / "alpha=1.jsonl", cell)
    (run / "calibration.json").write_text("{oops")
    one_line_error(invoke("report", run), 1, "calibration.json: not valid JSON")
    (run / "manifest.json").write_text("")
    one_line_error(invoke("plot", run), 1, "manifest.json: not valid JSON")
    one_line_error(invoke("sweep", "--out", run), 1, "manifest.json: not valid JSON")  # before the model loads


@pytest.mark.parametrize("cmd", ["sweep", "calibrate", "extract"])
def test_sign_gate_with_an_ablation_is_refused_before_loading(cmd, no_model, tmp_path):
    extra = ["-o", tmp_path / "v.safetensors"] if cmd == "extract" else []
    one_line_error(invoke(cmd, "--method", "directional_ablation", "--gate", "sign", *extra), 2, "--gate", "'sign'",
                   "directional_ablation")


# ---- 8. nothing silently ignored ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["sweep", "--tau", "0.1"], "--tau 0.1 has no effect without --gate"),
    (["calibrate", "--tau", "0.1"], "--tau 0.1 has no effect without --gate"),
    (["cosine", "--tau", "0.1"], "--tau 0.1 has no effect without --gate"),
    (["sweep", "--vector", "VEC", "--layer", "2"], "--layer has no effect with --vector"),
    (["sweep", "--vector", "VEC", "--method", "mean_diff"], "--method has no effect with --vector"),
    (["calibrate", "--vector", "VEC", "--concept", "animal/machine"], "--concept has no effect with --vector"),
    (["cosine", "--vector", "VEC", "--method", "pca", "--layer", "1"], "--method, --layer have no effect"),
    (["sweep", "--calibration", "CAL", "--target-kl", "2", "--tol", "0.1"],
     "--target-kl, --tol have no effect with --calibration"),
    (["sweep", "--calibration", "CAL", "--calibration-prompts", "CALP"], "--calibration-prompts has no effect"),
    (["sweep", "--calibration", "CAL", "--c-max", "5"], "--c-max has no effect"),
    (["sweep", "--c-min", "10", "--c-max", "1"], "--c-min 10 must be below --c-max 1"),
    (["sweep", "--prompts", "CALP", "--calibration-prompts", "CALP"], "also in --calibration-prompts"),
])
def test_a_flag_without_effect_is_refused_before_loading(run, files, no_model, args, needle):
    out, _ = run
    sub = {"VEC": out / "vector.safetensors", "CAL": out / "calibration.json", "CALP": files / "cal.txt"}
    r = invoke(*[sub.get(a, a) for a in args])
    one_line_error(r, 2, needle)


def test_sweep_calibration_errors_name_sweeps_own_flags(files, reuse_model, tmp_path):
    r = invoke("sweep", "--window", "4", "--prompts", files / "held.txt", "--calibration-prompts", files / "cal.txt",
               "--target-kl", "1000", "--c-max", "2", "--out", tmp_path / "r")
    one_line_error(r, 1, "never reached 1000", "--c-max")
    assert "tl-isokl calibrate" not in r.output and "calibrate --c-max" not in r.output


def test_calibrate_tolerance_is_relative(files, reuse_model, tmp_path):
    r = invoke("calibrate", "--target-kl", "0.01", "--window", "8", "--prompts", files / "cal.txt",
               "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert cal["converged"] and abs(cal["achieved"] - 0.01) <= 0.05 * 0.01, cal["achieved"]
    for line in r.output.splitlines():  # the round table marks only points within 5% of the target
        m = re.search(r"p95=(\S+)", line)
        if line.lstrip().startswith("round") and m:
            assert line.endswith("<-") == (abs(float(m.group(1)) - 0.01) <= 0.0005 * 1.0001), line


def test_a_vector_of_another_model_is_refused_unless_allowed(run, files, reuse_model, tmp_path):
    from dataclasses import replace

    from tl_isokl.vector import SteeringVector

    out, _ = run
    v = SteeringVector.load(out / "vector.safetensors")
    other = replace(v, meta={**v.meta, "model": "someone/other-model"}).save(tmp_path / "other.safetensors")
    common = ["--vector", other, "--window", "8", "--prompts", files / "cal.txt"]
    one_line_error(invoke("calibrate", *common, "--out", tmp_path / "a"), 1, "'someone/other-model'",
                   "'tl-isokl/testbed'", "--allow-other-model")
    assert not (tmp_path / "a").exists()
    one_line_error(invoke("sweep", "--vector", other, "--out", tmp_path / "b"), 1, "--allow-other-model")
    r = invoke("calibrate", *common, "--out", tmp_path / "c", "--allow-other-model")
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert man["vector_model"] == "someone/other-model" and man["allow_other_model"] is True


def test_cosine_loads_the_recorded_model_unless_model_is_given(run, model, monkeypatch, tmp_path):
    from dataclasses import replace

    from tl_isokl.vector import SteeringVector

    out, _ = run
    v = SteeringVector.load(out / "vector.safetensors")
    other = replace(v, meta={**v.meta, "model": "someone/other-model"}).save(tmp_path / "other.safetensors")
    asked = []
    monkeypatch.setattr("tl_isokl_cli.cmd_cosine.load", lambda name, *a, **k: asked.append(name) or model)
    r = invoke("cosine", "--vector", other, "--text", "Hello", "--allow-other-model", "--out", tmp_path / "c1")
    assert r.exit_code == 0, r.output
    r = invoke("cosine", "--vector", other, "--text", "Hello", "--model", "my/model", "--allow-other-model",
               "--out", tmp_path / "c2")
    assert r.exit_code == 0, r.output
    assert asked == ["someone/other-model", "my/model"]


def test_inspect_model_overrides_a_recorded_model_that_moved(run_copy, model, monkeypatch, tmp_path):
    out, _ = run_copy
    cell = out / "cells" / "alpha=1.jsonl"
    rows = [json.loads(x) for x in cell.read_text().splitlines()]
    for f in rows[0]["forks"]:  # plant a death at fork 4 of row 0
        if f["t"] >= 4:
            f["pmass"] = 0.05
    cell.write_text("".join(json.dumps(d) + "\n" for d in rows))
    edit_json(out / "manifest.json", model="/no/such/moved/model", model_path="/no/such/moved/model")
    one_line_error(invoke("inspect", out, "--out", tmp_path / "i1"), 1, "/no/such/moved/model", "--model")
    asked = []
    monkeypatch.setattr("tl_isokl.model.load_model", lambda name, **k: asked.append(name) or model)
    r = invoke("inspect", out, "--model", "the/real-place", "--out", tmp_path / "i2", "--radius", "2")
    assert r.exit_code == 0, r.output
    assert asked == ["the/real-place"] and (tmp_path / "i2" / "deaths.json").is_file()


def test_relative_model_paths_are_recorded_absolute(monkeypatch):
    from tl_isokl.model import EMBEDDED_MODEL, resolve_model
    from tl_isokl.runpolicy import model_spec

    monkeypatch.chdir(EMBEDDED_MODEL.parent)
    name, path, _ = resolve_model(EMBEDDED_MODEL.name)
    assert name == str(EMBEDDED_MODEL.resolve()) and path.is_absolute()
    assert model_spec(EMBEDDED_MODEL.name) == name


def test_calibrate_refuses_to_overwrite_other_work(run, files, reuse_model, tmp_path):
    out, _ = run
    before = snapshot(out)
    one_line_error(invoke("calibrate", "--window", "8", "--prompts", files / "cal.txt", "--out", out), 1,
                   "holds a sweep run", "--fresh")
    assert snapshot(out) == before
    c = tmp_path / "C"
    args = ["calibrate", "--window", "8", "--prompts", files / "cal.txt", "--out", c]
    assert invoke(*args).exit_code == 0
    before = snapshot(c)
    one_line_error(invoke(*args, "--target-kl", "0.5"), 1, "target: 1 (calibration) vs 0.5 (this command)")
    assert snapshot(c) == before
    # a calibration folder is a valid start for a sweep with the same settings: its calibration is reused
    r = invoke("sweep", "--window", "8", "--alphas", "0", "--no-figures", "--prompts", files / "held.txt",
               "--calibration-prompts", files / "cal.txt", "--out", c)
    assert r.exit_code == 0, r.output
    assert "resuming: using" in r.output
    hist = json.loads((c / "manifest.json").read_text())["history"]
    assert [h["command"] for h in hist] == ["calibrate", "sweep"]


def test_heldout_prompts_shared_with_a_calibration_file_are_refused_early(run, files, no_model):
    out, _ = run
    one_line_error(invoke("sweep", "--calibration", out / "calibration.json", "--prompts", files / "cal.txt"), 2,
                   "--prompts", "--calibration", "disjoint")


def test_an_unconverged_calibration_made_by_sweep_is_kept_and_refused(files, reuse_model, tmp_path, monkeypatch):
    """One round only (patched) and a 0.01% tolerance: the calibration cannot converge. The sweep keeps it in the
    run directory, refuses to use it, and a rerun with --allow-unconverged uses it without recalibrating."""
    import importlib

    calmod = importlib.import_module("tl_isokl.calibrate")  # the package exports a function of the same name
    real = calmod.calibrate
    calls = []
    monkeypatch.setattr(calmod, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **{**k, "max_rounds": 1}))
    args = ["sweep", "--window", "8", "--alphas", "0", "--no-figures", "--tol", "0.0001", "--prompts",
            files / "held.txt", "--calibration-prompts", files / "cal.txt", "--out", tmp_path / "U"]
    one_line_error(invoke(*args), 1, "did not converge", "--allow-unconverged")
    cal = json.loads((tmp_path / "U" / "calibration.json").read_text())
    assert cal["converged"] is False and not (tmp_path / "U" / "cells").exists()
    r = invoke(*args, "--allow-unconverged")
    assert r.exit_code == 0, r.output
    assert calls == [1] and "resuming: using" in r.output
    assert json.loads((tmp_path / "U" / "manifest.json").read_text())["allow_unconverged"] is True

"""Bring your own model and probe, through the CLI: a tiny random Llama that answers " happy"/" sad" instead of
JSON true/false. The preflight stops the default probe with the promised one-line message (what the model says
instead, which flags to change), a probe given by flags or by a TOML file passes it, and calibrate + sweep then
run end to end on a prompt file, with the probe, the preflight and the prompt framing recorded."""

import json

import pytest
from click.testing import CliRunner
from helpers_cli import one_line_error
from zoo_models import answering_llama

from tl_isokl_cli.main import cli

FIXED = ["--probe-preset", "yes-no", "--probe-true", " happy", "--probe-false", " sad"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    model = answering_llama(root)
    (root / "cal.txt").write_text("Is the sun a star?\nDo fish swim?\n")
    (root / "held.txt").write_text("Can birds fly?\nIs salt sweet?\n")
    (root / "probe.toml").write_text('prefill = "\\nAnswer:"\ntrue = [" happy"]\nfalse = [" sad"]\nthink_close = ""\n')
    return root, model


def common(root, model, out):
    return ["--model", model, "--calibration-prompts", root / "cal.txt", "--window", "4", "--out", out]


def test_preflight_stops_a_probe_the_model_cannot_answer(bed):
    root, model = bed
    r = invoke("sweep", *common(root, model, root / "default"), "--prompts", root / "held.txt", "--alphas", "0")
    one_line_error(r, 1, "preflight:", "at t = 0 on 0/2 prompts", "' sad' 0.9", "--probe-preset",
                   "--skip-preflight")
    assert not (root / "default" / "cells").exists()  # nothing was calibrated or swept


def test_fixed_probe_passes_and_the_sweep_records_it(bed):
    root, model = bed
    out = root / "fixed"
    r = invoke("sweep", *common(root, model, out), "--prompts", root / "held.txt", "--alphas", "0,1", *FIXED,
               "--no-figures")
    assert r.exit_code == 0, r.output
    assert "preflight: the unsteered model answers the probe at t = 0 on 100% of 2 prompts" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["probe"]["prefill"] == "\nAnswer:" and m["probe"]["true_variants"] == [" happy"]
    assert m["identity"]["probe"] == m["probe"]
    assert m["preflight"]["alive_t0"] == 1.0 and m["preflight"]["skipped"] is False
    framing = m["framing"]["heldout"]
    assert framing["source"].endswith("held.txt") and framing["first_prompt"] == "Can birds fly?"
    assert "no chat template" in framing["framing"]
    cells = (out / "cells" / "alpha=0.jsonl").read_text().splitlines()
    forks = [f for line in cells for f in json.loads(line)["forks"]]
    assert forks and all(f["pmass"] >= 0.75 for f in forks)  # the unsteered model is alive under this probe


def test_probe_file_and_chat_template_file_in_calibrate(bed, tmp_path):
    root, model = bed
    tpl = tmp_path / "tpl.jinja"
    tpl.write_text("Q: {{ messages[0]['content'] }}\nA:")
    out = tmp_path / "cal"
    r = invoke("calibrate", "--model", model, "--prompts", root / "cal.txt", "--window", "4", "--out", out,
               "--probe", root / "probe.toml", "--chat-template", tpl)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["probe"]["false_variants"] == [" sad"] and m["probe"]["think_close"] == ""
    assert m["framing"]["first_prompt"] == "Q: Is the sun a star?\nA:"
    assert json.loads((out / "calibration.json").read_text())["prompts"][0] == "Q: Is the sun a star?\nA:"


def test_skip_preflight_runs_and_says_so(bed, tmp_path):
    root, model = bed
    out = tmp_path / "skip"
    r = invoke("calibrate", "--model", model, "--prompts", root / "cal.txt", "--window", "4", "--out", out,
               "--skip-preflight")
    assert r.exit_code == 0, r.output
    assert "preflight: skipped" in r.output
    assert json.loads((out / "manifest.json").read_text())["preflight"] == {"skipped": True}


@pytest.mark.parametrize("args, needle", [
    (["--probe-preset", "xml"], "unknown probe preset 'xml'"),
    (["--probe-preset", "json", "--probe", "PROBE"], "give one of them"),
])
def test_bad_probe_settings_are_usage_errors(bed, args, needle):
    root, model = bed
    sub = {"PROBE": root / "probe.toml"}
    r = invoke("calibrate", "--model", model, "--prompts", root / "cal.txt", *[sub.get(a, a) for a in args])
    one_line_error(r, 2, needle)


def test_bad_probe_file_is_one_line(bed, tmp_path):
    root, model = bed
    bad = tmp_path / "p.toml"
    bad.write_text("prefill = \n")
    one_line_error(invoke("calibrate", "--model", model, "--probe", bad), 1, "p.toml", "not valid TOML")
    bad.write_text('prefill = "x"\nanswers = ["a"]\n')
    one_line_error(invoke("calibrate", "--model", model, "--probe", bad), 1, "unknown field(s) answers")


def test_an_external_npy_vector_on_the_tiny_model(bed, tmp_path):
    """The whole bring-your-own path at once: own model, own prompt files, own probe, a plain .npy direction."""
    import numpy as np

    root, model = bed
    v = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    out = tmp_path / "npy"
    r = invoke("sweep", *common(root, model, out), "--prompts", root / "held.txt", "--alphas", "0,1", *FIXED,
               "--vector", tmp_path / "v.npy", "--layer", "1", "--no-figures")
    assert r.exit_code == 0, r.output
    from tl_isokl.vector import SteeringVector

    saved = SteeringVector.load(out / "vector.safetensors")
    assert saved.layer == 1 and saved.meta["format"] == "numpy" and saved.meta["source"].endswith("v.npy")
    np.testing.assert_allclose(saved.direction.numpy(), v, rtol=0, atol=0)
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["converged"] is True and abs(cal["achieved"] - 1.0) <= 0.05


def test_two_sided_calibrates_minus_v_for_negative_alphas_and_resumes(bed, tmp_path):
    root, model = bed
    out = tmp_path / "two"
    args = ["sweep", *common(root, model, out), "--prompts", root / "held.txt", "--alphas", "-1,0,1", *FIXED,
            "--two-sided", "--no-figures"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "two-sided: calibrating -v" in r.output
    cal, neg = (json.loads((out / f).read_text()) for f in ("calibration.json", "calibration_neg.json"))
    assert neg["identity"]["vector_sha256"] != cal["identity"]["vector_sha256"]  # made for -v
    assert neg["converged"] and abs(neg["achieved"] - 1.0) <= 0.05
    m = json.loads((out / "manifest.json").read_text())
    assert m["c_star_neg"] == neg["c_star"] and m["identity"]["c_star_neg"] == neg["c_star"]
    coeffs = {json.loads(line)["alpha"]: json.loads(line)["coeff"]
              for a in ("-1", "1") for line in (out / "cells" / f"alpha={a}.jsonl").read_text().splitlines()}
    assert coeffs[-1.0] == -neg["c_star"] and coeffs[1.0] == cal["c_star"]
    again = invoke(*args)
    assert again.exit_code == 0 and "resuming: using" in again.output and "calibrating -v" not in again.output
    one_line_error(invoke("sweep", "--model", model, "--prompts", root / "held.txt", "--window", "4", *FIXED,
                          "--calibration", out / "calibration.json", "--two-sided", "--alphas", "-1,0",
                          "--out", tmp_path / "x"), 2,
                   "--two-sided", "--calibration")


@pytest.mark.parametrize("args, needle", [
    (["sweep", "--top-p", "0.9"], "--top-p has no effect without --temperature"),
    (["sweep", "--samples-per-prompt", "2"], "--samples-per-prompt has no effect without --temperature"),
    (["calibrate", "--top-p", "0.9"], "--top-p has no effect without --temperature"),
    (["sweep", "--two-sided", "--alphas", "0,1"], "--two-sided has no effect without a negative alpha"),
])
def test_sampling_and_two_sided_flags_without_effect_are_refused(args, needle):
    one_line_error(invoke(*args), 2, needle)

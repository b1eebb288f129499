"""`tl-isokl inspect` and `tl-isokl cosine` through click's CliRunner on a small real run of the embedded model.

The run is a real sweep (rollouts, KL, probes); its fork probes are then rewritten so that exactly one trace dies,
at a known fork, which makes the expected output independent of how well the test bed answers.
"""

import csv
import json

import pytest
from click.testing import CliRunner

from tl_isokl.files import atomic_write_json, read_jsonl
from tl_isokl.rundir import RunDir
from tl_isokl_cli.main import cli
from helpers_cli import one_line_error

DEAD_ROW, DEATH = 2, 4  # row 2 = alpha 1, prompt 0


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])




@pytest.fixture(scope="module")
def run_dir(model, splits, tmp_path_factory):
    from tl_isokl.extract import extract
    from tl_isokl.sweep import sweep
    from tl_isokl.testbed.corpus import concept_prompts

    vec = extract(model, concept_prompts("cheerful"), concept_prompts("gloomy"))
    prompts = [q.prompt for q in splits.heldout[:2]]
    out = tmp_path_factory.mktemp("inspect") / "run"
    from tl_isokl.identity import calibration_identity

    ident = calibration_identity(model, vec, ["a calibration prompt"], stat="p95", target=1.0, tol=0.05, window=12,
                                 positions="all", c_min=1e-4, c_max=1e4)  # a calibration made for this vector
    sweep(model, vec, {"c_star": 1.5, "target": 1.0, "stat": "p95", "converged": True, "identity": ident}, prompts,
          out, alphas=(0.0, 1.0), window=12, batch_size=4)
    rd = RunDir(out)
    row = 0
    for a in (0.0, 1.0):  # plant the fates: everyone alive, except DEAD_ROW at fork DEATH
        cell = read_jsonl(rd.cell_path(a))
        for d in cell:
            for f in d["forks"]:
                f["pmass"] = 0.05 if (row == DEAD_ROW and f["t"] >= DEATH) else 0.99
            row += 1
        from tl_isokl.files import atomic_write_jsonl

        atomic_write_jsonl(rd.cell_path(a), cell)
    return out


@pytest.fixture
def reuse_model(model, monkeypatch):
    """Hand the CLI the session model instead of loading its own (seconds each on this box)."""
    import tl_isokl.model
    import tl_isokl_cli.cmd_cosine as cmd_cosine

    monkeypatch.setattr(tl_isokl.model, "load_recorded_model", lambda manifest, device=None: model)
    monkeypatch.setattr(cmd_cosine, "load", lambda name, dtype, device: model)
    return model


@pytest.mark.parametrize("cmd, opts", [
    ("inspect", ["--alpha", "--index", "--radius", "--threshold", "--out"]),
    ("cosine", ["--model", "--vector", "--text", "--prompt-index", "--coeff", "--alpha", "--calibration", "--out"]),
])
def test_help(cmd, opts):
    r = invoke(cmd, "--help")
    assert r.exit_code == 0
    for o in opts:
        assert o in r.output


def test_inspect_works_on_a_nan_probe(run_dir, reuse_model, tmp_path):
    """NaN pmass (written as null) is a death on disk too: inspect finds it and labels it."""
    import math
    import shutil

    from tl_isokl.files import atomic_write_jsonl

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    rd = RunDir(copy)
    cell = read_jsonl(rd.cell_path(1.0))
    for f in cell[0]["forks"]:  # row DEAD_ROW: its death fork becomes NaN instead of 0.05
        if f["pmass"] < 0.5:
            f["pmass"] = math.nan
    atomic_write_jsonl(rd.cell_path(1.0), cell)
    assert '"pmass": null' in rd.cell_path(1.0).read_text() or '"pmass":null' in rd.cell_path(1.0).read_text()
    r = invoke("inspect", copy, "--out", tmp_path / "insp", "--radius", "2")
    assert r.exit_code == 0, r.output
    deaths = json.loads((tmp_path / "insp" / "deaths.json").read_text())["deaths"]
    assert [(d["row"], d["death_t"]) for d in deaths] == [(DEAD_ROW, DEATH)]


# ---- inspect ----------------------------------------------------------------------------------------------------


def test_inspect_run_writes_pages_index_and_deaths(run_dir, tmp_path):
    """Through the real loader: the manifest's model is reloaded by name."""
    out = tmp_path / "insp"
    r = invoke("inspect", run_dir, "--out", out, "--radius", "3")
    assert r.exit_code == 0, r.output
    table = [line for line in r.output.splitlines() if line.strip().startswith(str(DEAD_ROW))]
    assert len(table) == 1 and f" {DEATH} " in table[0]
    assert any(lab in table[0] for lab in ("kl_spike", "repetition_loop", "format_fragile"))
    files = sorted(p.name for p in out.iterdir())
    assert files == ["circuitsvis.iife.js", "deaths.csv", "deaths.json", "index.html", f"trace-r{DEAD_ROW:04d}.html"]
    deaths = json.loads((out / "deaths.json").read_text())["deaths"]
    assert [(d["row"], d["alpha"], d["death_t"]) for d in deaths] == [(DEAD_ROW, 1.0, DEATH)]
    assert deaths[0]["max_abs_kl_diff"] < 1e-4  # the recomputed KL matches the sweep's
    rows = list(csv.DictReader((out / "deaths.csv").open()))
    assert [(int(x["row"]), x["label"]) for x in rows] == [(DEAD_ROW, deaths[0]["label"])]
    page = (out / f"trace-r{DEAD_ROW:04d}.html").read_text()
    assert '<script src="circuitsvis.iife.js">' in page and len(page) < 100_000
    assert f'href="trace-r{DEAD_ROW:04d}.html"' in (out / "index.html").read_text()


def test_inspect_default_out_is_run_inspect(run_dir, reuse_model):
    r = invoke("inspect", run_dir, "--alpha", "1", "--index", "0")
    assert r.exit_code == 0, r.output
    assert (run_dir / "inspect" / "index.html").is_file()


def test_inspect_threshold_override_finds_more_deaths(run_dir, reuse_model, tmp_path):
    r = invoke("inspect", run_dir, "--threshold", "1.0", "--out", tmp_path, "--alpha", "0", "--radius", "1")
    assert r.exit_code == 0, r.output
    deaths = json.loads((tmp_path / "deaths.json").read_text())["deaths"]
    assert [d["row"] for d in deaths] == [0, 1] and all(d["death_t"] == 0 for d in deaths)


def test_inspect_no_deaths_is_not_an_error(run_dir, reuse_model, tmp_path):
    r = invoke("inspect", run_dir, "--alpha", "0", "--out", tmp_path)
    assert r.exit_code == 0 and "no dead traces" in r.output
    assert json.loads((tmp_path / "deaths.json").read_text())["deaths"] == []


def test_inspect_errors_are_one_line(run_dir, tmp_path):
    one_line_error(invoke("inspect", tmp_path), 1, "not a run directory")
    one_line_error(invoke("inspect", run_dir, "--alpha", "7"), 1, "alpha 7 is not in", "0, 1")
    one_line_error(invoke("inspect", run_dir, "--index", "99"), 1, "--index 99 is out of range", "0..3")
    one_line_error(invoke("inspect", run_dir, "--alpha", "1", "--index", "2"), 1, "out of range", "0..1")
    one_line_error(invoke("inspect", run_dir, "--index", "0"), 1, "did not die", "censored at token")
    one_line_error(invoke("inspect", run_dir, "--radius", "-1"), 2, "--radius")
    one_line_error(invoke("inspect", tmp_path / "nope"), 2, "does not exist")


def test_inspect_tampered_vector_is_one_line(run_dir, tmp_path):
    import shutil

    from tl_isokl.vector import SteeringVector

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    v = SteeringVector.load(copy / "vector.safetensors")
    SteeringVector(v.direction * 2, v.layer, v.method).save(copy / "vector.safetensors")
    one_line_error(invoke("inspect", copy), 1, "vector_sha256")


def test_inspect_run_is_the_same_call_from_python(run_dir, reuse_model, tmp_path):
    """`tl_isokl.deaths.inspect_run` without click: the same records and files as the command, and the same errors."""
    from tl_isokl.deaths import DeathReport, inspect_run
    from tl_isokl.errors import IsoKLError, RunDirError

    seen = []
    rep = inspect_run(run_dir, out=tmp_path / "py", radius=3, model=reuse_model, on_death=seen.append)
    assert isinstance(rep, DeathReport) and rep.threshold == 0.75 and rep.radius == 3
    assert [(d["row"], d["alpha"], d["death_t"]) for d in rep.deaths] == [(DEAD_ROW, 1.0, DEATH)]
    assert seen == rep.deaths
    assert [(r, ins.fate.time) for r, ins in rep.inspections] == [(DEAD_ROW, DEATH)]
    assert rep.pages == [tmp_path / "py" / f"trace-r{DEAD_ROW:04d}.html"] and rep.pages[0].is_file()
    assert (rep.index, rep.json, rep.csv) == tuple(tmp_path / "py" / n for n in ("index.html", "deaths.json",
                                                                                  "deaths.csv"))
    r = invoke("inspect", run_dir, "--out", tmp_path / "cli", "--radius", "3")
    assert r.exit_code == 0, r.output
    for name in ("deaths.json", "deaths.csv"):
        assert (tmp_path / "cli" / name).read_text() == (tmp_path / "py" / name).read_text()

    with pytest.raises(RunDirError, match="alpha 7 is not in"):
        inspect_run(run_dir, alpha=7)
    with pytest.raises(RunDirError, match="did not die"):
        inspect_run(run_dir, index=0)
    with pytest.raises(IsoKLError, match="not both"):
        inspect_run(run_dir, model=reuse_model, model_name="other/model")
    none = inspect_run(run_dir, alpha=0, out=tmp_path / "none", model_name="never/loaded")  # no deaths: no load
    assert none.deaths == [] and none.inspections == [] and none.json.is_file()


# ---- cosine -----------------------------------------------------------------------------------------------------


def test_cosine_text_coeff_writes_png_and_json(run_dir, reuse_model, tmp_path):
    r = invoke("cosine", "--vector", run_dir / "vector.safetensors", "--text", "What a lovely ship.", "--coeff", "2",
               "--out", tmp_path)
    assert r.exit_code == 0, r.output
    n = int(reuse_model.cfg.n_layers)
    assert sum(line.lstrip()[:1].isdigit() for line in r.output.splitlines()) == n  # one table row per layer
    assert "<- steered" in r.output
    assert (tmp_path / "cosine.png").read_bytes()[:4] == b"\x89PNG"
    js = json.loads((tmp_path / "cosine.json").read_text())
    assert js["coeff"] == 2.0 and len(js["base"]) == n and js["text"] == "What a lovely ship."
    assert js["summary"]["steered"][js["layer"]]["mean"] > js["summary"]["base"][js["layer"]]["mean"]


def test_cosine_alpha_times_c_star_and_default_prompt(run_dir, reuse_model, tmp_path):
    r = invoke("cosine", "--vector", run_dir / "vector.safetensors", "--alpha", "2", "--calibration",
               run_dir / "calibration.json", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    js = json.loads((tmp_path / "cosine.json").read_text())
    assert js["coeff"] == pytest.approx(3.0) and js["source"].startswith("held-out prompt 0")


def test_cosine_errors_are_one_line(run_dir, reuse_model, tmp_path):
    vec = ["--vector", run_dir / "vector.safetensors"]
    one_line_error(invoke("cosine", *vec, "--alpha", "1"), 2, "--calibration")
    one_line_error(invoke("cosine", *vec, "--coeff", "1", "--alpha", "1", "--calibration",
                          run_dir / "calibration.json"), 2, "either --coeff")
    one_line_error(invoke("cosine", *vec, "--text", "x", "--prompt-index", "0"), 2, "either --text")
    one_line_error(invoke("cosine", *vec, "--coeff", "inf"), 2, "finite")
    one_line_error(invoke("cosine", *vec, "--prompt-index", "9999", "--out", tmp_path), 2, "out of range")
    bad = tmp_path / "cal.json"
    atomic_write_json(bad, {"target": 1.0})
    one_line_error(invoke("cosine", *vec, "--alpha", "1", "--calibration", bad), 1, "c_star")


def test_inspect_keeps_one_index_per_run_across_alphas(run_dir, reuse_model, tmp_path):
    """Inspecting alpha 0 and then alpha 1 into one folder: the index and deaths.json list both calls' traces
    (at the same threshold and radius), not only the last call's."""
    first = invoke("inspect", run_dir, "--threshold", "1.0", "--out", tmp_path, "--alpha", "0", "--radius", "1")
    assert first.exit_code == 0, first.output
    rows0 = [d["row"] for d in json.loads((tmp_path / "deaths.json").read_text())["deaths"]]
    second = invoke("inspect", run_dir, "--threshold", "1.0", "--out", tmp_path, "--alpha", "1", "--radius", "1")
    assert second.exit_code == 0, second.output
    deaths = json.loads((tmp_path / "deaths.json").read_text())["deaths"]
    rows = [d["row"] for d in deaths]
    assert set(rows0) < set(rows) and rows == sorted(rows) and {d["alpha"] for d in deaths} == {0.0, 1.0}
    index = (tmp_path / "index.html").read_text()
    assert all(f'href="trace-r{r:04d}.html"' in index for r in rows)
    other = invoke("inspect", run_dir, "--threshold", "1.0", "--out", tmp_path, "--alpha", "1", "--radius", "2")
    assert other.exit_code == 0, other.output  # another radius: the earlier pages are not listed as this one's
    assert {d["alpha"] for d in json.loads((tmp_path / "deaths.json").read_text())["deaths"]} == {1.0}

"""Issue 12, "vectors from anywhere", through the CLI and the Python API on the embedded model: a sweep on an .npy
vector runs end to end and records where the vector came from; --sae and --vector-key reach the command; every
flag contradiction and malformed file is one line before the model loads; `ik.steer` takes a raw tensor."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tl_isokl as ik
from helpers_cli import invoke, one_line_error, write_prompts
from helpers_vectors import sae_folder, write_gguf
from tl_isokl.errors import IsoKLError
from tl_isokl.vector import SteeringVector



@pytest.fixture(scope="module")
def files(tmp_path_factory, splits, vec):
    """Prompt files, the test bed's default direction as foreign files, and a SAELens folder on layer 2."""
    d = tmp_path_factory.mktemp("foreign")
    write_prompts(d / "held.txt", splits.heldout[:2])
    write_prompts(d / "cal.txt", splits.calibration[:2])
    np.save(d / "v.npy", vec.direction.numpy())
    torch.save({"layer_activations": {vec.layer: vec.direction, 1: -vec.direction}}, d / "sv.pt")
    save_file({"a": vec.direction, "b": 2 * vec.direction}, str(d / "named.safetensors"))
    vec.save(d / "own.safetensors")
    sae_folder(d / "sae", vec.d_model, "blocks.2.hook_resid_post", d_sae=4)
    sae_folder(d / "sae_mlp", vec.d_model, "blocks.2.hook_mlp_out", d_sae=4)
    (d / "bad.pt").write_bytes(b"not a torch file")
    return d


def test_sweep_on_an_npy_vector_end_to_end(files, reuse_model, vec, tmp_path):
    out = tmp_path / "R"
    r = invoke("sweep", "--vector", files / "v.npy", "--layer", vec.layer, "--window", "4", "--alphas", "0,1",
               "--prompts", files / "held.txt", "--calibration-prompts", files / "cal.txt", "--no-figures",
               "--out", out)
    assert r.exit_code == 0, r.output
    saved = SteeringVector.load(out / "vector.safetensors")
    assert torch.equal(saved.direction, vec.direction) and (saved.layer, saved.method) == (vec.layer, "external")
    assert saved.meta["format"] == "numpy" and saved.meta["source"] == str((files / "v.npy").resolve())
    assert saved.meta["source_sha256"] == hashlib.sha256((files / "v.npy").read_bytes()).hexdigest()
    man = json.loads((out / "manifest.json").read_text())
    assert (man["method"], man["layer"], man["vector_sha256"]) == ("external", vec.layer, saved.sha256)
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["identity"]["vector_sha256"] == saved.sha256 and cal["c_star"] > 0
    assert cal["identity"]["method"] == "external" and cal["identity"]["concept"] is None


def test_cosine_takes_an_sae_feature_and_a_keyed_file(files, reuse_model, tmp_path):
    r = invoke("cosine", "--sae", files / "sae", "--sae-feature", "3", "--coeff", "4", "--text", "Is it sunny?",
               "--out", tmp_path / "c1")
    assert r.exit_code == 0, r.output
    assert "external L2, coeff 4" in r.output
    r = invoke("cosine", "--vector", files / "sv.pt", "--layer", "1", "--method", "external+ablate", "--coeff", "1",
               "--text", "Is it sunny?", "--out", tmp_path / "c2")
    assert r.exit_code == 0, r.output
    assert "external+ablate L1, coeff 1" in r.output


@pytest.mark.parametrize("args, code, needles", [
    (["--vector", "F/v.npy"], 1, ["v.npy", "does not say which layer", "--layer N"]),
    (["--vector", "F/sv.pt"], 1, ["sv.pt", "holds directions for layers 1, 3; pick one with --layer N"]),
    (["--vector", "F/sv.pt", "--layer", "2"], 1, ["sv.pt", "layers 1, 3, not 2"]),
    (["--vector", "F/named.safetensors", "--layer", "1"], 1, ["named.safetensors", "--vector-key NAME"]),
    (["--vector", "F/named.safetensors", "--vector-key", "c", "--layer", "1"], 1, ["no tensor named 'c'"]),
    (["--vector", "F/bad.pt", "--layer", "1"], 1, ["bad.pt", "not a readable torch file"]),
    (["--sae", "F/sae_mlp", "--sae-feature", "0"], 1, ["sae_mlp", "blocks.2.hook_mlp_out", "residual stream"]),
    (["--sae", "F/sae", "--sae-feature", "9"], 1, ["no feature 9; the SAE has 4 features (0..3)"]),
    (["--sae", "F/sae", "--sae-feature", "1", "--layer", "4"], 1, ["(layer 2), not --layer 4"]),
    (["--vector-key", "a"], 2, ["--vector-key a has no effect without --vector"]),
    (["--sae", "F/sae"], 2, ["needs --sae-feature N"]),
    (["--sae-feature", "1"], 2, ["--sae-feature 1 needs --sae DIR"]),
    (["--vector", "F/v.npy", "--sae", "F/sae", "--sae-feature", "1"], 2, ["either --vector", "not both"]),
    (["--method", "external"], 2, ["--method", "loaded, not extracted"]),
    (["--vector", "F/v.npy", "--layer", "1", "--method", "pca"], 2, ["--method", "external+OPERATOR"]),
    (["--vector", "F/v.npy", "--layer", "1", "--concept", "animal/machine"], 2, ["--concept has no effect"]),
    (["--vector", "F/own.safetensors", "--vector-key", "a"], 2, ["--vector-key has no effect with --vector"]),
    (["--vector", "F/own.safetensors", "--layer", "1"], 2, ["--layer has no effect with --vector"]),
    (["--vector", "F/v.npy", "--layer", "1", "--method", "external+ablate", "--gate", "sign"], 2, ["'sign'"]),
])
@pytest.mark.parametrize("cmd", ["sweep", "calibrate"])
def test_errors_are_one_line_before_the_model_loads(files, no_model, tmp_path, cmd, args, code, needles):
    r = invoke(cmd, *[str(a).replace("F/", f"{files}/") for a in args], "--out", tmp_path / "o")
    one_line_error(r, code, *needles)


def test_a_layer_the_model_lacks_is_one_line(files, reuse_model, tmp_path):
    r = invoke("cosine", "--vector", files / "v.npy", "--layer", "99", "--coeff", "1", "--out", tmp_path)
    one_line_error(r, 1, "layer 99 does not exist")


def test_help_documents_the_flags():
    r = invoke("sweep", "--help")
    assert r.exit_code == 0 and all(f in r.output for f in ("--vector-key", "--sae ", "--sae-feature", ".npy"))


# ---- Python -------------------------------------------------------------------------------------------------------


def test_steer_takes_a_raw_tensor_with_a_layer(model, vec):
    tokens = model.to_tokens("User: Is the sea blue?\nAssistant:")
    with ik.steer(model, vec, 3.0):
        want = model(tokens)
    with ik.steer(model, vec.direction, 3.0, layer=vec.layer):
        got = model(tokens)
    with ik.steer(model, vec.direction.numpy(), 3.0, layer=vec.layer):
        got_np = model(tokens)
    assert torch.equal(got, want) and torch.equal(got_np, want)
    assert not torch.equal(got, model(tokens))
    for call, needle in [(lambda: ik.steer(model, vec.direction, 1.0), "pass layer=N"),
                         (lambda: ik.steer(model, vec, 1.0, layer=vec.layer + 1), f"is for layer {vec.layer}"),
                         (lambda: ik.steer(model, [1.0, 2.0], 1.0, layer=1), "not list"),
                         (lambda: ik.steer(model, torch.ones(7), 1.0, layer=1), "d_model 7")]:
        with pytest.raises(IsoKLError, match=needle):
            with call():
                pass


def test_experiment_settings_take_a_vector_source(files, vec):
    from tl_isokl.experiment import ExperimentSettings, file_vector

    v = file_vector(ExperimentSettings(vector_path=ik.VectorSource(files / "sae", sae_feature=2), gate="soft",
                                       tau=0.1))
    assert (v.layer, v.method, v.gate.kind, v.meta["sae_feature"]) == (2, "external", "soft", 2)
    v = file_vector(ExperimentSettings(vector_path=files / "sv.pt", layer=1))
    assert torch.equal(v.direction, -vec.direction) and v.meta["container"] == "layer_activations"
    v = file_vector(ExperimentSettings(vector_path=ik.VectorSource(files / "named.safetensors", key="b",
                                                                   method="external+ablate"), layer=0))
    assert v.method == "external+ablate" and v.meta["key"] == "b"


def test_readme_example_runs(model, vec, tmp_path, monkeypatch):
    """The README's "vectors made elsewhere" example runs as written (a doc that drifts is a defect)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Python", 1)[1].split("\n## ", 1)[0]
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "read_vector" in c]
    monkeypatch.chdir(tmp_path)
    torch.save(vec.direction, "direction.pt")
    write_gguf(tmp_path / "control_vector.gguf", {"direction.3": vec.direction, "direction.4": -vec.direction})
    sae_folder(tmp_path / "my_sae", vec.d_model, "blocks.3.hook_resid_post")
    ns = {"ik": ik, "model": model}
    exec(code, ns)
    assert ns["logits"].shape[-1] == model.cfg.d_vocab
    assert (ns["v"].layer, ns["f"].layer, ns["w"].layer) == (3, 3, 3) and ns["f"].meta["sae_feature"] == 5
    assert ns["w"].meta["derived"] == "a - b" and torch.allclose(ns["w"].direction, 0.5 * vec.direction)

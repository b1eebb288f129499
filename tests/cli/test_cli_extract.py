"""`tl-isokl extract` through click's CliRunner, and `tl_isokl.prompts.read_prompts`."""

import json

import pytest
import torch
from click.testing import CliRunner

from tl_isokl.errors import IsoKLError
from tl_isokl.prompts import read_prompts
from tl_isokl.vector import SteeringVector
from tl_isokl_cli.main import cli
from helpers_cli import one_line_error


def run(*args):
    return CliRunner().invoke(cli, ["extract", *map(str, args)])




# ---- the command ---------------------------------------------------------------------------------------------

@pytest.fixture
def reuse_model(model, monkeypatch):
    """Skip the CLI's own model load (seconds on this box) by handing it the session model; the default-path
    test below still goes through the real loader."""
    import tl_isokl_cli.cmd_extract as cmd

    monkeypatch.setattr(cmd, "load", lambda name, dtype, device, revision=None: model)
    return model



def test_help_lists_the_options():
    r = run("--help")
    assert r.exit_code == 0
    for opt in ("--method", "--layer", "--pos", "--neg", "--chat-template", "--concept", "--token", "--unit", "--gate", "--tau", "-o"):
        assert opt in r.output


def test_default_extract_writes_a_loadable_vector(tmp_path, model):
    """Defaults: embedded model, cheerful/gloomy sets, middle layer, mean_diff, last token."""
    from tl_isokl.files import sha256_json
    from tl_isokl.testbed.corpus import concept_prompts

    out = tmp_path / "v.safetensors"
    r = run("-o", out)
    assert r.exit_code == 0, r.output
    v = SteeringVector.load(out)
    assert (v.layer, v.method, v.gate, v.meta["token"]) == (int(model.cfg.n_layers) // 2, "mean_diff", None, "last")
    # the shipped concept sets, in order, were the ones extracted from
    pos, neg = concept_prompts("cheerful"), concept_prompts("gloomy")
    assert v.meta["prompts_sha256"] == sha256_json({"pos": pos, "neg": neg})
    assert v.meta["pos_source"] == "concept:cheerful" and v.meta["neg_source"] == "concept:gloomy"
    lines = r.stdout.splitlines()
    assert f"layer {v.layer}" in lines[0] and f"{len(pos)} pos / {len(neg)} neg" in lines[0]
    assert lines[-3:] == [f"norm   {float(v.direction.norm()):.6g}", f"sha256 {v.sha256}", f"wrote  {out}"]


def test_prompt_files_method_layer_gate_unit(tmp_path, reuse_model):
    from tl_isokl.extract import extract

    pos = ["User: Can a robin fly?\nAssistant: <think>What a lovely question", "User: Is a cat alive?"]
    neg = ["User: Can a robin fly?\nAssistant: <think>What a dreary question", "User: Is a van alive?"]
    (tmp_path / "pos.txt").write_text("\n".join(p.replace("\n", "\\n") for p in pos) + "\n\n")
    (tmp_path / "neg.jsonl").write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(neg)))
    out = tmp_path / "sub" / "v.safetensors"
    r = run("--pos", tmp_path / "pos.txt", "--neg", tmp_path / "neg.jsonl", "--method", "pca", "--layer", 1,
            "--token", "mean", "--unit", "--gate", "hard", "--tau", 0.2, "-o", out)
    assert r.exit_code == 0, r.output
    v = SteeringVector.load(out)
    assert (v.method, v.layer, v.gate.kind, v.gate.tau, v.meta["token"], v.meta["n_pos"]) == \
        ("pca", 1, "hard", 0.2, "mean", 2)
    assert float(v.direction.norm()) == pytest.approx(1.0, abs=1e-5)
    ref = extract(reuse_model, pos, neg, method="pca", layer=1, token="mean", unit=True)  # the files decoded right
    torch.testing.assert_close(v.direction, ref.direction, rtol=1e-5, atol=1e-5)
    assert v.meta["pos_source"].endswith("pos.txt")


def test_prompt_files_are_framed_like_the_sweeps(tmp_path, reuse_model):
    """--chat-template frames --pos/--neg as sweep frames its prompt files: the vector equals one extracted from the
    hand-framed texts (written out here, not produced by our framing code), and the framing is recorded."""
    from tl_isokl.extract import extract

    (tmp_path / "chat.jinja").write_text("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                                         "{% if add_generation_prompt %}<|assistant|><think>{% endif %}")
    (tmp_path / "pos.txt").write_text("Is a cat lovely?\nCan a robin sing?\n")
    (tmp_path / "neg.txt").write_text("Is a cat dreary?\nCan a robin weep?\n")
    out = tmp_path / "v.safetensors"
    r = run("--pos", tmp_path / "pos.txt", "--neg", tmp_path / "neg.txt", "--chat-template", tmp_path / "chat.jinja",
            "--token", "mean", "-o", out)
    assert r.exit_code == 0, r.output
    v = SteeringVector.load(out)
    by_hand = ["<|user|>Is a cat lovely?<|assistant|><think>", "<|user|>Can a robin sing?<|assistant|><think>"], \
        ["<|user|>Is a cat dreary?<|assistant|><think>", "<|user|>Can a robin weep?<|assistant|><think>"]
    ref = extract(reuse_model, *by_hand, token="mean")
    torch.testing.assert_close(v.direction, ref.direction, rtol=1e-5, atol=1e-5)
    assert "chat.jinja" in v.meta["framing"] and "chat template file" in r.stdout.splitlines()[0]
    raw = extract(reuse_model, ["Is a cat lovely?", "Can a robin sing?"], ["Is a cat dreary?", "Can a robin weep?"],
                  token="mean")
    assert not torch.allclose(v.direction, raw.direction, atol=1e-4)  # framing changed what was read

    r = run("--pos", tmp_path / "pos.txt", "--neg", tmp_path / "neg.txt", "--chat-template", "none", "--token", "mean",
            "-o", out)
    assert r.exit_code == 0, r.output
    torch.testing.assert_close(SteeringVector.load(out).direction, raw.direction, rtol=1e-5, atol=1e-5)


def test_chat_template_without_files_or_missing_is_one_line(tmp_path):
    one_line_error(run("--chat-template", "none", "-o", tmp_path / "v.safetensors"), 2,
                   "--chat-template none", "--concept sets are already framed")
    (tmp_path / "pos.txt").write_text("x\n")
    (tmp_path / "neg.txt").write_text("y\n")
    one_line_error(run("--pos", tmp_path / "pos.txt", "--neg", tmp_path / "neg.txt", "--chat-template",
                       tmp_path / "nope.jinja", "-o", tmp_path / "v.safetensors"), 2, "--chat-template", "nope.jinja")


@pytest.mark.parametrize("method, unit", [("pca+ablate", True), ("random", False)])
def test_registry_methods_beyond_the_original_three(tmp_path, reuse_model, method, unit):
    """--method comes from tl_isokl.methods: a composition (pca direction, ablation operator) and the random null."""
    out = tmp_path / "v.safetensors"
    r = run("--method", method, "-o", out)
    assert r.exit_code == 0, r.output
    v = SteeringVector.load(out)
    assert v.method == method and (float(v.direction.norm()) == pytest.approx(1.0, abs=1e-5)) == unit
    if unit:  # an ablation refuses the sign gate, whatever makes the direction
        one_line_error(run("--method", method, "--gate", "sign", "-o", tmp_path / "g.safetensors"), 2, "--gate")


def test_missing_pos_file_is_one_line(tmp_path):
    (tmp_path / "neg.txt").write_text("x\n")
    r = run("--pos", tmp_path / "nope.txt", "--neg", tmp_path / "neg.txt", "-o", tmp_path / "v.safetensors")
    one_line_error(r, 2, "--pos", "nope.txt", "does not exist")


def test_pos_without_neg_is_one_line(tmp_path):
    (tmp_path / "pos.txt").write_text("x\n")
    r = run("--pos", tmp_path / "pos.txt", "-o", tmp_path / "v.safetensors")
    one_line_error(r, 2, "--pos and --neg go together")


def test_empty_prompt_file_is_one_line(tmp_path):
    (tmp_path / "pos.txt").write_text("\n  \n")
    (tmp_path / "neg.txt").write_text("x\n")
    r = run("--pos", tmp_path / "pos.txt", "--neg", tmp_path / "neg.txt", "-o", tmp_path / "v.safetensors")
    one_line_error(r, 1, "pos.txt", "has no prompts")


def test_negative_layer_is_one_line(tmp_path):
    r = run("--layer", -1, "-o", tmp_path / "v.safetensors")
    one_line_error(r, 2, "--layer", "-1")


def test_layer_beyond_the_model_is_one_line(tmp_path, reuse_model):
    r = run("--layer", 99, "-o", tmp_path / "v.safetensors")
    one_line_error(r, 1, "layer 99 does not exist", "0..5")
    assert not (tmp_path / "v.safetensors").exists()


@pytest.mark.parametrize("args,code,needle", [
    (["--method", "mean"], 2, "'mean' is not one of"),
    (["--gate", "cosine"], 2, "'cosine' is not one of"),
    (["--tau", "0.3"], 2, "--tau 0.3 needs --gate"),
    (["--gate", "soft", "--tau", "2"], 2, "2"),
    (["--concept", "cheerful"], 2, "POS/NEG"),
    (["--concept", "happy/gloomy"], 2, "unknown concept 'happy'"),
    ([], 2, "Missing option '-o'"),
])
def test_bad_options_are_one_line(tmp_path, reuse_model, args, code, needle):
    if "-o" not in args and args:
        args = args + ["-o", str(tmp_path / "v.safetensors")]
    r = run(*args)
    one_line_error(r, code, needle)


# ---- read_prompts --------------------------------------------------------------------------------------------

def test_txt_one_per_line_with_escapes(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("User: hi\\nAssistant:\n\n  spaced \r\ntab\\there\nback\\\\slash \\n? and \\x kept\n",
                 encoding="utf-8")
    assert read_prompts(p) == ["User: hi\nAssistant:", "  spaced ", "tab\there", "back\\slash \n? and \\x kept"]


def test_jsonl_prompt_field(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a\\nb", "label": 1}\n\n{"prompt": "caf\\u00e9"}\n', encoding="utf-8")
    assert read_prompts(p) == ["a\nb", "café"]


@pytest.mark.parametrize("name,content,match", [
    ("p.txt", None, r"'.*p\.txt' does not exist"),
    ("p.txt", "", "has no prompts"),
    ("p.txt", "\n \n", "has no prompts"),
    ("p.csv", "a\n", r"extension '\.csv'; use \.txt"),
    ("p", "a\n", r"extension '\(none\)'"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', r"p\.jsonl:2: not valid JSON"),
    ("p.jsonl", '{"text": "a"}\n', r"p\.jsonl:1: no string field \"prompt\""),
    ("p.jsonl", '"just a string"\n', r"p\.jsonl:1: no string field"),
    ("p.jsonl", '{"prompt": " "}\n', r"p\.jsonl:1: the prompt is empty"),
])
def test_read_prompts_errors(tmp_path, name, content, match):
    p = tmp_path / name
    if content is not None:
        p.write_text(content, encoding="utf-8")
    with pytest.raises(IsoKLError, match=match):
        read_prompts(p)


def test_read_prompts_rejects_non_utf8_and_directories(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(IsoKLError, match="not UTF-8"):
        read_prompts(tmp_path / "p.txt")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(IsoKLError, match="is not a file"):
        read_prompts(tmp_path / "d.txt")

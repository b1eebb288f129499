"""The real loader on the embedded model, and its error messages."""

import os

import pytest
import torch

from tl_isokl.errors import ModelLoadError
from tl_isokl.model import EMBEDDED_MODEL, load_model, parse_dtype


def test_embedded_model_is_a_plain_hf_folder():
    import json

    cfg = json.loads((EMBEDDED_MODEL / "config.json").read_text())
    assert cfg["architectures"] == ["Olmo2ForCausalLM"]
    assert (EMBEDDED_MODEL / "model.safetensors").stat().st_size < 20 * 2**20
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_bridge_logits_equal_the_hf_model(model, splits):
    """Second path: the untouched HF model from the same folder (the bridge mutates its own copy)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32, attn_implementation="eager")
    hf.eval()
    ids = torch.tensor([model.tokenizer(splits.heldout[0].prompt)["input_ids"]])
    with torch.no_grad():
        a = model(ids)
        b = hf(ids).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-4  # fp32, same kernels: observed 0.0


def test_resid_post_hooks_exist_without_compatibility_mode(model):
    for layer in range(model.cfg.n_layers):
        assert f"blocks.{layer}.hook_resid_post" in model.hook_dict
    assert model.tl_isokl_info["name"] == "tl-isokl/testbed"


def test_uncached_hub_name_fails_with_the_fix():
    with pytest.raises(ModelLoadError, match=r"'nobody-here/no-such-model' is not in the local Hugging Face cache.*"
                                             r"huggingface-cli download nobody-here/no-such-model"):
        load_model("nobody-here/no-such-model")


def test_folder_that_is_not_a_model_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a model folder"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="no such folder, and not a hub name"):
        load_model(str(tmp_path / "missing" / "deeper"))


def test_bad_dtype_is_named():
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        parse_dtype("float8")
    assert parse_dtype("bf16") is torch.bfloat16

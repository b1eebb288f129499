"""Tiny random Hugging Face models of several architectures, built at test time (no downloads).

Each family is 2 layers, d_model 64, with the embedded test bed's tokenizer (vocab 995, eos 0, pad 1) copied in,
so every model reads the same text. Weights are drawn with a large `initializer_range` so next-token
distributions are peaked (greedy argmax is never a near-tie; `peakedness` measures it). The families cover the
numerics that differ between architectures:

* output transforms after the unembedding: Gemma-2/Gemma-3 `final_logit_softcapping`, Granite `logits_scaling`
  (divide), Cohere `logit_scale` (multiply);
* sliding-window attention: Mistral (one window on every layer), Gemma-2/Gemma-3/Qwen2/Cohere2 (local and global
  layers mixed; the windows are small, 8, so a 32-token rollout crosses them);
* plain baselines: GPT-2 (learned positions, LayerNorm), Llama, Qwen3, OLMo-2.

`build(family, root)` writes `root/family/` (config.json, model.safetensors, tokenizer files) and returns it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

VOCAB = 995  # the test bed's tokenizer
BOS = EOS = 0
PAD = 1
D, LAYERS, HEADS, KV, HEAD_DIM, FF = 64, 2, 4, 2, 16, 128
WINDOW = 8  # sliding window of the windowed families
INIT = 0.15  # initializer_range of every weight; the unembedding is then scaled up (HEAD_SCALE)
SOFTCAP = 30.0  # Gemma-2's own final_logit_softcapping; with the head scaled 1.5x the cap moves logits by ~8
# the unembedding is scaled up after init so next-token distributions are peaked (logits of std ~5), more where the
# head shrinks the logits (Cohere x0.25, Granite /4); large weights everywhere would amplify fp32 rounding instead
HEAD = 4.0
HEAD_SCALE = {"gemma2": 6.0, "gemma3": 6.0, "granite": 16.0, "cohere": 16.0, "cohere2": 16.0}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _common() -> dict:
    return dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, initializer_range=INIT,
                tie_word_embeddings=False)


def _llama_like() -> dict:
    return dict(hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV, max_position_embeddings=256, **_common())


def config_for(family: str):
    """The transformers config of one zoo family (architectures set, as TransformerBridge needs)."""
    import transformers as T

    if family == "gpt2":
        cfg = T.GPT2Config(n_embd=D, n_layer=LAYERS, n_head=HEADS, n_positions=256, n_inner=FF,
                           vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                           initializer_range=INIT, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        arch = "GPT2LMHeadModel"
    elif family == "llama":
        cfg, arch = T.LlamaConfig(**_llama_like()), "LlamaForCausalLM"
    elif family == "qwen3":
        cfg, arch = T.Qwen3Config(head_dim=HEAD_DIM, **_llama_like()), "Qwen3ForCausalLM"
    elif family == "olmo2":
        cfg, arch = T.Olmo2Config(**_llama_like()), "Olmo2ForCausalLM"
    elif family == "mistral":
        cfg, arch = T.MistralConfig(sliding_window=WINDOW, head_dim=HEAD_DIM, **_llama_like()), "MistralForCausalLM"
    elif family == "qwen2":
        # window on layer 1 only (layers >= max_window_layers are local): mixed local/global
        cfg = T.Qwen2Config(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, **_llama_like())
        arch = "Qwen2ForCausalLM"
    elif family == "gemma2":
        cfg = T.Gemma2Config(head_dim=HEAD_DIM, sliding_window=WINDOW, final_logit_softcapping=SOFTCAP,
                             attn_logit_softcapping=20.0, query_pre_attn_scalar=HEAD_DIM,
                             layer_types=["sliding_attention", "full_attention"], **_llama_like())
        arch = "Gemma2ForCausalLM"
    elif family == "gemma3":
        cfg = T.Gemma3TextConfig(head_dim=HEAD_DIM, sliding_window=WINDOW, final_logit_softcapping=SOFTCAP,
                                 query_pre_attn_scalar=HEAD_DIM,
                                 layer_types=["sliding_attention", "full_attention"], **_llama_like())
        arch = "Gemma3ForCausalLM"
    elif family == "granite":
        cfg = T.GraniteConfig(logits_scaling=4.0, **_llama_like())
        arch = "GraniteForCausalLM"
    elif family == "cohere":
        cfg = T.CohereConfig(logit_scale=0.25, **_llama_like())
        arch = "CohereForCausalLM"
    elif family == "cohere2":
        cfg = T.Cohere2Config(sliding_window=WINDOW, logit_scale=0.25,
                              layer_types=["sliding_attention", "full_attention"], **_llama_like())
        arch = "Cohere2ForCausalLM"
    else:
        raise KeyError(f"unknown zoo family {family!r}")
    cfg.architectures = [arch]
    return cfg


def build(family: str, root: Path, *, seed: int = 0) -> Path:
    """Write a tiny random `family` model with the test-bed tokenizer to root/family and return the folder."""
    import transformers

    from tl_isokl.model import embedded_model_path

    out = Path(root) / family
    if (out / "config.json").is_file():
        return out
    cfg = config_for(family)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_SCALE.get(family, HEAD))
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(embedded_model_path() / name, out / name)
    return out


def answering_llama(root: Path, *, yes: int = 524, no: int = 536, seed: int = 0) -> Path:
    """A zoo Llama that always answers one of two tokens (" happy" 524 / " sad" 536 in the test-bed tokenizer):
    every embedding shares a large common direction e and both answer rows of the unembedding point along e, so
    P(yes) + P(no) ~ 1 after any context, while which of the two wins still depends on the context. The default
    JSON true/false probe therefore finds it dead everywhere, and a probe asking for these two answers finds it
    alive: what a real model with another answer format looks like to the preflight."""
    from safetensors.torch import load_file, save_file

    folder = build("llama", Path(root), seed=seed)
    w = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(D, generator=g)
    e = e / e.norm()
    w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] + 8.0 * e
    head = w["lm_head.weight"].clone()
    split = 0.3 * torch.randn(D, generator=g)
    head[yes], head[no] = 6.0 * e + split, 6.0 * e - split
    w["lm_head.weight"] = head
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder

"""Load any TransformerBridge model by name or folder, offline, with the two known bridge traps fixed.

Decisions (see ../shared/reference/tl4-brief.md for the measurements behind them):

* No `enable_compatibility_mode()`: `blocks.{L}.hook_resid_post` exists without it, the residual stream is
  unchanged by it, and on OLMo-2 its only numeric effect (centring the unembedding) shifts every position's
  logits by a constant, which leaves softmax and KL unchanged. Skipping it keeps logits bit-equal to HF's.
* Hub names resolve from the local Hugging Face cache only (`local_files_only`): no hidden downloads, no 46 s
  retry loops offline. A missing model is one clear `ModelLoadError` line.
* The embedded test-bed model is just a folder inside the package and goes through the same code path.
* Every load runs `tl_isokl.head.check_head` (one 8-token forward): logits computed from the final residual must
  equal the model's own (soft-cap and logit scales included), or the load fails with one line.
* Speed (`tl_isokl.acceleration`), on by default and recorded by `model_info`: HF's own attention kernel under
  the bridge (`native_attention`) and the bridge's exact per-call shortcuts (`fast_path`). Both keep
  `blocks.{L}.hook_resid_post` a TransformerLens hook; native attention drops the attention-internal hooks
  (scores, pattern, rotated q/k), so pass `native_attention=False` to read those.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tl_isokl.acceleration import accelerate, attention_mode, fast_path_enabled
from tl_isokl.errors import ModelLoadError
from tl_isokl.head import check_head

EMBEDDED_MODEL = Path(__file__).parent / "testbed" / "model"
EMBEDDED_NAME = "tl-isokl/testbed"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def embedded_model_path() -> Path:
    """Folder of the shipped test-bed model (HF format: config.json, model.safetensors, tokenizer.json)."""
    return EMBEDDED_MODEL


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise ModelLoadError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return _DTYPES[key]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model(name_or_path: str | os.PathLike | None, revision: str | None = None) -> tuple[str, Path, str | None]:
    """(display name, local folder, revision) for a model spec; raises ModelLoadError with the fix."""
    if name_or_path is None:
        return EMBEDDED_NAME, EMBEDDED_MODEL, None
    spec = str(name_or_path)
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelLoadError(
                f"{spec!r} is not a model folder (no config.json); pass a Hugging Face model folder or a hub name"
            )
        # recorded resolved: a run made with `--model ./m` must be inspectable from another directory
        return str(p.resolve()), p.resolve(), revision
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model {spec!r}: no such folder, and not a hub name of the form owner/name")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec, revision=revision, local_files_only=True)
    except Exception:
        raise ModelLoadError(
            f"model {spec!r} is not in the local Hugging Face cache and tl-isokl never downloads; on a connected "
            f"machine run `huggingface-cli download {spec}` (or set HF_HOME to a cache that has it), or pass a "
            f"local folder"
        ) from None
    local_path = Path(local)
    # snapshots/<commit> is the resolved revision; record it so the manifest pins the exact weights
    return spec, local_path, revision or local_path.name


def _patch_kv_cache() -> None:
    """Make the bridge fill the KV cache when HF passes it as `cache=` (transformers >= 5.24).

    Cause: transformers 5.24 renamed the attention kwarg `past_key_values` -> `cache` (deprecate_kwarg) and the
    bridge's `AttentionBridge._update_kv_cache` reads only the old name, so cached decoding silently attends to
    the current token alone. The pinned range (<5.24) never passes `cache=`, which makes this a no-op there;
    tests/integration/test_cache_parity.py proves cached == uncached decoding either way.
    """
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # a future bridge without this class: nothing to patch
        return
    orig = AttentionBridge._update_kv_cache
    if getattr(orig, "_tl_isokl_patched", False):
        return

    def _update_kv_cache(self, *args, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
        return orig(self, *args, **kwargs)

    _update_kv_cache._tl_isokl_patched = True  # type: ignore[attr-defined]
    AttentionBridge._update_kv_cache = _update_kv_cache


def _fix_low_precision_rotary(model, dtype: torch.dtype) -> None:
    """bf16/fp16 OLMo-2 forwards crash in the bridge: HF keeps rotary cos/sin in fp32 and casts q/k back after
    RoPE, the bridge does not. A permanent hook casting the rotated q/k back reproduces HF exactly.

    Only the bridge's re-implemented attention fires hook_rot_q/k: with native attention (HF casts q/k itself) the
    hooks stay attached but never run, and take effect again after `acceleration.use_bridge_attention`."""
    if dtype == torch.float32:
        return
    names = [n for n in model.hook_dict if n.endswith(("attn.hook_rot_q", "attn.hook_rot_k"))]
    if names:
        model.add_perma_hook(lambda n: n in names, lambda x, hook: x.to(dtype))


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    native_attention: bool = True,
    fast_path: bool = True,
):
    """Load a model as a `TransformerBridge` with `blocks.{L}.hook_resid_post` hooks.

    Args:
        name_or_path: None for the embedded test-bed model; a local HF folder; or a hub name
            (e.g. "allenai/OLMo-2-0425-1B") already in the local HF cache.
        device: "cpu", "cuda", ...; default cuda when available.
        dtype: float32 (default), bfloat16 or float16. KL and probes are always computed in float32.
        revision: hub revision (branch, tag or commit) to pick from the cache.
        trust_remote_code: off unless asked for.
        native_attention: run HF's own attention kernel (sdpa; HF's eager where the config soft-caps attention
            logits) instead of TransformerLens's eager re-implementation: no [B, H, T, T] scores in the
            teacher-forced passes, 1.7-2.2x faster KL and probe on CPU, far less memory on a GPU. Off: the
            attention-internal hooks (hook_attn_scores, hook_pattern, hook_rot_q/k) fire again. Architectures
            whose bridge does not re-implement attention (GPT-2) are unchanged either way.
        fast_path: skip bridge machinery no hook listens to (exact; any hook attached later still fires and
            can edit). A separate flag because it changes nothing observable, unlike native_attention.

    Returns:
        The bridge in eval mode, with `model.tl_isokl_info` (name, path, revision, dtype, attention, fast_path)
        for manifests.
    """
    torch_dtype = parse_dtype(dtype)
    name, path, rev = resolve_model(name_or_path, revision)
    device = device or default_device()
    _patch_kv_cache()
    import transformers
    from transformer_lens import TransformerBridge

    transformers.utils.logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not support fold_ln.*")
        try:
            model = TransformerBridge.boot_transformers(
                str(path), device=device, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
        except ModelLoadError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelLoadError(f"could not load model {name!r} from {path}: {first}") from e
    model.eval()
    _fix_low_precision_rotary(model, torch_dtype)
    accelerate(model, native_attention=native_attention, fast_path=fast_path)
    if model.tokenizer is None:
        raise ModelLoadError(f"model {name!r} has no tokenizer in {path}; tl-isokl needs one to roll out text")
    # logits from the final residual (KL, probe) must equal the model's own: refuse an output head we cannot
    # reproduce (an unknown post-unembedding transform) instead of giving silently wrong numbers
    check_head(model, name)
    model.tl_isokl_info = {
        "name": name,
        "path": str(path),
        "revision": rev,
        "dtype": str(torch_dtype).replace("torch.", ""),
        "device": str(device),
        "n_layers": int(model.cfg.n_layers),
        "d_model": int(model.cfg.d_model),
    }
    return model


def model_info(model) -> dict[str, Any]:
    """Identity of a loaded model for manifests (works for bridges not loaded by `load_model`, with less).

    `attention` ("sdpa", "eager": HF's kernel; "bridge": TransformerLens's re-implementation) and `fast_path` are
    read from the model as it is now, so a switch after loading is recorded too. They change numbers only at
    kernel rounding (~1e-5), so they are recorded, not part of any run identity.
    """
    info = getattr(model, "tl_isokl_info", None)
    if info is not None:
        info = dict(info)
    else:
        info = {
            "name": getattr(model.cfg, "model_name", "unknown"),
            "path": None,
            "revision": None,
            "dtype": str(getattr(model.cfg, "dtype", "unknown")).replace("torch.", ""),
            "n_layers": int(model.cfg.n_layers),
            "d_model": int(model.cfg.d_model),
        }
    if hasattr(model, "modules") and hasattr(model, "original_model"):
        info["attention"] = attention_mode(model)
        info["fast_path"] = fast_path_enabled(model)
    return info


def load_recorded_model(manifest: dict[str, Any], *, device: str | None = None):
    """Reload the model a run directory's manifest records (name or path, revision, dtype).

    The embedded test bed is recorded as EMBEDDED_NAME and reloads from the package; anything else goes through
    `load_model(name, revision=...)`, i.e. a local folder or the local HF cache, never a download.
    """
    name = manifest.get("model")
    if not name:
        raise ModelLoadError("the run's manifest.json records no model; it was not written by `tl-isokl sweep`")
    dtype = manifest.get("dtype") or "float32"
    if name == EMBEDDED_NAME:
        return load_model(None, device=device, dtype=dtype)
    try:
        return load_model(name, device=device, dtype=dtype, revision=manifest.get("revision"))
    except ModelLoadError:
        # a relative folder recorded from another working directory: fall back to the absolute path, if recorded
        alt = manifest.get("model_path")
        if alt and Path(alt).is_dir() and str(alt) != str(name):
            return load_model(alt, device=device, dtype=dtype, revision=manifest.get("revision"))
        raise

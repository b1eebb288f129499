"""Foreign vector files built by hand for the tests: a GGUF control vector and a SAELens folder."""

import json
import struct

import numpy as np
import torch
from safetensors.torch import save_file


def write_gguf(path, tensors, kv=None, ggml_type=0):
    """A GGUF v3 file as llama.cpp / repeng's export_gguf write control vectors (F32 tensors "direction.N")."""
    s = lambda t: struct.pack("<Q", len(t.encode())) + t.encode()  # noqa: E731
    kv = {"general.architecture": "controlvector", **(kv or {})}
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, v in kv.items():
        out += s(k) + (struct.pack("<I", 8) + s(v) if isinstance(v, str) else struct.pack("<II", 4, v))
    blobs, off = [], 0
    for name, t in tensors.items():
        b = t.numpy().astype(np.float16 if ggml_type == 1 else np.float32).tobytes()  # F16 or F32 (or garbage)
        out += s(name) + struct.pack("<I", t.ndim) + b"".join(struct.pack("<Q", n) for n in reversed(t.shape))
        out += struct.pack("<IQ", ggml_type, off)
        blobs.append(b + b"\0" * (-len(b) % 32))
        off += len(blobs[-1])
    out += b"\0" * (-len(out) % 32)
    path.write_bytes(out + b"".join(blobs))
    return path


def sae_folder(folder, d_model, hook="blocks.2.hook_resid_post", d_sae=8, nested=False, **cfg_extra):
    """A SAELens-style folder: cfg.json + sae_weights.safetensors (W_enc, W_dec [d_sae, d_in], biases). No
    sae_lens package needed. Returns (folder, W_dec)."""
    folder.mkdir(parents=True, exist_ok=True)
    W_dec = torch.randn(d_sae, d_model, generator=torch.Generator().manual_seed(2))
    cfg = {"architecture": "standard", "d_in": d_model, "d_sae": d_sae, "model_name": "tiny-model", **cfg_extra}
    if nested:
        cfg["metadata"] = {"hook_name": hook}  # SAELens 6 keeps the hook under "metadata"
    else:
        cfg["hook_name"] = hook
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({"W_dec": W_dec, "W_enc": W_dec.T.contiguous(), "b_dec": torch.zeros(d_model),
               "b_enc": torch.zeros(d_sae)}, str(folder / "sae_weights.safetensors"))
    return folder, W_dec

"""Vectors made elsewhere: read a direction from another tool's file and make it a `SteeringVector`.

`read_vector(path, key=, layer=, sae_feature=, method=)` reads, by file type:

    .safetensors   a tl-isokl vector (exactly `SteeringVector.load`), or any safetensors file of tensors
    .pt / .pth     `torch.load(..., weights_only=True)`: a tensor, or a dict of tensors (numpy arrays in it are
                   allowed; any other pickled object is refused, never unpickled)
    .npy / .npz    numpy (allow_pickle=False): one array, or named arrays
    .gguf          a control vector as repeng's `export_gguf` / llama.cpp write it (tensors "direction.N";
                   F32, F16 or BF16)
    a folder       an SAELens SAE (cfg.json + sae_weights.safetensors) with `sae_feature=N`: the decoder row
                   W_dec[N], at the layer of the SAE's hook (blocks.N.hook_resid_post or hook_resid_pre only)

A file of several tensors is a `{layer: tensor}` map when every name is a layer: an int, "5", "layer.5",
"layers.5", "model.layers.5", "transformer.h.5", "blocks.5", "direction.5" or "blocks.5.hook_resid_post"
("blocks.5.hook_resid_pre" is the output of block 4). repeng's ControlVector (`{"directions": {layer: array}}`)
and steering-vectors' SteeringVector (`{"layer_activations": {layer: tensor}}`, saved with torch.save of its
fields) unwrap to such a map. Layer N means the output of block N (`blocks.N.hook_resid_post`), which is where
repeng and steering-vectors apply their layer-N vectors. `layer=` picks one of several layers; `key=` picks a
tensor by name; a file that does not carry its layer needs `layer=` (the CLI's --layer).

A loaded vector's method is "external" (or "external+OPERATOR", e.g. "external+ablate"): its extraction is
unknown, so it is not called mean_diff. Its metadata records the format, the source file (absolute), the file's
sha256, the tensor's name and the original norm. Every malformed input is one IsoKLError naming the file and
what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tl_isokl.errors import IsoKLError

LAYER_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")
LAYER_NAME = re.compile(r"^(?:(?:[A-Za-z_][\w]*\.)*(?:layers?|blocks?|h|directions?)[._-]?)?(\d+)$", re.IGNORECASE)
CONTAINERS = ("directions", "layer_activations")  # repeng ControlVector, steering-vectors SteeringVector
SUFFIXES = (".safetensors", ".pt", ".pth", ".npy", ".npz", ".gguf")
FIX_PICKLE = ("save only its tensors (torch.save of a {layer: tensor} dict, e.g. a steering-vectors "
              "SteeringVector's layer_activations), or a .safetensors/.npy file")


@dataclass(frozen=True)
class VectorSource:
    """A vector file (or an SAELens folder) and how to read it. It is os.PathLike, so it goes wherever a vector
    path goes (`ExperimentSettings.vector_path`, the CLI's --vector); `read_vector` reads it.

    key: the tensor's name in a file of several; layer: the block, when the file does not say; sae_feature: the
    SAE feature whose decoder direction to take (path is then the SAELens folder); method: "external" or
    "external+OPERATOR" (default "external").
    """

    path: Path
    key: str | None = None
    layer: int | None = None
    sae_feature: int | None = None
    method: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _q(p: Path) -> str:
    return repr(str(p))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_tl_isokl_file(path: str | os.PathLike) -> bool:
    """Is this a safetensors file written by `SteeringVector.save` (it has the tl_isokl metadata key)?"""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return False
            header = json.loads(f.read(n))
        return "tl_isokl" in (header.get("__metadata__") or {})
    except (OSError, struct.error, ValueError, AttributeError):
        return False


def layer_of_name(name: Any) -> int | None:
    """The block a tensor's name denotes (see the module docstring), or None when the name is not a layer.
    Raises for a name that is a hook tl-isokl cannot steer at (blocks.0.hook_resid_pre)."""
    if isinstance(name, bool):
        return None
    if isinstance(name, int):
        return name if name >= 0 else None
    s = str(name)
    m = LAYER_HOOK.match(s)
    if m:
        n = int(m.group(1))
        if m.group(2) == "post":
            return n
        if n == 0:
            raise IsoKLError("blocks.0.hook_resid_pre is the embedding output, before any block; tl-isokl steers "
                             "blocks.N.hook_resid_post (blocks.N.hook_resid_pre = blocks.N-1.hook_resid_post)")
        return n - 1
    m = LAYER_NAME.match(s)
    return int(m.group(1)) if m else None


def _layer(p: Path, name: Any) -> int | None:
    """`layer_of_name`, its refusal naming the file."""
    try:
        return layer_of_name(name)
    except IsoKLError as e:
        raise IsoKLError(f"{_q(p)}: {e}") from None


# ------------------------------------------------------------------------------------------------ readers


def _sniff(p: Path) -> str:
    """The file type by its first bytes, for a file whose suffix says nothing ('' when unknown)."""
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return ""
    if head.startswith(b"GGUF"):
        return ".gguf"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith(b"PK") or head.startswith(b"\x80"):  # torch's zip format, or a legacy pickle
        return ".pt"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
        return ".safetensors"
    return ""


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    line = text.splitlines()[0][:160] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _read_safetensors(p: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError and others on damaged files
        raise IsoKLError(f"{_q(p)}: not a tl-isokl vector file, nor a readable safetensors file ({_first_line(e)})"
                         ) from None


NUMPY_GLOBALS = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype"}


def _numpy_globals(names: list[str]) -> list:
    """The numpy objects behind the allowed global names, for torch.serialization.safe_globals."""
    import importlib

    out = []
    for name in names:
        if name.startswith("numpy.dtypes.") and name.endswith("DType"):
            pass
        elif name not in NUMPY_GLOBALS:
            return []
        mod, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            return []
    import numpy as np  # the dtype classes an array's dtype is rebuilt from (floating point only)

    return out + [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64)]


def _read_torch(p: Path) -> Any:
    """torch.load with weights_only=True: tensors and containers of them; numpy arrays in it are allowed (repeng
    keeps its directions as numpy arrays); any other pickled object is refused by name, never unpickled."""
    import torch

    extra: list = []
    try:
        unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
    except AttributeError:  # torch < 2.6: the load below says which global it refused
        unsafe = []
    except Exception as e:
        raise IsoKLError(f"{_q(p)}: not a readable torch file ({_first_line(e)})") from None
    if unsafe:
        extra = _numpy_globals(unsafe)
        if not extra:
            others = ", ".join(u for u in unsafe if u not in NUMPY_GLOBALS and not u.startswith("numpy.dtypes."))
            raise IsoKLError(f"{_q(p)}: holds pickled Python objects ({others}), which tl-isokl does not unpickle "
                             f"(torch.load weights_only=True); {FIX_PICKLE}")
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m:
            raise IsoKLError(f"{_q(p)}: holds a pickled {m.group(1)} object, which tl-isokl does not unpickle "
                             f"(torch.load weights_only=True); {FIX_PICKLE}") from None
        m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        if m:
            raise IsoKLError(f"{_q(p)}: torch.load(weights_only=True) refused it ({m.group(1).strip()[:160]}); "
                             f"{FIX_PICKLE}") from None
        raise IsoKLError(f"{_q(p)}: not a readable torch file ({_first_line(e)})") from None


def _read_numpy(p: Path, suffix: str) -> Any:
    import numpy as np

    magic = {".npy": b"\x93NUMPY", ".npz": b"PK"}[suffix]
    with open(p, "rb") as f:
        if f.read(len(magic)) != magic:
            raise IsoKLError(f"{_q(p)}: not a readable numpy {suffix} file (it does not start like one)")
    try:
        obj = np.load(str(p), allow_pickle=False)
        if isinstance(obj, np.lib.npyio.NpzFile):
            with obj:
                return {k: obj[k] for k in obj.files}
        return obj
    except Exception as e:
        raise IsoKLError(f"{_q(p)}: not a readable numpy {suffix} file ({_first_line(e)})") from None


GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                12: "<d"}
GGML_TYPES = {0: "float32", 1: "float16", 30: "bfloat16"}  # GGML_TYPE_F32, F16, BF16; quantised types refused


def _read_gguf(p: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """({name: tensor}, {key: value}) of a GGUF file (versions 2 and 3), e.g. a control vector."""
    import torch

    data = p.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        if n > len(data) - pos:
            raise ValueError("a string runs past the end of the file")
        s = data[pos: pos + n].decode("utf-8")
        pos += n
        return s

    def value(t: int):
        if t in GGUF_SCALARS:
            return take(GGUF_SCALARS[t])
        if t == 8:
            return string()
        if t == 9:
            inner, n = take("<I"), take("<Q")
            if n > len(data):
                raise ValueError("an array is longer than the file")
            return [value(inner) for _ in range(n)]
        raise ValueError(f"unknown metadata value type {t}")

    try:
        if data[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        pos = 4
        version = take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = take("<Q"), take("<Q")
        if n_tensors > len(data) or n_kv > len(data):
            raise ValueError("impossible tensor or metadata counts")
        kv = {}
        for _ in range(n_kv):
            k = string()
            kv[k] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            nd = take("<I")
            dims = [take("<Q") for _ in range(nd)]
            infos.append((name, dims, take("<I"), take("<Q")))
        align = int(kv.get("general.alignment", 32)) or 32
        start = -(-pos // align) * align
        tensors = {}
        for name, dims, ttype, off in infos:
            if ttype not in GGML_TYPES:
                raise IsoKLError(f"{_q(p)}: tensor {name!r} has GGML type {ttype} (quantised); only F32, F16 and "
                                 f"BF16 tensors are read")
            dtype = getattr(torch, GGML_TYPES[ttype])
            count = math.prod(dims)
            nbytes = count * (4 if ttype == 0 else 2)
            if start + off + nbytes > len(data):
                raise ValueError(f"tensor {name!r} runs past the end of the file")
            t = torch.frombuffer(bytearray(data[start + off: start + off + nbytes]), dtype=dtype)
            tensors[name] = t.reshape(list(reversed(dims))) if dims else t  # GGUF lists the fastest axis first
        return tensors, kv
    except IsoKLError:
        raise
    except struct.error:
        raise IsoKLError(f"{_q(p)}: not a readable GGUF file (it ends in the middle of its header)") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as e:
        raise IsoKLError(f"{_q(p)}: not a readable GGUF file ({_first_line(e)})") from None


# ------------------------------------------------------------------------------------------------ selection


def _is_array(v: Any) -> bool:
    import numpy as np
    import torch

    return isinstance(v, (torch.Tensor, np.ndarray))


def _select(p: Path, obj: Any, key: str | None, layer: int | None) -> tuple[Any, int | None, str | None, dict]:
    """(tensor, the layer its name says or None, its name or None, notes) from what a file holds."""
    notes: dict[str, Any] = {}
    if _is_array(obj):
        if key is not None:
            raise IsoKLError(f"{_q(p)}: holds a single tensor, not named ones; drop --vector-key {key}")
        return obj, None, None, notes
    if not isinstance(obj, Mapping):
        raise IsoKLError(f"{_q(p)}: holds a {type(obj).__name__}, not a tensor or a dict of tensors")
    top = obj
    for c in CONTAINERS:
        if isinstance(obj.get(c), Mapping):
            notes["container"] = c
            if obj.get("layer_type") not in (None, "decoder_block"):
                raise IsoKLError(f"{_q(p)}: its layer_type is {obj['layer_type']!r}; only 'decoder_block' vectors "
                                 f"(added to a block's output, the residual stream) can be applied here")
            if isinstance(obj.get("model_type"), str):
                notes["source_model"] = obj["model_type"]
            obj = obj[c]
            break
    for k in ("layer", "hook_name"):  # {"direction": tensor, "layer": 5}: the file says its layer
        if isinstance(top.get(k), (int, str)) and not isinstance(top.get(k), bool):
            notes.setdefault("layer", top[k])
    entries = {k: v for k, v in obj.items() if _is_array(v)}
    if key is not None:
        for where in (obj, top):
            for k, v in where.items():
                if str(k) == key and _is_array(v):
                    return v, _layer(p, k), str(k), notes
        names = ", ".join(str(k) for k in list(entries)[:12]) or "none"
        raise IsoKLError(f"{_q(p)}: has no tensor named {key!r} (--vector-key); its tensors: {names}")
    if not entries:
        raise IsoKLError(f"{_q(p)}: holds no tensors (keys: {', '.join(str(k) for k in list(obj)[:12]) or 'none'})")
    layers = {k: _layer(p, k) for k in entries}
    if all(v is not None for v in layers.values()):
        by_layer: dict[int, Any] = {}
        for k, n in layers.items():
            if n in by_layer:
                raise IsoKLError(f"{_q(p)}: two tensors ({by_layer[n]!s}, {k!s}) are for layer {n}; pick one with "
                                 f"--vector-key NAME")
            by_layer[n] = k
        have = ", ".join(str(n) for n in sorted(by_layer))
        if layer is None:
            if len(by_layer) > 1:
                raise IsoKLError(f"{_q(p)}: holds directions for layers {have}; pick one with --layer N")
            (k,) = by_layer.values()
        elif layer not in by_layer and len(by_layer) > 1:
            raise IsoKLError(f"{_q(p)}: holds directions for layers {have}, not {layer}; pass --layer with one of "
                             f"them")
        elif layer not in by_layer:
            raise IsoKLError(f"{_q(p)}: holds a direction for layer {have} only, not {layer}; pass --layer {have} "
                             f"or drop --layer")
        else:
            k = by_layer[layer]
        return entries[k], layers[k], str(k), notes
    if len(entries) > 1:
        names = ", ".join(str(k) for k in list(entries)[:12])
        raise IsoKLError(f"{_q(p)}: holds {len(entries)} tensors ({names}); pick one with --vector-key NAME")
    (k, v), = entries.items()
    return v, _layer(p, k), str(k), notes


def _direction(p: Path, t: Any, name: str | None):
    """A 1-D float32 tensor; one line naming the file (and tensor) for anything else."""
    from tl_isokl.vector import _as_direction

    where = f"{_q(p)}{f' [{name!r}]' if name else ''}"
    shape = list(t.shape)
    squeezed = [s for i, s in enumerate(shape) if not (s == 1 and all(x == 1 for x in shape[:i + 1]))]
    if len(squeezed) > 1:
        raise IsoKLError(f"{where}: a {shape} tensor, not one direction; tl-isokl steers with one [d_model] "
                         f"vector (for an SAE decoder use --sae DIR --sae-feature N)")
    kind = getattr(t, "dtype", None)
    floating = t.is_floating_point() if hasattr(t, "is_floating_point") else getattr(kind, "kind", "") == "f"
    if not floating:
        raise IsoKLError(f"{where}: a tensor of dtype {kind}, not floating point; a direction holds real numbers")
    try:
        d = _as_direction(t)
    except IsoKLError as e:
        raise IsoKLError(f"{where}: {e}") from None
    if d.numel() == 0:
        raise IsoKLError(f"{where}: an empty tensor")
    import torch

    if not torch.isfinite(d).all():
        raise IsoKLError(f"{where}: the direction has NaN or inf entries")
    if float(d.norm()) == 0.0:
        raise IsoKLError(f"{where}: the direction is the zero vector; it has nothing to steer along")
    return d


def _external_method(method: str | None, where: str) -> str:
    from tl_isokl.methods import method_name, parse_method

    if method is None:
        return "external"
    ext, op = parse_method(method)
    if ext.name != "external":
        raise IsoKLError(f"{where}: a loaded vector's method is 'external' or 'external+OPERATOR' (its extraction "
                         f"is unknown), not {method!r}; use --method {method_name('external', op.name)}")
    return method_name("external", op.name)


def _merge(a, b, what: str, p: Path):
    if a is not None and b is not None and a != b:
        raise IsoKLError(f"{_q(p)}: {what} given twice ({a} and {b})")
    return a if a is not None else b


def read_vector(source: str | os.PathLike, *, key: str | None = None, layer: int | None = None,
                sae_feature: int | None = None, method: str | None = None):
    """A `SteeringVector` from a tl-isokl file, another tool's file or an SAELens folder (see the module docs).

    `source` may be a `VectorSource` (its fields fill in the arguments left None). A tl-isokl file fixes its own
    layer and method: a different `layer` or a `key` is refused, as is a `method`."""
    from tl_isokl.vector import SteeringVector

    p = Path(source)
    if isinstance(source, VectorSource):
        key = _merge(key, source.key, "the tensor name", p)
        layer = _merge(layer, source.layer, "the layer", p)
        sae_feature = _merge(sae_feature, source.sae_feature, "the SAE feature", p)
        method = _merge(method, source.method, "the method", p)
    if sae_feature is not None:
        return read_sae(p, sae_feature, layer=layer, method=method)
    if p.is_dir():
        if (p / "cfg.json").is_file():
            raise IsoKLError(f"{_q(p)} is an SAE folder; pass --sae {p} --sae-feature N to steer along feature N")
        raise IsoKLError(f"{_q(p)} is a folder, not a vector file")
    if not p.is_file():
        raise IsoKLError(f"vector file {_q(p)} does not exist; create one with `tl-isokl extract -o {p}`")
    if is_tl_isokl_file(p):
        vec = SteeringVector.load(p)
        if key not in (None, "direction"):
            raise IsoKLError(f"{_q(p)}: a tl-isokl vector file holds one tensor; drop --vector-key {key}")
        if layer is not None and layer != vec.layer:
            raise IsoKLError(f"{_q(p)}: a tl-isokl vector for layer {vec.layer}, not {layer}; it fixes its layer")
        if method is not None and method != vec.method:
            raise IsoKLError(f"{_q(p)}: a tl-isokl {vec.method} vector; it fixes its method ({method!r} given)")
        return vec
    suffix = p.suffix.lower() if p.suffix.lower() in SUFFIXES else _sniff(p)
    meta_file: dict[str, Any] = {}
    if suffix == ".safetensors":
        obj, meta_file = _read_safetensors(p)
        fmt = "safetensors"
    elif suffix in (".pt", ".pth"):
        obj, fmt = _read_torch(p), "torch"
    elif suffix in (".npy", ".npz"):
        obj, fmt = _read_numpy(p, suffix), "numpy"
    elif suffix == ".gguf":
        obj, meta_file = _read_gguf(p)
        fmt = "gguf"
    else:
        raise IsoKLError(f"{_q(p)}: not a vector file tl-isokl reads (suffix {p.suffix or '(none)'!r}, and its "
                         f"first bytes are none of {', '.join(SUFFIXES)}; an SAELens folder goes to --sae DIR)")
    where = _q(p)
    method = _external_method(method, where)
    t, named_layer, name, notes = _select(p, obj, key, layer)
    d = _direction(p, t, name)
    carried = named_layer
    for said in (notes.get("layer"), meta_file.get("layer"), meta_file.get("hook_name")):
        if carried is None and said is not None:  # {"direction": t, "layer": 5}, a safetensors header's "layer"
            carried = _layer(p, said if isinstance(said, int) else str(said))
    if carried is not None and layer is not None and carried != layer:
        raise IsoKLError(f"{where}: tensor {name!r} is for layer {carried}, not --layer {layer}")
    final = carried if carried is not None else layer
    if final is None:
        raise IsoKLError(f"{where}: does not say which layer its direction is for; pass --layer N (the block whose "
                         f"resid_post it steers)")
    hint = meta_file.get("controlvector.model_hint") or notes.get("source_model")
    meta = {"format": fmt, "source": str(p.resolve()), "source_sha256": file_sha256(p), "key": name,
            "source_norm": float(d.norm())}
    if notes.get("container"):
        meta["container"] = notes["container"]
    if hint:
        meta["source_model"] = str(hint)
    return SteeringVector.from_tensor(d, final, method=method, meta=meta)


def read_sae(folder: str | os.PathLike, feature: int, *, layer: int | None = None, method: str | None = None):
    """Feature `feature`'s decoder direction W_dec[feature] of a local SAELens folder (cfg.json with hook_name,
    d_in, d_sae; sae_weights.safetensors with W_dec [d_sae, d_in]), at the layer of its hook."""
    from safetensors import safe_open

    from tl_isokl.files import read_json
    from tl_isokl.vector import SteeringVector

    p = Path(folder)
    if not p.is_dir():
        raise IsoKLError(f"--sae {_q(p)} is not a folder; pass the SAELens folder holding cfg.json and "
                         f"sae_weights.safetensors")
    cfg_path, w_path = p / "cfg.json", p / "sae_weights.safetensors"
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise IsoKLError(f"{_q(p)}: no {f.name}; an SAELens folder holds cfg.json and sae_weights.safetensors")
    cfg = read_json(cfg_path, kind=dict)
    hook = cfg.get("hook_name") or (cfg.get("metadata") or {}).get("hook_name")
    if not isinstance(hook, str):
        raise IsoKLError(f"{_q(cfg_path)}: no hook_name; it does not say where the SAE reads the model")
    if not LAYER_HOOK.match(hook):
        raise IsoKLError(f"{_q(p)}: the SAE reads {hook!r}; only SAEs on the residual stream "
                         f"(blocks.N.hook_resid_post or blocks.N.hook_resid_pre) give a direction tl-isokl can steer "
                         f"along")
    hook_layer = _layer(p, hook)
    if layer is not None and layer != hook_layer:
        raise IsoKLError(f"{_q(p)}: the SAE reads {hook} (layer {hook_layer}), not --layer {layer}; drop --layer")
    where = f"{_q(w_path)}"
    try:
        with safe_open(str(w_path), framework="pt") as f:
            if "W_dec" not in f.keys():
                raise IsoKLError(f"{where}: no W_dec tensor (it has {', '.join(list(f.keys())[:12]) or 'none'})")
            sl = f.get_slice("W_dec")
            shape = list(sl.get_shape())
            if len(shape) != 2:
                raise IsoKLError(f"{where}: W_dec has shape {shape}; SAELens stores it as [d_sae, d_in]")
            for k, n in (("d_sae", shape[0]), ("d_in", shape[1])):
                if cfg.get(k) is not None and cfg.get(k) != n:
                    raise IsoKLError(f"{_q(p)}: cfg.json says {k} {cfg.get(k)} but W_dec is {shape} ([d_sae, d_in])")
            if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < shape[0]:
                raise IsoKLError(f"{_q(p)}: no feature {feature}; the SAE has {shape[0]} features "
                                 f"(0..{shape[0] - 1})")
            row = sl[feature: feature + 1]
    except IsoKLError:
        raise
    except Exception as e:
        raise IsoKLError(f"{where}: not a readable safetensors file ({_first_line(e)})") from None
    d = _direction(w_path, row, f"W_dec[{feature}]")
    meta = {"format": "saelens", "source": str(p.resolve()), "source_sha256": file_sha256(w_path),
            "key": f"W_dec[{feature}]", "source_norm": float(d.norm()), "sae_feature": int(feature),
            "hook_name": hook, "d_sae": int(shape[0])}
    for k in ("model_name", "release", "sae_id"):
        v = cfg.get(k) or (cfg.get("metadata") or {}).get(k)
        if isinstance(v, str):
            meta["source_model" if k == "model_name" else f"sae_{k}"] = v
    return SteeringVector.from_tensor(d, hook_layer, method=_external_method(method, _q(p)), meta=meta)

"""SteeringVector: a direction at one layer plus how to apply it, saved as safetensors + JSON metadata.

A vector is a value (frozen dataclass). Its identity for manifests is `sha256`: a hash of the direction's bytes
and of everything that changes what the hook does (layer, method, gate).
"""

from __future__ import annotations

import json
import math
from operator import index as _index
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from tl_isokl.errors import IsoKLError, VectorMismatchError
from tl_isokl.files import atomic_write_bytes, sha256_bytes
from tl_isokl.methods import GATES, Operator, check_gate, parse_method


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


@dataclass(frozen=True)
class Gate:
    """Per-token cosine gate g(cos(h, v)) that scales the method's change to the residual.

    soft: relu(|cos| - tau)   (steering-lite's gate; 0 where the residual is unrelated to v)
    hard: 1[cos > tau]        (on/off, one-sided)
    sign: sign(h . v)         (RepE piecewise operator; tau unused)
    The kinds are the registered gates of `tl_isokl.methods`.
    """

    kind: str = "soft"
    tau: float = 0.0

    def __post_init__(self):
        if self.kind not in GATES:
            raise IsoKLError(f"unknown gate {self.kind!r}; use one of {', '.join(GATES)}")
        if not -1.0 <= float(self.tau) <= 1.0:
            raise IsoKLError(f"gate tau {self.tau} is outside [-1, 1]; it is a cosine threshold")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tau": float(self.tau)}


def _scalar(k: Any) -> float | None:
    """A finite real number (int, float, numpy or one-element torch scalar) as float; None for anything else."""
    import numbers

    if isinstance(k, bool):
        return None
    if isinstance(k, torch.Tensor):
        if k.numel() != 1 or k.is_complex():
            return None
        k = k.item()
    if not isinstance(k, numbers.Real):
        return None
    k = float(k)
    if not math.isfinite(k):
        raise IsoKLError(f"cannot scale a steering vector by {k}; the factor must be finite")
    return k


def _as_direction(tensor: Any) -> torch.Tensor:
    """A real-valued 1-D float32 tensor from a torch tensor, numpy array or list (leading size-1 axes dropped)."""
    import numpy as np

    if isinstance(tensor, np.ndarray):
        if tensor.dtype.kind not in "fiu":
            raise IsoKLError(f"a direction must hold real numbers, got a numpy array of dtype {tensor.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(tensor, dtype=np.float64)).float()
    elif not isinstance(tensor, torch.Tensor):
        try:
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise IsoKLError(f"a direction must be a 1-D tensor, array or list of numbers, got "
                             f"{type(tensor).__name__} ({e})") from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise IsoKLError(f"a direction must hold real numbers, got a tensor of dtype {tensor.dtype}")
    t = tensor.detach()
    while t.ndim > 1 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1:
        raise IsoKLError(f"a direction must be 1-D [d_model], got shape {list(tensor.shape)}")
    return t.to("cpu", torch.float32)


@dataclass(frozen=True)
class SteeringVector:
    """A steering direction at `blocks.{layer}.hook_resid_post`.

    Attributes:
        direction: [d_model] float32. For additive methods (mean_diff, pca) its norm is the unit of the
            coefficient (coeff 1 adds exactly this vector); for directional_ablation it is unit-norm.
        layer: block index whose resid_post is steered.
        method: "<extractor>[+<operator>]" or an alias (see `tl_isokl.methods`): "mean_diff", "pca",
            "directional_ablation" (= "mean_diff+ablate"), "pca+ablate", ...
        gate: optional cosine gate wrapping the method.
        meta: provenance (model, revision, token choice, prompt-set hash, package version, ...).
    """

    direction: torch.Tensor
    layer: int
    method: str = "mean_diff"
    gate: Gate | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        parse_method(self.method)  # raises on an unknown method, naming the choices
        if self.gate is not None:
            check_gate(self.method, self.gate.kind)
        if self.direction.ndim != 1:
            raise IsoKLError(f"direction must be 1-D [d_model], got shape {tuple(self.direction.shape)}")
        if not torch.isfinite(self.direction).all() or float(self.direction.norm()) == 0.0:
            what = "has NaN or inf entries" if not torch.isfinite(self.direction).all() else "is the zero vector"
            raise IsoKLError(f"direction is zero or not finite (it {what}); a steering vector needs a finite, nonzero "
                             f"direction (for an extracted one: the contrastive prompt sets gave no difference)")
        object.__setattr__(self, "direction", self.direction.detach().to("cpu", torch.float32).contiguous())

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer)

    @property
    def d_model(self) -> int:
        return int(self.direction.shape[0])

    @property
    def operator(self) -> Operator:
        """How the direction is applied (add, ablate, ...)."""
        return parse_method(self.method)[1]

    @property
    def additive(self) -> bool:
        return self.operator.name == "add"

    @property
    def sha256(self) -> str:
        head = json.dumps({"layer": self.layer, "method": self.method,
                           "gate": self.gate.to_dict() if self.gate else None}, sort_keys=True).encode()
        return sha256_bytes(head + self.direction.numpy().tobytes())

    def with_gate(self, gate: Gate | None) -> "SteeringVector":
        return replace(self, gate=gate)

    # ---- vectors made elsewhere ----------------------------------------------------------------------------
    @classmethod
    def from_tensor(cls, tensor: Any, layer: int, method: str = "external", gate: Gate | None = None,
                    meta: dict[str, Any] | None = None) -> "SteeringVector":
        """A vector from a direction made anywhere: a 1-D torch tensor, numpy array or list of floats.

        `layer` is the block whose resid_post it steers. `method` defaults to "external" (made elsewhere, applied
        additively: coeff 1 adds exactly this tensor); "external+ablate" applies it as a directional ablation and
        stores it unit-norm, like an extracted ablation direction. Leading size-1 axes ([1, d]) are dropped.
        Files of other libraries: `tl_isokl.vector_formats.read_vector`.
        """
        try:
            index = None if isinstance(layer, bool) else _index(layer)  # int, numpy or torch integer
        except TypeError:
            index = None
        if index is None or index < 0:
            raise IsoKLError(f"layer must be a block index (an int >= 0), got {layer!r}")
        t = _as_direction(tensor)
        if parse_method(method)[1].unit and torch.isfinite(t).all() and float(t.norm()) > 0:
            t = t / t.norm()
        return cls(direction=t, layer=index, method=method, gate=gate, meta=dict(meta or {}))

    # ---- arithmetic: -v, a + b, a - b, k * v, v * k, v / k ---------------------------------------------------
    def __neg__(self) -> "SteeringVector":
        return self._derive(-self.direction, "-a", {"a": self})

    def __mul__(self, k) -> "SteeringVector":
        k = _scalar(k)
        if k is None:
            return NotImplemented
        return self._derive(self.direction * k, f"{k:g} * a", {"a": self})

    __rmul__ = __mul__

    def __truediv__(self, k) -> "SteeringVector":
        k = _scalar(k)
        if k is None:
            return NotImplemented
        if k == 0:
            raise IsoKLError("a / 0: a steering vector cannot be divided by zero")
        return self._derive(self.direction / k, f"a / {k:g}", {"a": self})

    def __add__(self, other) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, "+")

    def __sub__(self, other) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self._combine(other, "-")

    def _combine(self, other: "SteeringVector", op: str) -> "SteeringVector":
        expr = f"a {op} b"
        if self.layer != other.layer:
            raise IsoKLError(f"{expr}: a is at layer {self.layer} and b at layer {other.layer}; vectors of different "
                             f"layers steer different residual streams and cannot be combined")
        if self.d_model != other.d_model:
            raise IsoKLError(f"{expr}: a has d_model {self.d_model} and b has {other.d_model}; they come from "
                             f"different models")
        if self.operator.name != other.operator.name:
            raise IsoKLError(f"{expr}: a is applied with operator {self.operator.name!r} ({self.method}) and b with "
                             f"{other.operator.name!r} ({other.method}); combine vectors of the same operator")
        if self.gate != other.gate:
            show = lambda g: f"gate {g.kind} (tau {g.tau:g})" if g else "no gate"  # noqa: E731
            raise IsoKLError(f"{expr}: a has {show(self.gate)} and b has {show(other.gate)}; give both the same "
                             f"gate (v.with_gate(...)) or none")
        d = self.direction + other.direction if op == "+" else self.direction - other.direction
        return self._derive(d, expr, {"a": self, "b": other})

    def _derive(self, direction: torch.Tensor, expr: str, operands: dict[str, "SteeringVector"]) -> "SteeringVector":
        """The result of `expr` as a new vector: layer, gate and operator of the operands; the method is kept when
        all operands share it, else "external" with their operator; meta["derived"] is the expression and
        meta["operands"] each operand's sha256, method and metadata. The model is kept when the operands agree."""
        if not torch.isfinite(direction).all():
            raise IsoKLError(f"{expr} is not finite (an overflow); a steering vector needs finite entries")
        if float(direction.norm()) == 0.0:
            raise IsoKLError(f"{expr} is the zero vector (the operands cancel exactly, or the scale is 0): it has no "
                             f"direction to steer along, and a SteeringVector needs a nonzero direction")
        from tl_isokl.methods import method_name

        methods = {v.method for v in operands.values()}
        method = self.method if len(methods) == 1 else method_name("external", self.operator.name)
        if self.operator.unit:
            direction = direction / direction.norm()
        meta: dict[str, Any] = {"derived": expr, "operands": {
            k: {"sha256": v.sha256, "method": v.method, "meta": v.meta} for k, v in operands.items()}}
        for key in ("model", "revision"):
            seen = {str(v.meta[key]) for v in operands.values() if v.meta.get(key) is not None}
            if len(seen) > 1:
                raise IsoKLError(f"{expr}: the operands were made on different {key}s ({', '.join(sorted(seen))}); "
                                 f"their directions live in different residual streams")
            if seen:
                meta[key] = next(v.meta[key] for v in operands.values() if v.meta.get(key) is not None)
        return SteeringVector(direction=direction, layer=self.layer, method=method, gate=self.gate, meta=meta)

    def check_model(self, model) -> None:
        """Raise VectorMismatchError unless this vector fits `model` (d_model and layer)."""
        d, n = int(model.cfg.d_model), int(model.cfg.n_layers)
        if self.d_model != d:
            raise VectorMismatchError(
                f"vector has d_model {self.d_model} but the model has d_model {d}; extract the vector on this model"
            )
        if not 0 <= self.layer < n:
            raise VectorMismatchError(f"vector layer {self.layer} does not exist; the model has layers 0..{n - 1}")
        if self.hook_name not in model.hook_dict:
            raise VectorMismatchError(f"model has no hook {self.hook_name!r}")

    # ---- persistence -------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"method": self.method, "layer": self.layer, "hook_name": self.hook_name, "d_model": self.d_model,
                "gate": self.gate.to_dict() if self.gate else None, "sha256": self.sha256, **self.meta}

    def save(self, path: str | Path) -> Path:
        """Write safetensors (tensor "direction") with the metadata as one JSON string, atomically."""
        from safetensors.torch import save

        data = save({"direction": self.direction}, metadata={"tl_isokl": json.dumps(self.metadata())})
        return atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise IsoKLError(f"vector file {str(p)!r} does not exist; create one with `tl-isokl extract -o {p}`")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["tl_isokl"])
                direction = f.get_tensor("direction")
        except (KeyError, json.JSONDecodeError, Exception) as e:
            if isinstance(e, IsoKLError):
                raise
            what = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
            what = f"{type(e).__name__}: {what}" if what else type(e).__name__
            if isinstance(e, KeyError):
                what = "no tl_isokl metadata in the safetensors header"
            raise IsoKLError(f"{str(p)!r} is not a tl-isokl vector file ({what}); re-extract it with "
                             f"`tl-isokl extract`") from None
        core = {"method", "layer", "hook_name", "d_model", "gate", "sha256"}
        try:  # a file with our key but missing/garbled fields must still fail as one clear line
            if not isinstance(meta, dict):
                raise TypeError("metadata is not a JSON object")
            gate = Gate(**meta["gate"]) if meta.get("gate") else None
            vec = cls(direction=direction, layer=int(meta["layer"]), method=meta["method"], gate=gate,
                      meta={k: v for k, v in meta.items() if k not in core})
        except IsoKLError as e:
            raise IsoKLError(f"{str(p)!r}: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise IsoKLError(
                f"{str(p)!r} has incomplete tl-isokl metadata ({type(e).__name__}: {e}); re-extract it"
            ) from None
        if meta.get("d_model") not in (None, vec.d_model):
            raise IsoKLError(f"{p}: metadata says d_model {meta['d_model']} but the tensor has {vec.d_model}")
        return vec

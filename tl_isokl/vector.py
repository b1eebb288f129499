"""SteeringVector: a direction at one layer plus how to apply it, saved as safetensors + JSON metadata.

A vector is a value (frozen dataclass). Its identity for manifests is `sha256`: a hash of the direction's bytes
and of everything that changes what the hook does (layer, method, gate).
"""

from __future__ import annotations

import json
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
            raise IsoKLError("direction is zero or not finite; the contrastive prompt sets gave no difference")
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

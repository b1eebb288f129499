"""Apply a SteeringVector as a TransformerLens forward hook on `blocks.{L}.hook_resid_post`.

The footgun first: TransformerLens hooks are global state on the model. Use `steer(...)` as a context manager
(hooks are removed on exit, even on error) or hand `Steering.fwd_hooks()` to `model.hooks(...)`.

Operators (registered in `tl_isokl.methods`), for residual h [batch, pos, d], direction v, per-row coefficient c:
    add    (mean_diff, pca):              h' = h + c * g * v
    ablate (directional_ablation, ...):   h' = h - c * g * (h . r) r,   r = v / |v|   (c = 1 removes the r component)
    g = 1 without a gate, else g(h, v) per token (see `Gate` and the gate registry).
Every operator is exactly the identity at c = 0 (the hook returns the input untouched), so alpha = 0 is the
base model bit for bit.

Coefficients are a scalar or a [batch] tensor (one dose per row), so many doses share one batch. The hook fires
at every decode step under KV-cached generation (seeing [batch, 1, d]); `positions="generated"` restricts
steering to positions >= `start` (an int, or one per row for ragged batches), tracked by a position counter
that `reset()` rewinds before each new sequence. The counter assumes each forward continues the previous one,
which holds for KV-cached decoding; uncached `generate(use_past_kv_cache=False)` re-feeds the whole sequence
every step, so use "generated" only with the cache (or call `reset()` before every forward). Gate telemetry
counts every steered position the hook sees, padding included.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.methods import GATES
from tl_isokl.vector import Gate, SteeringVector


def gate_values(h: torch.Tensor, v: torch.Tensor, gate: Gate) -> torch.Tensor:
    """g(h, v) per token: [batch, pos] in float32, from the gate registry. Zero residuals get cos 0 (no NaN)."""
    return GATES[gate.kind](h.float(), v, float(gate.tau))


@dataclass
class GateTelemetry:
    """Running totals over every steered token position (rows with a nonzero coefficient)."""

    tokens: int = 0
    on: int = 0
    gate_sum: float = 0.0

    @property
    def fraction_on(self) -> float:
        return self.on / self.tokens if self.tokens else float("nan")

    @property
    def mean_gate(self) -> float:
        return self.gate_sum / self.tokens if self.tokens else float("nan")

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "fraction_on": self.fraction_on, "mean_gate": self.mean_gate}


@dataclass
class Steering:
    """A vector at a dose, turned into a hook. Mutable only in its position counter and telemetry."""

    vector: SteeringVector
    coeff: float | torch.Tensor
    positions: str = "all"
    start: int | torch.Tensor = 0
    position: int = 0
    telemetry: GateTelemetry = field(default_factory=GateTelemetry)

    def __post_init__(self):
        if self.positions not in ("all", "generated"):
            raise IsoKLError(f"positions must be 'all' or 'generated', not {self.positions!r}")
        c = torch.as_tensor(self.coeff, dtype=torch.float32)
        if c.ndim > 1:
            raise IsoKLError(f"coeff must be a scalar or a [batch] tensor, got shape {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise IsoKLError(f"coeff must be finite, got {self.coeff}")
        self._c = c.detach().cpu()
        self._start = torch.as_tensor(self.start, dtype=torch.long).flatten()
        self._cache: dict = {}
        self._delta = self.vector.operator.delta

    def reset(self, position: int = 0) -> "Steering":
        """Rewind the position counter before a new sequence (prefill) or a continuation starting at `position`."""
        self.position = position
        return self

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only these batch rows (per-row doses and starts), e.g. when finished rows leave a decode batch."""
        if self._c.ndim == 1:
            self._c = self._c[keep]
        if self._start.numel() > 1:
            self._start = self._start[keep]
        self._cache.clear()

    def _on_device(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = h.device
        if key not in self._cache:
            self._cache[key] = (self.vector.direction.to(h.device), self._c.to(h.device), self._start.to(h.device))
        return self._cache[key]

    def hook(self, h: torch.Tensor, hook=None) -> torch.Tensor | None:
        B, S = h.shape[0], h.shape[1]
        first = self.position
        self.position += S
        v, c, start = self._on_device(h)
        if c.ndim == 1 and c.shape[0] != B:
            raise IsoKLError(f"coeff has {c.shape[0]} rows but the batch has {B}; pass one coefficient per row")
        if start.numel() > 1 and start.shape[0] != B:
            raise IsoKLError(f"start has {start.shape[0]} rows but the batch has {B}; pass one start per row")
        if not bool((c != 0).any()):
            return None  # exact identity at c = 0
        c = c.view(-1, 1, 1) if c.ndim == 1 else c.view(1, 1, 1)
        if self.positions == "generated":
            pos = torch.arange(first, first + S, device=h.device)
            pmask = (pos.view(1, S) >= start.view(-1, 1)).unsqueeze(-1)  # start: scalar or one per row
            if not bool(pmask.any()):
                return None
        else:
            pmask = None
        hf = h.float()
        delta = self._delta(hf, v)
        scale = c.expand(B, S, 1)
        if pmask is not None:
            scale = scale * pmask
        if self.vector.gate is not None:
            g = gate_values(h, v, self.vector.gate).unsqueeze(-1)
            live = (scale != 0)
            n = int(live.sum())
            if n:
                self.telemetry.tokens += n
                self.telemetry.on += int(((g != 0) & live).sum())
                self.telemetry.gate_sum += float((g * live).sum())
            scale = scale * g
        return (hf + scale * delta).to(h.dtype)

    def fwd_hooks(self) -> list[tuple[str, object]]:
        """[(hook name, fn)] for `model.hooks(fwd_hooks=...)` / `run_with_hooks`."""
        return [(self.vector.hook_name, self.hook)]


def steering_hooks(vector: SteeringVector | None, coeffs, *, positions: str = "all", start=0) -> list:
    """`fwd_hooks` for one teacher-forced forward from token 0: per-row doses and starts (lists, tensors or
    scalars); [] without a vector. What every measurement hands to `forward.resid_post`."""
    if vector is None:
        return []
    return Steering(vector, torch.as_tensor(coeffs, dtype=torch.float32), positions=positions,
                    start=torch.as_tensor(start, dtype=torch.long)).reset(0).fwd_hooks()


@contextmanager
def steer(model, vector: SteeringVector | torch.Tensor, coeff: float | torch.Tensor = 1.0, *,
          positions: str = "all", start: int | torch.Tensor = 0, layer: int | None = None):
    """Context manager: `with steer(model, vec, 4.0) as s: model.generate(...)`; yields the `Steering`.

    `vector` is a SteeringVector, or a raw 1-D direction (torch tensor or numpy array) with `layer=` the block
    whose resid_post it steers: `steer(model, t, 4.0, layer=3)` adds 4 t there (method "external"). A `layer`
    given with a SteeringVector must be its own layer. `coeff` and `start` may be one value or one per batch row
    (a list or tensor). Checks the hook exists first: TransformerBridge.hooks() silently skips unknown names,
    which would give an unsteered run.
    """
    if not isinstance(vector, SteeringVector):
        import numpy as np

        if not isinstance(vector, (torch.Tensor, np.ndarray)):
            raise IsoKLError(f"steer() takes a SteeringVector or a 1-D tensor, not {type(vector).__name__}")
        if layer is None:
            raise IsoKLError("steer() got a raw tensor; pass layer=N (the block whose resid_post it steers), or a "
                             "SteeringVector (SteeringVector.from_tensor(tensor, layer))")
        vector = SteeringVector.from_tensor(vector, layer)
    elif layer is not None and int(layer) != vector.layer:
        raise IsoKLError(f"steer(): the vector is for layer {vector.layer}, not layer={layer}; drop layer=, or make "
                         f"a vector for that layer with SteeringVector.from_tensor(vector.direction, {layer})")
    vector.check_model(model)
    s = Steering(vector, coeff, positions=positions, start=start)
    with model.hooks(fwd_hooks=s.fwd_hooks()):
        yield s

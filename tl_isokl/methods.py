"""Steering methods as three small registries: how a direction is *made*, how it is *applied*, and how it is *gated*.

A method name composes them: "<extractor>" (applied additively), "<extractor>+<operator>", or an alias
("directional_ablation" = "mean_diff+ablate"). So a PCA direction applied as an ablation is "pca+ablate", and a
new extractor or operator works with every other one at once. Gates wrap any method (with the exceptions an
operator declares, see `Operator.gates`).

    extractors  (pos [n, d], neg [m, d]) -> direction [d]     mean_diff, pca, random (the matched-KL null);
                                                                external = loaded from a file, never extracted
    operators   h' = h + c * g * delta(h, v)                    add: delta = v;  ablate: delta = -(h . r) r
    gates       g(h, v, tau) per token                          soft, hard, sign

Adding one is one function plus its registration (see README "Extending"), e.g.::

    @register_extractor("median_diff")
    def median_diff(pos, neg):
        return pos.median(0).values - neg.median(0).values

Every operator must be the identity at c = 0; `Steering` relies on that to return the residual untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from tl_isokl.errors import IsoKLError

ExtractFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DeltaFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GateFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Extractor:
    """Makes a direction from contrastive activations. `fn(pos, neg)` returns an unnormalised [d] float tensor
    whose norm is the natural unit of an additive dose (mean_diff: |mean(pos) - mean(neg)|)."""

    name: str
    fn: ExtractFn


@dataclass(frozen=True)
class Operator:
    """Applies a direction: h' = h + c * g * delta(h, v), computed in float32.

    unit: the stored direction is normalised to norm 1 (its coefficient is then a fraction of the component,
        not a multiple of a contrast vector). c_init: the calibration solver's first guess for c*.
    gates: the gate kinds that have a meaning with this operator.
    """

    name: str
    delta: DeltaFn
    unit: bool = False
    c_init: float = 1.0
    gates: tuple[str, ...] | None = None  # None: every registered gate


EXTRACTORS: dict[str, Extractor] = {}
OPERATORS: dict[str, Operator] = {}
GATES: dict[str, GateFn] = {}
ALIASES: dict[str, tuple[str, str]] = {"directional_ablation": ("mean_diff", "ablate")}


def register_extractor(name: str) -> Callable[[ExtractFn], ExtractFn]:
    def deco(fn: ExtractFn) -> ExtractFn:
        EXTRACTORS[name] = Extractor(name, fn)
        return fn
    return deco


def register_operator(name: str, *, unit: bool = False, c_init: float = 1.0,
                      gates: tuple[str, ...] | None = None) -> Callable[[DeltaFn], DeltaFn]:
    def deco(fn: DeltaFn) -> DeltaFn:
        OPERATORS[name] = Operator(name, fn, unit=unit, c_init=c_init, gates=gates)
        return fn
    return deco


def register_gate(name: str) -> Callable[[GateFn], GateFn]:
    def deco(fn: GateFn) -> GateFn:
        GATES[name] = fn
        return fn
    return deco


# ---------------------------------------------------------------------------------------------- extractors


@register_extractor("mean_diff")
def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """mean(pos) - mean(neg)."""
    return pos.mean(0) - neg.mean(0)


@register_extractor("pca")
def pca(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """First principal axis of the pooled, centred activations, signed so v . mean_diff > 0 (the prototype voted
    with centred projections, whose mean is ~0: a coin flip) and scaled to |mean_diff| so raw doses compare."""
    md = mean_diff(pos, neg)
    X = torch.cat([pos, neg]).double()
    X = X - X.mean(0)
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)  # first right-singular vector = first principal axis
    pc = Vh[0].float()
    if float(pc @ md) < 0:
        pc = -pc
    return pc * md.norm()


@register_extractor("random")
def random(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The matched-KL null: a fixed random direction (seed 0, Gaussian) with the norm of mean_diff. Calibrated to
    the same KL budget, it shows what any perturbation of that size buys; a real method should beat it."""
    g = torch.Generator().manual_seed(0)
    r = torch.randn(pos.shape[-1], generator=g, dtype=torch.float64).float()
    return r / r.norm() * mean_diff(pos, neg).norm()


@register_extractor("external")
def external(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """A direction made elsewhere (another library's file, an SAE feature, arithmetic, a raw tensor): it is loaded
    (`tl_isokl.vector_formats.read_vector`, `SteeringVector.from_tensor`), never extracted here. `external` and
    `external+ablate` name how such a vector is applied; how it was made is in its metadata."""
    raise IsoKLError("external vectors are loaded, not extracted: pass --vector FILE (or --sae DIR --sae-feature N), "
                     "or use SteeringVector.from_tensor(...) in Python")


# ---------------------------------------------------------------------------------------------- operators


@register_operator("add")
def add(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """delta = v: the dose is a multiple of the direction."""
    return v.view(1, 1, -1).expand_as(h)


@register_operator("ablate", unit=True, c_init=0.5, gates=("soft", "hard"))
def ablate(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """delta = -(h . r) r with r = v/|v|: c = 1 removes the r component, c = 2 reflects it. The sign gate is
    refused: sign(h . v) times -(h . r) r pushes along -|h . r| r, a shift, not an ablation."""
    r = v / v.norm()
    return -(h @ r).unsqueeze(-1) * r


# ---------------------------------------------------------------------------------------------- gates


def cosine(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cos(h, v) along the last axis, in float32: the one definition gates, forensics and the cosine profile use.
    Zero residuals give 0, not NaN."""
    h = h.float()
    return F.cosine_similarity(h, v.to(h.device, torch.float32).expand_as(h), dim=-1, eps=1e-8)


@register_gate("soft")
def soft(h: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """relu(|cos| - tau): steering-lite's gate; 0 where the residual is unrelated to v."""
    return torch.relu(cosine(h, v).abs() - tau)


@register_gate("hard")
def hard(h: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """1[cos > tau]: on/off, one-sided."""
    return (cosine(h, v) > tau).float()


@register_gate("sign")
def sign(h: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """sign(h . v): RepE's piecewise operator (tau unused)."""
    return torch.sign(h @ v)


# ---------------------------------------------------------------------------------------------- names


def parse_method(method: str) -> tuple[Extractor, Operator]:
    """'mean_diff' -> (mean_diff, add); 'pca+ablate' -> (pca, ablate); 'directional_ablation' -> (mean_diff, ablate)."""
    name = str(method)
    if name in ALIASES:
        ext, op = ALIASES[name]
    else:
        ext, _, op = name.partition("+")
        op = op or "add"
    if ext not in EXTRACTORS or op not in OPERATORS:
        raise IsoKLError(f"unknown steering method {name!r}; use one of {', '.join(method_choices())}, or "
                         f"EXTRACTOR+OPERATOR with an extractor in ({', '.join(EXTRACTORS)}) and an operator in "
                         f"({', '.join(OPERATORS)})")
    return EXTRACTORS[ext], OPERATORS[op]


def method_name(extractor: str, operator: str = "add") -> str:
    """The canonical name of a composition (the alias where one exists, so names on disk never change)."""
    for alias, pair in ALIASES.items():
        if pair == (extractor, operator):
            return alias
    return extractor if operator == "add" else f"{extractor}+{operator}"


def method_choices() -> list[str]:
    """Every composable method name (for --method choices and error messages)."""
    return [method_name(e, o) for o in OPERATORS for e in EXTRACTORS]


def check_gate(method: str, gate_kind: str) -> None:
    """Raise unless `gate_kind` is a registered gate that has a meaning with `method`'s operator."""
    if gate_kind not in GATES:
        raise IsoKLError(f"unknown gate {gate_kind!r}; use one of {', '.join(GATES)}")
    _, op = parse_method(method)
    if op.gates is not None and gate_kind not in op.gates:
        raise IsoKLError(f"gate {gate_kind!r} has no meaning with method {method!r} (operator {op.name!r}); "
                         f"use --gate {' or --gate '.join(op.gates)}")

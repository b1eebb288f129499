"""What the budget buys: how far steering moved the *text* toward the concept, not only the distribution.

Iso-KL calibration gives every method the same cost; this module measures the effect bought with it, in two ways.

**Concept-expression score** (model-based, no extra forward inside a sweep). The *unsteered* model reads the steered
rollout (prompt + generated tokens, teacher-forced: the base half of `tl_isokl.kl.per_token_kl` already does this)
and its residual at `blocks.{L}.hook_resid_post` is projected, token by token, on the unit concept direction
``u = (mean(pos) - mean(neg)) / |mean(pos) - mean(neg)|`` (a `ConceptAxis`: always the mean-diff direction of the
contrastive sets, whatever method is being steered, so every method is judged on the same ruler). Per trajectory::

    score  = mean over its generated tokens of  h_base(t) . u
    effect = (score - score of the same prompt at alpha 0) / separation,   separation = (mean(pos) - mean(neg)) . u

so effect 1.0 means "the text now reads as far toward the concept as the contrastive examples differ", 0 means no
change, and a negative value means it moved toward the negative set. The separation is measured at the same
prompt positions the vector was extracted from (`token`: "last" = the last prompt token, "mean" = the mean over the
prompt's tokens after BOS; `tl_isokl.extract.residuals`), so for a mean-diff vector ``separation = |v|``.

**Lexicon score** (model-free): ``lexicon_score(text, pos_words, neg_words)`` = (positive - negative word count)
per 100 words of the generated text. Words are ``[a-z0-9]+(?:'[a-z0-9]+)*`` runs of the lower-cased text
(so "Don't" is one word "don't", "sun-lit" is two); lists are read with `read_word_list` (one word a line,
``#`` comments).

Per-alpha summaries (`effect_summary`, `concept_scores`): effects are paired with alpha 0 by trajectory id
(`prompt_id`); sampled rows of one prompt ("p003#0", "p003#1") are first averaged per prompt (the part before
``#``), then the 95% CI is a percentile bootstrap over prompts (2000 resamples, fixed seed 0): no normality
assumption, and prompts, not tokens, are the independent units.

Wiring it into a sweep (the base half of a teacher-forced batch is rows R..2R-1)::

    rec = ProjectionRecorder(axis)
    resid = resid_post(model, ids, ..., hooks=rec.fwd_hooks() + hooks)     # one more hook, same forward
    proj = rec.take(rows=range(R, 2 * R), starts=starts[:R], lengths=[len(r.tokens) for r in rows])
    # proj[j]: float32 [len(rows[j].tokens)], h_base . u at each generated token of row j
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.files import sha256_bytes, sha256_json
from tl_isokl.methods import mean_diff, parse_method
from tl_isokl.vector import SteeringVector, hook_name

__all__ = ["ConceptAxis", "ConceptScores", "ProjectionRecorder", "concept_axis", "concept_scores", "effect_summary",
           "generated_projections", "lexicon_score", "read_word_list", "score_texts", "token_projections",
           "trajectory_score", "words"]

N_BOOT = 2000
LEVEL = 0.95


# ---------------------------------------------------------------------------------------------- the axis


@dataclass(frozen=True)
class ConceptAxis:
    """The ruler for concept expression: a unit mean-diff direction at one layer and the concept's own separation.

    Attributes:
        layer: block whose `hook_resid_post` is read.
        direction: [d_model] float32, unit norm: (mean(pos) - mean(neg)) / |mean(pos) - mean(neg)|.
        separation: (mean(pos) - mean(neg)) . direction (= |mean(pos) - mean(neg)| > 0): effect 1.0 is this far.
        token: which prompt positions the means average ("last" or "mean", as in `extract.residuals`).
        pos_mean, neg_mean: the class means ([d_model]) when known (None for an axis made from a vector).
        meta: provenance (prompts_sha256, n_pos, n_neg, model, source vector sha256, ...).
    """

    layer: int
    direction: torch.Tensor
    separation: float
    token: str = "last"
    pos_mean: torch.Tensor | None = None
    neg_mean: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        d = self.direction.detach().to("cpu", torch.float32).flatten()
        n = float(d.norm())
        if not torch.isfinite(d).all() or n == 0.0:
            raise IsoKLError("a concept axis needs a finite, nonzero direction (the contrastive sets gave no "
                             "difference)")
        if not (math.isfinite(self.separation) and self.separation > 0):
            raise IsoKLError(f"a concept axis needs a positive separation, got {self.separation}")
        object.__setattr__(self, "direction", (d / n).contiguous())
        object.__setattr__(self, "separation", float(self.separation))

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer)

    @property
    def sha256(self) -> str:
        head = sha256_json({"layer": self.layer, "separation": self.separation, "token": self.token}).encode()
        return sha256_bytes(head + self.direction.numpy().tobytes())

    def to_dict(self) -> dict[str, Any]:
        """What a manifest records about the ruler (no tensors)."""
        return {"layer": self.layer, "separation": self.separation, "token": self.token, "sha256": self.sha256,
                **self.meta}

    @classmethod
    def from_means(cls, pos_mean: torch.Tensor, neg_mean: torch.Tensor, layer: int, *, token: str = "last",
                   meta: dict[str, Any] | None = None) -> "ConceptAxis":
        """The axis of two class means: direction (pos - neg) / |pos - neg|, separation |pos - neg|."""
        diff = mean_diff(pos_mean.float().view(1, -1), neg_mean.float().view(1, -1))
        return cls(layer=int(layer), direction=diff, separation=float(diff.norm()), token=token,
                   pos_mean=pos_mean.float().cpu(), neg_mean=neg_mean.float().cpu(), meta=dict(meta or {}))

    @classmethod
    def from_vector(cls, vector: SteeringVector) -> "ConceptAxis":
        """The axis of an extracted, additive mean-diff vector: its direction *is* mean(pos) - mean(neg), so the
        separation is its norm. Any other vector (pca, random, an ablation's unit direction, a derived or external
        one) does not carry the mean difference: build the axis from the prompts with `concept_axis`."""
        extractor, operator = parse_method(vector.method)
        if extractor.name != "mean_diff" or operator.unit or vector.meta.get("unit") or "derived" in vector.meta:
            why = ("it is derived by arithmetic" if "derived" in vector.meta else
                   "it is stored unit-norm" if operator.unit or vector.meta.get("unit") else
                   f"its method is {vector.method!r}")
            raise IsoKLError(f"ConceptAxis.from_vector needs an extracted additive mean_diff vector, and {why}; use "
                             f"concept_axis(model, pos_prompts, neg_prompts, layer={vector.layer})")
        meta = {k: vector.meta[k] for k in ("model", "revision", "prompts_sha256", "n_pos", "n_neg", "pos_source",
                                            "neg_source") if k in vector.meta}
        meta["vector_sha256"] = vector.sha256
        return cls(layer=vector.layer, direction=vector.direction, separation=float(vector.direction.norm()),
                   token=str(vector.meta.get("token", "last")), meta=meta)


def concept_axis(model, pos_prompts: Sequence[str], neg_prompts: Sequence[str], layer: int | None = None, *,
                 token: str = "last", batch_size: int = 16) -> ConceptAxis:
    """The mean-diff concept axis of contrastive prompt sets at `layer` (default: the middle block), read at the
    same positions `extract` reads (`token`), whatever method is then steered."""
    from tl_isokl.extract import default_layer, residuals
    from tl_isokl.model import model_info

    layer = default_layer(model) if layer is None else int(layer)
    pos = residuals(model, pos_prompts, [layer], token=token, batch_size=batch_size)[layer]
    neg = residuals(model, neg_prompts, [layer], token=token, batch_size=batch_size)[layer]
    info = model_info(model)
    meta = {"model": info.get("name"), "revision": info.get("revision"), "n_pos": len(pos_prompts),
            "n_neg": len(neg_prompts),
            "prompts_sha256": sha256_json({"pos": list(pos_prompts), "neg": list(neg_prompts)})}
    return ConceptAxis.from_means(pos.mean(0), neg.mean(0), layer, token=token, meta=meta)


# ---------------------------------------------------------------------------------------------- projections


def token_projections(axis: ConceptAxis, resid: torch.Tensor) -> torch.Tensor:
    """h . u for every (row, position) of residuals [B, T, d] (any dtype/device): [B, T] float32 on CPU."""
    if resid.shape[-1] != axis.direction.shape[0]:
        raise IsoKLError(f"residual width {resid.shape[-1]} does not match the concept axis ({axis.direction.shape[0]}"
                         f"); the axis was made on another model")
    return (resid.float() @ axis.direction.to(resid.device)).cpu()


def generated_projections(proj: torch.Tensor, starts: Sequence[int], lengths: Sequence[int],
                          rows: Iterable[int] | None = None) -> list[np.ndarray]:
    """Per row, the [B, T] projections at its generated positions: row `rows[j]`, positions
    starts[j] .. starts[j] + lengths[j] - 1 (float32 arrays; empty for an empty rollout)."""
    rows = list(range(len(starts))) if rows is None else list(rows)
    if not len(rows) == len(starts) == len(lengths):
        raise IsoKLError(f"{len(rows)} rows, {len(starts)} starts and {len(lengths)} lengths; pass one each per row")
    return [proj[r, s: s + n].numpy().astype(np.float32) for r, s, n in zip(rows, starts, lengths)]


class ProjectionRecorder:
    """A read-only hook for `blocks.{L}.hook_resid_post` that keeps h . u of the last forward ([B, T] float32).

    Add `fwd_hooks()` to a teacher-forced forward's hook list (first, so it reads the residual before any steering
    hook at the same layer; a coefficient-0 base row is the same either way), then `take(...)` the generated
    positions of the rows wanted. It never changes the residual.
    """

    def __init__(self, axis: ConceptAxis):
        self.axis = axis
        self.values: torch.Tensor | None = None

    def hook(self, h: torch.Tensor, hook=None) -> None:
        self.values = token_projections(self.axis, h)
        return None

    def fwd_hooks(self) -> list[tuple[str, object]]:
        return [(self.axis.hook_name, self.hook)]

    def take(self, rows: Iterable[int], starts: Sequence[int], lengths: Sequence[int]) -> list[np.ndarray]:
        if self.values is None:
            raise IsoKLError("the projection hook has not run; add recorder.fwd_hooks() to the forward's hooks")
        return generated_projections(self.values, starts, lengths, rows)


@torch.no_grad()
def score_texts(model, axis: ConceptAxis, prompts: Sequence[str | Sequence[int]],
                generated_token_ids: Sequence[Sequence[int]], *, batch_size: int = 16) -> list[np.ndarray]:
    """Per-token concept projections of generated text, read by the model as it is (no steering).

    prompts: prompt strings (encoded with BOS like every path) or token id lists (e.g. `Rollout.prompt_tokens`).
    generated_token_ids: the generated ids of each row (e.g. `Rollout.tokens`). Returns, per row, a float32 array
    of h . u at each generated token (reduce with `trajectory_score`).
    """
    from tl_isokl.forward import resid_post
    from tl_isokl.tokens import encode, pad_batch, pad_id, position_ids

    if len(prompts) != len(generated_token_ids):
        raise IsoKLError(f"{len(prompts)} prompts but {len(generated_token_ids)} generated sequences; pass one each")
    out: list[np.ndarray] = []
    for b0 in range(0, len(prompts), batch_size):
        ps = [encode(model, p) if isinstance(p, str) else list(p) for p in prompts[b0: b0 + batch_size]]
        gs = [list(g) for g in generated_token_ids[b0: b0 + batch_size]]
        seqs = [p + g for p, g in zip(ps, gs)]
        ids, mask = pad_batch(seqs, pad_id(model), side="left")
        T = ids.shape[1]
        resid = resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask),
                           names=[axis.hook_name])[axis.hook_name]
        starts = [T - len(s) + len(p) for s, p in zip(seqs, ps)]
        out += generated_projections(token_projections(axis, resid), starts, [len(g) for g in gs])
    return out


# ---------------------------------------------------------------------------------------------- scores, effects


def trajectory_score(projections: Sequence[float] | np.ndarray | float) -> float:
    """Mean of a trajectory's finite per-token projections (a number is taken as already reduced); NaN if none."""
    x = np.asarray(projections, dtype=float).ravel()
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _cluster(pid: str) -> str:
    return str(pid).split("#", 1)[0]


def bootstrap_ci(x: np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of x (NaN, NaN for fewer than 2 values)."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def effect_summary(values_by_alpha: Mapping[float, Mapping[str, float]], *, scale: float = 1.0,
                   n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> "ConceptScores":
    """Paired effects of any per-trajectory value: (value - value of the same trajectory id at alpha 0) / scale,
    per alpha; averaged per prompt (id before '#'), mean and bootstrap CI over prompts.

    values_by_alpha: {alpha: {trajectory id: value}}; NaN values, and ids absent at alpha 0, are left out (counted
    in `n_unpaired`).
    """
    alphas = {float(a): v for a, v in values_by_alpha.items()}
    if 0.0 not in alphas:
        raise IsoKLError(f"effects are measured against alpha 0, and there is none among alphas "
                         f"{sorted(alphas)}; include alpha 0 in the sweep")
    if not (math.isfinite(scale) and scale > 0):
        raise IsoKLError(f"the effect scale must be a positive number, got {scale}")
    base = {str(k): float(v) for k, v in alphas[0.0].items()}
    effects: dict[float, dict[str, float]] = {}
    summary: list[dict[str, Any]] = []
    for a in sorted(alphas):
        vals = {str(k): float(v) for k, v in alphas[a].items()}
        eff = {k: (v - base[k]) / scale for k, v in vals.items()
               if k in base and math.isfinite(v) and math.isfinite(base[k])}
        effects[a] = eff
        per_prompt: dict[str, list[float]] = {}
        for k, e in eff.items():
            per_prompt.setdefault(_cluster(k), []).append(e)
        x = np.array([np.mean(v) for v in per_prompt.values()], dtype=float)
        lo, hi = bootstrap_ci(x, n_boot=n_boot, level=level, seed=seed)
        finite = [v for v in vals.values() if math.isfinite(v)]
        summary.append({"alpha": a, "n": int(x.size), "n_unpaired": len(vals) - len(eff),
                        "value_mean": float(np.mean(finite)) if finite else math.nan,
                        "effect_mean": float(x.mean()) if x.size else math.nan, "ci_lo": lo, "ci_hi": hi})
    return ConceptScores(values={a: {str(k): float(v) for k, v in d.items()} for a, d in alphas.items()},
                         effects=effects, summary=summary, scale=float(scale), level=level)


@dataclass
class ConceptScores:
    """Per-trajectory values and effects per alpha, and one summary row per alpha:
    alpha, n (prompts), n_unpaired, value_mean (mean raw score), effect_mean, ci_lo, ci_hi."""

    values: dict[float, dict[str, float]]
    effects: dict[float, dict[str, float]]
    summary: list[dict[str, Any]]
    scale: float
    level: float = LEVEL

    def row(self, alpha: float) -> dict[str, Any]:
        for r in self.summary:
            if r["alpha"] == float(alpha):
                return r
        raise IsoKLError(f"no alpha {alpha} among {[r['alpha'] for r in self.summary]}")


def concept_scores(projections_by_alpha: Mapping[float, Mapping[str, Sequence[float] | np.ndarray | float]],
                   axis: ConceptAxis | float, **kw) -> ConceptScores:
    """Concept-expression effects per alpha: each trajectory's mean projection (`trajectory_score`), minus the same
    prompt's at alpha 0, in units of the axis separation; summary rows as in `effect_summary` (keywords go there).

    projections_by_alpha: {alpha: {trajectory id: per-token projections (or an already reduced mean)}}.
    """
    sep = axis.separation if isinstance(axis, ConceptAxis) else float(axis)
    scores = {a: {k: trajectory_score(p) for k, p in d.items()} for a, d in projections_by_alpha.items()}
    return effect_summary(scores, scale=sep, **kw)


# ---------------------------------------------------------------------------------------------- lexicon

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """The words of a text: lower-cased runs of letters/digits, an inner apostrophe kept ("don't")."""
    return _WORD.findall(str(text).lower())


def lexicon_score(text: str, pos_words: Iterable[str], neg_words: Iterable[str]) -> float:
    """(occurrences of positive words - of negative words) per 100 words of `text`; NaN for a text with no words.
    A word listed in both lists counts for neither."""
    pos, neg = {w.lower() for w in pos_words}, {w.lower() for w in neg_words}
    pos, neg = pos - neg, neg - pos
    ws = words(text)
    if not ws:
        return math.nan
    return 100.0 * (sum(w in pos for w in ws) - sum(w in neg for w in ws)) / len(ws)


def read_word_list(path: str | Path) -> list[str]:
    """Words from a file: one a line, lower-cased; blank lines and everything after `#` are ignored."""
    p = Path(path)
    if not p.is_file():
        raise IsoKLError(f"word list {str(p)!r} does not exist or is not a file; write one word a line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise IsoKLError(f"word list {str(p)!r} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    out = []
    for n, line in enumerate(lines, 1):
        w = line.split("#", 1)[0].strip().lower()
        if not w:
            continue
        if words(w) != [w]:
            raise IsoKLError(f"{p}:{n}: {w!r} is not one word (letters, digits, an inner apostrophe); write one word "
                             f"a line")
        out.append(w)
    if not out:
        raise IsoKLError(f"word list {str(p)!r} has no words; write one word a line (# starts a comment)")
    return out

"""Where the steering direction lives in the residual stream: cosine(resid_post, v) per layer and token.

One `run_with_cache` over every block's `hook_resid_post` for the base model and one for the steered model on the
same tokens give cos[layer, token] for both. The base profile shows where the concept is already written (the
direction was extracted at one layer; is it present above and below?); the steered profile shows what the
intervention does downstream (the steered layer jumps by construction; later layers show how much survives the
blocks that follow). A zero residual (e.g. a zero-initialised embedding row) gets cosine 0, not NaN.

`cosine_report` is `tl-isokl cosine` as one call: the dose (a coefficient, or alpha x a calibration's c*), the text
(default: a held-out prompt), the profile, and cosine.png + cosine.json in an output folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError


class PromptIndexError(IsoKLError):
    """A held-out prompt index beyond the model's held-out set."""


def resid_post_names(model) -> list[str]:
    from tl_isokl.vector import hook_name

    return [hook_name(i) for i in range(int(model.cfg.n_layers))]


def layer_summary(cos: np.ndarray, *, skip_first: bool = False) -> list[dict[str, float]]:
    """Per layer of a [n_layers, T] cosine array: mean, mean |cos|, max (optionally skipping token 0)."""
    c = np.asarray(cos, dtype=np.float64)
    if skip_first and c.shape[1] > 1:
        c = c[:, 1:]
    return [{"layer": i, "mean": float(row.mean()), "mean_abs": float(np.abs(row).mean()), "max": float(row.max()),
             "min": float(row.min())} for i, row in enumerate(c)]


def cosine_profile(
    model,
    vector,
    text_or_ids: str | Sequence[int],
    *,
    coeff: float = 0.0,
    positions: str = "all",
    start: int = 0,
    skip_bos_in_summary: bool = True,
) -> dict[str, Any]:
    """cos(blocks.{l}.hook_resid_post, direction) for every layer l and token, base and steered at `coeff`.

    Args:
        text_or_ids: a string (encoded with BOS by `tl_isokl.tokens.encode`) or token ids used as given.
        coeff: steering coefficient of the steered run (0 gives a steered profile identical to the base one).
        positions, start: as in `Steering`: "all" steers every token; "generated" only tokens >= start
            (e.g. start = prompt length when the text is a prompt plus its rollout).
        skip_bos_in_summary: leave token 0 out of the per-layer summary when it is the BOS token (an attention
            sink with an outsized norm in real models).

    Returns:
        dict with ids, tokens (decoded), layer (the steered one), coeff, base and steered ([n_layers, T] float
        arrays), summary {"base": [...], "steered": [...]} (per layer: mean, mean_abs, max, min), and gate
        (the steered run's gate telemetry: tokens, fraction_on, mean_gate) for gated vectors, else None.
    """
    import torch

    from tl_isokl.forward import resid_post
    from tl_isokl.methods import cosine
    from tl_isokl.steer import Steering
    from tl_isokl.tokens import bos_id, decode, encode, position_ids

    vector.check_model(model)
    if isinstance(text_or_ids, str):
        ids = encode(model, text_or_ids)
    else:
        ids = [int(i) for i in text_or_ids]
    if not ids:
        raise IsoKLError("cosine_profile needs at least one token; pass a non-empty text")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and len(ids) > n_ctx:
        raise IsoKLError(f"text is {len(ids)} tokens but the model context is {n_ctx}; pass a shorter text")
    names = resid_post_names(model)
    seq = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(seq)
    kw = dict(attention_mask=mask, position_ids=position_ids(mask), names=names)

    def cos_of(cache) -> np.ndarray:
        R = torch.stack([cache[n][0] for n in names])  # [layer, T, d]
        return cosine(R, vector.direction).cpu().numpy().astype(np.float64)

    with torch.no_grad():
        base = cos_of(resid_post(model, seq, **kw))
        steering = Steering(vector, float(coeff), positions=positions, start=start).reset(0)  # kept: telemetry
        steered = cos_of(resid_post(model, seq, hooks=steering.fwd_hooks(), **kw))
    skip = skip_bos_in_summary and ids[0] == bos_id(model)
    return {
        "ids": ids,
        "tokens": [decode(model, [i]) for i in ids],
        "layer": int(vector.layer),
        "method": vector.method,
        "coeff": float(coeff),
        "base": base,
        "steered": steered,
        "summary": {"base": layer_summary(base, skip_first=skip), "steered": layer_summary(steered, skip_first=skip)},
        "summary_skips_bos": bool(skip),
        "gate": steering.telemetry.to_dict() if vector.gate is not None else None,
    }


def format_profile(profile: dict[str, Any]) -> str:
    """The per-layer table `tl-isokl cosine` prints: base and steered mean, mean |cos|, max per layer."""
    head = (f"{'layer':>5}  {'base mean':>9} {'base |cos|':>10} {'base max':>8}  "
            f"{'steer mean':>10} {'steer |cos|':>11} {'steer max':>9}")
    lines = [head, "-" * len(head)]
    for b, s in zip(profile["summary"]["base"], profile["summary"]["steered"]):
        mark = " <- steered" if b["layer"] == profile["layer"] else ""
        lines.append(f"{b['layer']:>5}  {b['mean']:>9.3f} {b['mean_abs']:>10.3f} {b['max']:>8.3f}  "
                     f"{s['mean']:>10.3f} {s['mean_abs']:>11.3f} {s['max']:>9.3f}{mark}")
    g = profile.get("gate")
    if g is not None:
        lines.append(f"gate: fraction_on {g['fraction_on']:.3f}, mean_gate {g['mean_gate']:.3f} over {g['tokens']} "
                     f"steered tokens")
    return "\n".join(lines)


def profile_to_json(profile: dict[str, Any]) -> dict[str, Any]:
    """JSON-able copy (arrays as nested lists)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in profile.items()}


# ------------------------------------------------------------------------------------ `tl-isokl cosine` as one call


@dataclass
class CosineReport:
    """What `cosine_report` computed and wrote: the profile (see `cosine_profile`), the text and where it came
    from, the steered coefficient and how it was chosen, and the two files."""

    profile: dict[str, Any]
    text: str
    source: str
    coeff: float
    coeff_from: str
    png: Path
    json: Path


def _calibration(calibration: Mapping[str, Any] | str | Path | Any) -> tuple[dict[str, Any], str]:
    """(calibration.json content, how to name it in messages) from a path, a dict or a CalibrationResult."""
    if isinstance(calibration, (str, Path)):
        from tl_isokl.files import read_json

        return read_json(calibration, kind=dict), str(calibration)  # malformed: one line naming the file
    if hasattr(calibration, "to_dict"):
        return calibration.to_dict(), "the calibration"
    return dict(calibration), "the calibration"


def steered_coeff(*, coeff: float | None = None, alpha: float | None = None,
                  calibration: Mapping[str, Any] | str | Path | Any = None) -> tuple[float, str]:
    """The steered run's coefficient and how it was chosen: `coeff` (default 0: steered == base), or `alpha` times
    the c* of `calibration` (a calibration.json path, its dict, or a CalibrationResult). Needs no model.

    Raises:
        IsoKLError: both coeff and alpha, alpha without a calibration (or the reverse), a calibration without a
            numeric c_star or without a recorded identity, a non-finite coeff.
    """
    if coeff is not None and alpha is not None:
        raise IsoKLError("pass either coeff or alpha (with a calibration), not both")
    if (alpha is None) != (calibration is None):
        raise IsoKLError("alpha and calibration go together: alpha is in units of the calibration's c*")
    if alpha is not None:
        from tl_isokl.identity import usable_calibration

        cal, source = _calibration(calibration)
        c_star = float(usable_calibration(cal, source)["c_star"])
        return alpha * c_star, f"alpha {alpha:g} x c* {c_star:.6g}"
    c = 0.0 if coeff is None else float(coeff)
    if not math.isfinite(c):
        raise IsoKLError(f"coeff {coeff} is not a finite number")
    return c, "coeff given" if coeff is not None else "no --coeff: steered == base"


def recorded_model(calibration: Mapping[str, Any] | str | Path | Any = None,
                   vector: Any = None) -> tuple[str | None, str | None]:
    """(name, revision) of the model a calibration's identity or else a vector's metadata records; (None, None)
    when neither records one or it is the embedded test bed (loaded by default anyway)."""
    from tl_isokl.model import EMBEDDED_NAME

    ident = (_calibration(calibration)[0] if calibration is not None else {}).get("identity") or {}
    meta = vector.meta if vector is not None else {}
    name = ident.get("model") or meta.get("model")
    if not name or name == EMBEDDED_NAME:
        return None, None
    return name, ident.get("revision") or meta.get("revision")


def default_cosine_out(model, vector) -> Path:
    """runs/cosine-<model>-<method>-L<layer>: where `cosine_report` writes without `out`."""
    from tl_isokl.model import model_info
    from tl_isokl.runpolicy import RUNS, model_slug

    return RUNS / f"cosine-{model_slug(str(model_info(model).get('name')))}-{vector.method}-L{vector.layer}"


def cosine_report(
    model,
    vector,
    *,
    text: str | None = None,
    prompt_index: int | None = None,
    coeff: float | None = None,
    alpha: float | None = None,
    calibration: Mapping[str, Any] | str | Path | Any = None,
    out: str | Path | None = None,
) -> CosineReport:
    """Profile `text` (default: held-out prompt `prompt_index`, 0) base vs steered, write cosine.png and
    cosine.json into `out` (default `default_cosine_out`), and return what was computed.

    Args:
        coeff, alpha, calibration: the steered dose, see `steered_coeff`. A calibration must have been made for
            this model and vector (its identity is checked; positions excepted, the profile steers every token).

    Raises:
        IsoKLError: see `steered_coeff`; both text and prompt_index; IdentityError: a calibration made for
            another model or vector; PromptIndexError: prompt_index beyond the held-out set.
    """
    from tl_isokl.figures.cosine import cosine_heatmap
    from tl_isokl.files import atomic_write_bytes, atomic_write_json
    from tl_isokl.model import model_info

    if text is not None and prompt_index is not None:
        raise IsoKLError("pass either text or prompt_index, not both")
    c, how = steered_coeff(coeff=coeff, alpha=alpha, calibration=calibration)
    if calibration is not None:
        from tl_isokl.identity import APPLIES, check_calibration, model_identity, vector_identity

        cal, source = _calibration(calibration)
        check_calibration(cal, {**model_identity(model), **vector_identity(vector)}, source=source,
                          fields=[f for f in APPLIES if f != "positions"],
                          fix="pass the --vector and --model it was made with")
    source = "--text"
    if text is None:
        from tl_isokl.prompt_sets import default_prompts

        ids, prompts = default_prompts(model, "heldout")
        i = 0 if prompt_index is None else int(prompt_index)
        if not 0 <= i < len(prompts):
            raise PromptIndexError(f"{i} is out of range: the held-out set has prompts 0..{len(prompts) - 1}")
        text, source = prompts[i], f"held-out prompt {i} ({ids[i]})"
    prof = cosine_profile(model, vector, text, coeff=c)
    out = Path(out) if out is not None else default_cosine_out(model, vector)
    png = atomic_write_bytes(out / "cosine.png", _png(cosine_heatmap(prof)))
    info = model_info(model)
    js = atomic_write_json(out / "cosine.json", {
        **profile_to_json(prof), "text": text, "source": source, "coeff_from": how, "model": info.get("name"),
        "revision": info.get("revision"), "vector_sha256": vector.sha256, "gated": vector.gate is not None})
    return CosineReport(profile=prof, text=text, source=source, coeff=c, coeff_from=how, png=png, json=js)


def _png(fig) -> bytes:
    import io

    from tl_isokl.report import DPI

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()

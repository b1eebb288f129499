"""Run identity: what a calibration or a run directory was made with, and one-line refusals when a command would
combine it with something else.

Why this exists: a run directory is resumable and a sweep can take a calibration made elsewhere. Both are sound
only if every piece was made for the same model, vector, gate, positions and statistic. Before this module a
changed `--gate/--tau/--target-kl/--stat/--concept/--positions` silently reused the old vector and calibration
of the default run folder, and `sweep --calibration X` took a calibration of another method, layer or vector.

On disk:

* calibration.json has ``"identity"``: `calibration_identity` (model, revision, dtype, vector sha256, method,
  layer, gate, tau, concept, positions, stat, target, tol, window, calibration-prompts hash, c_min, c_max).
* a sweep's manifest.json has ``"identity"``: `run_identity` (the sweep settings that change a cell's numbers
  plus the identity of the calibration it used), and ``"history"``: one entry per command that wrote into it.

Rules (documented in the README):

* A calibration given with ``--calibration`` must match the *applicability* fields (`APPLIES`): it was made for
  this model, vector and positions. Its own stat/target/window are the user's choice when making it.
* A calibration found in the run directory must match *every* field the sweep would calibrate with, and the
  vector stored there must have the requested method/layer/gate/tau/concept.
* Files written before identities existed are refused (their settings are unknown): pass ``--fresh`` or another
  ``--out``. ``--fresh`` removes only the files tl-isokl writes (`clear_run`), never anything else.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tl_isokl.errors import CalibrationError, IsoKLError, IsoKLWarning, RunDirError, VectorMismatchError
from tl_isokl.files import sha256_json

MODEL_FIELDS = ("model", "revision", "dtype")
VECTOR_FIELDS = ("method", "layer", "gate", "tau", "concept", "vector_sha256")
SETTING_FIELDS = ("stat", "target", "tol", "window", "prompts_sha256", "c_min", "c_max", "sampling")
# fields recorded only when not at their default (None): an identity without them means the default
OPTIONAL_FIELDS = ("sampling", "calibration_sampling")
CAL_FIELDS = (*MODEL_FIELDS, *VECTOR_FIELDS, "positions", *SETTING_FIELDS)
# what makes a calibration *valid for* a model + vector; enough for a calibration the user passes explicitly
APPLIES = (*MODEL_FIELDS, *VECTOR_FIELDS, "positions")

FIX_RUN = "pass another --out, or --fresh to delete this folder's tl-isokl files and start over"


class IdentityError(RunDirError):
    """A calibration, vector or run directory was made with other settings than the command asks for."""


# ------------------------------------------------------------------------------------------------ identities


def model_identity(model) -> dict[str, Any]:
    from tl_isokl.model import model_info

    info = model_info(model)
    return {"model": info.get("name"), "revision": info.get("revision"), "dtype": info.get("dtype")}


def concept_of(meta: Mapping[str, Any]) -> str | None:
    """Where a vector's contrastive sets came from: 'cheerful/gloomy', 'pos.txt/neg.txt', or a prompts hash."""
    pos, neg = meta.get("pos_source"), meta.get("neg_source")
    if pos and neg:
        strip = lambda s: str(s).removeprefix("concept:")  # noqa: E731
        return f"{strip(pos)}/{strip(neg)}"
    h = meta.get("prompts_sha256")
    return f"prompts {str(h)[:12]}" if h else None


def vector_identity(vector) -> dict[str, Any]:
    g = vector.gate
    return {"method": vector.method, "layer": int(vector.layer), "gate": g.kind if g else None,
            "tau": float(g.tau) if g else None, "concept": concept_of(vector.meta), "vector_sha256": vector.sha256}


def calibration_identity(model, vector, prompts: Sequence[str], *, stat: str, target: float, tol: float,
                         window: int, positions: str, c_min: float, c_max: float,
                         sampling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything that defines a calibration (written to calibration.json as "identity"). `sampling` only for
    sampled rollouts: greedy calibrations keep the identity they had before sampling existed."""
    ident = {**model_identity(model), **vector_identity(vector), "positions": positions, "stat": str(stat),
             "target": float(target), "tol": float(tol), "window": int(window),
             "prompts_sha256": sha256_json(list(prompts)), "c_min": float(c_min), "c_max": float(c_max)}
    if sampling:
        ident["sampling"] = dict(sampling)
    return ident


def run_identity(config: Mapping[str, Any], calibration: Mapping[str, Any]) -> dict[str, Any]:
    """A sweep's identity: its configuration (model, vector, c*, window, probe, prompts, ...) plus the identity of
    the calibration it used, flattened so a mismatch names one field at a time."""
    ident = dict(config)
    cal = calibration.get("identity") or {}
    for k in SETTING_FIELDS:
        ident[f"calibration_{k}"] = cal.get(k)
    return ident


# ------------------------------------------------------------------------------------------------ comparison


def show(v: Any) -> str:
    """A value in a one-line message: hashes shortened, floats in %g, None as 'none'."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    s = str(v)
    if len(s) == 64 and all(c in "0123456789abcdef" for c in s):
        return s[:12]
    return s


def differences(found: Mapping[str, Any], wanted: Mapping[str, Any], fields: Iterable[str] | None = None
                ) -> list[tuple[str, Any, Any]]:
    """[(field, found value, wanted value)] for each field whose values differ (a missing field differs)."""
    out = []
    for k in (fields if fields is not None else wanted.keys()):
        a, b = found.get(k, None if k in OPTIONAL_FIELDS else "<missing>"), wanted.get(k)
        if isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0):
            continue
        if a != b:
            out.append((k, a, b))
    return out


def describe(diffs: list[tuple[str, Any, Any]], found: str, wanted: str) -> str:
    return "; ".join(f"{k}: {show(a)} ({found}) vs {show(b)} ({wanted})" for k, a, b in diffs)


def check_calibration(cal: Mapping[str, Any], wanted: Mapping[str, Any], *, source: str, fix: str,
                      fields: Sequence[str] = CAL_FIELDS) -> None:
    """Raise IdentityError unless calibration `cal` records an identity equal to `wanted` on `fields`."""
    ident = cal.get("identity")
    if not isinstance(ident, dict):
        raise IdentityError(f"{source} records no identity (written by an older tl-isokl, so what it calibrated "
                            f"is unknown); {fix}")
    diffs = differences(ident, wanted, [f for f in fields if f in wanted])
    if diffs:
        raise IdentityError(f"{source} was made with other settings: {describe(diffs, 'calibration', 'this command')}"
                            f"; {fix}")


def usable_calibration(cal: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """A calibration handed in from outside (a --calibration file, a dict): it has a numeric c_star and records
    what it calibrated; whether that matches this model and vector is checked once they are known."""
    c_star = cal.get("c_star")
    if not isinstance(c_star, (int, float)) or isinstance(c_star, bool):
        raise IsoKLError(f"{source} has no numeric c_star; it is not a calibration.json written by `tl-isokl "
                         f"calibrate`")
    check_calibration(cal, {}, source=source, fix="recalibrate with `tl-isokl calibrate`")
    return cal


def check_converged(cal: Mapping[str, Any], *, allow: bool, source: str) -> None:
    """Refuse a calibration with converged: false unless the user allowed it (then the manifest records it)."""
    if cal.get("converged") is False and not allow:
        raise CalibrationError(
            f"{source} did not converge ({cal.get('stat')} = {show(cal.get('achieved'))} vs target "
            f"{show(cal.get('target'))}, tol {show(cal.get('tol'))} relative), so alpha = 1 is not the iso-KL dose; "
            f"recalibrate (e.g. another --tol or --window) or pass --allow-unconverged to use it anyway")


def same_model(a: Any, b: Any) -> bool:
    """Two recorded model names denote the same model: equal, or the same folder on this machine."""
    if a == b:
        return True
    if not a or not b:
        return False
    try:
        pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
        return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()
    except OSError:
        return False


def check_vector_model(vector, model, *, allow: bool, source: str) -> None:
    """Refuse a vector whose metadata names another model than the loaded one (unless allowed).

    The d_model/layer check (`SteeringVector.check_model`) passes for any model of the same width; a direction
    read from another model's residual stream means nothing here, so the recorded name must match too.
    """
    rec, rec_rev = vector.meta.get("model"), vector.meta.get("revision")
    if rec is None or allow:
        return
    have = model_identity(model)
    if not same_model(rec, have["model"]):
        raise VectorMismatchError(f"{source} was extracted on model {rec!r}, not the loaded {have['model']!r}; "
                                  f"pass --model {rec}, or --allow-other-model to apply it anyway")
    if rec_rev and have["revision"] and rec_rev != have["revision"]:
        raise VectorMismatchError(f"{source} was extracted on revision {rec_rev} of {rec!r}, the loaded one is "
                                  f"{have['revision']}; pass --allow-other-model to apply it anyway")


def check_sweep_inputs(model, vector, calibration: Mapping[str, Any], *, positions: str, allow_unconverged: bool,
                       allow_other_model: bool, source: str = "the calibration") -> dict[str, Any]:
    """The library-level checks of `sweep()`; returns manifest fields that record what was allowed.

    The vector must have been extracted on this model (unless allowed); the calibration must have been made for
    this model, vector and positions (`APPLIES`) and have converged (unless allowed). A calibration dict without
    an identity (built by hand in Python) cannot be checked: it is used with an IsoKLWarning and the manifest
    says `calibration_checked: false` (the CLI refuses such files outright).
    """
    check_vector_model(vector, model, allow=allow_other_model, source="the vector")
    wanted = {**model_identity(model), **vector_identity(vector), "positions": positions}
    checked = bool(calibration.get("identity"))  # an empty identity (a hand-made dict read back) is unknown
    if checked:
        check_calibration(calibration, wanted, source=source, fields=APPLIES,
                          fix="use a calibration made for this model, vector and --positions, or calibrate again")
    else:
        warnings.warn(f"{source} records no identity, so it cannot be checked against this model and vector; "
                      f"use CalibrationResult.to_dict() of `calibrate` to have it checked", IsoKLWarning,
                      stacklevel=3)
    check_converged(calibration, allow=allow_unconverged, source=source)
    rec = vector.meta.get("model")
    return {"calibration_checked": checked, "calibration_converged": calibration.get("converged"),
            "allow_unconverged": bool(allow_unconverged and calibration.get("converged") is False),
            "vector_model": rec, "allow_other_model": bool(rec is not None and not same_model(rec, wanted["model"]))}


def check_run(manifest: Mapping[str, Any], wanted: Mapping[str, Any], path: str | Path) -> None:
    """Refuse to write a sweep into a run directory whose recorded identity differs from `wanted`.

    A folder written by `tl-isokl calibrate` has no sweep identity (its calibration was compared by the caller).
    """
    if manifest.get("command") == "calibrate":
        return
    old = manifest.get("identity")
    if not isinstance(old, dict):
        raise IdentityError(f"{path} was written by an older tl-isokl (its manifest.json records no identity, so "
                            f"its settings are unknown); {FIX_RUN}")
    diffs = differences(old, wanted)
    if diffs:
        raise IdentityError(f"{path} holds a run with other settings: {describe(diffs, 'run', 'this command')}; "
                            f"{FIX_RUN}")


def reuse_vector(stored, requested, *, source: str, extracted: bool):
    """The vector to use when a run directory already holds one: the stored one if it is the requested one, or
    if `requested` was just extracted with the same method/layer/gate/tau/concept (then resumption stays
    bit-exact even if re-extraction on another device differs in the last bits); else IdentityError."""
    a, b = vector_identity(stored), vector_identity(requested)
    if a["vector_sha256"] == b["vector_sha256"]:
        return stored
    diffs = differences(a, b, [f for f in VECTOR_FIELDS if f != "vector_sha256"])
    if not diffs and extracted:
        return stored
    diffs = diffs or differences(a, b, ["vector_sha256"])
    raise IdentityError(f"{source} holds another vector: {describe(diffs, 'run', 'this command')}; {FIX_RUN}")


# ------------------------------------------------------------------------------------------------ checks of results


def heldout_transfer(run, alpha: float = 1.0) -> dict[str, Any] | None:
    """The calibration's statistic on the pooled per-token KL of the held-out cell at `alpha` (default 1 = c*).

    None when the run has no such cell or no calibration statistic. `off` is True when the value is more than 2x
    away from the target in either direction: the calibration did not transfer to the held-out prompts/window.
    """
    from tl_isokl.statistics import pool as kl_pool
    from tl_isokl.statistics import statistic

    cal = run.calibration or {}
    stat, target = cal.get("stat"), cal.get("target")
    if not isinstance(stat, str) or not isinstance(target, (int, float)) or not target > 0:
        return None
    ts = [t for t in run.trajectories if t.alpha == alpha]
    if not ts:
        return None
    try:
        fn = statistic(stat)
    except IsoKLError:
        return None
    pool = kl_pool(t.kl for t in ts)
    value = fn(pool)
    ratio = value / target if target else float("nan")
    off = bool(math.isfinite(ratio) and (ratio > 2.0 or ratio < 0.5)) or not math.isfinite(value)
    return {"alpha": alpha, "stat": stat, "value": value, "target": float(target), "ratio": ratio, "off": off,
            "n_tokens": int(pool.size)}


def transfer_message(t: Mapping[str, Any]) -> str:
    if not math.isfinite(t["value"]):
        return (f"held-out {t['stat']} KL at alpha = {t['alpha']:g} is undefined ({t['n_tokens']} tokens); the "
                f"calibration could not be checked on the held-out prompts")
    r = t["ratio"]
    how = f"{r:.3g}x the target" if r >= 1 else f"{1 / r:.3g}x below the target" if r > 0 else "0"
    return (f"held-out {t['stat']} KL at alpha = {t['alpha']:g} is {t['value']:.4g} nats, {how} {t['target']:g}: "
            f"the calibration did not transfer to the held-out prompts/window, so alpha is not a like-for-like "
            f"dose (calibrate on prompts and a window like the held-out ones)")


def is_ablation(method: str) -> bool:
    """Does `method` apply its direction with the ablate operator (directional_ablation, pca+ablate, ...)?"""
    from tl_isokl.methods import parse_method

    try:
        return parse_method(str(method))[1].name == "ablate"
    except IsoKLError:
        return False


def reflection_message(method: str, c_star: float, gated: bool = False) -> str | None:
    """For an ablation, c = 1 removes the component along r and c = 2 reflects it; a c* above 1 spends the KL
    budget on (partly) reflecting the component, which is no longer an ablation. None when that does not apply."""
    if not is_ablation(method) or not c_star > 1.0:
        return None
    where = " (on tokens where c* x gate > 1)" if gated else ""
    return (f"{method} calibrated to c* = {c_star:.4g} > 1: c = 1 removes the component along the direction and "
            f"c = 2 reflects it, so this budget is spent on a reflection{where}, not an ablation")


def warn_reflection(vector, c_star: float) -> None:
    """IsoKLWarning (one 'Warning:' line in the CLI) when an ablation's calibrated dose exceeds 1."""
    msg = reflection_message(vector.method, c_star, vector.gate is not None)
    if msg:
        warnings.warn(msg, IsoKLWarning, stacklevel=3)


def run_notes(run) -> list[str]:
    """Report notes about what the numbers of a run do *not* mean: an unconverged calibration that was allowed,
    an ablation dose beyond 1, a calibration that did not transfer, a vector applied to another model."""
    notes = []
    cal, man = run.calibration or {}, run.manifest
    if cal.get("converged") is False:
        notes.append(f"The calibration did not converge ({cal.get('stat')} = {show(cal.get('achieved'))} vs target "
                     f"{show(cal.get('target'))}, tolerance {show(cal.get('tol'))} relative); the sweep used it "
                     f"because of --allow-unconverged, so alpha = 1 is only approximately the iso-KL dose.")
    c = cal.get("c_star", man.get("c_star"))
    if isinstance(c, (int, float)):
        msg = reflection_message(str(man.get("method")), float(c), bool(man.get("gate")))
        if msg:
            notes.append(msg[0].upper() + msg[1:] + ".")
    t = heldout_transfer(run)
    if t is not None and t["off"]:
        notes.append(transfer_message(t)[0].upper() + transfer_message(t)[1:] + ".")
    if man.get("allow_other_model"):
        notes.append(f"The vector was extracted on {man.get('vector_model')!r} and applied to {man.get('model')!r} "
                     f"(--allow-other-model).")
    return notes


# ------------------------------------------------------------------------------------------------ --fresh


def clear_run(path: str | Path) -> list[Path]:
    """Delete the files tl-isokl writes into a run/calibration folder, and nothing else; return what was removed.

    Removed: manifest.json, calibration.json, vector.safetensors, forks.csv, summary.csv, report.md,
    cells/alpha=*.jsonl, the three figures/*.png, inspect/ pages (index.html, trace-r*.html, deaths.json/csv,
    the circuitsvis bundle), and leftover atomic-write temp files of those names. Folders are removed only if
    they end up empty. Any other file (notes, other tools' outputs) stays, and so does its folder.
    """
    from tl_isokl.rundir import RunDir

    root = Path(path)
    if not root.exists():
        return []
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder; pass a run directory as --out")
    plan = RunDir(root).owned_files()
    removed: list[Path] = []
    for folder, patterns in plan:
        if not folder.is_dir() or folder.is_symlink():
            continue
        for pat in patterns:
            for p in [*folder.glob(pat), *folder.glob(f".{pat}.*.tmp")]:
                if p.is_file() or p.is_symlink():
                    p.unlink()
                    removed.append(p)
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()
    return removed

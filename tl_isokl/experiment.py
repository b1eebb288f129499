"""The seed's experiment from settings: `calibrate` and `sweep` as the commands run them, callable from Python.

A command parses its flags into `ExperimentSettings` and calls `run_calibration_experiment` or
`run_sweep_experiment`; the library does the rest, in this order, so every caller behaves the same:

1. everything that needs no model: the vector file, prompt files, an explicit calibration, the folder
   (`runpolicy.open_run`: writable, undamaged, made with these settings) -- `sweep_inputs`;
2. the model, the vector (from the file, the folder being resumed, or extracted from the concept sets), the
   calibration (explicit, found in the folder, or made now) -- `prepare_sweep`, a `SweepPlan`;
3. for a sweep, the alpha cells (`SweepPlan.run`), then tables, figures and report (`finish_sweep`).

A grid's cells (`tl_isokl.grid`) run the same steps piecewise: the calibrate cell prepares, each sweep cell
prepares (finding the calibration) and runs its alphas, the merge finishes.

Progress and messages go through `echo` / `warn` callbacks (the CLI prints them; Python callers may ignore them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tl_isokl.calibrate import NLL_DELTA  # the behavioural target's statistic name (not a KL pool)
from tl_isokl.errors import IsoKLError, SettingsError

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class ExperimentSettings:
    """Every setting of a calibration or a sweep (the flags of `tl-isokl calibrate` / `tl-isokl sweep`)."""

    model: str | None = None
    dtype: str = "float32"
    device: str | None = None
    vector_path: Path | None = None
    vector: Any = None  # the --vector file's SteeringVector when the caller already read it (else read here)
    method: str = "mean_diff"
    layer: int | None = None
    concept: str = "cheerful/gloomy"
    gate: str | None = None
    tau: float | None = None
    positions: str = "all"
    window: int = 256
    target: float = 1.0
    stat: str = "p95"
    tol: float = 0.05
    c_min: float = 1e-4
    c_max: float = 1e4
    calibration_prompts: Path | None = None
    batch_size: int = 32
    seed: int = 0
    out: Path | None = None
    fresh: bool = False
    allow_other_model: bool = False
    # sweep only
    calibration_path: Path | None = None
    heldout_prompts: Path | None = None
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
    threshold: float = 0.75
    schedule: str | int = "log2"
    allow_unconverged: bool = False
    figures: bool = True
    # the probe and the prompt framing (both recorded in the manifest)
    probe_preset: str | None = None
    probe_file: Path | None = None
    probe_prefill: str | None = None
    probe_true: tuple[str, ...] = ()
    probe_false: tuple[str, ...] = ()
    probe_think_close: str | None = None
    skip_preflight: bool = False
    chat_template: str = "auto"
    revision: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    samples_per_prompt: int = 1
    two_sided: bool = False  # calibrate -v too; negative alphas are doses of its own c*
    extra: dict[str, Any] = field(default_factory=dict)

    def sampling(self):
        """How rollouts pick tokens: greedy (temperature 0, the default) or seeded sampling (seed = --seed)."""
        from tl_isokl.rollout import Sampling

        return Sampling(self.temperature, self.top_p, self.seed)

    def probe(self):
        """The ProbeSpec these settings ask for (a preset or file, then the per-field flags)."""
        from tl_isokl.probe_presets import probe_spec

        return probe_spec(self.probe_preset, file=self.probe_file, prefill=self.probe_prefill,
                          true=self.probe_true, false=self.probe_false, think_close=self.probe_think_close)


# ------------------------------------------------------------------------------------------------ inputs


def concept_names(concept: str) -> tuple[str, str]:
    """'cheerful/gloomy' -> ('cheerful', 'gloomy')."""
    if concept.count("/") != 1:
        raise IsoKLError(f"concept {concept!r} must be POS/NEG, e.g. cheerful/gloomy")
    pos, neg = concept.split("/")
    return pos, neg


def prompt_set(model, path: str | Path | None, kind: str, chat_template: str = "auto"
               ) -> tuple[list[str], list[str], dict[str, Any]]:
    """(ids, prompts, framing) from a file, framed by `chat_template` (`prompt_sets.frame_prompts`), or the
    model's default set of this kind ("calibration" / "heldout"). `framing` says how, for the manifest."""
    from tl_isokl.prompt_sets import default_prompts, frame_prompts

    if path is not None:
        from tl_isokl.prompts import read_prompts

        prompts, how = frame_prompts(model, read_prompts(path), chat_template)
        ids = [f"{kind[:3]}{i:03d}" for i in range(len(prompts))]
    else:
        ids, prompts = default_prompts(model, kind)
        how = "built-in set (framed for this model)"
    return ids, prompts, {"source": str(path) if path is not None else "built-in", "framing": how,
                          "first_prompt": prompts[0] if prompts else None}


def file_vector(s: ExperimentSettings):
    """The --vector file's vector (with the requested gate), or None; loaded before any model.

    Any file `tl_isokl.vector_formats.read_vector` reads: tl-isokl's own, another tool's tensor or {layer: tensor}
    file (`s.layer` when it does not say its layer), or an SAE feature; `vector_path` may be a `VectorSource`
    naming the tensor (key), the SAE feature or the method (external+ablate)."""
    if s.vector_path is None:
        return None
    if s.vector is not None:  # read (and gated) by the caller already: one read of a possibly large file
        return s.vector
    from tl_isokl.vector import Gate
    from tl_isokl.vector_formats import read_vector

    vec = read_vector(s.vector_path, layer=s.layer)
    return vec.with_gate(Gate(s.gate, 0.0 if s.tau is None else s.tau)) if s.gate else vec


def model_vector(model, s: ExperimentSettings, file_vec=None):
    """The steering vector for this model: the file's (checked to have been made on this model unless
    allowed), or one extracted now from the concept's contrastive sets."""
    from tl_isokl.identity import check_vector_model

    if file_vec is not None:
        check_vector_model(file_vec, model, allow=s.allow_other_model, source="the --vector file")
        vec = file_vec
    else:
        from tl_isokl.extract import extract
        from tl_isokl.prompt_sets import default_concepts
        from tl_isokl.vector import Gate

        pos_name, neg_name = concept_names(s.concept)
        pos, neg = default_concepts(model, pos_name, neg_name)
        g = Gate(s.gate, 0.0 if s.tau is None else s.tau) if s.gate else None
        vec = extract(model, pos, neg, method=s.method, layer=s.layer, gate=g,
                      sources=(f"concept:{pos_name}", f"concept:{neg_name}"))
    vec.check_model(model)
    return vec


def check_stat(stat: str) -> None:
    """A calibration statistic: a registered KL-pool statistic, or "nll_delta"."""
    if stat != NLL_DELTA:
        from tl_isokl.statistics import statistic

        statistic(stat)


def concept_readout(model, s: ExperimentSettings, vec):
    """The ruler of the concept effect (`tl_isokl.effect.ConceptAxis`): the mean-diff axis of the concept's
    contrastive sets at the vector's layer, read at the positions the vector was extracted from, whatever the
    method (so every spec of a comparison is judged on the same axis)."""
    from tl_isokl.effect import concept_axis
    from tl_isokl.prompt_sets import default_concepts

    pos, neg = default_concepts(model, *concept_names(s.concept))
    return concept_axis(model, pos, neg, layer=vec.layer, token=str(vec.meta.get("token", "last")),
                        batch_size=min(s.batch_size, 16))


def load(s: ExperimentSettings, echo: Echo = _quiet):
    import torch

    from tl_isokl.model import load_model

    torch.manual_seed(s.seed)
    echo(f"loading model {s.model or 'embedded test bed'} ({s.dtype})")
    return load_model(s.model, dtype=s.dtype, device=s.device, revision=s.revision)


def calibrate_verbose(model, vec, ids, prompts, s: ExperimentSettings, *, echo: Echo = _quiet,
                      on_round: Callable | None = None, progress: Callable | None = None) -> dict[str, Any]:
    """`calibrate` with a header and a result line through `echo`; returns calibration.json's content."""
    from tl_isokl.calibrate import calibrate, calibrate_nll_delta

    gate = f"+{vec.gate.kind}:{vec.gate.tau:g}" if vec.gate is not None else ""
    echo(f"calibrating {vec.method}{gate} L{vec.layer} on {len(prompts)} prompts, window {s.window}, "
         f"target {s.stat} = {s.target} nats")
    kw = dict(prompt_ids=ids, window=s.window, target=s.target, tol=s.tol, batch_size=s.batch_size, c_min=s.c_min,
              c_max=s.c_max, on_round=on_round, progress=progress, positions=s.positions, sampling=s.sampling())
    if s.stat == NLL_DELTA:  # base-text perplexity delta: teacher forcing of fixed base rollouts only
        res = calibrate_nll_delta(model, vec, prompts, **kw)
    else:
        res = calibrate(model, vec, prompts, stat=s.stat, **kw)
    sp = res.spread()
    echo(f"c* = {res.c_star:.6g}  ({s.stat} = {res.achieved:.4g}, converged={res.converged}, "
         f"{len(res.history)} doses in {res.rounds} rounds, {res.seconds:.1f} s)")
    if sp["min"] is not None:
        echo(f"per-prompt c*: min {sp['min']:.4g}  median {sp['median']:.4g}  max {sp['max']:.4g}  "
             f"(x{sp['ratio']:.3g} spread; {sp['not_bracketed']} prompt(s) never crossed the target)")
    return res.to_dict()


def run_preflight(model, prompts: Sequence[str], probe, s: ExperimentSettings, echo: Echo = _quiet) -> dict:
    """`preflight.check_preflight` with its result echoed; raises PreflightError when the probe cannot be
    answered by the unsteered model."""
    from tl_isokl.preflight import check_preflight

    pre = check_preflight(model, prompts, probe, threshold=s.threshold, skip=s.skip_preflight,
                          batch_size=min(s.batch_size, 8), late_window=min(s.window, 32))
    if pre.get("skipped"):
        echo("preflight: skipped (--skip-preflight)")
    else:
        late = ("" if pre["alive_late"] is None
                else f", at t = {pre['late_fork']} of a base rollout {pre['alive_late']:.0%}")
        echo(f"preflight: the unsteered model answers the probe at t = 0 on {pre['alive_t0']:.0%} of "
             f"{pre['n']} prompts{late}")
    return pre


# ------------------------------------------------------------------------------------------------ calibrate


def calibration_request(s: ExperimentSettings, spec: str, file_vec) -> dict[str, Any]:
    """Every setting that changes a calibration: the hash behind its default folder name."""
    from tl_isokl.runpolicy import file_sha

    return {"model": spec, "dtype": s.dtype, "positions": s.positions, "window": s.window, "target": s.target,
            "stat": s.stat, "tol": s.tol, "c_min": s.c_min, "c_max": s.c_max,
            "prompts": file_sha(s.calibration_prompts),
            "vector": file_vec.sha256 if file_vec else {"method": s.method, "layer": s.layer, "concept": s.concept},
            "gate": s.gate, "tau": s.tau, **({"chat_template": s.chat_template} if s.chat_template != "auto" else {}),
            **({"revision": s.revision} if s.revision else {}),
            **({"sampling": s.sampling().to_dict()} if s.temperature > 0 else {})}


def run_calibration_experiment(s: ExperimentSettings, *, echo: Echo = _quiet, on_round: Callable | None = None,
                               progress: Callable | None = None) -> Path:
    """`tl-isokl calibrate`: find c* and write calibration.json, the vector and the manifest; returns the folder."""
    from tl_isokl.identity import calibration_identity, same_model
    from tl_isokl.files import atomic_write_json
    from tl_isokl.model import model_info
    from tl_isokl.prompts import read_prompts
    from tl_isokl.rundir import Manifest
    from tl_isokl.runpolicy import (check_calibration_target, check_recalibration, default_run_path, model_spec,
                                    open_run, start_fresh)

    check_stat(s.stat)
    probe = s.probe()  # a bad probe file or preset fails now
    file_vec = file_vector(s)
    if s.calibration_prompts is not None:
        read_prompts(s.calibration_prompts)  # a malformed prompt file fails now, not after the model loads
    spec = model_spec(s.model)
    out = s.out or default_run_path("calibrate", spec, file_vec.method if file_vec else s.method,
                                    file_vec.layer if file_vec else s.layer, s.window,
                                    calibration_request(s, spec, file_vec))
    state = open_run(out, fresh=s.fresh, load_vector=False)
    check_calibration_target(state)
    rd = state.rd
    model = load(s, echo)
    vec = model_vector(model, s, file_vec)
    ids, prompts, framing = prompt_set(model, s.calibration_prompts, "calibration", s.chat_template)
    pre = run_preflight(model, prompts, probe, s, echo)
    wanted = calibration_identity(model, vec, prompts, stat=s.stat, target=s.target, tol=s.tol, window=s.window,
                                  positions=s.positions, c_min=s.c_min, c_max=s.c_max,
                                  sampling=s.sampling().to_dict() if s.temperature > 0 else None)
    check_recalibration(state, wanted)
    removed = start_fresh(state)
    if removed:
        echo(f"--fresh: removed {len(removed)} tl-isokl file(s) from {out}")
    cal = calibrate_verbose(model, vec, ids, prompts, s, echo=echo, on_round=on_round, progress=progress)
    vec.save(rd.vector_path)
    atomic_write_json(rd.calibration_path, cal)
    name = model_info(model)["name"]
    rec = vec.meta.get("model")
    rd.record(Manifest.of(
        "calibrate", model, vec, wanted["prompts_sha256"], len(prompts), window=s.window, seed=s.seed,
        positions=s.positions, target=s.target, stat=s.stat, tol=s.tol, c_min=s.c_min, c_max=s.c_max,
        identity=wanted, calibration_converged=cal["converged"], vector_model=rec,
        allow_other_model=bool(rec and not same_model(rec, name)), probe=probe.to_dict(), preflight=pre,
        framing=framing))
    return Path(out)


# ------------------------------------------------------------------------------------------------ sweep


def read_explicit_calibration(path: Path, *, heldout: Sequence[str] | None, allow_unconverged: bool,
                              heldout_path: Path | None = None) -> dict[str, Any]:
    """An explicit calibration file, checked before the model loads: a calibration.json with an identity, its
    prompts disjoint from the held-out ones, converged (unless allowed)."""
    from tl_isokl.files import read_json
    from tl_isokl.identity import check_converged, usable_calibration

    cal = usable_calibration(read_json(path, kind=dict), str(path))
    if heldout is not None and set(heldout) & set(cal.get("prompts") or []):
        raise SettingsError(f"--prompts {heldout_path} shares prompts with the calibration prompts of "
                            f"--calibration {path}; held-out prompts must be disjoint from them")
    check_converged(cal, allow=allow_unconverged, source=str(path))
    return cal


def sweep_request(s: ExperimentSettings, spec: str, file_vec, ext_cal: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every setting that changes a sweep's results: the hash behind its default folder name."""
    from tl_isokl.files import sha256_json
    from tl_isokl.runpolicy import file_sha

    return {"model": spec, "dtype": s.dtype, "positions": s.positions, "window": s.window,
            "vector": file_vec.sha256 if file_vec else {"method": s.method, "layer": s.layer, "concept": s.concept},
            "gate": s.gate, "tau": s.tau, "threshold": s.threshold, "forks": s.schedule,
            "heldout": file_sha(s.heldout_prompts),
            "calibration": (sha256_json({k: ext_cal.get(k) for k in ("identity", "c_star")}) if ext_cal
                            else {"target": s.target, "stat": s.stat, "tol": s.tol, "c_min": s.c_min,
                                  "c_max": s.c_max, "prompts": file_sha(s.calibration_prompts)}),
            **_non_default(s)}


def _non_default(s: ExperimentSettings) -> dict[str, Any]:
    """The probe and framing settings, only where they differ from the defaults (so default folder names made
    before these settings existed stay the same)."""
    from tl_isokl.probe import ProbeSpec

    out: dict[str, Any] = {"revision": s.revision} if s.revision else {}
    if s.temperature > 0:
        out["sampling"] = {**s.sampling().to_dict(), "samples_per_prompt": s.samples_per_prompt}
    if s.two_sided:
        out["two_sided"] = True
    probe = s.probe()
    if probe != ProbeSpec():
        out["probe"] = probe.to_dict()
    if s.chat_template != "auto":
        out["chat_template"] = s.chat_template
    return out


def _explicit_fix(s: ExperimentSettings) -> str:
    """What to do when --calibration X was made for something else: the vector saved next to it, if any."""
    sibling = Path(s.calibration_path).parent / "vector.safetensors"
    if s.vector_path is None and sibling.is_file():
        return f"pass the vector it was made with (--vector {sibling}), or drop --calibration to calibrate here"
    return "pass a calibration made for this vector and model, or drop --calibration to calibrate here"


@dataclass
class SweepInputs:
    """What a sweep's settings hold before any model loads, read and checked (`sweep_inputs`)."""

    alphas: tuple[float, ...]
    probe: Any  # ProbeSpec
    file_vec: Any  # the --vector file's SteeringVector, or None (extracted)
    calibration: dict[str, Any] | None  # an explicit --calibration file, or None
    out: Path
    state: Any  # runpolicy.OpenRun of `out`


def sweep_inputs(s: ExperimentSettings) -> SweepInputs:
    """Step 1 of a sweep, no model needed: flags, files, an explicit calibration, the run folder (named like
    `tl-isokl sweep`'s default when `s.out` is None). Every error here comes before minutes of model loading."""
    from tl_isokl.prompts import read_prompts
    from tl_isokl.runpolicy import default_run_path, model_spec, open_run
    from tl_isokl.sweep import parse_alphas

    alphas = parse_alphas(s.alphas)
    check_stat(s.stat)
    probe = s.probe()  # a bad probe file or preset fails now
    file_vec = file_vector(s)
    heldout_file = read_prompts(s.heldout_prompts) if s.heldout_prompts is not None else None
    if s.calibration_prompts is not None:
        cal_file = read_prompts(s.calibration_prompts)
        if heldout_file is not None and set(heldout_file) & set(cal_file):
            n = len(set(heldout_file) & set(cal_file))
            raise SettingsError(f"{n} prompt(s) of --prompts {s.heldout_prompts} are also in --calibration-prompts "
                                f"{s.calibration_prompts}; held-out prompts must be disjoint from the calibration "
                                f"prompts")
    ext_cal = None
    if s.two_sided and s.calibration_path is not None:
        raise SettingsError("--two-sided calibrates -v in the run directory; it does not combine with --calibration "
                            "(drop one of them)")
    if s.calibration_path is not None:
        ext_cal = read_explicit_calibration(s.calibration_path, heldout=heldout_file,
                                            allow_unconverged=s.allow_unconverged, heldout_path=s.heldout_prompts)
    spec = model_spec(s.model)
    out = s.out or default_run_path("sweep", spec, Path(s.vector_path).stem if s.vector_path else s.method,
                                    file_vec.layer if file_vec else s.layer, s.window,
                                    sweep_request(s, spec, file_vec, ext_cal))
    state = open_run(out, fresh=s.fresh, explicit_calibration=ext_cal is not None)
    return SweepInputs(alphas, probe, file_vec, ext_cal, Path(out), state)


@dataclass
class SweepPlan:
    """A sweep ready to run: the model, vector, calibration and held-out prompts, and the exact keyword arguments
    `sweep.sweep` gets. One preparation for every caller (the command, a grid's cells, Python), so a cell that
    runs part of a sweep sweeps exactly what the whole sweep would."""

    settings: ExperimentSettings
    model: Any
    vector: Any  # SteeringVector (the run folder's own when resuming)
    calibration: dict[str, Any]
    prompts: list[str]  # held-out, framed
    out: Path
    preflight: dict[str, Any]
    kwargs: dict[str, Any]  # sweep.sweep's keywords: prompt_ids, answers, alphas, window, ..., manifest_extra

    @property
    def prompt_ids(self) -> list[str]:
        return list(self.kwargs["prompt_ids"])

    @property
    def calibration_neg(self) -> dict[str, Any] | None:
        return self.kwargs.get("calibration_neg")

    def run(self, progress: Callable | None = None, **overrides: Any):
        """`sweep.sweep` with the prepared arguments (`overrides` replace some, e.g. decode_batch_size); the Run."""
        from tl_isokl.sweep import sweep

        return sweep(self.model, self.vector, self.calibration, self.prompts, self.out, progress=progress,
                     **{**self.kwargs, **overrides})


def prepare_sweep(s: ExperimentSettings, *, echo: Echo = _quiet, on_round: Callable | None = None,
                  cal_progress: Callable | None = None, model=None, preflight: dict | None = None) -> SweepPlan:
    """Steps 1 and 2 of a sweep: checks, the model, the vector, the prompts, the preflight and the calibration
    (explicit, found in the folder, or made now: the only step that may take minutes), without sweeping.
    `model`: an already loaded model for `s.model`; `preflight`: the result of an earlier preflight on the same
    model, held-out prompts and probe (not rerun)."""
    from tl_isokl.files import atomic_write_json, read_json
    from tl_isokl.identity import FIX_RUN, calibration_identity, check_calibration, check_converged
    from tl_isokl.runpolicy import choose_calibration, resolve_vector, start_fresh

    inp = sweep_inputs(s)
    file_vec, ext_cal, out, state, probe = inp.file_vec, inp.calibration, inp.out, inp.state, inp.probe
    rd = state.rd

    model = load(s, echo) if model is None else model
    vec = resolve_vector(state, model_vector(model, s, file_vec), extracted=file_vec is None)
    cids, cprompts, cframing = prompt_set(model, s.calibration_prompts, "calibration", s.chat_template)
    ids, prompts, hframing = prompt_set(model, s.heldout_prompts, "heldout", s.chat_template)
    # before minutes of calibration, not after; `preflight` = a result for this model, prompts and probe already
    pre = preflight if preflight is not None else run_preflight(model, prompts, probe, s, echo)
    sampling_id = s.sampling().to_dict() if s.temperature > 0 else None
    wanted = calibration_identity(model, vec, cprompts, stat=s.stat, target=s.target, tol=s.tol, window=s.window,
                                  positions=s.positions, c_min=s.c_min, c_max=s.c_max, sampling=sampling_id)
    cal = choose_calibration(state, wanted, explicit=ext_cal, explicit_source=str(s.calibration_path),
                             allow_unconverged=s.allow_unconverged,
                             explicit_fix=_explicit_fix(s) if ext_cal else "")
    if cal is not None and ext_cal is None:
        echo(f"resuming: using {rd.calibration_path} (c* = {cal['c_star']:.6g})")
    removed = start_fresh(state)
    if removed:
        echo(f"--fresh: removed {len(removed)} tl-isokl file(s) from {out}")
    if cal is None:
        cal = calibrate_verbose(model, vec, cids, cprompts, s, echo=echo, on_round=on_round, progress=cal_progress)
        if cal["converged"] is False and not s.allow_unconverged:
            vec.save(rd.vector_path)  # keep the work: a rerun with --allow-unconverged uses it
            atomic_write_json(rd.calibration_path, cal)
            check_converged(cal, allow=False, source=f"the calibration (kept in {rd.calibration_path})")
    cal_neg = None
    if s.two_sided:  # -v need not cost the same KL as +v: its own c*, same settings, same checks
        neg = -vec
        wanted_neg = calibration_identity(model, neg, cprompts, stat=s.stat, target=s.target, tol=s.tol,
                                          window=s.window, positions=s.positions, c_min=s.c_min, c_max=s.c_max,
                                          sampling=sampling_id)
        if not s.fresh and rd.calibration_neg_path.is_file():
            cal_neg = read_json(rd.calibration_neg_path, kind=dict)
            check_calibration(cal_neg, wanted_neg, source=str(rd.calibration_neg_path), fix=FIX_RUN)
            check_converged(cal_neg, allow=s.allow_unconverged, source=str(rd.calibration_neg_path))
            echo(f"resuming: using {rd.calibration_neg_path} (c*(-v) = {cal_neg['c_star']:.6g})")
        else:
            echo("two-sided: calibrating -v")
            cal_neg = calibrate_verbose(model, neg, cids, cprompts, s, echo=echo, on_round=on_round,
                                        progress=cal_progress)
            check_converged(cal_neg, allow=s.allow_unconverged, source="the calibration of -v")
    from tl_isokl.prompt_sets import prompt_answers

    answers = prompt_answers(model, s.heldout_prompts, "heldout")
    readout = concept_readout(model, s, vec) if file_vec is None else None
    kwargs = dict(prompt_ids=ids, answers=answers, alphas=inp.alphas, window=s.window, threshold=s.threshold,
                  spec=probe, schedule=s.schedule, positions=s.positions, batch_size=s.batch_size,
                  sampling=s.sampling(), samples_per_prompt=s.samples_per_prompt, calibration_neg=cal_neg,
                  readout=readout, seed=s.seed, allow_unconverged=s.allow_unconverged,
                  allow_other_model=s.allow_other_model,
                  manifest_extra={"calibration_source": str(Path(s.calibration_path).resolve())
                                  if s.calibration_path else "calibrated in this run directory", "preflight": pre,
                                  "framing": {"calibration": cframing, "heldout": hframing}, **s.extra})
    return SweepPlan(settings=s, model=model, vector=vec, calibration=cal, prompts=prompts, out=out, preflight=pre,
                     kwargs=kwargs)


def tell_sweep(run, calibration: Mapping[str, Any], *, echo: Echo = _quiet, warn: Echo = _quiet) -> None:
    """The summary table and the warnings a reader of a finished sweep must see."""
    from tl_isokl.identity import heldout_transfer, transfer_message
    from tl_isokl.sweep import format_summary, summary_rows

    echo(format_summary(summary_rows(run)))
    if calibration.get("converged") is False:
        warn("the calibration did not converge; used because of --allow-unconverged (recorded in the manifest and "
             "the report)")
    check = heldout_transfer(run)
    if check is not None and check["off"]:
        warn(transfer_message(check))


def finish_sweep(plan: SweepPlan, run, *, echo: Echo = _quiet, warn: Echo = _quiet) -> None:
    """Step 3 after the cells: `tell_sweep`, then figures and report."""
    tell_sweep(run, plan.calibration, echo=echo, warn=warn)
    if plan.settings.figures:
        from tl_isokl.report import draw_figures, write_report

        for p in draw_figures(plan.out):
            echo(f"figure {p}")
        echo(f"report {write_report(plan.out)}")


def run_sweep_experiment(s: ExperimentSettings, *, echo: Echo = _quiet, warn: Echo = _quiet,
                         on_round: Callable | None = None, cal_progress: Callable | None = None,
                         progress: Callable | None = None, before_cells: Callable[[], None] | None = None,
                         model=None, preflight: dict | None = None, engine=None):
    """`tl-isokl sweep`: `prepare_sweep` (calibrate unless a calibration is given or found), sweep alpha, then
    `finish_sweep` (tables, figures, report); returns the loaded `Run`. Rerunning with the same settings resumes.
    `model`: an already loaded model for `s.model` (compare runs many specs on one load); loaded here when None.
    `preflight`: the preflight result of an earlier run on the same model, held-out prompts and probe (compare's
    later specs), not rerun. `engine`: a `tl_isokl.grid.Engine` (or "ray") other than local runs the same sweep as
    cells (`grid.run_sweep`: calibrate, alpha groups, merge) into the same run directory."""
    if engine is not None:
        from tl_isokl.grid import Engine, run_sweep

        if Engine.of(engine).name != "local":
            return run_sweep(s, Engine.of(engine), echo=echo, warn=warn)
    plan = prepare_sweep(s, echo=echo, on_round=on_round, cal_progress=cal_progress, model=model,
                         preflight=preflight)
    echo(f"sweeping {len(plan.kwargs['alphas'])} alphas x {len(plan.prompts)} held-out prompts, window {s.window} "
         f"-> {plan.out}")
    if before_cells is not None:
        before_cells()
    run = plan.run(progress)
    finish_sweep(plan, run, echo=echo, warn=warn)
    return run

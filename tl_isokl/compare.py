"""`compare`: what the same KL budget buys each steering method.

Every spec (a method, optionally gated) is extracted from the same contrastive sets, calibrated to the same target
on the same calibration prompts and swept on the same held-out prompts at the same alphas. Each spec is an
ordinary run directory under the compare directory (so report / plot / inspect / cosine work on it, and rerunning
resumes); `compare.csv` and `compare.md` put them side by side, per spec x alpha:

* the dose: c* and the spread of the per-prompt doses (one scalar budget, many prompts);
* whether the budget transfers: the held-out KL statistics at that alpha (does each method deliver its calibrated
  dose off the calibration prompts?);
* what it cost: died/n, S(window) with its band, the median death token, the log-rank p against the null and
  against mean_diff at the same alpha;
* what it bought: the concept effect (`tl_isokl.effect`: how the *base* model reads the text the steered model
  wrote, in units of the concept's own contrastive separation, relative to alpha 0), mean and 95% CI.

The matched-KL null (`random`: a seeded random direction with the norm of the concept direction, calibrated and
swept like a method) is added unless left out explicitly: a real method should beat it in effect at equal KL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError

NULL_SPEC = "random"
REFERENCE_SPEC = "mean_diff"
COMPARE_CSV = "compare.csv"
COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
FIGURES = {"frontier": "effect_vs_survival.png", "km": "km_by_spec.png", "effect": "effect_vs_alpha.png"}


@dataclass(frozen=True)
class Spec:
    """One steering configuration of a comparison: a method of the registry (its canonical name) and an optional
    cosine gate with its threshold (None: the gate's default, 0)."""

    method: str
    gate: str | None = None
    tau: float | None = None

    @property
    def name(self) -> str:
        if self.gate is None:
            return self.method
        return f"{self.method}+{self.gate}" + ("" if self.tau is None else f":{self.tau:g}")

    @property
    def slug(self) -> str:
        """The run directory's name: the spec's name with ':' spelled '@' (portable file names)."""
        return self.name.replace(":", "@")

    @property
    def key(self) -> tuple[str, str | None, float]:
        """What the spec steers with, whatever its spelling: `mean_diff+soft` and `mean_diff+soft:0` are one
        spec (the gate's default tau is 0)."""
        return self.method, self.gate, 0.0 if self.tau is None else float(self.tau)


SPEC_EXAMPLE = "e.g. mean_diff, pca, pca+ablate, directional_ablation, random, mean_diff+soft:0.1"


def parse_spec(text: str) -> Spec:
    """'mean_diff' | 'pca+ablate' | 'mean_diff+soft:0.1' | 'directional_ablation+hard:0.2' -> Spec.

    The gate, if any, is the last '+' part and names a registered gate (optionally ':tau', a cosine in [-1, 1];
    `sign` takes none); the rest is a method of `tl_isokl.methods` (which may itself contain '+', e.g. pca+ablate),
    stored under its canonical name (`mean_diff+add` is `mean_diff`, `mean_diff+ablate` is
    `directional_ablation`) so one configuration has one run directory. Everything is checked here, before any
    model loads; errors are one line naming the bad part."""
    from tl_isokl.methods import GATES, check_gate, method_name, parse_method

    raw = str(text)
    text = raw.strip()
    if not text:
        raise IsoKLError(f"empty --spec; use a method name, {SPEC_EXAMPLE}")
    if any(not part for part in text.split("+")):
        raise IsoKLError(f"--spec {raw!r} has an empty '+' part; write METHOD[+GATE[:TAU]], {SPEC_EXAMPLE}")
    method, gate, tau = text, None, None
    head, _, last = text.rpartition("+")
    kind, colon, tau_text = last.partition(":")
    if head and kind in GATES:
        method, gate = head, kind
        if colon:
            if kind == "sign":
                raise IsoKLError(f"--spec {raw!r}: the sign gate has no threshold (it is sign(h.v)); write "
                                 f"{head}+sign")
            try:
                tau = float(tau_text)
            except ValueError:
                raise IsoKLError(f"--spec {raw!r}: gate threshold {tau_text!r} is not a number; write e.g. "
                                 f"{head}+{kind}:0.1") from None
            if not -1.0 <= tau <= 1.0:  # NaN fails too
                raise IsoKLError(f"--spec {raw!r}: gate threshold {tau_text!r} is outside [-1, 1]; it is a cosine "
                                 f"threshold, e.g. {head}+{kind}:0.1")
    try:
        extractor, operator = parse_method(method)
        if gate is not None:
            check_gate(method, gate)
    except IsoKLError as e:
        raise IsoKLError(f"--spec {raw!r}: {e}") from None
    if extractor.name == "external":
        raise IsoKLError(f"--spec {raw!r}: compare extracts every spec from the same contrastive sets; an external "
                         f"vector is swept with `tl-isokl sweep --vector FILE`")
    return Spec(method_name(extractor.name, operator.name), gate, tau)


def specs_with_null(specs: Sequence[str | Spec], null: bool = True) -> list[Spec]:
    """Parsed specs, duplicates refused (also when spelled differently), with the matched-KL null appended unless
    present or `null` is False."""
    out = [s if isinstance(s, Spec) else parse_spec(s) for s in specs]
    if not out:
        raise IsoKLError(f"no --spec given; {SPEC_EXAMPLE}")
    seen: dict[tuple, Spec] = {}
    for s in out:
        if s.key in seen:
            same = "" if seen[s.key].name == s.name else f" (as {seen[s.key].name})"
            raise IsoKLError(f"--spec {s.name} is given twice{same}; give each spec once")
        seen[s.key] = s
    if null and Spec(NULL_SPEC).key not in seen:
        out.append(Spec(NULL_SPEC))
    return out


def spec_dir(out: str | Path, spec: Spec, stat: str, n_stats: int) -> Path:
    """DIR/<spec> with one calibration target; DIR/<stat>/<spec> when several targets are compared."""
    out = Path(out)
    return out / spec.slug if n_stats == 1 else out / stat / spec.slug


# ------------------------------------------------------------------------------------------------ running


def run_compare(settings, specs: Sequence[str | Spec], out: str | Path, *, stats: Sequence[str] = ("p95",),
                null: bool = True, echo: Callable[[str], None] = lambda _: None,
                warn: Callable[[str], None] | None = None, model=None, progress: Callable | None = None,
                effect_words: tuple[Sequence[str], Sequence[str]] | None = None, engine=None) -> dict[str, Any]:
    """Calibrate and sweep every spec (x every calibration statistic) on one model load, then tabulate.

    `settings` is an `ExperimentSettings` holding everything the specs share (model, layer, window, alphas, prompt
    sets, target, probe, ...); its method/gate/stat/out are replaced per spec. Everything that needs no model is
    checked first (`check_compare`). With `settings.fresh` every spec directory starts over and compare's own
    files are deleted; otherwise each spec resumes (a spec whose cells exist costs no calibration). `engine`: a
    `tl_isokl.grid.Engine` (or "ray") other than local runs every spec (the null too) as an experiment of grid cells, no
    model loaded here; the tables are then written the same way. Returns `write_compare`'s result.
    """
    from tl_isokl.experiment import load, run_sweep_experiment
    from tl_isokl.files import atomic_write_json

    parsed = specs_with_null(specs, null=null)
    stats = list(dict.fromkeys(stats)) or [settings.stat]
    out = Path(out)
    request = check_compare(settings, parsed, out, stats)
    for d in other_spec_dirs(out, parsed, stats):
        echo(f"note: {d} is a spec run of an earlier comparison, not in this one (left as it is)")
    if engine is not None:
        from tl_isokl.grid import Engine

        engine = Engine.of(engine)
    on_cells = engine is not None and engine.name != "local"
    model = load(settings, echo) if model is None and not on_cells else model
    preflight = None
    if settings.fresh:
        for p in compare_files(out):
            p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / COMPARE_JSON, {"specs": [s.name for s in parsed], "stats": stats, "request": request,
                                           "rows": []})
    each = [(spec, stat, replace(settings, method=spec.method, gate=spec.gate, tau=spec.tau, stat=stat,
                                 out=spec_dir(out, spec, stat, len(stats)),
                                 extra={**settings.extra, "compare": {"dir": str(out.resolve()), "spec": spec.name}}))
            for stat in stats for spec in parsed]
    if on_cells:
        from tl_isokl.grid import run_experiments

        echo(f"{len(each)} spec run(s) as cells (engine {engine.name}) -> {out}")
        run_experiments([s for _, _, s in each], engine, root=out, echo=echo)
    else:
        for spec, stat, s in each:
            echo(f"== {spec.name} (target {settings.target:g} nats of {stat} KL) -> {s.out}")
            run = run_sweep_experiment(s, echo=echo, warn=warn or echo, model=model, progress=progress,
                                       preflight=preflight)
            preflight = run.manifest.get("preflight") or None  # same model, prompts and probe for every spec
    return write_compare(out, parsed, stats, request=request, effect_words=effect_words)


def compare_request(settings) -> dict[str, Any]:
    """What every spec of a comparison shares and a resumed comparison must keep (the sweep's own request, less
    the method and gate): recorded in compare.json so that a changed setting is refused before any spec runs."""
    from tl_isokl.experiment import sweep_request
    from tl_isokl.runpolicy import model_spec

    req = sweep_request(replace(settings, method="*", gate=None, tau=None), model_spec(settings.model), None, None)
    req = {k: v for k, v in req.items() if k not in ("gate", "tau")}
    req["vector"] = {k: v for k, v in req["vector"].items() if k != "method"}
    return json.loads(json.dumps(req, default=str))  # as compare.json will read it back


def compare_files(out: str | Path) -> list[Path]:
    """compare's own outputs in `out` (what --fresh deletes besides each spec directory's tl-isokl files)."""
    out = Path(out)
    return [out / COMPARE_CSV, out / COMPARE_MD, out / COMPARE_JSON, *(out / "figures" / f for f in FIGURES.values())]


def check_compare(settings, specs: Sequence[Spec], out: Path, stats: Sequence[str]) -> dict[str, Any]:
    """Everything that needs no model, before it loads (one line each): --out is a writable folder that is not a
    sweep's run directory, alphas (alpha 0 among them: effects are measured against it), statistics, probe, prompt
    files, each spec directory's files, and (unless fresh) the settings an earlier comparison in `out` used.
    Returns the comparison's request (`compare_request`)."""
    from tl_isokl.files import check_writable_dir, read_json
    from tl_isokl.prompts import read_prompts
    from tl_isokl.runpolicy import open_run
    from tl_isokl.statistics import statistic
    from tl_isokl.sweep import check_disjoint, parse_alphas

    if settings.vector_path is not None:
        raise IsoKLError("compare extracts each spec from the contrastive sets; drop --vector (sweep a vector file "
                         "with `tl-isokl sweep --vector FILE`)")
    check_writable_dir(out, what="--out")
    if (out / "manifest.json").is_file():
        raise IsoKLError(f"--out {out} is a run directory (it has manifest.json); give compare a folder of its own, "
                         f"it writes one run directory per spec inside it")
    alphas = parse_alphas(settings.alphas)
    if 0.0 not in alphas:
        raise IsoKLError(f"--alphas {','.join(f'{a:g}' for a in alphas)} has no 0; compare measures each spec's "
                         f"concept effect against its alpha 0 rollouts, add 0")
    for st in stats:
        statistic(st)
    settings.probe()
    held = read_prompts(settings.heldout_prompts) if settings.heldout_prompts is not None else None
    if settings.calibration_prompts is not None:
        cal = read_prompts(settings.calibration_prompts)
        if held is not None:
            check_disjoint(held, cal)
    for stat in stats:
        for spec in specs:
            open_run(spec_dir(out, spec, stat, len(stats)), fresh=settings.fresh, flag="--out")
    request = compare_request(settings)
    if not settings.fresh and (out / COMPARE_JSON).is_file():
        before = read_json(out / COMPARE_JSON, kind=dict).get("request")
        if isinstance(before, dict) and before != request:
            diff = [f"{k}: {before.get(k)!r} -> {request.get(k)!r}" for k in sorted(set(before) | set(request))
                    if before.get(k) != request.get(k)]
            raise IsoKLError(f"{out} holds a comparison made with other settings ({'; '.join(diff)}); use another "
                             f"--out, or --fresh to start every spec over")
    return request


def other_spec_dirs(out: Path, specs: Sequence[Spec], stats: Sequence[str]) -> list[Path]:
    """Spec run directories of an earlier comparison in `out` that this one leaves out (reported, never deleted)."""
    mine = {spec_dir(out, s, st, len(stats)).resolve() for st in stats for s in specs}
    found = [m.parent for m in [*out.glob("*/manifest.json"), *out.glob("*/*/manifest.json")]]
    return sorted(d for d in found if d.resolve() not in mine)


# ------------------------------------------------------------------------------------------------ tables


def _band_at(curve, t: float) -> tuple[float, float]:
    """The KM curve's pointwise band at token t (1, 1 before the first death)."""
    idx = int(np.searchsorted(curve.times, t, side="right")) - 1
    if idx < 0:
        return 1.0, 1.0
    return float(curve.ci_low[idx]), float(curve.ci_high[idx])


def c_star_neg(run) -> float | None:
    """-v's own c* of a two-sided run (negative alphas are doses of it), from its identity; None when one-sided."""
    return (run.manifest.get("identity") or {}).get("c_star_neg")


def compare_rows(runs: dict[str, Any], *, threshold: float | None = None,
                 effects: dict[str, Any] | None = None, lexicon: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Per spec x alpha: the row of compare.csv, from loaded runs {spec name: Run} and, where measured, their
    concept effects {spec name: `tl_isokl.effect.ConceptScores`} (`run_effects`) and lexicon effects
    (`lexicon_effects`: the same pairing with alpha 0, in words per 100)."""
    from tl_isokl.statistics import summarize
    from tl_isokl.survival import fates, kaplan_meier, logrank, resolve_threshold

    fate_sets: dict[str, dict[float, list]] = {}
    for name, run in runs.items():
        thr = resolve_threshold(run, threshold)
        fate_sets[name] = {a: fates(ts, thr) for a, ts in run.by_alpha().items()}
    rows = []
    for name, run in runs.items():
        cal = run.calibration or {}
        c_neg = c_star_neg(run)
        per = [c for c in cal.get("per_prompt_c_star") or [] if c is not None]
        window = int(run.window)
        for a, ts in run.by_alpha().items():
            fs = fate_sets[name][a]
            km = kaplan_meier(fs, alpha=a)
            lo, hi = _band_at(km, window)
            kl = summarize(np.concatenate([np.asarray(t.kl, float) for t in ts]) if ts else np.zeros(0))
            c_star = c_neg if (a < 0 and c_neg is not None) else cal.get("c_star")  # the dose unit of this alpha
            row: dict[str, Any] = {
                "spec": name, "stat": cal.get("stat"), "alpha": a, "c_star": c_star,
                "coeff": a * float(c_star if c_star is not None else math.nan),
                "c_prompt_min": min(per) if per else None, "c_prompt_median": float(np.median(per)) if per else None,
                "c_prompt_max": max(per) if per else None,
                "kl_p50": kl.get("p50"), "kl_p95": kl.get("p95"), "kl_max": kl.get("max"),
                "died": km.died, "n": km.n, "S_end": km.at(window), "S_end_low": lo, "S_end_high": hi,
                "median_death": km.median(),
            }
            on = [t.gate_on for t in ts if getattr(t, "gate_on", None) is not None]
            if on:  # gate telemetry: the share of generated tokens the gate let through, mean over trajectories
                row["gate_on"] = float(np.mean(on))
            if effects is not None and name in effects:
                e = next((r for r in effects[name].summary if r["alpha"] == float(a)), None)
                if e is not None:
                    row.update({"effect": e["effect_mean"], "effect_low": e["ci_lo"], "effect_high": e["ci_hi"],
                                "effect_n": e["n"]})
            if lexicon is not None and name in lexicon:
                e = next((r for r in lexicon[name].summary if r["alpha"] == float(a)), None)
                if e is not None:
                    row.update({"lexicon": e["effect_mean"], "lexicon_low": e["ci_lo"], "lexicon_high": e["ci_hi"]})
            for ref in (NULL_SPEC, REFERENCE_SPEC):
                other = fate_sets.get(ref, {}).get(a)
                row[f"p_vs_{ref}"] = None if other is None or ref == name else logrank(fs, other).p_value
            rows.append(row)
    return rows


def load_spec_runs(out: str | Path, specs: Sequence[Spec], stat: str, n_stats: int) -> dict[str, Any]:
    from tl_isokl.rundir import load_run

    return {s.name: load_run(spec_dir(out, s, stat, n_stats)) for s in specs
            if (spec_dir(out, s, stat, n_stats) / "manifest.json").is_file()}


def write_compare(out: str | Path, specs: Sequence[Spec], stats: Sequence[str], *, threshold: float | None = None,
                  request: dict[str, Any] | None = None,
                  effect_words: tuple[Sequence[str], Sequence[str]] | None = None) -> dict[str, Any]:
    """compare.csv / compare.md / compare.json and the figures, from the spec run directories under `out`
    (`request`: the shared settings compare.json records for the next resume's check)."""
    from tl_isokl.files import atomic_write_json, atomic_write_text, csv_text, read_json

    out = Path(out)
    all_rows: list[dict[str, Any]] = []
    runs_by_stat = {}
    for stat in stats:
        runs_by_stat[stat] = runs = load_spec_runs(out, specs, stat, len(stats))
        lex = lexicon_effects(runs, *effect_words) if effect_words is not None else None
        all_rows += compare_rows(runs, threshold=threshold, effects=effects_of_runs(runs), lexicon=lex)
    if not all_rows:
        raise IsoKLError(f"{out} holds no finished spec runs; run `tl-isokl compare --spec ... --out {out}` first")
    if request is None and (out / COMPARE_JSON).is_file():
        request = read_json(out / COMPARE_JSON, kind=dict).get("request")
    atomic_write_text(out / COMPARE_CSV, csv_text(all_rows, _columns(all_rows)))
    atomic_write_json(out / COMPARE_JSON, {"specs": [s.name for s in specs], "stats": list(stats),
                                           "request": request, "rows": all_rows})
    figs = draw_compare_figures(out, all_rows, runs_by_stat[stats[0]], stats[0])
    two_sided = any(c_star_neg(r) is not None for runs in runs_by_stat.values() for r in runs.values())
    atomic_write_text(out / COMPARE_MD, compare_markdown(all_rows, specs, stats, figs, out=out,
                                                         two_sided=two_sided))
    return {"rows": all_rows, "figures": figs}


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def run_effects(run):
    """The concept effects of a run (`tl_isokl.effect.ConceptScores`) from the base model's mean projection stored
    with each trajectory (`Trajectory.concept`) and the axis the manifest records; None when the run has none
    (a sweep of a vector file, or a run made before the effect was measured)."""
    axis = run.manifest.get("concept_axis")
    if not axis:
        return None
    return paired_effects(run, lambda t: getattr(t, "concept", None), scale=float(axis["separation"]))


def paired_effects(run, value: Callable[[Any], float | None], scale: float = 1.0):
    """`tl_isokl.effect.effect_summary` of one per-trajectory value (None = not measured), each paired with the
    same prompt at alpha 0; None when alpha 0 has no values."""
    from tl_isokl.effect import effect_summary

    values = {a: {t.prompt_id: v for t in ts if (v := value(t)) is not None} for a, ts in run.by_alpha().items()}
    if not values.get(0.0):
        return None
    return effect_summary(values, scale=scale)


def lexicon_effects(runs: dict[str, Any], pos_words: Sequence[str], neg_words: Sequence[str]) -> dict[str, Any]:
    """{spec name: ConceptScores} of the lexicon score (positive - negative words per 100 words of the generated
    text, `tl_isokl.effect.lexicon_score`), paired with the same prompt at alpha 0: model-free, so it needs
    nothing stored beyond the text."""
    from tl_isokl.effect import lexicon_score

    out = {name: paired_effects(run, lambda t: lexicon_score(t.text, pos_words, neg_words))
           for name, run in runs.items()}
    return {name: e for name, e in out.items() if e is not None}


def effects_of_runs(runs: dict[str, Any]) -> dict[str, Any] | None:
    """{spec name: ConceptScores} for the runs that measured the effect; None when none did."""
    out = {name: e for name, e in ((n, run_effects(r)) for n, r in runs.items()) if e is not None}
    return out or None


P_NOTE = ("`p_vs_random` / `p_vs_mean_diff`: two-sided log-rank p of the survival curves against the matched-KL null "
          "and against mean_diff at the same alpha; `—` = no such comparison (the row is that reference itself), "
          "`n/a` = the test is undefined: no deaths in either group.")


def compare_markdown(rows: Sequence[dict[str, Any]], specs: Sequence[Spec], stats: Sequence[str],
                     figures: Sequence[Path] = (), *, out: str | Path | None = None, two_sided: bool = False) -> str:
    """compare.md: one table per calibration statistic, what the columns mean, the figures (linked relative to
    `out`, where compare.md lives, so the folder can move)."""
    from tl_isokl.report import markdown_table

    names = {r["spec"] for r in rows}
    cols = ["spec", "alpha", "c_star", "kl_p95", "died", "n", "S_end", "S_end_low", "S_end_high", "median_death",
            "effect", "effect_low", "effect_high", "lexicon", "lexicon_low", "lexicon_high", "gate_on",
            "p_vs_random", "p_vs_mean_diff"]
    cols = [c for c in cols if not (c.startswith("p_vs_") and c[len("p_vs_"):] not in names)]  # reference absent
    parts = ["# Compare: what the same KL budget buys", "",
             f"Specs: {', '.join(s.name for s in specs)}. Each is a run directory beside this file (report, plot, "
             f"inspect and cosine work on it). Every spec was calibrated to the same target on the same calibration "
             f"prompts and swept on the same held-out prompts.", "",
             "- `c_star`: the spec's iso-KL dose; `kl_p95`: the held-out p95 KL actually delivered at that alpha "
             "(does the budget transfer off the calibration prompts?).",
             "- `died`/`n`, `S_end` (Kaplan-Meier survival at the window, with its 95% band), `median_death` "
             "(token; `—` = not reached).",
             "- `effect`: how far the *base* model reads the steered text toward the concept, relative to alpha 0, "
             "in units of the concept's own contrastive separation (1.0 = as far as the contrastive examples "
             "differ); mean over prompts, 95% percentile-bootstrap interval over prompts (no effect columns: the "
             "runs did not measure it).",
             "- `gate_on` (gated specs): the share of generated tokens where the cosine gate let steering "
             "through, mean over trajectories.",
             "- `lexicon` (with `--effect-words POS NEG`): positive minus negative words per 100 generated words, "
             "relative to the same prompt at alpha 0; mean and bootstrap interval over prompts (model-free).",
             f"- {P_NOTE}",
             "- compare.csv has every column; there an empty cell is `—` and `nan` is `n/a`.", ""]
    if any(r["alpha"] < 0 for r in rows) and two_sided:
        parts[-1:-1] = ["- A negative alpha steers along -v at |alpha| x c*(-v), the dose calibrated for -v itself "
                        "(`--two-sided`; its `c_star` column): iso-KL doses on both sides."]
    elif any(r["alpha"] < 0 for r in rows):
        parts[-1:-1] = ["- A negative alpha steers along -v at |alpha| x c*, the dose calibrated for +v: -v need not "
                        "cost the same KL (compare `kl_p95` at -1 and 1), so negative alphas are not iso-KL doses; "
                        "`--two-sided` calibrates -v for them."]
    for stat in stats:
        sub = [r for r in rows if r.get("stat") == stat] or list(rows)
        parts += [f"## Target: {stat} KL", "", markdown_table(sub, [c for c in cols if any(c in r for r in sub)]),
                  ""]
    parts += ["## What one scalar budget cannot see", "",
              "Equal KL is equal *distance*, not equal *direction*: a method can spend its budget moving the "
              "distribution along the concept (effect up, survival kept) or anywhere else (the null). Compare "
              "`effect` at equal alpha, and read `kl_p95` to see whether each method actually received the same "
              "budget off the calibration prompts.", ""]
    for f in figures:
        f = Path(f)
        link = f.relative_to(out).as_posix() if out is not None and f.is_relative_to(out) else f.name
        parts.append(f"![{f.stem}]({link})")
    return "\n".join(parts) + "\n"


def draw_compare_figures(out: str | Path, rows: Sequence[dict[str, Any]], runs: dict[str, Any], stat: str
                         ) -> list[Path]:
    """The figures of one calibration statistic's rows and runs into OUT/figures/ (a figure with nothing to draw
    is not written, and an earlier copy of it is deleted: compare.md links only what matches its table)."""
    from tl_isokl.figures.compare import effect_vs_alpha, effect_vs_survival, km_by_spec

    figdir = Path(out) / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    paths = []
    sub = [r for r in rows if r.get("stat") == stat] or list(rows)
    for key, draw in (("frontier", lambda: effect_vs_survival(sub)), ("effect", lambda: effect_vs_alpha(sub)),
                      ("km", lambda: km_by_spec(runs, alphas=(1.0, 2.0)))):
        p = figdir / FIGURES[key]
        fig = draw()
        if fig is None:
            p.unlink(missing_ok=True)
            continue
        import matplotlib.pyplot as plt

        tmp = p.with_name(f".{p.name}.tmp.png")
        try:
            fig.savefig(tmp, dpi=110)
        finally:
            plt.close(fig)
        tmp.replace(p)
        paths.append(p)
    return paths

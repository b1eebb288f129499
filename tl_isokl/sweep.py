"""The alpha sweep: held-out prompts rolled out at alpha x c*, with per-token KL and fork probes, into a run dir.

One rollout serves both measurements (the prototype generated every rollout twice). Alpha cells are the unit of
resumption: a cell file appears, atomically, only once every row of that alpha is finished, so a killed sweep
resumes where it stopped and ends byte-identical to an uninterrupted run (greedy decoding is deterministic).

Rows of several alphas share one decode batch (`alpha_groups`: on a CPU thread a 128-row step costs far less than
eight 16-row steps). The groups are a fixed partition of the run's alphas, so a resumed sweep re-decodes a
partly finished group with the same batch composition and its cells stay byte-identical; KL runs per cell, only
for the cells still missing. The default probe runs inside the decode, against its KV cache, as each row leaves
the batch (`rollout(..., probe=...)`); a probe that cannot (`probe.cache_probe`) is measured per cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError
from tl_isokl.files import atomic_write_json, atomic_write_text, csv_text, sha256_json
from tl_isokl.kl import per_token_kl
from tl_isokl.model import model_info
from tl_isokl.calibrate import CalibrationResult
from tl_isokl.probe import AnswerProbe, Probe, ProbeSpec
from tl_isokl.records import Trajectory, fate
from tl_isokl.rollout import GREEDY, Sampling, grid, rollout
from tl_isokl.identity import check_run, check_sweep_inputs, clear_run, run_identity
from tl_isokl.statistics import pool, summarize
from tl_isokl.rundir import Manifest, Run, RunDir, alpha_key
from tl_isokl.vector import SteeringVector

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


def parse_alphas(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0,0.25,1' -> (0.0, 0.25, 1.0); finite numbers, no duplicates. A negative alpha steers the opposite way at
    |alpha| x c* (c* was calibrated for +v; -v need not cost the same KL, which the held-out KL table shows)."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise IsoKLError(f"alphas {text!r} must be comma-separated numbers, e.g. 0,0.25,0.5,1,2,4") from None
    else:
        vals = [float(a) for a in text]
    if not vals:
        raise IsoKLError("no alphas given; e.g. --alphas 0,0.5,1,2,4")
    bad = [a for a in vals if not np.isfinite(a)]
    if bad:
        raise IsoKLError(f"alpha {bad[0]} is invalid; alphas are doses in units of c*, finite numbers")
    if len(set(vals)) != len(vals):
        raise IsoKLError(f"alphas {vals} contain duplicates")
    return tuple(sorted(vals))


def check_disjoint(heldout: Sequence[str], calibration: Sequence[str]) -> None:
    """Held-out prompts must not be calibration prompts: the sweep asks what the budget buys *elsewhere*."""
    overlap = sorted(set(heldout) & set(calibration))
    if overlap:
        raise IsoKLError(f"{len(overlap)} held-out prompt(s) also appear in the calibration set, e.g. "
                         f"{overlap[0][:60]!r}; pass held-out prompts disjoint from calibration")


@dataclass
class SweepConfig:
    """Everything that changes a cell's numbers; its hash guards resumption against mixing configurations."""

    c_star: float
    window: int
    threshold: float
    probe: Probe
    positions: str
    prompts: list[str]
    prompt_ids: list[str]
    sampling: Sampling = GREEDY
    c_star_neg: float | None = None  # the dose of -v, when negative alphas were calibrated on their own
    readout: Any = None  # a ConceptAxis read in the KL's base pass (changes no KL or probe number: not identity)

    def coeff(self, alpha: float) -> float:
        """alpha x c* (alpha x c*_neg for a negative alpha when -v has its own calibration)."""
        c = self.c_star_neg if (alpha < 0 and self.c_star_neg is not None) else self.c_star
        return float(alpha) * c

    def identity(self, model, vector: SteeringVector) -> dict[str, Any]:
        info = model_info(model)
        probe = self.probe.to_dict()
        ident = {"model": info.get("name"), "revision": info.get("revision"), "dtype": info.get("dtype"),
                 "vector_sha256": vector.sha256, "c_star": self.c_star, "window": self.window,
                 "threshold": self.threshold, "probe": probe, "schedule": probe.get("schedule"),
                 "positions": self.positions, "prompts_sha256": sha256_json(self.prompts)}
        if self.c_star_neg is not None:
            ident["c_star_neg"] = self.c_star_neg
        if not self.sampling.greedy:  # greedy runs keep the identity they had before sampling existed
            ident["sampling"] = self.sampling.to_dict()
            ident["prompt_ids_sha256"] = sha256_json(self.prompt_ids)  # samples per prompt change the rows
        return ident


def sweep(
    model,
    vector: SteeringVector,
    calibration: CalibrationResult | Mapping[str, Any],
    prompts: Sequence[str],
    out: str | Path,
    *,
    prompt_ids: Sequence[str] | None = None,
    answers: Sequence[bool | None] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    window: int = 256,
    threshold: float = 0.75,
    spec: ProbeSpec = ProbeSpec(),
    schedule: str | int = "log2",
    probe: Probe | None = None,
    sampling: Sampling = GREEDY,
    samples_per_prompt: int = 1,
    calibration_neg: CalibrationResult | Mapping[str, Any] | None = None,
    positions: str = "all",
    batch_size: int = 32,
    probe_batch_size: int = 8,
    decode_batch_size: int | None = None,
    readout: Any = None,
    seed: int = 0,
    manifest_extra: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    allow_unconverged: bool = False,
    allow_other_model: bool = False,
    fresh: bool = False,
) -> Run:
    """Run (or resume) the alpha sweep into run directory `out` and return the loaded Run.

    Args:
        calibration: the `CalibrationResult` of `calibrate` (or its dict form, calibration.json; a hand-made dict
            needs at least "c_star", and without "identity" and "prompts" it cannot be checked).
        prompts: held-out prompts, disjoint from the calibration prompts.
        answers: the right answer (True/False, None = unknown) of each held-out prompt, where the prompt set knows
            it: written into the manifest's prompts so reports can tell "alive and right" from "alive and wrong"
            (`tl_isokl.outcomes`). Changes no measured number.
        probe: what is asked at each fork (`tl_isokl.probe.Probe`); default `AnswerProbe(spec, schedule)`, the
            JSON true/false probe at log2 forks.
        sampling, samples_per_prompt: seeded sampled rollouts instead of greedy ones (`rollout.Sampling`), and
            how many per held-out prompt (rows "<id>#<k>"; each is one subject of the survival analysis).
        calibration_neg: the calibration of -v (two-sided): negative alphas are then doses of its c*, since a
            direction and its opposite need not cost the same KL. Without it they use c* of +v.
        batch_size, probe_batch_size: rows per teacher-forced KL / probe batch (memory knobs).
        decode_batch_size: rows per decode batch, across alphas (default `default_decode_rows`: 128 on a CPU,
            sized by free memory on a GPU); results do not depend on it beyond float rounding.
        readout: a `tl_isokl.effect.ConceptAxis`: the KL's base pass also reads how the unsteered model projects
            each generated token on it; each trajectory stores the mean (`Trajectory.concept`) and the manifest
            the axis (`concept_axis`), from which `tl_isokl.compare.run_effects` derives the effect per alpha.
        progress: called as progress(stage, done, total) with stage in {"rollout", "kl", "probe"}.
        allow_unconverged: use a calibration with converged=False (refused otherwise; the manifest records it).
        allow_other_model: apply a vector whose metadata names another model (refused otherwise).
        fresh: first delete the tl-isokl files already in `out` (`identity.clear_run`), instead of resuming.

    Raises:
        IdentityError: the calibration was made for another model/vector/gate/positions, or `out` holds a run
            with other settings (each differing field is named with both values).
    """
    if not 0.0 < threshold <= 1.0:
        raise IsoKLError(f"threshold {threshold} must be in (0, 1]; it is a probability mass")
    cal = calibration if isinstance(calibration, CalibrationResult) else CalibrationResult.from_dict(calibration)
    calibration = cal.to_dict()
    alphas = parse_alphas(alphas)
    prompts = list(prompts)
    if not prompts:
        raise IsoKLError("no held-out prompts given")
    check_disjoint(prompts, cal.prompts)
    vector.check_model(model)
    allowed = check_sweep_inputs(model, vector, calibration, positions=positions,
                                 allow_unconverged=allow_unconverged, allow_other_model=allow_other_model)
    pids = list(prompt_ids) if prompt_ids is not None else [f"p{i:03d}" for i in range(len(prompts))]
    if int(samples_per_prompt) < 1 or (samples_per_prompt > 1 and sampling.greedy):
        raise IsoKLError(f"samples_per_prompt={samples_per_prompt}: use 1, or several with a temperature > 0 "
                         f"(greedy rollouts of one prompt are all the same)")
    if answers is not None:
        answers = list(answers)
        if len(answers) != len(prompts):
            raise IsoKLError(f"{len(answers)} answers for {len(prompts)} held-out prompts; give one per prompt "
                             f"(None where unknown)")
    prompts, pids, answers = expand_samples(prompts, pids, int(samples_per_prompt), answers)
    probe = probe if probe is not None else AnswerProbe(spec, schedule)
    cal_neg = (None if calibration_neg is None else calibration_neg if isinstance(calibration_neg, CalibrationResult)
               else CalibrationResult.from_dict(calibration_neg))
    if cal_neg is not None:  # made for -v on this model: the same checks as the calibration of +v
        check_disjoint(prompts, cal_neg.prompts)
        check_sweep_inputs(model, -vector, cal_neg.to_dict(), positions=positions, allow_unconverged=allow_unconverged,
                           allow_other_model=allow_other_model, source="the calibration of -v")
    cfg = SweepConfig(c_star=cal.c_star, window=int(window), threshold=float(threshold), probe=probe,
                      positions=positions, prompts=prompts, prompt_ids=pids, sampling=sampling,
                      c_star_neg=None if cal_neg is None else cal_neg.c_star, readout=readout)
    ident = run_identity(cfg.identity(model, vector), calibration)
    rd = RunDir(out)
    if fresh:
        clear_run(rd.path)
    old = rd.read_manifest() if rd.manifest_path.is_file() else None
    if old is not None:
        check_run(old, ident, rd.path)  # one line naming every differing field, both values, and the fix
    todo = [a for a in alphas if not rd.has_cell(a)]
    manifest = Manifest.of(
        "sweep", model, vector, ident["prompts_sha256"], len(prompts), window=window, seed=seed, positions=positions,
        history={"alphas": list(todo)}, threshold=float(threshold), alphas=list(alphas), c_star=cfg.c_star,
        c_star_neg=cfg.c_star_neg,
        target=cal.target, stat=cal.stat, probe=ident["probe"], schedule=ident["schedule"],
        config_sha256=sha256_json(ident), identity=ident, **allowed, sampling=sampling.to_dict(),
        samples_per_prompt=int(samples_per_prompt),
        concept_axis=None if readout is None else readout.to_dict(),
        prompts=[{"id": i, "prompt": p} if answers is None else {"id": i, "prompt": p, "answer": a}
                 for i, p, a in zip(pids, prompts, answers or [None] * len(prompts))], **(manifest_extra or {}),
    )
    rd.record(manifest)  # resuming appends to the history, never replaces it
    atomic_write_json(rd.calibration_path, calibration)
    if cal_neg is not None:
        atomic_write_json(rd.calibration_neg_path, cal_neg.to_dict())
    vector.save(rd.vector_path)  # the identity check above guarantees it is the run's vector
    rows = decode_batch_size or default_decode_rows(model, window)
    for group in alpha_groups(alphas, len(prompts), rows):
        missing = [a for a in group if a in todo]
        if not missing:
            continue
        rolled = rollout_group(model, vector, group, cfg, decode_batch_size=rows, progress=progress)
        for a in missing:
            trajs = run_cell(model, vector, a, cfg, rolled[a], batch_size=batch_size,
                             probe_batch_size=probe_batch_size, progress=progress)
            rd.write_cell(a, trajs, threshold=cfg.threshold)
    run = rd.load()
    write_tables(run)
    return run


def expand_samples(prompts: Sequence[str], prompt_ids: Sequence[str], samples_per_prompt: int,
                   answers: Sequence[Any] | None = None) -> tuple[list[str], list[str], list[Any] | None]:
    """The sweep's rows when each prompt is sampled several times: each prompt (and answer) repeated, ids
    "<id>#<k>"; unchanged for one sample. One naming for `sweep` and a grid's shard cells, so both write the same
    rows."""
    n = int(samples_per_prompt)
    if n <= 1:
        return list(prompts), list(prompt_ids), None if answers is None else list(answers)
    return ([p for p in prompts for _ in range(n)], [f"{i}#{k}" for i in prompt_ids for k in range(n)],
            None if answers is None else [a for a in answers for _ in range(n)])


def default_decode_rows(model, window: int, budget_bytes: float | None = None) -> int:
    """Rows per decode batch: 128 on a CPU (throughput flattens there), else as many as ~40% of free GPU memory
    holds in KV cache (prompt allowance 512 tokens + window), between 8 and 512."""
    dev = str(model.cfg.device)
    if not dev.startswith("cuda"):
        return 128
    import torch

    if budget_bytes is None:
        free, _ = torch.cuda.mem_get_info(torch.device(dev))
        budget_bytes = 0.4 * free
    cfg = model.cfg
    d_head = int(getattr(cfg, "d_head", 0) or cfg.d_model // cfg.n_heads)
    kv_heads = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    elem = torch.finfo(cfg.dtype).bits // 8 if getattr(cfg, "dtype", None) is not None else 4
    per_row = 2 * int(cfg.n_layers) * kv_heads * d_head * (512 + int(window)) * elem
    return int(min(512, max(8, budget_bytes // max(per_row, 1))))


def alpha_groups(alphas: Sequence[float], rows_per_alpha: int, max_rows: int) -> list[tuple[float, ...]]:
    """Consecutive alphas whose rows decode together: a fixed partition of the run's alphas (at least one alpha
    per group), so that resuming re-decodes a group with the same batch composition."""
    k = max(1, int(max_rows) // max(int(rows_per_alpha), 1))
    alphas = list(alphas)
    return [tuple(alphas[i: i + k]) for i in range(0, len(alphas), k)]


def rollout_group(model, vector: SteeringVector, alphas: Sequence[float], cfg: SweepConfig, *,
                  decode_batch_size: int = 128, progress: Callable[[str, int, int], None] | None = None,
                  timings: dict | None = None) -> dict[float, tuple]:
    """The held-out rollouts of several alphas in shared decode batches: {alpha: (rollouts, final residuals)},
    plus each rollout's fork probes, (rollouts, finals, forks), where `cfg.probe` can run inside the decode
    against its KV cache (`probe.cache_probe`: an AnswerProbe on a model whose attention can be packed); then
    `run_cell` does not measure again. `timings`: see `rollout` (the probe's CPU seconds inside the decode)."""
    from tl_isokl.probe import cache_probe

    P, C, I = [], [], []
    for a in alphas:
        p, c, i = grid(cfg.prompts, [cfg.coeff(a)], cfg.prompt_ids)
        P += p
        C += c
        I += i
    label = f"rollout α={','.join(alpha_key(a) for a in alphas)}"
    done = [0]

    def tick(k):
        done[0] += k
        if progress is not None:
            progress(label, done[0], len(P))

    in_decode = cache_probe(model, cfg.probe) is not None
    got = rollout(model, vector, P, C, prompt_ids=I, window=cfg.window, batch_size=decode_batch_size,
                  positions=cfg.positions, progress=tick, sampling=cfg.sampling, return_final=True,
                  probe=cfg.probe if in_decode else None, timings=timings)
    n = len(cfg.prompts)
    return {a: tuple(part[k * n: (k + 1) * n] for part in got) for k, a in enumerate(alphas)}


def run_cell(model, vector: SteeringVector, alpha: float, cfg: SweepConfig, rolled: tuple | None = None,
             *, batch_size: int = 32, probe_batch_size: int = 8,
             progress: Callable[[str, int, int], None] | None = None) -> list[Trajectory]:
    """All held-out prompts at one alpha: per-token KL and fork probes of its rollouts (`rolled`, from
    `rollout_group`: (rollouts, finals) or (rollouts, finals, forks) when the decode probed already; decoded here
    when not given)."""
    coeff = cfg.coeff(alpha)
    if rolled is None:
        rolled = rollout_group(model, vector, [alpha], cfg, decode_batch_size=batch_size, progress=progress)[alpha]
    rolls, finals = rolled[0], rolled[1]
    probed = rolled[2] if len(rolled) > 2 else None
    n = len(rolls)

    def tick(stage):
        done = [0]

        def f(k):
            done[0] += k
            if progress is not None:
                progress(f"{stage} α={alpha_key(alpha)}", done[0], n)
        return f

    gated = vector.gate is not None
    kls = per_token_kl(model, vector, rolls, batch_size=batch_size, positions=cfg.positions, progress=tick("kl"),
                       final=finals, readout=cfg.readout, gate_readout=gated)
    concept: list = [None] * n
    gates: list = [None] * n
    if cfg.readout is not None or gated:
        from tl_isokl.effect import trajectory_score

        kls, extra = kls
        if extra["concept"] is not None:
            concept = [trajectory_score(p) if len(p) else None for p in extra["concept"]]
        if extra["gate"] is not None:
            gates = list(extra["gate"])
    if probed is not None:
        forks = probed
        tick("probe")(n)
    else:
        forks = cfg.probe.measure(model, vector, rolls, batch_size=probe_batch_size, positions=cfg.positions,
                                  progress=tick("probe"))
    return [Trajectory.from_rollout(r, alpha=alpha, coeff=coeff, kl=k, forks=f, concept=c, gate=g)
            for r, k, f, c, g in zip(rolls, kls, forks, concept, gates)]


def summary_rows(run: Run) -> list[dict[str, Any]]:
    """Per alpha: n, died, censored (at their last probed fork; censored_eos: of those, ended at EOS), KL
    p50/p95/max, KM median death token (None = not reached: an empty cell in summary.csv, so the column stays
    numeric) and the fork after which the median deaths were last seen alive; where the prompts carry answers, the
    three fates and the probe's accuracy (`tl_isokl.outcomes`)."""
    from tl_isokl.outcomes import outcome_columns
    from tl_isokl.survival import kaplan_meier

    rows = []
    for a, ts in run.by_alpha().items():
        fs = [fate(t, run.threshold) for t in ts]
        kl = summarize(pool(t.kl for t in ts), ("p50", "p95", "max"))
        med = kaplan_meier(fs, alpha=a).median()
        rows.append({
            "alpha": a, "coeff": ts[0].coeff if ts else float("nan"), "n": len(ts),
            "died": sum(f.died for f in fs), "censored": sum(not f.died for f in fs),
            "censored_eos": sum((not f.died) and f.eos for f in fs),
            "kl_p50": kl["p50"], "kl_p95": kl["p95"], "kl_max": kl["max"],
            "median_death_token": med,  # None = not reached (empty in summary.csv; "not reached" when printed)
            "median_death_after": _interval_start(fs, med),
            **outcome_columns(run, ts),  # alive-and-right / -wrong and accuracy, only where answers are known
        })
    return rows


def _interval_start(fs, t: int | None) -> int | str:
    """The last alive fork before the deaths seen at fork `t`: the median lies in (this, t] (fork resolution).
    Empty when there is no median, "prompt" when the deaths at `t` were dead at their first fork."""
    if t is None:
        return ""
    starts = [f.last_alive for f in fs if f.died and f.time == t]
    known = [s for s in starts if s is not None]
    return min(known) if known else "prompt"


def write_tables(run: Run) -> None:
    """Derived tables, rewritten from the cells: forks.csv (row, prompt_id, alpha, t, pmass, p_true, alive, and
    the trajectory's death interval (last_alive_fork, death_fork], empty when it did not die) and summary.csv."""
    forks = []
    for row, t in enumerate(run.trajectories):
        fa = fate(t, run.threshold)
        lo, hi = fa.interval if fa.died else ("", "")
        for f in t.forks:
            forks.append({"row": row, "prompt_id": t.prompt_id, "alpha": t.alpha, "t": f.t, "pmass": f.pmass,
                          "p_true": f.p_true, "alive": int(f.alive(run.threshold)),
                          "last_alive_fork": "" if lo is None else lo, "death_fork": hi})
    rd = RunDir(run.path)
    atomic_write_text(rd.forks_path, csv_text(forks))
    atomic_write_text(rd.summary_path, csv_text(summary_rows(run)))


def _median_text(r: dict[str, Any]) -> str:
    m, lo = r["median_death_token"], r.get("median_death_after", "")
    if m is None or m == "" or m == "not reached":
        return "not reached"
    if not isinstance(m, int) or lo == "":
        return str(m)
    if lo == "prompt":
        return f"{m} (at prompt)" if m == 0 else f"{m} [0, {m}]"
    return f"{m} ({lo}, {m}]"


def format_summary(rows: list[dict[str, Any]]) -> str:
    """The per-alpha table printed at the end of a sweep."""
    head = f"{'alpha':>6} {'coeff':>9} {'n':>4} {'died':>5} {'cens':>5} {'eos':>4} {'KL p50':>8} {'KL p95':>8} " \
           f"{'KL max':>8} {'median death (fork interval)':>28}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['alpha']:>6g} {r['coeff']:>9.4g} {r['n']:>4} {r['died']:>5} {r['censored']:>5} "
                     f"{r['censored_eos']:>4} {r['kl_p50']:>8.3g} {r['kl_p95']:>8.3g} {r['kl_max']:>8.3g} "
                     f"{_median_text(r):>28}")
    return "\n".join(lines)

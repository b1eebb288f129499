"""tl-isokl against the straightforward baseline (benchmarks/baseline.py) on the same work; prints the ratio last.

    python benchmarks/bench_vs_baseline.py            # issue 13's workload: 8 calibration + 16 held-out prompts,
                                                      # window 256, alphas 0..4 (8), log2 forks, 1 torch thread
    python benchmarks/bench_vs_baseline.py --quick    # window 16, 2 + 3 prompts, 3 alphas: a smoke run in seconds
    python benchmarks/bench_vs_baseline.py --json out.json   # also write every number (and both sides' forks)

Each side runs in its own subprocess (one after the other, never concurrently), so its peak RSS (ru_maxrss) is
its own; `--inprocess` runs both in this process instead (peak RSS is then shared and only deltas mean
anything). Both sides load the embedded model and extract the same mean-diff vector (not timed); the baseline then
runs the bridge as TransformerLens ships it (tl_isokl.acceleration's levers off: its re-implemented eager attention,
every component's full call path), tl-isokl with `load_model`'s defaults (native attention, bridge fast path):

    calibration   c* with p95 of pooled per-token KL = 1 nat (+-5% relative) over the calibration prompts
    rollouts      greedy rollouts of every held-out prompt at every alpha x c*
    KL            per-token KL(steered || base) of each of those rollouts
    probe         fork probes (log2 forks, skip after the model's own </think>), deaths at pmass < 0.75

CPU floor (tl-isokl side, after its measured work; `--floor-doses 0` skips it): the raw HF model's best one-thread
throughput (sdpa, no bridge; batched decode, teacher-forced passes) times the work no implementation can avoid:
the sweep's rollouts, N calibration doses (default 4), one base pass per steered rollout for KL, and each fork's
shared prefill. The table gives tl-isokl / floor beside baseline / tl-isokl. A second floor keeps tl-isokl's own
calibration path: the doses its solver ran (each one's dose depends on the last one's value, so they cannot share
a batch without changing the path, i.e. c* and the demo's numbers), each a batch of the calibration prompts, at the
raw model's decode rate for that batch size. Baseline / floor is then the best ratio any implementation could show.

Agreement: c* within the calibration tolerance (relative 5%), and the same deaths per alpha. Each side sweeps at
its own c*, so a small c* difference moves every dose a little; a fork whose pmass sits near the threshold can
then flip. Every disagreement is printed with both sides' pmass at the forks involved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
FULL = dict(window=256, n_cal=8, n_heldout=16, alphas=ALPHAS)
QUICK = dict(window=16, n_cal=2, n_heldout=3, alphas=(0.0, 1.0, 4.0))
THRESHOLD = 0.75
TOL = 0.05
STAGES = ("calibration", "rollout", "kl", "probe")


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def setup(threads: int = 1, model=None, vector=None):
    import torch

    torch.set_num_threads(threads)
    import tl_isokl as ik

    model = model if model is not None else ik.load_model(device="cpu")
    vector = vector if vector is not None else ik.extract(model, *ik.default_concepts(model))
    return model, vector


def workload(model, n_cal: int, n_heldout: int):
    import tl_isokl as ik

    _, cal = ik.default_prompts(model, "calibration")
    ids, held = ik.default_prompts(model, "heldout")
    return cal[:n_cal], list(zip(ids[:n_heldout], held[:n_heldout]))


def first_death(forks, threshold=THRESHOLD):
    for t, pm in forks:
        if not pm >= threshold:  # NaN is dead
            return t
    return None


def run_tl_isokl(model, vector, cal_prompts, heldout, alphas, window, mark=None) -> dict:
    """The library's pipeline as `tl-isokl sweep` runs it: calibrate, then the alphas' rollouts in shared decode
    batches (`sweep.alpha_groups` / `rollout_group`, keeping the steered final residuals, and probing each row's
    forks inside the decode against its KV cache as the row leaves the batch), per-token KL from those residuals
    (base pass only; none at alpha 0), per cell, with sweep's batch sizes. The probe's work inside the decode is
    timed there (`rollout(timings=...)`) and moved from the rollout stage to the probe stage; where the probe cannot
    run in the decode it is measured per cell, as `sweep.run_cell` does."""
    import numpy as np

    import tl_isokl as ik
    from tl_isokl.probe import AnswerProbe
    from tl_isokl.sweep import SweepConfig, alpha_groups, default_decode_rows, rollout_group

    sys.path.insert(0, str(HERE))
    from baseline import Stopwatch

    sw = Stopwatch(STAGES)
    with sw("calibration"):
        cal = ik.calibrate(model, vector, cal_prompts, window=window)
    if mark:
        mark("calibration")
    pids = [i for i, _ in heldout]
    prompts = [p for _, p in heldout]
    cfg = SweepConfig(c_star=cal.c_star, window=window, threshold=THRESHOLD, probe=AnswerProbe(), positions="all",
                      prompts=prompts, prompt_ids=pids)
    rows_per_batch = default_decode_rows(model, window)
    cells = {}
    for group in alpha_groups(sorted(alphas), len(prompts), rows_per_batch):
        timings = {}
        with sw("rollout"):
            rolled = rollout_group(model, vector, group, cfg, decode_batch_size=rows_per_batch, timings=timings)
        for clock, key in ((sw.cpu, "probe"), (sw.wall, "probe_wall")):  # the probe's share of the decode
            clock["rollout"] -= timings.get(key, 0.0)
            clock["probe"] += timings.get(key, 0.0)
        for a in group:
            rolls, finals = rolled[a][:2]
            with sw("kl"):
                kls = ik.per_token_kl(model, vector, rolls, batch_size=32, final=finals)
            if len(rolled[a]) > 2:
                probes = rolled[a][2]
            else:
                with sw("probe"):
                    probes = cfg.probe.measure(model, vector, rolls, batch_size=8)
            rows = []
            for r, k, fk in zip(rolls, kls, probes):
                forks = [[f.t, f.pmass] for f in fk]
                d = first_death(forks)
                rows.append({"id": r.prompt_id, "died": d is not None, "death": d, "length": r.length,
                             "eos": r.eos, "tokens": list(r.tokens), "forks": forks,
                             "kl_p95": float(np.percentile(k, 95)) if len(k) else float("nan")})
            cells[str(a)] = rows
    if mark:
        mark("sweep")
    from tl_isokl.tokens import encode

    return {"c_star": cal.c_star, "achieved": cal.achieved, "converged": cal.converged, "doses": len(cal.history),
            "rounds": cal.rounds, "times": sw.wall, "cpu_times": sw.cpu, "cells": cells,
            "cal_tokens_per_dose": sum(sum(p.lengths) for p in cal.history) / max(len(cal.history), 1),
            "cal_prompt_tokens": sum(len(encode(model, p)) for p in cal_prompts),
            "prompt_tokens": {i: len(encode(model, p)) for i, p in heldout}}


# ------------------------------------------------------------------------------------------------ CPU floor
def raw_hf_throughput(model, window: int, rows: int = 128, tf_rows: int = 32, dose_rows: int = 8) -> dict:
    """Best one-thread throughput of the raw HF model (no bridge, sdpa): greedy decode of `rows` rows for `window`
    steps (HF DynamicCache and tl_isokl.acceleration.growing_cache; the better one), the same at `dose_rows` rows
    (one sequential calibration dose: per-step overhead weighs more there), and teacher-forced tokens/s over
    `tf_rows` sequences of prompt + window tokens (logits of the last position only). CPU time of this process (one
    thread), like the stage columns, so a busy box does not inflate the floor."""
    import torch
    from transformers import AutoModelForCausalLM

    from tl_isokl.tokens import encode, pad_batch, pad_id, position_ids

    import tl_isokl as ik

    hf = AutoModelForCausalLM.from_pretrained(model.tl_isokl_info["path"], attn_implementation="sdpa",
                                              dtype=torch.float32).eval()
    _, prompts = ik.default_prompts(model, "heldout")
    seqs = [encode(model, p) for p in (prompts * (rows // len(prompts) + 1))[:rows]]
    with torch.no_grad():
        best = _raw_decode_rate(model, hf, seqs, window)
        best_dose = _raw_decode_rate(model, hf, seqs[:dose_rows], window)
        seqs = [s + [5 + (7 * j) % 900 for j in range(window)] for s in seqs[:tf_rows]]
        ids, mask = pad_batch(seqs, pad_id(model), side="left")
        hf(input_ids=ids[:2], attention_mask=mask[:2], position_ids=position_ids(mask[:2]), logits_to_keep=1)
        t = time.process_time()
        hf(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=1)
        tf = int(mask.sum()) / (time.process_time() - t)
    return {"decode_tok_s": best, "tf_tok_s": tf, "rows": rows, "window": window, "dose_decode_tok_s": best_dose,
            "dose_rows": dose_rows}


def _raw_decode_rate(model, hf, seqs, window: int) -> float:
    """Tokens/s of HF's greedy decode of `seqs` (left-padded) for `window` steps, best of its two caches."""
    import torch
    from transformers import DynamicCache

    from tl_isokl.acceleration import growing_cache
    from tl_isokl.tokens import pad_batch, pad_id, position_ids

    ids, mask = pad_batch(seqs, pad_id(model), side="left")
    best = 0.0
    for make in (DynamicCache, growing_cache):
        m = mask.clone()
        t = time.process_time()
        out = hf(input_ids=ids, attention_mask=m, position_ids=position_ids(m), past_key_values=make(),
                 use_cache=True)
        cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        for _ in range(window - 1):
            m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
            out = hf(input_ids=nxt[:, None], attention_mask=m, position_ids=m.sum(1, keepdim=True) - 1,
                     past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
        best = max(best, len(seqs) * window / (time.process_time() - t))
    return best


def cpu_floor(lib: dict, thr: dict, doses: int, prefill_len: int) -> dict:
    """Seconds the work cannot go below on this machine: every token that must be decoded at the raw model's best
    batched decode rate, every token that must be teacher-forced at its best teacher-forced rate.

    Unavoidable: the sweep's rollouts (every alpha); `doses` calibration doses at tl-isokl's mean tokens per dose;
    one base (unsteered) teacher-forced pass per steered rollout for KL (the steered logits come from the decode;
    alpha = 0 needs none); for the probe, the shared prefill of each fork (its answer tokens are read from the
    prefill's last position, and the rollout prefix's K/V exist already)."""
    P = lib["prompt_tokens"]
    dec_sweep = sum(r["length"] for rows in lib["cells"].values() for r in rows)
    dec_cal = doses * lib["cal_tokens_per_dose"]
    kl_sweep = sum(P[r["id"]] + r["length"] for a, rows in lib["cells"].items() if float(a) != 0 for r in rows)
    kl_cal = doses * (lib["cal_tokens_per_dose"] + lib["cal_prompt_tokens"])
    forks = sum(len(r["forks"]) for rows in lib["cells"].values() for r in rows)
    out = {"calibration": dec_cal / thr["decode_tok_s"] + kl_cal / thr["tf_tok_s"],
           "rollout": dec_sweep / thr["decode_tok_s"], "kl": kl_sweep / thr["tf_tok_s"],
           "probe": forks * prefill_len / thr["tf_tok_s"]}
    out["total"] = sum(out.values())
    # the same work with the calibration tl-isokl actually ran: its doses (as many as the statistic needed: each
    # depends on the last one's value), each a batch of the calibration prompts, at the raw model's rate for that
    # batch. Keeping the solver's path (the demo's numbers) leaves no lower bound than this.
    n = lib["doses"]
    seq_cal = (n * lib["cal_tokens_per_dose"] / thr["dose_decode_tok_s"]
               + n * (lib["cal_tokens_per_dose"] + lib["cal_prompt_tokens"]) / thr["tf_tok_s"])
    out["sequential"] = {"calibration": seq_cal, "doses": n,
                         "total": out["total"] - out["calibration"] + seq_cal}
    out.update(doses=doses, forks=forks, throughput=thr)
    return out


def run_side(side: str, cfg: dict, threads: int = 1, model=None, vector=None) -> dict:
    """Run one side in this process; returns its result dict with timings, RSS marks and outcomes. A model handed
    in is switched to the side's levers for the run and back afterwards."""
    from tl_isokl.acceleration import accelerate, attention_mode, fast_path_enabled

    t_load = time.perf_counter()
    model, vector = setup(threads, model, vector)
    before = {"native_attention": attention_mode(model) != "bridge", "fast_path": fast_path_enabled(model)}
    lib = side == "tl_isokl"  # the yardstick stays the straightforward bridge whatever load_model's defaults
    accelerate(model, native_attention=lib, fast_path=lib)
    try:
        return _run_side(side, cfg, threads, model, vector, t_load)
    finally:
        accelerate(model, **before)


def _run_side(side, cfg, threads, model, vector, t_load) -> dict:
    load_s = time.perf_counter() - t_load
    cal, held = workload(model, cfg["n_cal"], cfg["n_heldout"])
    marks = {"loaded": rss_mb()}

    def mark(stage):
        marks[stage] = rss_mb()

    if side == "baseline":
        sys.path.insert(0, str(HERE))
        import baseline

        res = baseline.run(model, vector, cal, held, cfg["alphas"], cfg["window"], threshold=THRESHOLD, tol=TOL,
                           mark=mark)
    elif side == "tl_isokl":
        res = run_tl_isokl(model, vector, cal, held, cfg["alphas"], cfg["window"], mark=mark)
    else:
        raise ValueError(side)
    res["times"]["total"] = sum(res["times"][s] for s in STAGES)
    res["cpu_times"]["total"] = sum(res["cpu_times"][s] for s in STAGES)
    res.update(side=side, load_s=load_s, rss_mb=marks, peak_rss_mb=rss_mb(), threads=threads)
    if side == "tl_isokl" and cfg.get("floor_doses"):  # after the RSS reading: not part of the measured work
        from tl_isokl.probe import PREFILL
        from tl_isokl.tokens import encode

        pre = encode(model, PREFILL, bos=False)
        both = encode(model, PREFILL + "true", bos=False)
        lcp = next((i for i, (a, b) in enumerate(zip(pre, both)) if a != b), min(len(pre), len(both)))
        thr = raw_hf_throughput(model, cfg["window"], dose_rows=cfg["n_cal"])
        res["floor"] = cpu_floor(res, thr, cfg["floor_doses"], lcp)  # positions up to the last shared one
    return res


def run_child(side: str, cfg: dict, threads: int) -> dict:
    """Run one side in a fresh interpreter (own peak RSS); the child writes JSON to a temp file."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / f"{side}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--child-out", str(out),
               "--window", str(cfg["window"]), "--n-cal", str(cfg["n_cal"]), "--n-heldout", str(cfg["n_heldout"]),
               "--alphas", ",".join(str(a) for a in cfg["alphas"]), "--threads", str(threads),
               "--floor-doses", str(cfg.get("floor_doses", 0))]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t
        return res


# ------------------------------------------------------------------------------------------------ comparison
def compare(base: dict, lib: dict, tol: float = TOL) -> dict:
    """c* agreement and per-alpha deaths; every disagreeing trajectory with both sides' forks."""
    rel = abs(lib["c_star"] - base["c_star"]) / base["c_star"]
    out = {"c_star": {"baseline": base["c_star"], "tl_isokl": lib["c_star"], "rel_diff": rel, "ok": rel <= tol},
           "alphas": [], "disagreements": [], "token_mismatch": 0, "rows": 0}
    for a, rows_b in base["cells"].items():
        rows_l = {r["id"]: r for r in lib["cells"][a]}
        nb = sum(r["died"] for r in rows_b)
        nl = sum(r["died"] for r in rows_l.values())
        kb = [r["kl_p95"] for r in rows_b]
        kl_ = [rows_l[r["id"]]["kl_p95"] for r in rows_b]
        out["alphas"].append({"alpha": float(a), "died_baseline": nb, "died_tl_isokl": nl, "n": len(rows_b),
                              "kl_p95_med_baseline": _median(kb), "kl_p95_med_tl_isokl": _median(kl_)})
        for rb in rows_b:
            rl = rows_l[rb["id"]]
            out["rows"] += 1
            if rb["tokens"] != rl["tokens"]:
                out["token_mismatch"] += 1
            if rb["died"] != rl["died"] or rb["death"] != rl["death"]:
                fb, fl = dict((t, p) for t, p in rb["forks"]), dict((t, p) for t, p in rl["forks"])
                ts = sorted(set(fb) | set(fl))
                out["disagreements"].append({
                    "alpha": float(a), "id": rb["id"], "death_baseline": rb["death"], "death_tl_isokl": rl["death"],
                    "same_tokens": rb["tokens"] == rl["tokens"],
                    "forks": [[t, fb.get(t), fl.get(t)] for t in ts]})
    out["deaths_ok"] = all(x["died_baseline"] == x["died_tl_isokl"] for x in out["alphas"])
    return out


def _median(xs):
    import math

    xs = sorted(x for x in xs if x == x and not math.isinf(x))
    return xs[len(xs) // 2] if xs else float("nan")


def report(base: dict, lib: dict, cmp: dict, cfg: dict) -> str:
    L = []
    L.append(f"workload: {cfg['n_cal']} calibration + {cfg['n_heldout']} held-out prompts, window {cfg['window']}, "
             f"alphas {', '.join(f'{a:g}' for a in cfg['alphas'])}, log2 forks, torch threads {lib['threads']}; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
             f"load avg {os.getloadavg()[0]:.2f} at the end (other processes share the box: compare wall with CPU)")
    fl = lib.get("floor")
    L.append(f"{'stage':<12} {'baseline s':>11} {'tl-isokl s':>11} {'ratio':>7} {'(CPU s: base':>13} "
             f"{'tl-isokl':>9} {'ratio)':>7}" + (f" {'CPU floor s':>12} {'tl-isokl CPU/floor':>19}" if fl else ""))
    for s in STAGES + ("total",):
        b, t = base["times"][s], lib["times"][s]
        bc, tc = base["cpu_times"][s], lib["cpu_times"][s]
        L.append(f"{s:<12} {b:>11.2f} {t:>11.2f} {b / t if t else float('nan'):>6.1f}x {bc:>13.2f} {tc:>9.2f} "
                 f"{bc / tc if tc else float('nan'):>6.1f}x" + (f" {fl[s]:>12.2f} {tc / fl[s]:>14.1f}x" if fl else ""))
    if fl:
        th = fl["throughput"]
        L.append(f"CPU floor: raw HF model (sdpa, no bridge), 1 thread: decode {th['decode_tok_s']:,.0f} tok/s "
                 f"(batch {th['rows']}), teacher-forced {th['tf_tok_s']:,.0f} tok/s; unavoidable work = the sweep's "
                 f"rollouts, {fl['doses']} calibration doses, one base pass per steered rollout (KL), each fork's "
                 f"shared prefill ({fl['forks']} forks); CPU time / floor: baseline {base['cpu_times']['total'] / fl['total']:.1f}x"
                 f", tl-isokl {lib['cpu_times']['total'] / fl['total']:.1f}x")
        sq = fl.get("sequential")
        if sq:
            L.append(f"floor with tl-isokl's own calibration path ({sq['doses']} sequential doses of "
                     f"{th['dose_rows']} rows at the raw model's {th['dose_decode_tok_s']:,.0f} tok/s for that "
                     f"batch): "
                     f"calibration {sq['calibration']:.2f} s, total {sq['total']:.2f} s; tl-isokl CPU / this floor "
                     f"{lib['cpu_times']['total'] / sq['total']:.2f}x")
            bc = base["cpu_times"]["total"]
            L.append(f"best ratio the floors allow (baseline CPU / floor): {bc / fl['total']:.1f}x with "
                     f"{fl['doses']} doses at the batched rate, {bc / sq['total']:.1f}x on tl-isokl's calibration path")
    L.append(f"calibration doses: baseline {base['doses']} (bisection, one per step); tl-isokl {lib['doses']} "
             f"in {lib['rounds']} rounds")
    for side, r in (("baseline", base), ("tl-isokl", lib)):
        m = r["rss_mb"]
        L.append(f"peak RSS {side:<9} {r['peak_rss_mb']:7.0f} MB (after load {m['loaded']:.0f} MB, "
                 f"+{r['peak_rss_mb'] - m['loaded']:.0f} MB during the work; after calibration "
                 f"{m.get('calibration', float('nan')):.0f} MB)")
    c = cmp["c_star"]
    L.append(f"c*: baseline {c['baseline']:.4f} (p95 {base['achieved']:.3f}), tl-isokl {c['tl_isokl']:.4f} "
             f"(p95 {lib['achieved']:.3f}); relative difference {c['rel_diff']:.2%} "
             f"({'within' if c['ok'] else 'OUTSIDE'} the {TOL:.0%} tolerance)")
    L.append("deaths per alpha (baseline / tl-isokl, of n): " + ", ".join(
        f"{x['alpha']:g}: {x['died_baseline']}/{x['died_tl_isokl']}" for x in cmp["alphas"])
        + f"  [{'same' if cmp['deaths_ok'] else 'DIFFERENT'}]")
    L.append("median per-row KL p95 per alpha (baseline / tl-isokl): " + ", ".join(
        f"{x['alpha']:g}: {x['kl_p95_med_baseline']:.3g}/{x['kl_p95_med_tl_isokl']:.3g}" for x in cmp["alphas"]))
    L.append(f"rollouts token-identical: {cmp['rows'] - cmp['token_mismatch']}/{cmp['rows']}")
    for d in cmp["disagreements"]:
        near = [f"t={t}: {_f(pb)}/{_f(pl)}" for t, pb, pl in d["forks"]
                if (pb is None) != (pl is None) or (pb is not None and (pb < THRESHOLD) != (pl < THRESHOLD))
                or (pb is not None and abs(pb - THRESHOLD) < 0.1)]
        L.append(f"  disagreement alpha {d['alpha']:g} {d['id']}: death baseline {d['death_baseline']} vs "
                 f"tl-isokl {d['death_tl_isokl']} (same tokens: {d['same_tokens']}); pmass b/t near the threshold: "
                 + ("; ".join(near) or "none"))
    tot = base["times"]["total"] / lib["times"]["total"]
    cpu = base["cpu_times"]["total"] / lib["cpu_times"]["total"]
    L.append(f"ratio (baseline / tl-isokl, total of the four stages): {tot:.2f}x wall ({cpu:.2f}x CPU time)")
    return "\n".join(L)


def _f(x):
    return "-" if x is None else f"{x:.3f}"


def parse_cfg(args) -> dict:
    cfg = dict(QUICK if args.quick else FULL)
    if args.window:
        cfg["window"] = args.window
    if args.n_cal:
        cfg["n_cal"] = args.n_cal
    if args.n_heldout:
        cfg["n_heldout"] = args.n_heldout
    if args.alphas:
        cfg["alphas"] = tuple(float(a) for a in args.alphas.split(","))
    cfg["floor_doses"] = args.floor_doses if args.floor_doses is not None else (0 if args.quick else 4)
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="window 16, 2 + 3 prompts, alphas 0, 1, 4")
    ap.add_argument("--window", type=int)
    ap.add_argument("--n-cal", type=int)
    ap.add_argument("--n-heldout", type=int)
    ap.add_argument("--alphas", help="comma-separated multiples of c*")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--floor-doses", type=int, default=None,
                    help="calibration doses counted as unavoidable in the CPU floor (0: skip the floor; "
                         "default 4, 0 with --quick)")
    ap.add_argument("--inprocess", action="store_true", help="run both sides in this process (shared RSS)")
    ap.add_argument("--json", help="write all numbers to this file")
    ap.add_argument("--child", choices=("baseline", "tl_isokl"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cfg = parse_cfg(args)
    if args.child:
        res = run_side(args.child, cfg, args.threads)
        Path(args.child_out).write_text(json.dumps(res))
        return 0
    if args.inprocess:
        model, vector = setup(args.threads)
        base = run_side("baseline", cfg, args.threads, model, vector)
        lib = run_side("tl_isokl", cfg, args.threads, model, vector)
    else:
        base = run_child("baseline", cfg, args.threads)
        lib = run_child("tl_isokl", cfg, args.threads)
    cmp = compare(base, lib)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": {**cfg, "alphas": list(cfg["alphas"])}, "baseline": base,
                                               "tl_isokl": lib, "compare": cmp}, indent=1))
    print(report(base, lib, cmp, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())

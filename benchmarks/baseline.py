"""The straightforward pipeline, written independently of tl_isokl's rollout / kl / probe / calibrate.

This is the yardstick of issue 13 ("N x faster than a straightforward implementation of the same pipeline"). It
does the same work with the obvious code and nothing clever:

* **rollout**: one prompt and one dose at a time; greedy decoding through the bridge (`model.original_model`,
  whose modules are the bridge's, so TransformerLens hooks fire) with HF's KV cache (`DynamicCache`); steering is
  a plain TransformerLens hook `h + c * v` on `blocks.{L}.hook_resid_post`, at every position (prompt included);
  a row stops at the first EOS id (kept), else after `window` tokens.
* **KL**: re-scoring. For each rollout, one steered and one unsteered teacher-forced forward over
  prompt + rollout with full logits; log-softmax in float32; KL(P_steered || P_base) at the position that
  produced each generated token (clamped at 0 against rounding, as tl_isokl does).
* **calibration**: bisection, one dose per step. Start at c = 1 (the add operator's first guess), move by x4
  until the target is bracketed, then bisect in log space (geometric midpoint) until the statistic (p95 of the
  per-token KL pooled over every generated token of every calibration prompt) is within `tol * target` of the
  target (relative tolerance, 5% by default: tl_isokl's semantics). Every dose re-generates every rollout.
* **probe**: one fresh forward per fork. Forks t = 0, 1, 2, 4, ... and the last token (never after an EOS);
  forks after the model's own `</think>` (in the prompt after its last `<think>`, or in the decoded rollout[:t])
  are skipped; the prefill + answer is tokenized together and the tokens past the longest common prefix with
  the prefill alone are scored; the two answer variants ("true", "false") are the two rows of that fork's
  forward (prompt + rollout[:t] + prefill + answer, right-padded, steered at the rollout's dose). pmass =
  P(true) + P(false); alive iff pmass >= 0.75; death = first fork below (absorbing, NaN dead).

Shared with tl_isokl on purpose (not what is being measured): `load_model`, the vector (`extract`), the default
prompt sets, and the bridge's hook API.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

PREFILL = '\nI should answer now.</think>{"value": '
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWERS = (("true", True), ("false", False))


class Stopwatch:
    """Wall and process-CPU seconds accumulated per stage. CPU time is the steadier number on a shared box (a
    one-thread process that waits for a core is not charged for the wait)."""

    def __init__(self, names):
        self.wall = {n: 0.0 for n in names}
        self.cpu = {n: 0.0 for n in names}

    @contextmanager
    def __call__(self, name):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c


# ---------------------------------------------------------------------------------------------------- tokens
def encode(model, text: str, bos: bool = True) -> list[int]:
    tok = model.tokenizer
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    b = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos and b is not None and (not ids or ids[0] != b):
        ids = [b] + ids
    return ids


def decode(model, ids: list[int]) -> str:
    return model.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def stop_ids(model) -> set[int]:
    ids = set()
    if model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    gen = getattr(model.original_model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(int(i) for i in e)
    return ids


# ---------------------------------------------------------------------------------------------------- steering
def add_hook(vector, c: float):
    """[(hook name, fn)] adding c * v to blocks.{L}.hook_resid_post at every position."""
    v = vector.direction
    cache = {}

    def fn(h, hook):
        if h.device not in cache:
            cache[h.device] = v.to(h.device)
        return (h.float() + float(c) * cache[h.device]).to(h.dtype)

    return [(f"blocks.{vector.layer}.hook_resid_post", fn)]


# ---------------------------------------------------------------------------------------------------- rollout
@torch.no_grad()
def rollout_one(model, vector, prompt_ids: list[int], c: float, window: int, stops: set[int]) -> tuple[list[int], bool]:
    """Greedy decode of one prompt at dose c: (generated ids incl. EOS if hit, hit EOS)."""
    from transformers import DynamicCache

    dev = model.cfg.device
    om = model.original_model
    toks: list[int] = []
    with model.hooks(fwd_hooks=add_hook(vector, c)):
        out = om(input_ids=torch.tensor([prompt_ids], device=dev), past_key_values=DynamicCache(), use_cache=True)
        for step in range(window):
            nxt = int(out.logits[0, -1].float().argmax())
            toks.append(nxt)
            if nxt in stops:
                return toks, True
            if step == window - 1:
                break
            out = om(input_ids=torch.tensor([[nxt]], device=dev), past_key_values=out.past_key_values,
                     use_cache=True)
    return toks, False


# ---------------------------------------------------------------------------------------------------- KL
@torch.no_grad()
def kl_one(model, vector, prompt_ids: list[int], tokens: list[int], c: float) -> np.ndarray:
    """Per-token KL(steered || base) by re-scoring: a steered and an unsteered full-logit forward."""
    if not tokens:
        return np.zeros(0, np.float32)
    seq = torch.tensor([prompt_ids + tokens], device=model.cfg.device)
    with model.hooks(fwd_hooks=add_hook(vector, c)):
        ls = model(seq)[0].float()
    lb = model(seq)[0].float()
    P = len(prompt_ids)
    sl = slice(P - 1, P - 1 + len(tokens))
    ls, lb = torch.log_softmax(ls[sl], -1), torch.log_softmax(lb[sl], -1)
    return (ls.exp() * (ls - lb)).sum(-1).clamp(min=0.0).cpu().numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------------- probe
def forks_of(tokens: list[int], eos: bool) -> list[int]:
    n_max = len(tokens) - 1 if eos else len(tokens)
    if n_max < 0:
        return []
    pts, t = {0, n_max}, 1
    while t <= n_max:
        pts.add(t)
        t *= 2
    return sorted(pts)


def _lcp(a, b) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


@torch.no_grad()
def probe_fork(model, vector, prompt_ids, tokens, t: int, c: float, prefill: str) -> float:
    """P(true) + P(false) at fork t: one fresh steered forward, one row per answer variant."""
    pre = encode(model, prefill, bos=False)
    rows, scored = [], []
    for ans, _ in ANSWERS:
        both = encode(model, prefill + ans, bos=False)
        k = _lcp(pre, both)
        ctx = len(prompt_ids) + t
        rows.append(prompt_ids + tokens[:t] + both)
        scored.append([(ctx + i - 1, both[i]) for i in range(k, len(both))])
    L = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    dev = model.cfg.device
    with model.hooks(fwd_hooks=add_hook(vector, c)):
        logits = model.original_model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
    lp = torch.log_softmax(logits, -1)
    pm = 0.0
    for i, sc in enumerate(scored):
        pm += math.exp(sum(float(lp[i, p, tok]) for p, tok in sc))
    return pm


def probe_rollout(model, vector, prompt: str, prompt_ids, tokens, eos: bool, c: float) -> list[tuple[int, float]]:
    """[(fork t, pmass)] for the forks probed under the think-state rule (skip after the model's `</think>`)."""
    out = []
    prompt_open = THINK_CLOSE in prompt.rsplit(THINK_OPEN, 1)[-1]
    for t in forks_of(tokens, eos):
        if prompt_open or THINK_CLOSE in decode(model, tokens[:t]):
            continue
        out.append((t, probe_fork(model, vector, prompt_ids, tokens, t, c, PREFILL)))
    return out


def death(forks: list[tuple[int, float]], threshold: float = 0.75) -> int | None:
    """First fork with pmass < threshold (NaN is dead), or None."""
    for t, pm in forks:
        if not pm >= threshold:
            return t
    return None


# ---------------------------------------------------------------------------------------------------- calibration
@dataclass
class Bisection:
    c_star: float
    achieved: float
    converged: bool
    steps: list[tuple[float, float]] = field(default_factory=list)


def p95_at(model, vector, prompts_ids: list[list[int]], c: float, window: int, stops) -> tuple[float, dict]:
    """p95 of the pooled per-token KL at dose c (every rollout regenerated), and the seconds per stage."""
    t0 = time.perf_counter()
    rolls = [rollout_one(model, vector, p, c, window, stops) for p in prompts_ids]
    t1 = time.perf_counter()
    kls = [kl_one(model, vector, p, toks, c) for p, (toks, _) in zip(prompts_ids, rolls)]
    t2 = time.perf_counter()
    pool = np.concatenate(kls) if kls else np.zeros(0, np.float32)
    v = float(np.percentile(pool, 95)) if pool.size else float("nan")
    return v, {"rollout": t1 - t0, "kl": t2 - t1}


def bisect(evaluate, *, target: float = 1.0, tol: float = 0.05, c_init: float = 1.0, factor: float = 4.0,
           c_min: float = 1e-4, c_max: float = 1e4, max_steps: int = 40) -> Bisection:
    """Log-space bisection on a monotone-ish f(c); one evaluation per step; |f - target| <= tol * target."""
    steps: list[tuple[float, float]] = []

    def f(c):
        v = evaluate(c)
        steps.append((c, v))
        return v

    ok = lambda v: abs(v - target) <= tol * target  # noqa: E731
    c = c_init
    v = f(c)
    if ok(v):
        return Bisection(c, v, True, steps)
    lo = hi = None
    if v < target:
        lo = (c, v)
        while hi is None:
            c = c * factor
            if c > c_max:
                raise RuntimeError(f"target {target} not reached up to c_max; seen {steps}")
            v = f(c)
            if ok(v):
                return Bisection(c, v, True, steps)
            if v >= target:
                hi = (c, v)
            else:
                lo = (c, v)
    else:
        hi = (c, v)
        while lo is None:
            c = c / factor
            if c < c_min:
                raise RuntimeError(f"target {target} already exceeded at c_min; seen {steps}")
            v = f(c)
            if ok(v):
                return Bisection(c, v, True, steps)
            if v < target:
                lo = (c, v)
            else:
                hi = (c, v)
    while len(steps) < max_steps:
        c = math.sqrt(lo[0] * hi[0])
        v = f(c)
        if ok(v):
            return Bisection(c, v, True, steps)
        if v >= target:
            hi = (c, v)
        else:
            lo = (c, v)
    best = min((lo, hi), key=lambda cv: abs(cv[1] - target))
    return Bisection(best[0], best[1], False, steps)


# ---------------------------------------------------------------------------------------------------- pipeline
def run(model, vector, cal_prompts: list[str], heldout: list[tuple[str, str]], alphas, window: int,
        threshold: float = 0.75, target: float = 1.0, tol: float = 0.05, mark=None) -> dict:
    """Calibrate, then for each alpha: rollouts, KL, probes. Returns timings (s per stage), c*, and per-alpha
    results {alpha: [{"id", "died", "death", "length", "eos", "forks": [[t, pmass]], "kl_p95"}]}.

    `mark(stage)` is called after each stage (the harness reads peak RSS there).
    """
    stops = stop_ids(model)
    sw = Stopwatch(("calibration", "rollout", "kl", "probe"))
    cal_ids = [encode(model, p) for p in cal_prompts]
    cal_parts = {"rollout": 0.0, "kl": 0.0}

    def evaluate(c):
        v, parts = p95_at(model, vector, cal_ids, c, window, stops)
        for k in parts:
            cal_parts[k] += parts[k]
        return v

    with sw("calibration"):
        bis = bisect(evaluate, target=target, tol=tol)
    if mark:
        mark("calibration")
    cells = {}
    for a in alphas:
        c = float(a) * bis.c_star
        rows = []
        for pid, prompt in heldout:
            ids = encode(model, prompt)
            with sw("rollout"):
                toks, eos = rollout_one(model, vector, ids, c, window, stops)
            with sw("kl"):
                kl = kl_one(model, vector, ids, toks, c)
            with sw("probe"):
                fk = probe_rollout(model, vector, prompt, ids, toks, eos, c)
            d = death(fk, threshold)
            rows.append({"id": pid, "died": d is not None, "death": d, "length": len(toks), "eos": eos,
                         "tokens": toks, "forks": [[t_, pm] for t_, pm in fk],
                         "kl_p95": float(np.percentile(kl, 95)) if kl.size else float("nan")})
        cells[str(a)] = rows
    if mark:
        mark("sweep")
    return {"c_star": bis.c_star, "achieved": bis.achieved, "converged": bis.converged,
            "doses": len(bis.steps), "steps": bis.steps, "times": sw.wall, "cpu_times": sw.cpu,
            "calibration_parts": cal_parts,
            "cells": cells}

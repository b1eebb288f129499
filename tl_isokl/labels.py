"""Why a dead trace died, named from what the run directory stored: a pure function, no model.

`label_death` reads a `Trajectory`'s stored KL, tokens and forks and names the likely failure mode: "kl_spike",
"repetition_loop" or "format_fragile". `tl_isokl.forensics` recomputes the same trace with the model and shows the
evidence; this module is what can run on a laptop over a downloaded run.

Alignment: token i's KL is that of the distribution that produced it (as in `Trajectory.kl`); fork t was spliced
after t generated tokens, so it sits right before token t.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tl_isokl.errors import IsoKLError
from tl_isokl.records import Trajectory, fate


def _tandem_repeat(tokens: Sequence[int], max_n: int, min_repeats: int) -> dict[str, Any] | None:
    """Longest back-to-back repetition of a unit of 1..max_n tokens inside `tokens` (None if < min_repeats).

    A unit u of length n repeated r times covers r * n consecutive tokens with tokens[j] == tokens[j + n]
    throughout. Among units that reach min_repeats the one covering the most tokens wins (ties: shorter unit).
    """
    best = None
    toks = list(tokens)
    for n in range(1, max_n + 1):
        j = 0
        while j + n < len(toks):
            k = j
            while k + n < len(toks) and toks[k] == toks[k + n]:
                k += 1
            run = k - j + n  # tokens covered by the repetition that starts at j
            reps = run // n
            if reps >= min_repeats and (best is None or reps * n > best["span"]):
                best = {"n": n, "repeats": reps, "start": j, "span": reps * n, "unit": toks[j: j + n]}
            j = max(k, j + 1)
    return best


def _count_repeat(tokens: Sequence[int], max_n: int, min_repeats: int) -> dict[str, Any] | None:
    """Most frequent n-gram (n in 1..max_n, non-overlapping occurrences anywhere in `tokens`)."""
    best = None
    toks = list(tokens)
    for n in range(1, max_n + 1):
        seen: dict[tuple, list[int]] = {}
        for j in range(len(toks) - n + 1):
            key = tuple(toks[j: j + n])
            starts = seen.setdefault(key, [])
            if not starts or j >= starts[-1] + n:
                starts.append(j)
        for key, starts in seen.items():
            reps = len(starts)
            if reps >= min_repeats and (best is None or reps * n > best["span"]):
                best = {"n": n, "repeats": reps, "start": starts[0], "span": reps * n, "unit": list(key)}
    return best


def label_death(
    traj: Trajectory,
    threshold: float,
    *,
    k: float = 3.0,
    min_kl: float = 0.1,
    lookback: int | None = None,
    ngram: int = 4,
    repeats: int = 3,
    contiguous: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Name the likely cause of a trace's death from its stored KL, tokens and forks (no model).

    The window is the whole interval since the model was last seen alive: generated tokens [t_alive, t), where t
    is the death fork (tokens the model had written when it failed the probe) and t_alive the last fork that was
    still alive (0 when the first fork was already dead). The probe only looks at forks, so the failure happened
    somewhere in that interval: a spike 35 tokens before a death found at fork 64 (last alive at 32) is inside
    it and is named. What the model demonstrably survived (tokens before t_alive) is not the cause of its death.
    `lookback` optionally narrows the window to its last `lookback` tokens.

    Rules, first match wins:

    0. "dead_at_prompt": the death fork is 0. The model failed the probe before generating anything: steering
       the prompt's own positions already broke the answer format (there is no generated token to blame).
    1. "kl_spike": a token in the window has KL > max(k x p95, min_kl), p95 taken over all of the trajectory's
       finite KL values. The intervention itself moved one distribution far more than usual just before death.
    2. "repetition_loop": a unit of 1..`ngram` tokens occurs >= `repeats` times in the window; back to back
       when `contiguous` (a loop), anywhere otherwise. The text collapsed while the steering budget looked fine.
    3. "format_fragile": neither. KL stayed in its usual range and the text did not loop, yet the model lost
       the JSON answer format: the probe broke under ordinary steering.

    Why this order: KL is the direct measurement of steering vs base on the same context, while a loop can be
    the base model's own degeneracy (small models loop unsteered, and then KL stays low). A loop after a spike
    is most often the spike's consequence, so the spike is named and the loop is reported in `also`.

    Why these defaults: k = 3 is three times the trajectory's own p95, so it is scale-free across alphas and a
    single outlier in 20+ tokens cannot move p95 itself; min_kl = 0.1 nat (a tenth of the usual 1-nat budget)
    keeps noise at alpha ~ 0 (p95 ~ 1e-4) from being called a spike; the whole interval because a fixed
    lookback (the prototype's 16 tokens) misses causes early in a long log2 interval; contiguous repeats
    with repeats = 3 because counting anywhere flags function words (" the" four times in 16 tokens is plain
    English), while a model stuck in a loop repeats back to back.

    Args:
        traj: a trajectory that died at `threshold`.
        threshold: pmass threshold for alive/dead (the run's `threshold`).

    Returns:
        (label, evidence). Evidence keys: death_t, window [start, stop), p95, spike_threshold, max_kl,
        max_kl_index, ratio (max_kl / p95), loop (n, repeats, start, span, unit) or None, fired (every rule
        that matched, in precedence order), also (fired minus the label), summary (one line for tables).

    Raises:
        IsoKLError: the trajectory did not die at this threshold.
    """
    if k <= 0 or min_kl < 0 or (lookback is not None and lookback < 1) or ngram < 1 or repeats < 2:
        raise IsoKLError(f"need k > 0, min_kl >= 0, lookback >= 1, ngram >= 1, repeats >= 2; got k={k}, "
                         f"min_kl={min_kl}, lookback={lookback}, ngram={ngram}, repeats={repeats}")
    f = fate(traj, threshold)
    if not f.died:
        raise IsoKLError(f"trace {traj.prompt_id!r} at alpha {traj.alpha:g} did not die at threshold {threshold:g} "
                         f"(censored at token {f.time}); label_death needs a dead trace")
    t = f.time
    t_alive = f.last_alive
    start = t_alive if t_alive is not None else 0
    if lookback is not None:
        start = max(start, t - int(lookback))
    stop = min(t, traj.length)
    kl = np.asarray(traj.kl, dtype=float)
    finite = kl[np.isfinite(kl)]
    p95 = float(np.percentile(finite, 95)) if finite.size else float("nan")
    spike_thr = max(k * p95, min_kl) if math.isfinite(p95) else float("inf")
    win = kl[start:stop]
    ev: dict[str, Any] = {"death_t": t, "window": [start, stop], "last_alive_fork": t_alive, "p95": p95,
                          "spike_threshold": spike_thr, "max_kl": None, "max_kl_index": None, "ratio": None}
    fired = []
    if win.size and np.isfinite(win).any():
        j = int(np.nanargmax(win))
        mx = float(win[j])
        ev.update(max_kl=mx, max_kl_index=start + j, ratio=mx / p95 if p95 > 0 else float("inf") if mx > 0 else 0.0)
        if mx > spike_thr:
            fired.append("kl_spike")
    finder = _tandem_repeat if contiguous else _count_repeat
    loop = finder(traj.tokens[start:stop], ngram, repeats)
    if loop is not None:
        loop["start"] += start
        fired.append("repetition_loop")
    ev["loop"] = loop
    label = "dead_at_prompt" if t == 0 else fired[0] if fired else "format_fragile"
    ev["fired"] = fired
    ev["also"] = [x for x in fired if x != label]
    ev["summary"] = evidence_summary(label, ev)
    return label, ev


def evidence_summary(label: str, ev: dict[str, Any]) -> str:
    """The one-line 'top evidence' of a label, for tables."""
    if label == "kl_spike":
        tok = f" {ev['max_kl_token']!r}" if ev.get("max_kl_token") is not None else ""
        s = f"KL {ev['max_kl']:.3g} at token {ev['max_kl_index']}{tok} = {ev['ratio']:.3g}x p95"
    elif label == "repetition_loop":
        lp = ev["loop"]
        s = f"{lp['n']}-token unit x{lp['repeats']} from token {lp['start']}"
        if lp.get("text") is not None:
            s += f" {lp['text']!r}"
    elif label == "dead_at_prompt":
        s = "failed the probe before generating anything (steering the prompt broke the format)"
    elif ev["max_kl"] is None:
        s = "no tokens before death" if ev["window"][1] == 0 else "no KL in window"
    elif ev["max_kl"] == 0 and not ev["p95"]:
        s = "KL = 0 throughout (unsteered), no loop"
    else:
        s = f"max KL {ev['max_kl']:.3g} ({ev['ratio']:.2g}x p95), no loop"
    if ev.get("also"):
        s += f" (also {', '.join(ev['also'])})"
    return s


def last_alive_fork(traj: Trajectory, threshold: float) -> int | None:
    """The last fork before death that was still alive (None if the first fork was already dead or no death)."""
    f = fate(traj, threshold)
    return f.last_alive if f.died else None

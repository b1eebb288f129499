"""Alive is not right: which answer a living trace gives, against the answers its prompt set knows.

A trace is *alive* while the probe's mass P(true) + P(false) stays at or above the threshold; that says the model
can still commit to a JSON boolean, not that it commits to the right one (on the test bed at alpha = 2 the probe
puts P(true) ~ 0.01 on every prompt: the model says "false" whatever the question, and every trace is alive).
Where the prompt set carries answers, each trajectory gets one of three fates at a threshold:

    dead          the absorbing death of `records.fate` (first fork with pmass < threshold; NaN is dead)
    alive_right   never died, and at its last probed fork the more probable of true/false is the answer
    alive_wrong   never died, and at its last probed fork the other answer is more probable (or they tie)

Where accuracy is read, and why there:

* ``acc_end``: at the fork where the trace is censored, its last probed fork (the same fork survival reads; for a
  living trace every probed fork was alive). A dead trace gave no answer: it counts as not right. So
  acc_end = alive_right / answered, and alive_right + alive_wrong + dead = answered.
* ``acc_t0``: at fork t = 0 (the probe right after the prompt, before any steered token was generated), with the
  same rule: right = alive at t = 0 and the more probable answer is the prompt's. Traces without a t = 0 fork are
  left out.
* ``acc_alive`` = alive_right / (alive_right + alive_wrong): how often the traces that survived are right (None when
  none survived).

"More probable" compares p_true with p_false = pmass - p_true (`records.ForkProbe.prediction`); a tie is not right.
A fork stored without p_true (NaN / JSON null: a probe that cannot split its mass) cannot say which answer it
prefers: an alive trace read there is in neither alive_right nor alive_wrong and out of the accuracy's denominator,
and a run with no finite p_true at all gets no accuracy columns.

What the probe's answer means: it is the answer the model would commit to if made to answer at that fork. Before
the model has reasoned that can be a default: on the embedded test bed the *unsteered* model prefers false at most
forks while it thinks (on 12 held-out questions P(true) was mostly 0.05-0.4 mid-thinking, true questions included;
it decides at its own "Answer" line), so its accuracy there is about the share of false answers, like alpha = 2's.
Judge accuracy against the alpha = 0 row and the always-true / always-false yardstick (the report prints both),
not against 1.

Answers come from the manifest: ``manifest["prompts"][i]["answer"]`` (true, false, or null / absent = unknown).
Rows of sampled runs are named "<id>#<k>"; their answer is the "<id>#<k>" entry's, else the "<id>" entry's. A run
whose prompts carry no answer gets no accuracy columns at all (never zeros). Nothing here reads files or draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from tl_isokl.errors import IsoKLError, RunDirError
from tl_isokl.records import Fate, ForkProbe, Trajectory, fate

ANSWER_COLUMNS = ("answered", "alive_right", "alive_wrong", "acc_t0", "acc_end", "acc_alive")
KINDS = ("dead", "alive_right", "alive_wrong", "alive")  # "alive": survived, but which answer it prefers is unknown


def parse_answer(value: Any, where: str = "answer") -> bool | None:
    """An answer as written in a manifest or a JSONL prompt file: true/false (JSON booleans or the strings
    "true"/"false", any case), or null = unknown. Anything else is one IsoKLError naming `where`."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise IsoKLError(f"{where}: answer {value!r} is not true, false or null; write \"answer\": true or "
                     f"\"answer\": false (or leave it out when unknown)")


def answers(source: Any) -> dict[str, bool]:
    """{prompt id: answer} of a `Run` (from manifest["prompts"]; unknown answers left out), or of a plain mapping.
    Empty for a bare list of trajectories or a manifest whose prompts carry no answer."""
    if isinstance(source, Mapping):
        return {str(k): bool(v) for k, v in source.items() if v is not None}
    manifest = getattr(source, "manifest", None)
    entries = manifest.get("prompts") if isinstance(manifest, Mapping) else None
    if not isinstance(entries, list):
        return {}
    out: dict[str, bool] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, Mapping) or "id" not in e:
            continue
        where = f"{getattr(source, 'path', 'run')}/manifest.json: prompts[{i}] ({e.get('id')!r})"
        try:
            a = parse_answer(e.get("answer"), where)
        except IsoKLError as err:
            raise RunDirError(str(err)) from None
        if a is not None:
            out[str(e["id"])] = a
    return out


def answer_for(known: Mapping[str, bool], prompt_id: str) -> bool | None:
    """The answer of trajectory `prompt_id`: its own entry, else (sampled rows "<id>#<k>") its prompt's."""
    if prompt_id in known:
        return known[prompt_id]
    base = prompt_id.rsplit("#", 1)[0]
    return known.get(base) if base != prompt_id else None


def right_at(f: ForkProbe | None, answer: bool, threshold: float) -> bool | None:
    """Is fork `f` alive and its more probable answer `answer`? None = unknown (no such fork, or an alive fork
    stored without p_true); a dead fork is False (it gave no answer), and so is a tie."""
    if f is None:
        return None
    if not f.alive(threshold):
        return False
    if math.isnan(f.p_true):
        return None
    return f.prediction() == answer


@dataclass(frozen=True)
class Outcome:
    """A trajectory's survival `fate` and whether it was right: at fork 0 (`right_t0`) and at its last probed fork
    (`right_end`, False for a dead trace). None = unknown (no answer, no such fork, or no p_true there)."""

    fate: Fate
    answer: bool | None
    right_t0: bool | None
    right_end: bool | None

    @property
    def kind(self) -> str:
        """One of KINDS: dead, alive_right, alive_wrong, or alive (alive, but right or wrong is unknown)."""
        if self.fate.died:
            return "dead"
        if self.right_end is None:
            return "alive"
        return "alive_right" if self.right_end else "alive_wrong"


def outcome(traj: Trajectory, threshold: float, answer: bool | None) -> Outcome:
    """The three-fate outcome of one trajectory at `threshold`, against `answer` (None: unknown)."""
    fa = fate(traj, threshold)
    if answer is None:
        return Outcome(fa, None, None, None)
    by_t = {int(f.t): f for f in traj.forks}
    end = False if fa.died else (None if fa.last_alive is None else right_at(by_t[fa.last_alive], answer, threshold))
    return Outcome(fa, answer, right_at(by_t.get(0), answer, threshold), end)


def has_accuracy(trajectories: Iterable[Trajectory], known: Mapping[str, bool]) -> bool:
    """Can accuracy be read at all: some trajectory has an answer and some of its forks a finite p_true."""
    if not known:
        return False
    return any(answer_for(known, t.prompt_id) is not None and any(not math.isnan(f.p_true) for f in t.forks)
               for t in trajectories)


def _share(vals: list[bool | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def accuracy_columns(trajectories: Iterable[Trajectory], known: Mapping[str, bool], threshold: float
                     ) -> dict[str, Any]:
    """ANSWER_COLUMNS for one group of trajectories (one alpha), over those whose prompt has an answer:
    answered, alive_right, alive_wrong (counts), acc_t0, acc_end, acc_alive (shares; None = no trace to read)."""
    outs = [outcome(t, threshold, a) for t in trajectories if (a := answer_for(known, t.prompt_id)) is not None]
    right = sum(o.kind == "alive_right" for o in outs)
    wrong = sum(o.kind == "alive_wrong" for o in outs)
    return {"answered": len(outs), "alive_right": right, "alive_wrong": wrong,
            "acc_t0": _share([o.right_t0 for o in outs]), "acc_end": _share([o.right_end for o in outs]),
            "acc_alive": right / (right + wrong) if right + wrong else None}


def outcome_columns(source: Any, trajectories: Iterable[Trajectory] | None = None, threshold: float | None = None,
                    *, known: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """The accuracy columns of `trajectories` (default: all of `source`'s) at `threshold` (default: the run's), or
    {} when `source`'s prompts carry no answers or its forks no p_true: callers add them to a row with
    ``row.update(...)`` and a run without answers keeps exactly the columns it had.

    `source` is a `Run` (answers from its manifest) or anything `survival.group_by_alpha` takes; `known` overrides
    the answers ({prompt id: bool}).
    """
    from tl_isokl.survival import group_by_alpha, resolve_threshold

    known = answers(source) if known is None else answers(known)
    every = [t for ts in group_by_alpha(source).values() for t in ts]
    if not has_accuracy(every, known):
        return {}
    trajs = every if trajectories is None else list(trajectories)
    return accuracy_columns(trajs, known, resolve_threshold(source, threshold))

"""The alive/dead fork probe: can the steered model still commit to a JSON boolean at token t?

At fork t (t generated tokens after the prompt) the prefill `\\nI should answer now.</think>{"value": ` is
spliced after rollout[:t] and the *steered* model's probability of each answer string is read by teacher
forcing (steering stays on over the prefill). pmass = P(true) + P(false), each summed over its variants.

Answer strings: scored as the text continuation prefill + answer. Prefill and answer are tokenized *together*
and the tokens past their longest common prefix with the prefill alone are scored, so a tokenizer that merges
the prefill's trailing space into " true" is handled.

Think state: forks where the rollout already closed `</think>` are skipped by default (the answer was given;
the probe measures coherence *while thinking*). With `after_close="keep"` they are probed with the close tag
removed from the prefill, so the spliced text never holds a second `</think>`. The check is on decoded text,
so a tokenizer that splits `</think>` oddly still works.

Cost: no fork re-forwards prompt + rollout[:t]. Each trajectory is one packed sequence, the rollout followed by
every fork's (prefill + answer) segment, with a 4D attention mask letting a segment see rollout[:plen+t] and
itself, and position ids continuing from its fork. One forward per batch of trajectories scores every fork:
O(T + forks x segment) tokens instead of O(forks x T).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.head import final_logits
from tl_isokl.records import ForkProbe
from tl_isokl.rollout import Rollout
from tl_isokl.steer import Steering
from tl_isokl.tokens import decode, encode, pad_id
from tl_isokl.vector import SteeringVector, hook_name

PREFILL = '\nI should answer now.</think>{"value": '
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ProbeSpec:
    """What is spliced and which strings count as answers."""

    prefill: str = PREFILL
    true_variants: tuple[str, ...] = ("true",)
    false_variants: tuple[str, ...] = ("false",)
    think_close: str = THINK_CLOSE
    after_close: str = "skip"

    def __post_init__(self):
        if not self.true_variants or not self.false_variants:
            raise IsoKLError("probe needs at least one true and one false answer variant")
        if self.after_close not in ("skip", "keep"):
            raise IsoKLError(f"after_close must be 'skip' or 'keep', not {self.after_close!r}")

    def to_dict(self) -> dict:
        return {"prefill": self.prefill, "true_variants": list(self.true_variants),
                "false_variants": list(self.false_variants), "think_close": self.think_close,
                "after_close": self.after_close}


def fork_points(n_max: int, schedule: str | int = "log2") -> list[int]:
    """Fork tokens 0..n_max: "log2" -> 0, 1, 2, 4, 8, ... plus n_max; an int k -> every k tokens plus n_max."""
    if n_max < 0:
        return []
    if schedule == "log2":
        pts = {0}
        t = 1
        while t <= n_max:
            pts.add(t)
            t *= 2
    else:
        k = int(schedule)
        if k <= 0:
            raise IsoKLError(f"fork stride must be a positive integer, got {schedule}")
        pts = set(range(0, n_max + 1, k))
    pts.add(n_max)
    return sorted(pts)


def _lcp(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


class _Segments:
    """Tokenized (prefill + answer) segments, cached per prefill text."""

    def __init__(self, model, spec: ProbeSpec):
        self.model, self.spec = model, spec
        self._cache: dict[str, list[tuple[bool, list[int], int]]] = {}

    def get(self, prefill: str) -> list[tuple[bool, list[int], int]]:
        """[(is_true, ids of prefill+answer, index of the first scored id)] for every answer variant."""
        if prefill not in self._cache:
            pre = encode(self.model, prefill, bos=False)
            segs = []
            for is_true, variants in ((True, self.spec.true_variants), (False, self.spec.false_variants)):
                for v in variants:
                    both = encode(self.model, prefill + v, bos=False)
                    k = _lcp(pre, both)
                    if k == len(both):
                        raise IsoKLError(f"answer variant {v!r} adds no tokens after the prefill; check the probe spec")
                    segs.append((is_true, both, k))
            self._cache[prefill] = segs
        return self._cache[prefill]


def think_closed(model, spec: ProbeSpec, traj: Rollout, t: int) -> bool:
    """Has `</think>` been written after the last `<think>` of the prompt, or in rollout[:t]?"""
    return spec.think_close in traj.prompt.rsplit("<think>", 1)[-1] or spec.think_close in decode(model, traj.tokens[:t])


def probe_forks(model, spec: ProbeSpec, traj: Rollout, forks: Sequence[int]) -> list[tuple[int, str]]:
    """(t, prefill text) for each fork that is probed under the think-state rule."""
    out = []
    for t in forks:
        closed = think_closed(model, spec, traj, t)
        if closed and spec.after_close == "skip":
            continue
        out.append((t, spec.prefill.replace(spec.think_close, "") if closed else spec.prefill))
    return out


def default_forks(traj: Rollout, schedule: str | int = "log2") -> list[int]:
    """Forks inside a rollout: never after its EOS (t counts tokens before the splice)."""
    n_max = traj.length - 1 if traj.eos else traj.length
    return fork_points(n_max, schedule)


@torch.no_grad()
def probe(
    model,
    vector: SteeringVector | None,
    rollouts: Sequence[Rollout],
    *,
    spec: ProbeSpec = ProbeSpec(),
    schedule: str | int = "log2",
    forks: Sequence[Sequence[int]] | None = None,
    batch_size: int = 8,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
) -> list[list[ForkProbe]]:
    """Fork probes for each rollout (steered at the rollout's own coefficient), fast packed path.

    `positions` must match the rollout's: with "generated" the prompt is unsteered and the rollout and every
    spliced segment (all after the prompt) are steered.
    """
    segs = _Segments(model, spec)
    final = hook_name(int(model.cfg.n_layers) - 1)
    dev = model.cfg.device
    results: list[list[ForkProbe]] = []
    for b0 in range(0, len(rollouts), batch_size):
        rows = rollouts[b0: b0 + batch_size]
        packed = []
        for j, r in enumerate(rows):
            fk = list(forks[b0 + j]) if forks is not None else default_forks(r, schedule)
            packed.append(_pack(r, probe_forks(model, spec, r, fk), segs))
        L = max(p["ids"].numel() for p in packed)
        B = len(rows)
        ids = torch.full((B, L), pad_id(model), dtype=torch.long)
        pos = torch.zeros((B, L), dtype=torch.long)
        allow = torch.zeros((B, L, L), dtype=torch.bool)
        for j, p in enumerate(packed):
            n = p["ids"].numel()
            ids[j, :n], pos[j, :n], allow[j, :n, :n] = p["ids"], p["pos"], p["allow"]
            idx = torch.arange(n, L)
            allow[j, idx, idx] = True  # padding attends to itself only: no empty softmax rows
        neg = torch.finfo(model.cfg.dtype if isinstance(model.cfg.dtype, torch.dtype) else torch.float32).min
        mask4 = torch.zeros((B, 1, L, L), dtype=model.cfg.dtype if isinstance(model.cfg.dtype, torch.dtype)
                            else torch.float32)
        mask4.masked_fill_(~allow.unsqueeze(1), neg)
        hooks = []
        if vector is not None:
            coeffs = torch.tensor([r.coeff for r in rows], dtype=torch.float32)
            starts = torch.tensor([len(r.prompt_ids) for r in rows])  # packed rows are unpadded: prompt first
            hooks = Steering(vector, coeffs, positions=positions, start=starts).reset(0).fwd_hooks()
        with model.hooks(fwd_hooks=hooks):
            _, cache = model.run_with_cache(ids.to(dev), attention_mask=mask4.to(dev), position_ids=pos.to(dev),
                                            names_filter=[final], logits_to_keep=1)
        resid = cache[final]
        for j, p in enumerate(packed):
            out = []
            if p["score_pos"]:
                sp = torch.tensor(p["score_pos"], device=dev)
                lp = torch.log_softmax(final_logits(model, resid[j, sp]).float(), -1)
                tok_lp = lp.gather(-1, torch.tensor(p["score_tok"], device=dev)[:, None])[:, 0].cpu()
                owner = torch.tensor(p["score_owner"])
                for f_i, (t, variants) in enumerate(p["forks"]):
                    p_true = p_false = 0.0
                    for v_i, is_true in variants:
                        prob = float(tok_lp[owner == v_i].double().sum().exp())
                        if is_true:
                            p_true += prob
                        else:
                            p_false += prob
                    out.append(ForkProbe(t=int(t), pmass=p_true + p_false, p_true=p_true))
            results.append(out)
        del cache, resid
        if progress is not None:
            progress(B)
    return results


def _pack(r: Rollout, forks: list[tuple[int, str]], segs: _Segments) -> dict:
    """One packed row: rollout ids, then one segment per (fork, variant), with its attention pattern."""
    prefix = r.prompt_ids + r.tokens
    P = len(r.prompt_ids)
    N = len(prefix)
    ids = list(prefix)
    pos = list(range(N))
    spans = []  # (start, length, fork_end) of each segment
    score_pos, score_tok, score_owner = [], [], []
    fork_list = []
    v_id = 0
    for t, prefill in forks:
        variants = []
        ctx_end = P + t  # segment sees prefix[:ctx_end]
        for is_true, both, k in segs.get(prefill):
            start = len(ids)
            ids += both
            pos += list(range(ctx_end, ctx_end + len(both)))
            spans.append((start, len(both), ctx_end))
            for i in range(k, len(both)):
                score_pos.append(start + i - 1 if i > 0 else ctx_end - 1)
                score_tok.append(both[i])
                score_owner.append(v_id)
            variants.append((v_id, is_true))
            v_id += 1
        fork_list.append((t, variants))
    n = len(ids)
    allow = torch.zeros((n, n), dtype=torch.bool)
    allow[:N, :N] = torch.ones((N, N), dtype=torch.bool).tril()
    for start, length, ctx_end in spans:
        allow[start: start + length, :ctx_end] = True
        allow[start: start + length, start: start + length] = torch.ones((length, length), dtype=torch.bool).tril()
    return {"ids": torch.tensor(ids), "pos": torch.tensor(pos), "allow": allow, "score_pos": score_pos,
            "score_tok": score_tok, "score_owner": score_owner, "forks": fork_list}


@torch.no_grad()
def probe_reference(model, vector: SteeringVector | None, r: Rollout, t: int, spec: ProbeSpec = ProbeSpec()
                    ) -> ForkProbe:
    """Slow reference: one fresh forward per answer variant over prompt + rollout[:t] + prefill + answer.

    Independent of the packed path (no masks, no caches); used by tests and for spot checks.
    """
    closed = think_closed(model, spec, r, t)
    prefill = spec.prefill.replace(spec.think_close, "") if closed else spec.prefill
    pre = encode(model, prefill, bos=False)
    p_true = p_false = 0.0
    for is_true, variants in ((True, spec.true_variants), (False, spec.false_variants)):
        for v in variants:
            both = encode(model, prefill + v, bos=False)
            k = _lcp(pre, both)
            seq = torch.tensor([r.prompt_ids + r.tokens[:t] + both], device=model.cfg.device)
            hooks = Steering(vector, r.coeff).fwd_hooks() if vector is not None else []
            with model.hooks(fwd_hooks=hooks):
                logits = model(seq)[0].float()
            lp = torch.log_softmax(logits, -1)
            start = len(r.prompt_ids) + t
            total = sum(float(lp[start + i - 1, both[i]]) for i in range(k, len(both)))
            prob = float(torch.tensor(total, dtype=torch.float64).exp())
            if is_true:
                p_true += prob
            else:
                p_false += prob
    return ForkProbe(t=t, pmass=p_true + p_false, p_true=p_true)

"""Batched greedy rollouts of a steered model: many prompts x doses in one KV-cached decode loop.

Why a loop of our own rather than `TransformerBridge.generate`: it lets rows leave the batch as soon as they hit
EOS (long windows are dominated by a few long rows), keeps per-row doses aligned when rows leave, and avoids
`output_logits` (a [window, batch, vocab] tuple). The loop calls the HF model inside the bridge
(`model.original_model`), which fires the TL hooks; prompts are left-padded with an explicit attention mask and
position ids, so a row's rollout in a batch is token-identical to its rollout alone.

`return_final=True` also keeps the final block's residual at every step (d_model floats per generated token):
the steered distribution that chose each token, so the per-token KL needs only the *base* teacher-forced pass
(`kl.per_token_kl(..., final=...)`) instead of re-computing the steered one.

`probe=AnswerProbe()` also scores each row's forks as the row leaves the batch, against the KV cache the decode
already holds (`tl_isokl.probe`, "Cost"), so the probe never forwards prompt + rollout again.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.records import Rollout
from tl_isokl.steer import Steering
from tl_isokl.tokens import decode, encode, eos_ids, pad_batch, pad_id, position_ids
from tl_isokl.vector import SteeringVector


def check_window(model, prompt_lens: Sequence[int], window: int) -> None:
    if int(window) <= 0:
        raise IsoKLError(f"window must be a positive number of generated tokens, got {window}")
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    longest = max(prompt_lens)
    if n_ctx and longest + window > n_ctx:
        raise IsoKLError(
            f"prompt ({longest} tokens) + window ({window}) exceeds the model context of {n_ctx} tokens; "
            f"use --window {max(1, n_ctx - longest)} or shorter prompts"
        )


def _cache_select(cache, keep: torch.Tensor):
    """Drop finished rows from an HF cache in place (DynamicCache.batch_select_indices)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return cache
    raise IsoKLError("this transformers version's cache cannot drop rows; upgrade transformers to >=5.9")


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 (the default) is greedy argmax; above 0, a token is sampled
    from softmax(logits / temperature) restricted to the smallest set of tokens with probability >= top_p.

    Every row draws from its own generator seeded by (seed, the row's prompt id), so a row's sample is the same
    alone or in any batch, at any position, and a rerun reproduces it. Rows with the same prompt id and dose
    (e.g. one prompt at several alphas) share their seed: the doses differ, not the dice.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise IsoKLError(f"temperature {self.temperature} must be a finite number >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise IsoKLError(f"top_p {self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "seed": int(self.seed)}

    def generator(self, prompt_id: str) -> torch.Generator:
        h = hashlib.sha256(f"{self.seed}:{prompt_id}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))

    def choose(self, logits: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Next token per row of [rows, vocab] logits (float32 math; argmax when greedy)."""
        if self.greedy:
            return logits.float().argmax(-1)
        probs = torch.softmax(logits.float().cpu() / self.temperature, -1)
        if self.top_p < 1:
            p_sorted, idx = probs.sort(-1, descending=True)
            keep = (p_sorted.cumsum(-1) - p_sorted) < self.top_p  # the top token is always kept
            probs = torch.zeros_like(probs).scatter(-1, idx, p_sorted * keep)
        out = [torch.multinomial(probs[j], 1, generator=g) for j, g in enumerate(generators)]
        return torch.cat(out).to(logits.device)


GREEDY = Sampling()
# spare KV-cache capacity reserved for the in-decode fork probe's last forward, at most this share of the cache
# (prompt + window): at window 4096 its ~150 tokens are reserved and the last forward copies nothing; at window 256
# (~110 of ~280) every row would hold ~40% more KV memory for the whole decode to save one copy at its end (measured
# when rows leaving copied the whole capacity, so slower too; with the in-place compaction the cost is the memory)
ROOM_SHARE = 0.1


@torch.no_grad()
def rollout(
    model,
    vector: SteeringVector | None,
    prompts: Sequence[str],
    coeffs: Sequence[float] | torch.Tensor,
    *,
    window: int,
    prompt_ids: Sequence[str] | None = None,
    batch_size: int = 32,
    positions: str = "all",
    progress: Callable[[int], None] | None = None,
    sampling: Sampling = GREEDY,
    return_final: bool = False,
    probe=None,
    probe_rows: int = 16,
    timings: dict | None = None,
) -> list[Rollout] | tuple:
    """Greedy (or, with `sampling`, seeded sampled) rollouts of each (prompt, coeff) row for up to `window`
    generated tokens.

    Args:
        prompts, coeffs: one entry per row (build the prompt x dose product yourself, or use `grid`).
        window: generated tokens per row; a row that emits EOS stops there (EOS kept in `tokens`).
        batch_size: rows decoded together (memory knob; results do not depend on it).
        positions: "all" or "generated" (steer only generated tokens).
        progress: called with the number of rows finished in each batch.
        return_final: also return, per row, the final block's `hook_resid_post` at the position that chose each
            generated token ([len(tokens), d_model], on the CPU, model dtype): what `per_token_kl(final=...)`
            turns into the steered log-probabilities without a second steered forward.
        probe: a `tl_isokl.probe.Probe` (e.g. `AnswerProbe()`): also return each row's `ForkProbe`s, steered at
            the row's dose with `positions`, last in the returned tuple: (rollouts, [finals,] forks). An
            `AnswerProbe` on a model whose attention can be packed runs inside the decode (`probe.cache_probe`):
            a row's forks are scored when it leaves the batch, against its KV cache, so prompt + rollout are never
            forwarded again; any other probe runs its `measure` on the finished rollouts (same numbers).
        probe_rows: rows per fork-probe forward inside the decode (memory knob: those rows' cache is copied for
            it, so 16 keeps the copy at 1/8 of a 128-row batch's cache: peak RSS of the benchmark's sweep decode
            871 MB instead of 1,131 MB at 64, same time; results do not depend on it beyond float rounding).
        timings: if given, timings["probe"] and timings["probe_wall"] are increased by the CPU seconds
            (`time.process_time`) and wall seconds spent on the probe, inside the decode or after it, so a caller
            can tell decode and probe apart.
    """
    coeffs = torch.as_tensor(coeffs, dtype=torch.float32).flatten()
    if len(prompts) != len(coeffs):
        raise IsoKLError(f"{len(prompts)} prompts but {len(coeffs)} coefficients; pass one coefficient per row")
    if vector is not None:
        vector.check_model(model)
    ids_list = [encode(model, p) for p in prompts]
    check_window(model, [len(s) for s in ids_list], window)
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    out: list[Rollout | None] = [None] * len(prompts)
    finals: list[torch.Tensor | None] = [None] * len(prompts)
    forks: list | None = None
    side = None
    if probe is not None:
        from tl_isokl.probe import cache_probe

        side = cache_probe(model, probe)
        if side is not None:
            side.rows = int(probe_rows)
            forks = [None] * len(prompts)
    # similar lengths together: less padding, and the order does not change any row's result
    order = sorted(range(len(prompts)), key=lambda i: len(ids_list[i]))
    for b0 in range(0, len(order), batch_size):
        rows = order[b0: b0 + batch_size]
        gens = None if sampling.greedy else [sampling.generator(pids[i]) for i in rows]

        def plan(j, toks, hit, rows=rows):  # row j of this batch leaves: its forks under the think-state rule
            i = rows[j]
            return side.plan(Rollout(prompt_id=pids[i], prompt=prompts[i], coeff=float(coeffs[i]),
                                     prompt_tokens=ids_list[i], tokens=toks, eos=hit, window=int(window)))

        gen = _decode_batch(model, vector, [ids_list[i] for i in rows], coeffs[rows], window, positions, sampling,
                            gens, keep_final=return_final, side=side, plan=plan if side is not None else None)
        for i, (toks, hit, fin, fk) in zip(rows, gen):
            finals[i] = fin
            out[i] = Rollout(prompt_id=pids[i], prompt=prompts[i], coeff=float(coeffs[i]), prompt_tokens=ids_list[i],
                             tokens=toks, eos=hit, window=int(window), text=decode(model, toks))
            if forks is not None:
                forks[i] = fk
        if progress is not None:
            progress(len(rows))
    if probe is not None:
        if side is None:  # a probe the decode cannot run: after it, on the finished rollouts
            t0, w0 = time.process_time(), time.perf_counter()
            forks = probe.measure(model, vector, out, positions=positions)
            cpu_s, wall_s = time.process_time() - t0, time.perf_counter() - w0
        else:
            cpu_s, wall_s = side.cpu_s, side.wall_s
        if timings is not None:
            timings["probe"] = timings.get("probe", 0.0) + cpu_s
            timings["probe_wall"] = timings.get("probe_wall", 0.0) + wall_s
    result: tuple = (out,) + ((finals,) if return_final else ()) + ((forks,) if probe is not None else ())
    return result if len(result) > 1 else out  # type: ignore[return-value]


def _decode_batch(model, vector, seqs: list[list[int]], coeffs: torch.Tensor, window: int,
                  positions: str, sampling: Sampling = GREEDY, generators: list | None = None,
                  keep_final: bool = False, side=None, plan: Callable | None = None,
                  ) -> list[tuple[list[int], bool, torch.Tensor | None, list | None]]:
    """Decode one batch: (tokens, hit EOS, kept final residuals or None, ForkProbes or None) per row.

    With `side` (a `probe.CacheProbe`) and `plan(row, tokens, eos)` -> forks, a row's forks are probed when it
    leaves: at EOS its cache holds prompt + tokens[:-1], every context its forks need (none after EOS); at the end
    of the window the last token is not in the cache yet and goes in first with the segments. That forward runs on
    a copy of the leaving rows' cache (`acceleration.cache_rows`; the live cache is never written), or on the cache
    itself once the decode is over (`ROOM_SHARE`), under the decode's hooks switched to side mode: the steering
    hook applies a Steering of those rows' doses at every query (each is after the prompt, as in the packed row)
    and the final-residual hook hands the residuals to the probe instead of recording a step.
    """
    from tl_isokl.acceleration import cache_rows, growing_cache
    from tl_isokl.forward import final_hook

    dev = model.cfg.device
    ids, mask = pad_batch(seqs, pad_id(model), side="left")
    ids, mask = ids.to(dev), mask.to(dev)
    B, T = ids.shape
    stops = torch.tensor(sorted(eos_ids(model)), device=dev)
    steering = None
    hooks = []
    aside: dict = {"on": False}  # set during a fork-probe forward: the decode's own hook work stands aside
    if vector is not None:
        steering = Steering(vector, coeffs, positions=positions, start=T)

        def steer(resid, hook):
            return (aside["steering"] if aside["on"] else steering).hook(resid, hook)
        hooks = [(vector.hook_name, steer)]
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (alive rows, their final residual) per forward
    current = {}
    if keep_final or side is not None:
        def keep(resid, hook):  # registered after the steering hook: sees the steered residual
            if aside["on"]:
                aside["resid"] = resid
            elif keep_final:
                current["h"] = resid[:, -1].detach()
        hooks = list(hooks) + [(final_hook(model), keep)]
    generated: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    probes: list[list | None] = [None] * B
    alive = torch.arange(B, device=dev)  # original row index of each batch row still decoding
    om = model.original_model
    # the last fork-probe forward runs on the cache itself when its queries fit in spare capacity that costs
    # little next to the cache (`ROOM_SHARE`); else on copies
    room = side.room(window) if side is not None else 0
    in_place = side is not None and room <= ROOM_SHARE * (T + window)

    def probe_leaving(sel: torch.Tensor, carried: list[int | None], last: bool = False):
        """Fork probes of batch rows `sel` (positions in the live batch) against their cache rows: a copy of them,
        `side.rows` rows per forward; or, when `last` (every row leaves and the decode ends; `in_place`), the cache
        itself in one forward (its spare capacity takes the queries: no copy of a window-long cache)."""
        t0, w0 = time.process_time(), time.perf_counter()
        rows = alive[sel].tolist()
        plans = [plan(r, generated[r], finished[r]) for r in rows]
        todo = [k for k, p in enumerate(plans) if p]
        for r in rows:
            probes[r] = []
        if last and len(rows) != alive.numel():
            raise IsoKLError("the in-place fork-probe forward needs every row of the cache")
        chunk = max(1, len(todo) if last else side.rows)
        for a in range(0, len(todo), chunk):
            part = list(range(len(rows))) if last else todo[a: a + chunk]
            idx = sel[part]
            q = side.queries([plans[k] for k in part], mask[idx], T, [carried[k] for k in part])
            tmp = cache if last else cache_rows(cache, idx, room=q["ids"].shape[1])
            if vector is not None:
                aside["steering"] = Steering(vector, coeffs[[rows[k] for k in part]], positions="all")
            aside["on"] = True
            try:
                om(input_ids=q["ids"].to(dev), attention_mask=q["attention_mask"], position_ids=q["pos"].to(dev),
                   past_key_values=tmp, use_cache=True, logits_to_keep=1)
                resid = aside.pop("resid")
            finally:
                aside["on"] = False
                aside.pop("steering", None)
            for k, res in zip(part, side.score(resid, q)):
                if plans[k]:
                    probes[rows[k]] = res
            del tmp, resid
        side.cpu_s += time.process_time() - t0
        side.wall_s += time.perf_counter() - w0

    with model.hooks(fwd_hooks=hooks):
        if steering is not None:
            steering.reset(0)
        out = om(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                 past_key_values=growing_cache(capacity=T + window + (room if in_place else 0)), use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        for step in range(window):
            if keep_final:
                steps.append((alive, current.pop("h")))
            nxt = sampling.choose(logits, [generators[r] for r in alive.tolist()] if generators else [])
            done = torch.isin(nxt, stops) if len(stops) else torch.zeros_like(nxt, dtype=torch.bool)
            for j, (r, t) in enumerate(zip(alive.tolist(), nxt.tolist())):
                generated[r].append(t)
                if done[j]:
                    finished[r] = True
            if side is not None:
                if step == window - 1:  # every row leaves; those without EOS bring their last token along
                    probe_leaving(torch.arange(alive.numel(), device=dev),
                                  [None if d else t for d, t in zip(done.tolist(), nxt.tolist())], last=in_place)
                elif bool(done.any()):
                    sel = done.nonzero().flatten()
                    probe_leaving(sel, [None] * sel.numel(), last=in_place and bool(done.all()))
            if step == window - 1:
                break
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            if keep.numel() < alive.numel():
                alive, nxt, mask = alive[keep], nxt[keep], mask[keep]
                cache = _cache_select(cache, keep)
                if steering is not None:
                    steering.select_rows(keep.cpu())
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = mask.sum(1, keepdim=True) - 1
            out = om(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                     use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1]
    finals: list[torch.Tensor | None] = [None] * B
    if keep_final and steps:
        h0 = steps[0][1]
        full = h0.new_zeros(len(steps), B, h0.shape[-1])  # [step, row, d]; rows that left keep zeros
        for k, (rows, h) in enumerate(steps):
            full[k, rows] = h
        full = full.cpu()
        finals = [full[: len(generated[i]), i].clone() for i in range(B)]
    return [(generated[i], finished[i], finals[i], probes[i]) for i in range(B)]


def grid(prompts: Sequence[str], coeffs: Sequence[float], prompt_ids: Sequence[str] | None = None):
    """Rows of the prompt x dose product: (prompts, coeffs, prompt_ids), dose-major."""
    pids = list(prompt_ids) if prompt_ids is not None else [str(i) for i in range(len(prompts))]
    P, C, I = [], [], []
    for c in coeffs:
        for p, i in zip(prompts, pids):
            P.append(p)
            C.append(float(c))
            I.append(i)
    return P, C, I

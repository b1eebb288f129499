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

Cost: no fork re-forwards prompt + rollout[:t]. Each fork adds a segment: the prefill and the answers' common tokens
once, then what differs per answer variant (a variant's last token is never a scoring source, so it is left out),
with a 4D attention mask letting the segment see prompt + rollout[:t] and itself, and position ids continuing from
its fork. Two forms:

* inside the decode (`rollout(..., probe=AnswerProbe())`, what a sweep runs; `cache_probe`, `CacheProbe`): when a
  row leaves the batch (at EOS, or at the end of the window with its last token fed first) its segments are
  queries against its KV cache, which already holds the steered prompt + rollout. O(forks x segment) tokens; the
  rollout is never forwarded again. On issue 13's workload (128 rows, window 256, 1,206 forks) the probe costs
  ~1.6 CPU s instead of ~4.4 (benchmarks/bench_probe_cache.py);
* after the decode (`probe`, `AnswerProbe.measure`): each trajectory is one packed sequence, the rollout followed by
  every fork's segment. One forward per batch of trajectories: O(T + forks x segment) tokens instead of
  O(forks x T), three quarters of them the re-forwarded rollout.

Both give the same numbers (within 1e-6 on the test bed; tests/integration/test_probe_cache.py, and the zoo against
`probe_reference`). The decode form needs what the packed one needs (below) and at least one prefill token before
an answer's first scored token (an empty prefill is scored at the context's own last position, a logit the decode
does not keep); other probes, and models whose attention cannot be packed, are measured after the decode.

Attention pattern: a 4D mask handed to an HF model replaces the masks it would build itself, sliding windows
included, so the packed mask must carry the model's own pattern. `attention_layout` chooses from the HF config
(`layer_types`, `sliding_window`, `use_sliding_window`), once per call:

* every layer global (GPT-2, Llama, OLMo-2, Qwen3, Granite, Cohere): one packed mask, as above;
* every layer with the same window W (Mistral, Phi-3, Starcoder2): one packed mask with the window folded in;
* local and global layers mixed (Gemma-2/3, Cohere2, Qwen2/3 with `use_sliding_window`): one packed mask per
  layer type, passed as the mapping {"full_attention": m, "sliding_attention": m_W} that these HF models accept
  as `attention_mask` (detected from the model's forward, which tests `isinstance(attention_mask, dict)`);
* anything else (mixed layers on a model that takes a single mask, other layer types such as chunked or linear
  attention, recurrent/state-space layers, a sliding layer without a window): "per_fork", one ordinary
  right-padded forward of prompt + rollout[:t] + prefill + answer per fork and answer variant, batched, in which
  the model builds its own masks. Exact for any causal model; costs O(forks x T) tokens.

The window is measured in position ids, which in a packed row equal the positions of the unpacked sequence:
key j is visible to query i when allowed and pos[i] - pos[j] < W, HF's convention (`sliding_window_overlay`:
kv_idx > q_idx - W). Packed, per-fork, in-decode and `probe_reference` agree to < 1e-4 on every architecture of
the test zoo (tests/integration/test_zoo.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from tl_isokl.errors import IsoKLError
from tl_isokl.forward import log_probs, resid_post
from tl_isokl.records import ForkProbe
from tl_isokl.records import Rollout
from tl_isokl.steer import steering_hooks
from tl_isokl.tokens import decode, encode, pad_batch, pad_id, position_ids
from tl_isokl.vector import SteeringVector

PREFILL = '\nI should answer now.</think>{"value": '
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ProbeSpec:
    """What is spliced and which strings count as answers."""

    prefill: str = PREFILL
    true_variants: tuple[str, ...] = ("true",)
    false_variants: tuple[str, ...] = ("false",)
    think_close: str = THINK_CLOSE  # "" for models without a think block: no fork is ever "after the answer"
    after_close: str = "skip"

    def __post_init__(self):
        if not self.true_variants or not self.false_variants:
            raise IsoKLError("probe needs at least one true and one false answer variant")
        if self.after_close not in ("skip", "keep"):
            raise IsoKLError(f"after_close must be 'skip' or 'keep', not {self.after_close!r}")

    def prefill_at(self, closed: bool) -> str:
        """The prefill spliced at a fork: without its `think_close` tag once the rollout closed the think block
        (so the spliced text never holds a second one)."""
        return self.prefill.replace(self.think_close, "") if closed and self.think_close else self.prefill

    @property
    def prefills(self) -> set[str]:
        """Every prefill a fork can be given: the open one, and the closed one when such forks are kept."""
        keep = bool(self.think_close) and self.after_close == "keep"
        return {self.prefill_at(False)} | ({self.prefill_at(True)} if keep else set())

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
    """Has `</think>` been written after the last `<think>` of the prompt, or in rollout[:t]? Never, for a probe
    without a think convention (`think_close=""`: the model does not think in tags)."""
    if not spec.think_close:
        return False
    return spec.think_close in traj.prompt.rsplit("<think>", 1)[-1] or spec.think_close in decode(model, traj.tokens[:t])


def probe_forks(model, spec: ProbeSpec, traj: Rollout, forks: Sequence[int]) -> list[tuple[int, str]]:
    """(t, prefill text) for each fork that is probed under the think-state rule."""
    out = []
    for t in forks:
        closed = think_closed(model, spec, traj, t)
        if closed and spec.after_close == "skip":
            continue
        out.append((t, spec.prefill_at(closed)))
    return out


def default_forks(traj: Rollout, schedule: str | int = "log2") -> list[int]:
    """Forks inside a rollout: never after its EOS (t counts tokens before the splice)."""
    n_max = traj.length - 1 if traj.eos else traj.length
    return fork_points(n_max, schedule)


_MASKABLE = ("full_attention", "sliding_attention")
# config fields of recurrent / state-space layers: a packed row would run every segment through one recurrent
# state, which no attention mask can undo
_RECURRENT_FIELDS = ("state_size", "ssm_state_size", "mamba_d_state", "mamba_expand", "hybrid_override_pattern",
                     "layers_block_type", "attn_layer_indices", "linear_attn_config", "time_step_rank")
_RECURRENT_TYPES = ("mamba", "mamba2", "falcon_mamba", "falcon_h1", "rwkv", "rwkv7", "recurrent_gemma", "xlstm",
                    "jamba", "bamba", "zamba", "zamba2", "nemotron_h", "lfm2", "granitemoehybrid", "qwen3_next")
_MAPPING_MARK = "causal_mask_mapping := attention_mask, dict"


@dataclass(frozen=True)
class AttentionLayout:
    """How `probe` reproduces the model's attention pattern, chosen from the HF config (see the module docstring).

    mode: "packed" (one packed forward per batch of trajectories) or "per_fork" (one ordinary forward per
        fork and answer variant, batched, right-padded: exact for any causal model, slower).
    masks: for "packed", ((mask key, window or None), ...); the key "" means one 4D mask for every layer, other
        keys are the layer types of a mask mapping handed to the model ({"full_attention": m, ...}).
    reason: one line saying why, for logs and tests.
    """

    mode: str
    masks: tuple[tuple[str, int | None], ...] = (("", None),)
    reason: str = ""


def _accepts_mask_mapping(model) -> bool:
    """Does the HF base model's forward take a {layer type: 4D mask} mapping as its attention_mask?"""
    import inspect

    hf = model.original_model
    base = getattr(hf, "base_model", None) or getattr(hf, "model", None) or hf
    try:
        src = inspect.getsource(type(base).forward)
    except (OSError, TypeError):
        return False
    return _MAPPING_MARK in " ".join(src.split())


def attention_layout(model) -> AttentionLayout:
    """Pick the probe's strategy from the model's config: its per-layer attention types and sliding window."""
    cfg = model.original_model.config
    cfg = cfg.get_text_config() if callable(getattr(cfg, "get_text_config", None)) else cfg
    n = int(model.cfg.n_layers)
    hits = [f for f in _RECURRENT_FIELDS if getattr(cfg, f, None) is not None]
    if str(getattr(cfg, "model_type", "")) in _RECURRENT_TYPES:
        hits.insert(0, f"model type {cfg.model_type}")
    if hits:
        return AttentionLayout("per_fork", (), f"recurrent/state-space layers ({hits[0]})")
    if getattr(cfg, "use_bidirectional_attention", False):
        return AttentionLayout("per_fork", (), "bidirectional attention")
    window = getattr(cfg, "sliding_window", None)
    if getattr(cfg, "use_sliding_window", True) is False:
        window = None
    window = int(window) if window else None
    types = getattr(cfg, "layer_types", None)
    if types is None:
        types = ["sliding_attention" if window else "full_attention"] * n
    kinds = sorted(set(types))
    odd = [k for k in kinds if k not in _MASKABLE]
    if odd:
        return AttentionLayout("per_fork", (), f"layer type {odd[0]!r} cannot be expressed as a packed mask")
    if "sliding_attention" in kinds and window is None:
        return AttentionLayout("per_fork", (), "sliding-attention layers without a sliding_window in the config")
    win = {k: (window if k == "sliding_attention" else None) for k in kinds}
    if len(kinds) == 1:
        w = win[kinds[0]]
        return AttentionLayout("packed", (("", w),), f"every layer {'window ' + str(w) if w else 'full'}: one mask")
    if _accepts_mask_mapping(model):
        return AttentionLayout("packed", tuple((k, win[k]) for k in kinds),
                               f"local (window {window}) and global layers: a mask per layer type")
    return AttentionLayout("per_fork", (), "local and global layers, and the model takes a single mask")


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
    """Fork probes for each rollout (steered at the rollout's own coefficient): the packed path, or one forward
    per fork where the model's attention cannot be packed (`attention_layout`).

    `positions` must match the rollout's: with "generated" the prompt is unsteered and the rollout and every
    spliced segment (all after the prompt) are steered.
    """
    segs = _Segments(model, spec)
    layout = attention_layout(model)
    results: list[list[ForkProbe]] = []
    for b0 in range(0, len(rollouts), batch_size):
        rows = rollouts[b0: b0 + batch_size]
        plans = []
        for j, r in enumerate(rows):
            fk = list(forks[b0 + j]) if forks is not None else default_forks(r, schedule)
            plans.append(probe_forks(model, spec, r, fk))
        if layout.mode == "packed":
            results += _probe_packed(model, vector, rows, plans, segs, positions, layout)
        else:
            results += _probe_per_fork(model, vector, rows, plans, segs, positions, batch_size)
        if progress is not None:
            progress(len(rows))
    return results


def _fork_probes(fork_list, logp: dict[int, float]) -> list[ForkProbe]:
    """ForkProbes from each variant's total log-probability (float64)."""
    out = []
    for t, variants in fork_list:
        p_true = p_false = 0.0
        for v_i, is_true in variants:
            prob = float(torch.tensor(logp[v_i], dtype=torch.float64).exp())
            if is_true:
                p_true += prob
            else:
                p_false += prob
        out.append(ForkProbe(t=int(t), pmass=p_true + p_false, p_true=p_true))
    return out


class Probe(Protocol):
    """What a sweep asks of every rollout at its forks. `measure` returns one list of `ForkProbe` per rollout:
    `pmass` is the probe's score in [0, 1] (for the default, P(true) + P(false)) and `ForkProbe.alive(threshold)`
    is the only place alive/dead is decided. `to_dict` identifies the probe in manifests and run identities.

    A new probe is a class with these two methods, handed to `sweep(..., probe=MyProbe())`.
    """

    def measure(self, model, vector: SteeringVector | None, rollouts: Sequence[Rollout], *, positions: str = "all",
                batch_size: int = 8, progress: Callable[[int], None] | None = None) -> list[list[ForkProbe]]: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class AnswerProbe:
    """The default probe: splice `spec.prefill` at each fork of `schedule` and read the mass on the answers."""

    spec: ProbeSpec = ProbeSpec()
    schedule: str | int = "log2"

    def measure(self, model, vector, rollouts, *, positions: str = "all", batch_size: int = 8,
                progress: Callable[[int], None] | None = None) -> list[list[ForkProbe]]:
        return probe(model, vector, rollouts, spec=self.spec, schedule=self.schedule, batch_size=batch_size,
                     positions=positions, progress=progress)

    def to_dict(self) -> dict:
        return {"kind": "answer", **self.spec.to_dict(), "schedule": self.schedule}


def _masks(model, layout: AttentionLayout, allow: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor):
    """The model's attention mask(s) from allow [B, Q, K] and the position ids of queries [B, Q] and keys [B, K]:
    one additive 4D mask [B, 1, Q, K], or the {layer type: mask} mapping, with each layer type's window folded in."""
    dtype = model.cfg.dtype if isinstance(model.cfg.dtype, torch.dtype) else torch.float32
    neg = torch.finfo(dtype).min
    masks = {}
    for key, window in layout.masks:
        a = allow
        if window is not None:  # HF's sliding window, measured in positions: q_pos - kv_pos < window
            a = allow & ((qpos[:, :, None] - kpos[:, None, :]) < window)
        m = torch.zeros((a.shape[0], 1, a.shape[1], a.shape[2]), dtype=dtype)
        m.masked_fill_(~a.unsqueeze(1), neg)
        masks[key] = m.to(model.cfg.device)
    return masks[""] if "" in masks else masks


def _probe_packed(model, vector, rows, plans, segs, positions, layout: AttentionLayout) -> list[list[ForkProbe]]:
    packed = [_pack(r, fl, segs) for r, fl in zip(rows, plans)]
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
    attention_mask = _masks(model, layout, allow, pos, pos)
    # packed rows are unpadded at the front: the prompt comes first, so a row's steering starts at its length
    hooks = steering_hooks(vector, [r.coeff for r in rows], positions=positions,
                           start=[len(r.prompt_tokens) for r in rows])
    resid = next(iter(resid_post(model, ids, attention_mask=attention_mask, position_ids=pos,
                                 hooks=hooks).values()))
    results = [_score_row(model, resid[j], p) for j, p in enumerate(packed)]
    del resid
    return results


def _score_row(model, resid: torch.Tensor, p: dict) -> list[ForkProbe]:
    """ForkProbes of one row from its final residuals [L, d] and its layout's "score_pos" / "score_tok" /
    "score_owner" / "forks" (a packed row's or a decode-side row's)."""
    logp: dict[int, float] = {}
    if p["score_pos"]:
        dev = resid.device
        lp = log_probs(model, resid[torch.tensor(p["score_pos"], device=dev)])
        tok_lp = lp.gather(-1, torch.tensor(p["score_tok"], device=dev)[:, None])[:, 0].cpu().double()
        owner = torch.tensor(p["score_owner"])
        for _, variants in p["forks"]:
            for v_i, _ in variants:
                logp[v_i] = float(tok_lp[owner == v_i].sum())
    return _fork_probes(p["forks"], logp)


def _probe_per_fork(model, vector, rows, plans, segs, positions, chunk: int) -> list[list[ForkProbe]]:
    """One right-padded sequence prompt + rollout[:t] + prefill + answer per (fork, variant), `chunk` per forward:
    the model builds its own masks (sliding windows, recurrent state), so this is exact for any causal model."""
    dev = model.cfg.device
    units = []  # (row, variant id, ids, prompt length, scored positions, scored tokens)
    fork_lists = []
    for j, (r, plan) in enumerate(zip(rows, plans)):
        P = len(r.prompt_tokens)
        fl, v_id = [], 0
        for t, prefill in plan:
            variants = []
            for is_true, both, k in segs.get(prefill):
                ctx = P + t
                units.append((j, v_id, r.prompt_tokens + r.tokens[:t] + both, P,
                              [ctx + i - 1 for i in range(k, len(both))], both[k:]))
                variants.append((v_id, is_true))
                v_id += 1
            fl.append((t, variants))
        fork_lists.append(fl)
    logp: list[dict[int, float]] = [{} for _ in rows]
    for a in range(0, len(units), max(1, chunk)):
        part = units[a: a + max(1, chunk)]
        ids, mask = pad_batch([u[2] for u in part], pad_id(model), side="right")
        hooks = steering_hooks(vector, [rows[u[0]].coeff for u in part], positions=positions,
                               start=[u[3] for u in part])
        resid = next(iter(resid_post(model, ids, attention_mask=mask, position_ids=position_ids(mask),
                                     hooks=hooks).values()))
        for i, (j, v_id, _, _, sp, st) in enumerate(part):
            lp = log_probs(model, resid[i, torch.tensor(sp, device=dev)])
            logp[j][v_id] = float(lp.gather(-1, torch.tensor(st, device=dev)[:, None]).double().sum())
        del resid
    return [_fork_probes(fl, lp) for fl, lp in zip(fork_lists, logp)]


def _fork_segments(forks: list[tuple[int, str]], segs: _Segments) -> dict:
    """The tokens every fork adds after its context, laid out once for both packed forms (after the rollout in a
    packed row, or as queries against the decode's KV cache): per fork the tokens its answer variants share
    (prefill + common answer prefix) once, then each variant's own tokens.

    A variant's last token is never the source of a scored logit, so it is not laid out at all: with one-token
    answers (" true" / " false") a fork costs the prefill alone, instead of (prefill + answer) per variant.

    Returns lists over the laid-out tokens: "ids", "fork" (index into `forks`), "rel" (position after the fork's
    context: the position id is plen + t + rel); "spans" (start, length, [(a, b) ranges seen besides the context and
    itself]); scores as "score_pos" (a laid-out index, or -1: the context's last position), "score_tok",
    "score_owner" (the variant id); and "forks" [(t, [(variant id, is_true)])].
    """
    ids, fork_of, rel, spans = [], [], [], []
    score_pos, score_tok, score_owner = [], [], []
    fork_list = []
    v_id = 0
    for f, (t, prefill) in enumerate(forks):
        variants = []
        vs = segs.get(prefill)
        c = min(_lcp(vs[0][1], both) for _, both, _ in vs)  # tokens shared by every variant
        shared = len(ids)
        ids += vs[0][1][:c]
        rel += range(c)
        spans.append((shared, c, []))
        for is_true, both, k in vs:
            own = both[c: len(both) - 1]
            start = len(ids)
            ids += own
            rel += range(c, c + len(own))
            spans.append((start, len(own), [(shared, shared + c)]))
            for i in range(k, len(both)):  # token both[i] is predicted at the position of both[i - 1]
                j = i - 1
                score_pos.append(-1 if j < 0 else shared + j if j < c else start + j - c)
                score_tok.append(both[i])
                score_owner.append(v_id)
            variants.append((v_id, is_true))
            v_id += 1
        fork_of += [f] * (len(ids) - shared)
        fork_list.append((t, variants))
    return {"ids": ids, "fork": fork_of, "rel": rel, "spans": spans, "score_pos": score_pos,
            "score_tok": score_tok, "score_owner": score_owner, "forks": fork_list}


def _segment_pattern(lay: dict) -> torch.Tensor:
    """[S, S] bool over a `_fork_segments` layout's S tokens: each token sees the ranges its span lists and its own
    span causally (the same pattern after a packed rollout and as queries against the decode's KV cache)."""
    S = len(lay["ids"])
    allow = torch.zeros((S, S), dtype=torch.bool)
    for start, length, visible in lay["spans"]:
        if not length:
            continue
        for a, b in visible:
            allow[start: start + length, a: b] = True
        allow[start: start + length, start: start + length] = torch.ones((length, length), dtype=torch.bool).tril()
    return allow


def _pack(r: Rollout, forks: list[tuple[int, str]], segs: _Segments) -> dict:
    """One packed row: rollout ids, then every fork's segments (`_fork_segments`), with the attention pattern of
    the unpacked sequences: a segment sees prefix[:plen + t] and what its fork laid out before it."""
    prefix = r.prompt_tokens + r.tokens
    P = len(r.prompt_tokens)
    N = len(prefix)
    lay = _fork_segments(forks, segs)
    ends = [P + t for t, _ in forks]  # every segment of fork f sees prefix[:ends[f]]
    ids = list(prefix) + lay["ids"]
    pos = list(range(N)) + [ends[f] + d for f, d in zip(lay["fork"], lay["rel"])]
    n = len(ids)
    allow = torch.zeros((n, n), dtype=torch.bool)
    allow[:N, :N] = torch.ones((N, N), dtype=torch.bool).tril()
    if n > N:
        seen = torch.tensor(ends)[torch.tensor(lay["fork"])]  # each segment token's context length
        allow[N:, :N] = torch.arange(N)[None, :] < seen[:, None]
        allow[N:, N:] = _segment_pattern(lay)
    owner_fork = {}
    for f, (_, variants) in enumerate(lay["forks"]):
        owner_fork.update({v: f for v, _ in variants})
    score_pos = [ends[owner_fork[o]] - 1 if sp < 0 else N + sp for sp, o in zip(lay["score_pos"], lay["score_owner"])]
    return {"ids": torch.tensor(ids), "pos": torch.tensor(pos), "allow": allow, "score_pos": score_pos,
            "score_tok": lay["score_tok"], "score_owner": lay["score_owner"], "forks": lay["forks"]}


def cache_probe(model, probe) -> "CacheProbe | None":
    """`probe` in the form the decode runs against its own KV cache (`rollout(..., probe=...)`), or None where it
    must run after the decode through its `measure`: a probe other than `AnswerProbe` (or a subclass with its own
    measure), a model whose attention cannot be packed (`attention_layout` "per_fork"), or a spec where an answer's
    first token is scored at the context's own last position (an empty prefill: no segment token predicts it)."""
    if not isinstance(probe, AnswerProbe) or type(probe).measure is not AnswerProbe.measure:
        return None
    layout = attention_layout(model)
    if layout.mode != "packed":
        return None
    cp = CacheProbe(model, probe, layout)
    if any(k == 0 for pre in probe.spec.prefills for _, _, k in cp.segs.get(pre)):
        return None
    return cp


class CacheProbe:
    """An `AnswerProbe` run inside the decode: a row's forks are scored when it leaves the batch, as queries
    against its KV cache, which already holds prompt + rollout[:t] for every fork t under the same steering (what
    the packed row re-computes). `queries` lays out the segments (`_fork_segments`, the same tokens as the packed
    row) with a 4D mask over cache + queries; `score` turns the final residuals into `ForkProbe`s as
    `_probe_packed` does. `cpu_s` / `wall_s` accumulate the process CPU / wall seconds the decode spends here.
    """

    def __init__(self, model, probe: AnswerProbe, layout: AttentionLayout, rows: int = 16):
        self.model, self.probe, self.layout = model, probe, layout
        self.segs = _Segments(model, probe.spec)
        self.rows = int(rows)  # rows per side forward (the cache copy and the mask grow with it)
        self.cpu_s = self.wall_s = 0.0

    def room(self, window: int) -> int:
        """At most how many query tokens one row's forks of a `window`-token rollout need (the carried token
        included): the decode reserves that much cache capacity, so the last forward writes without a copy."""
        per_fork = max(len(_fork_segments([(0, pre)], self.segs)["ids"]) for pre in self.probe.spec.prefills)
        return 1 + per_fork * (len(fork_points(int(window), self.probe.schedule)) + 1)

    def plan(self, r: Rollout) -> list[tuple[int, str]]:
        """(t, prefill) of each fork `AnswerProbe.measure` would probe: `default_forks` and the think-state rule."""
        return probe_forks(self.model, self.probe.spec, r, default_forks(r, self.probe.schedule))

    def queries(self, plans: list[list[tuple[int, str]]], real: torch.Tensor, plen_padded: int,
                carried: list[int | None]) -> dict:
        """Inputs of one forward of R rows against their cache rows (K positions, left-padded prompt of width
        `plen_padded` then one position per generated token; `real` [R, K] bool marks the non-pad ones).

        A row's queries are its `carried` token (None, or the last generated token, which the cache lacks when the
        window ended) then every fork's segments, right-padded to Q. Fork t sees the real cache positions before
        plen_padded + t (the carried token too when t reaches it) and what its fork laid out before it; position
        ids continue from plen + t as in the packed row; a padding query sees itself only.
        """
        real = real.bool().cpu()
        R, K = real.shape
        T = int(plen_padded)
        lays = [_fork_segments(p, self.segs) for p in plans]
        own = [(c is not None) + len(lay["ids"]) for c, lay in zip(carried, lays)]
        Q = max(own + [1])
        ids = torch.full((R, Q), pad_id(self.model), dtype=torch.long)
        qpos = torch.zeros((R, Q), dtype=torch.long)
        allow = torch.zeros((R, Q, K + Q), dtype=torch.bool)
        plen = real[:, :T].sum(-1)
        kpos = real.long().cumsum(-1) - 1
        rows = []
        for j, (plan, lay, c) in enumerate(zip(plans, lays, carried)):
            P, o, n = int(plen[j]), int(c is not None), len(lay["ids"])
            if o:  # the window's last token: the position after the cache, seeing all of it
                ids[j, 0], qpos[j, 0] = c, P + K - T
                allow[j, 0, :K] = real[j]
                allow[j, 0, K] = True
            if n:
                t = torch.tensor([tf for tf, _ in plan])[torch.tensor(lay["fork"])]  # each query's fork
                if int((T + t).max()) > K + o:
                    raise IsoKLError(f"a fork at t={int(t.max())} needs tokens the cache does not hold yet")
                ids[j, o: o + n] = torch.tensor(lay["ids"])
                qpos[j, o: o + n] = P + t + torch.tensor(lay["rel"])
                allow[j, o: o + n, :K] = (torch.arange(K)[None, :] < (T + t)[:, None]) & real[j][None, :]
                if o:
                    allow[j, o: o + n, K] = (T + t) > K
                allow[j, o: o + n, K + o: K + o + n] = _segment_pattern(lay)
            if any(sp < 0 for sp in lay["score_pos"]):
                raise IsoKLError("an answer scored at the context's last position cannot be probed from the cache")
            pad = torch.arange(o + n, Q)
            allow[j, pad, K + pad] = True
            rows.append({"score_pos": [o + sp for sp in lay["score_pos"]], "score_tok": lay["score_tok"],
                         "score_owner": lay["score_owner"], "forks": lay["forks"]})
        mask = _masks(self.model, self.layout, allow, qpos, torch.cat([kpos, qpos], 1))
        return {"ids": ids, "pos": qpos, "attention_mask": mask, "rows": rows}

    def score(self, resid: torch.Tensor, q: dict) -> list[list[ForkProbe]]:
        """ForkProbes of each row from the final residuals [R, Q, d] of the forward on `queries`' inputs."""
        return [_score_row(self.model, resid[j], p) for j, p in enumerate(q["rows"])]


@torch.no_grad()
def probe_reference(model, vector: SteeringVector | None, r: Rollout, t: int, spec: ProbeSpec = ProbeSpec()
                    ) -> ForkProbe:
    """Slow reference: one fresh forward per answer variant over prompt + rollout[:t] + prefill + answer.

    Independent of the packed path (no masks, no caches); used by tests and for spot checks.
    """
    closed = think_closed(model, spec, r, t)
    prefill = spec.prefill_at(closed)
    pre = encode(model, prefill, bos=False)
    p_true = p_false = 0.0
    for is_true, variants in ((True, spec.true_variants), (False, spec.false_variants)):
        for v in variants:
            both = encode(model, prefill + v, bos=False)
            k = _lcp(pre, both)
            seq = torch.tensor([r.prompt_tokens + r.tokens[:t] + both], device=model.cfg.device)
            hooks = steering_hooks(vector, r.coeff)
            with model.hooks(fwd_hooks=hooks):
                logits = model(seq)[0].float()
            lp = torch.log_softmax(logits, -1)
            start = len(r.prompt_tokens) + t
            total = sum(float(lp[start + i - 1, both[i]]) for i in range(k, len(both)))
            prob = float(torch.tensor(total, dtype=torch.float64).exp())
            if is_true:
                p_true += prob
            else:
                p_false += prob
    return ForkProbe(t=t, pmass=p_true + p_false, p_true=p_true)

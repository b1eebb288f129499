"""Where does the time go? Measurements behind issue 13's levers, on the embedded model, CPU, one torch thread.

    python benchmarks/investigate_speed.py profile   [--rows 16] [--window 256]   cProfile of one alpha cell
    python benchmarks/investigate_speed.py native    [--rows 16] [--window 256]   HF attention (sdpa) under the
                                                                                   bridge: parity, then speed
    python benchmarks/investigate_speed.py zoo                                     the same on 11 architectures
    python benchmarks/investigate_speed.py overhead  [--rows 16]                  one decode step: bridge vs raw HF
    python benchmarks/investigate_speed.py memory    [--rows 48]                  peak RSS per stage (subprocesses)
    python benchmarks/investigate_speed.py batching  [--window 256]               rollout 16 rows vs 128 rows
    python benchmarks/investigate_speed.py curve     [--curve-json F]             the calibration statistic vs the
                                                                                   dose, and the solver replayed on it
    python benchmarks/investigate_speed.py all

Times are CPU seconds of this process (time.process_time; one torch thread), which stay steady when other jobs
share the 2-core box, unlike wall time. The levers are tl_isokl.acceleration's (native attention, the bridge fast
path: on by default in `load_model`; the growing KV cache), switched per model by `set_mode`; "eager" rows are the
bridge as TransformerLens ships it (both levers off). Numbers are printed; benchmarks/README.md records a run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

C_STAR = 1.368  # the test bed's c* at window 256 on 8 calibration prompts (issue 13); any dose works for timing


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def setup(threads=1):
    import torch

    torch.set_num_threads(threads)
    import tl_isokl as ik

    model = ik.load_model(device="cpu")
    vec = ik.extract(model, *ik.default_concepts(model))
    return model, vec


def cell_rows(model, n, alpha=1.0, c_star=C_STAR):
    import tl_isokl as ik

    ids, prompts = ik.default_prompts(model, "heldout")
    reps = (n + len(prompts) - 1) // len(prompts)
    P = (prompts * reps)[:n]
    I = [f"{i}" for i in range(n)]
    return P, [alpha * c_star] * n, I


def run_cell(model, vec, P, C, I, window, roll_batch=32, kl_batch=32, probe_batch=8):
    """rollout, KL, probe exactly as `tl_isokl.sweep.run_cell` calls them; returns (times, rolls, kls, probes)."""
    import tl_isokl as ik

    t = {}
    t0 = time.process_time()
    rolls = ik.rollout(model, vec, P, C, prompt_ids=I, window=window, batch_size=roll_batch)
    t["rollout"] = time.process_time() - t0
    t0 = time.process_time()
    kls = ik.per_token_kl(model, vec, rolls, batch_size=kl_batch)
    t["kl"] = time.process_time() - t0
    t0 = time.process_time()
    probes = ik.probe(model, vec, rolls, batch_size=probe_batch)
    t["probe"] = time.process_time() - t0
    t["cell"] = sum(t.values())
    return t, rolls, kls, probes


def set_mode(model, native: bool, fast: bool) -> None:
    """Switch tl_isokl.acceleration's two levers on this model: native attention and the bridge fast path."""
    from tl_isokl.acceleration import accelerate

    accelerate(model, native_attention=native, fast_path=fast)


@contextlib.contextmanager
def patched_dynamic_cache():
    """Inside the block `from transformers import DynamicCache` yields tl_isokl.acceleration.growing_cache() (how
    the unmodified tl_isokl.rollout runs with it; rollout imports DynamicCache at call time)."""
    import transformers

    from tl_isokl.acceleration import growing_cache

    orig = transformers.DynamicCache
    transformers.DynamicCache = lambda *a, **k: growing_cache()
    try:
        yield
    finally:
        transformers.DynamicCache = orig


MODES = (("eager", False, False), ("native", True, False), ("native+fast", True, True))


# ------------------------------------------------------------------------------------------------ profile
def _classify(stats: pstats.Stats):
    """tottime grouped: torch ops by name (math), Python frames by package (overhead)."""
    groups: dict[str, float] = {}
    ops: dict[str, float] = {}
    for (file, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        if file == "~":  # builtins: torch ops, list ops, ...
            key = name.replace("<built-in method ", "").replace("<method ", "").rstrip(">")
            if any(s in key for s in ("torch", "_C.", "Tensor")) or key in ("linear", "matmul", "softmax"):
                ops[key] = ops.get(key, 0.0) + tt
                grp = "torch ops (math + kernel launch)"
            else:
                grp = "python builtins"
        elif "transformer_lens/hook_points" in file:
            grp = "python: TransformerLens HookPoint"
        elif "transformer_lens" in file:
            grp = "python: TransformerLens bridge components"
        elif "torch/nn/modules/module.py" in file:
            grp = "python: torch nn.Module call machinery"
        elif "/torch/" in file:
            grp = "python: other torch"
        elif "transformers" in file:
            grp = "python: transformers (HF model, cache, masks)"
        elif "tl_isokl" in file:
            grp = "python: tl_isokl"
        else:
            grp = "python: other"
        groups[grp] = groups.get(grp, 0.0) + tt
    return groups, ops


def _cum(stats: pstats.Stats, fname_part: str, func: str) -> float:
    """Cumulative time of a function (summed over matches), without double counting recursion."""
    return sum(v[3] for (f, _, n), v in stats.stats.items() if fname_part in f and n == func)


def _direct_from(stats: pstats.Stats, op: str, caller_file: str, caller_func: str) -> float:
    """tottime of builtin `op` attributed to calls made directly from caller_file:caller_func."""
    tot = 0.0
    for (f, _, n), v in stats.stats.items():
        if f == "~" and op in n:
            for (cf, _, cn), cv in v[4].items():
                if caller_file in cf and cn == caller_func:
                    tot += cv[2]
    return tot


def cmd_profile(args):
    import tl_isokl as ik

    model, vec = setup()
    set_mode(model, args.native, args.fastpath)
    P, C, I = cell_rows(model, args.rows)
    run_cell(model, vec, P[:2], C[:2], I[:2], 8)  # warm-up

    prof = {}
    pr = cProfile.Profile()
    t0 = time.process_time()
    pr.enable()
    rolls = ik.rollout(model, vec, P, C, prompt_ids=I, window=args.window, batch_size=32)
    pr.disable()
    prof["rollout"] = (pr, time.process_time() - t0)
    pr = cProfile.Profile()
    t0 = time.process_time()
    pr.enable()
    ik.per_token_kl(model, vec, rolls, batch_size=32)
    pr.disable()
    prof["kl"] = (pr, time.process_time() - t0)
    pr = cProfile.Profile()
    t0 = time.process_time()
    pr.enable()
    ik.probe(model, vec, rolls, batch_size=8)
    pr.disable()
    prof["probe"] = (pr, time.process_time() - t0)
    ntok = sum(r.length for r in rolls)
    print(f"profile: one alpha-1 cell, {args.rows} rows, window {args.window}, {ntok} generated tokens, "
          f"attention {'native sdpa' if args.native else 'bridge eager (TransformerLens)'}"
          f"{', bridge fast path' if args.fastpath else ''}; CPU s under cProfile:")
    allstats = None
    for stage, (pr, wall) in prof.items():
        st = pstats.Stats(pr)
        allstats = st if allstats is None else allstats.add(pr)
        print(f"  {stage:<8} {wall:6.2f} s")
    st = allstats
    total = sum(v[2] for v in st.stats.values())
    groups, ops = _classify(st)
    attn = "position_embeddings_attention.py"
    attn_cum = _cum(st, attn, "forward")
    nat_cum = _cum(st, "generalized_components/attention.py", "forward")
    print(f"total profiled time {total:.2f} s (sum of tottime)")
    print(f"  attention bridge forward, cumulative (reconstructed eager attention incl. its q/k/v/o linears): "
          f"{attn_cum:6.2f} s = {attn_cum / total:5.1%}")
    if nat_cum:
        print(f"  AttentionBridge.forward (delegating, native) cumulative: {nat_cum:6.2f} s = {nat_cum / total:5.1%}")
    for op in ("matmul", "softmax", "cat", "linear", "masked_fill", "where", "tril"):
        d = _direct_from(st, op, attn, "forward")
        if d:
            print(f"    {op:<12} called directly by the attention bridge: {d:6.2f} s = {d / total:5.1%}")
    cache_cat = _direct_from(st, "cat", "cache_utils", "update")
    print(f"  KV cache growth (torch.cat in transformers DynamicLayer.update): {cache_cat:6.2f} s = "
          f"{cache_cat / total:5.1%}")
    mlp = _cum(st, "gated_mlp.py", "forward")
    print(f"  gated MLP bridge cumulative: {mlp:6.2f} s = {mlp / total:5.1%}")
    print("  tottime by kind:")
    for g, v in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {g:<52} {v:7.2f} s {v / total:6.1%}")
    print("  torch ops by tottime:")
    for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {k:<52} {v:7.2f} s {v / total:6.1%}")
    if args.top:
        st.sort_stats("tottime").print_stats(args.top)


# ------------------------------------------------------------------------------------------------ native attention
def cmd_native(args):
    import numpy as np
    import torch

    import tl_isokl as ik
    from tl_isokl.probe import probe_reference

    model, vec = setup()
    set_mode(model, False, False)
    print("native attention (tl_isokl.acceleration): AttentionBridge.forward delegation + HF sdpa")
    # 1. logits vs HF's own model (loaded separately: the bridge mutates the HF model it wraps)
    from transformers import AutoModelForCausalLM

    path = model.tl_isokl_info["path"]
    hf = {impl: AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()
          for impl in ("eager", "sdpa")}
    from tl_isokl.tokens import encode, pad_batch, pad_id, position_ids

    _, prompts = ik.default_prompts(model, "heldout")
    seqs = [encode(model, p) for p in prompts[:6]]
    seqs = [s + list(range(5, 5 + 40 * (i + 1) % 120)) for i, s in enumerate(seqs)]  # ragged lengths
    ids, mask = pad_batch(seqs, pad_id(model), side="left")
    pos = position_ids(mask)
    with torch.no_grad():
        ref = {k: m(input_ids=ids, attention_mask=mask, position_ids=pos).logits for k, m in hf.items()}
        br_eager = model.original_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        set_mode(model, True, False)
        br_native = model.original_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    valid = mask.bool()
    gap = lambda a, b: float((a - b)[valid].abs().max())  # noqa: E731
    scale = float(ref["eager"][valid].abs().max())
    print(f"  logits, left-padded batch of 6 (max |logit| {scale:.1f}): bridge-native vs HF sdpa "
          f"{gap(br_native, ref['sdpa']):.2e}, vs HF eager {gap(br_native, ref['eager']):.2e}; bridge-eager vs HF "
          f"eager {gap(br_eager, ref['eager']):.2e}; HF sdpa vs HF eager {gap(ref['sdpa'], ref['eager']):.2e}")
    # 2. the steering hook still fires, at every decode step
    seen = []
    with torch.no_grad(), model.hooks(fwd_hooks=[(vec.hook_name, lambda x, hook: seen.append(tuple(x.shape)))]):
        model.generate(prompts[0], max_new_tokens=4, do_sample=False, verbose=False)
    print(f"  {vec.hook_name} fired {len(seen)} times in a 4-token cached generate: shapes {seen}")
    # 3. cached == uncached decoding, steered (generate with and without the KV cache)
    toks = model.to_tokens(prompts[1])
    kw = dict(max_new_tokens=24, do_sample=False, stop_at_eos=False, verbose=False, output_logits=True)
    with torch.no_grad(), ik.steer(model, vec, 2 * C_STAR):
        a = model.generate(toks, use_past_kv_cache=True, **kw)
        b = model.generate(toks, use_past_kv_cache=False, **kw)
    lg = max(float((x - y).abs().max()) for x, y in zip(a.logits, b.logits))
    print(f"  cached vs uncached steered generate (native): same tokens {torch.equal(a.sequences, b.sequences)}, "
          f"max |d logit| {lg:.2e}")
    # 4. rollout / KL / probe: native vs eager, and KL vs brute force (baseline.kl_one: full logits, two passes)
    import baseline

    P, C, I = cell_rows(model, args.rows, alpha=1.0)
    out = {}
    for name, nat, fast in MODES:
        set_mode(model, nat, fast)
        run_cell(model, vec, P[:2], C[:2], I[:2], 8)  # warm-up
        out[name] = run_cell(model, vec, P, C, I, args.window)
    set_mode(model, False, False)  # references below: the bridge as TransformerLens ships it
    te, re_, ke, pe = out["eager"]
    brute = {name: [baseline.kl_one(model, vec, r.prompt_tokens, r.tokens, r.coeff) for r in o[1][:4]]
             for name, o in out.items()}
    for name, (t, rr, kk, pp) in out.items():
        if name == "eager":
            continue
        same = sum(x.tokens == y.tokens for x, y in zip(re_, rr))
        kd = max(float(np.abs(x - y).max()) if len(x) else 0.0 for x, y in zip(ke, kk) if len(x) == len(y))
        kb = max(float(np.abs(x - y).max()) for x, y in zip(brute[name], kk[:4]))
        pd = max(abs(a.pmass - b.pmass) for fa, fb in zip(pe, pp) for a, b in zip(fa, fb))
        ref_gap = 0.0
        for r, fk in list(zip(rr, pp))[:2]:
            for f in fk[:4]:
                ref_gap = max(ref_gap, abs(probe_reference(model, vec, r, f.t).pmass - f.pmass))
        print(f"  {name}: rollouts token-identical to eager {same}/{len(re_)}; KL max |d| vs eager {kd:.1e}, vs "
              f"brute-force re-scoring (two full-logit eager forwards) {kb:.1e}; probe pmass max |d| vs eager "
              f"{pd:.1e}, vs probe_reference (eager, one forward per fork) {ref_gap:.1e}")
    ntok = sum(r.length for r in re_)
    print(f"  speed, one alpha-1 cell of {args.rows} rows, window {args.window} ({ntok} tokens), seconds:")
    print(f"    {'stage':<8}" + "".join(f"{n:>12}" for n in out) + "   speedup of the last")
    for s_ in ("rollout", "kl", "probe", "cell"):
        last = list(out.values())[-1][0][s_]
        print(f"    {s_:<8}" + "".join(f"{o[0][s_]:12.2f}" for o in out.values()) + f"   {te[s_] / last:.2f}x")


# ------------------------------------------------------------------------------------------------ per-step overhead
def _decode_steps(om, ids, mask, steps, hooks_ctx=None):
    """ms per cached decode step after a prefill (batch = ids rows), greedy; om = an HF causal LM."""
    import contextlib

    import torch
    from transformers import DynamicCache

    from tl_isokl.tokens import position_ids

    ctx = hooks_ctx if hooks_ctx is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        out = om(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), past_key_values=DynamicCache(),
                 use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        t0 = time.process_time()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = mask.sum(1, keepdim=True) - 1
            out = om(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                     use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
        return (time.process_time() - t0) / steps * 1e3


def _teacher_forced(om, ids, mask, reps=3):
    import torch

    from tl_isokl.tokens import position_ids

    with torch.no_grad():
        om(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=1)
        t0 = time.process_time()
        for _ in range(reps):
            om(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=1)
        return (time.process_time() - t0) / reps


def cmd_overhead(args):
    import torch
    from transformers import AutoModelForCausalLM

    import tl_isokl as ik
    from tl_isokl.steer import Steering
    from tl_isokl.tokens import encode, pad_batch, pad_id
    from transformer_lens.hook_points import HookPoint

    model, vec = setup()
    path = model.tl_isokl_info["path"]
    _, prompts = ik.default_prompts(model, "heldout")
    steps = args.steps
    print(f"per decode step, batch B, {steps} steps after the prompt (ms/step; tokens/s = B / step):")
    hf = {impl: AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()
          for impl in ("eager", "sdpa")}
    # count HookPoint calls in one decode step
    calls = [0]
    orig = HookPoint.forward

    def counting(self, x):
        calls[0] += 1
        return orig(self, x)

    rows = []
    for B in (1, args.rows, 128):
        seqs = [encode(model, p) for p in (prompts * 3)[:B]]
        ids, mask = pad_batch(seqs, pad_id(model), side="left")
        st = Steering(vec, torch.full((B,), C_STAR))
        steer_ctx = lambda: model.hooks(fwd_hooks=st.fwd_hooks())  # noqa: E731
        r = {"B": B}
        for name, nat, fast in (("bridge eager (levers off)", False, False), ("bridge eager + fastpath", False, True),
                                ("bridge + HF sdpa", True, False), ("bridge + HF sdpa + fastpath", True, True)):
            set_mode(model, nat, fast)
            r[name] = _decode_steps(model.original_model, ids, mask, steps, steer_ctx())
        set_mode(model, False, False)
        for impl, m in hf.items():
            # the steering as a plain torch forward hook on the HF decoder layer: the least any hook can cost
            v = vec.direction * C_STAR
            h = m.model.layers[vec.layer].register_forward_hook(lambda mod, a, o: o + v)
            try:
                r[f"raw HF {impl} + torch hook"] = _decode_steps(m, ids, mask, steps)
            finally:
                h.remove()
        rows.append(r)
    keys = [k for k in rows[0] if k != "B"]
    print(f"  {'':<30}" + "".join(f"{'B=' + str(r['B']):>22}" for r in rows))
    for k in keys:
        print(f"  {k:<30}" + "".join(f"{r[k]:7.2f} ms {r['B'] / r[k] * 1e3:6.0f} tok/s".rjust(22) for r in rows))
    # HookPoint calls per decode step, and the cost of one
    HookPoint.forward = counting
    try:
        seqs = [encode(model, p) for p in prompts[:4]]
        ids, mask = pad_batch(seqs, pad_id(model), side="left")
        per = {}
        for name, nat, fast in MODES:
            set_mode(model, nat, fast)
            calls[0] = 0
            _decode_steps(model.original_model, ids, mask, 10)
            per[name] = calls[0] / 11  # prefill + 10 steps
    finally:
        HookPoint.forward = orig
        set_mode(model, False, False)
    per_step = per["eager"]
    hp = HookPoint()
    x = torch.zeros(4, 1, 192)
    t0 = time.process_time()
    for _ in range(20000):
        hp(x)
    us = (time.process_time() - t0) / 20000 * 1e6
    print("  HookPoint calls per decode step: " + ", ".join(f"{v:.0f} ({k})" for k, v in per.items()) + "; "
          f"one call with no hook attached costs {us:.2f} us -> {per_step * us / 1e3:.2f} ms/step of pure hook-point "
          f"dispatch; {len(model.hook_dict)} hook points on the model")
    # teacher-forced throughput (the CPU floor for KL / probe passes)
    seqs = [encode(model, p) + list(range(5, 5 + args.window)) for p in prompts[:16]]
    ids, mask = pad_batch(seqs, pad_id(model), side="left")
    ntok = int(mask.sum())
    tf = {}
    for name, nat, fast in (("bridge eager (levers off)", False, False), ("bridge eager + fastpath", False, True),
                            ("bridge + HF sdpa", True, False), ("bridge + HF sdpa + fastpath", True, True)):
        set_mode(model, nat, fast)
        tf[name] = _teacher_forced(model.original_model, ids, mask)
    set_mode(model, False, False)
    for impl, m in hf.items():
        tf[f"raw HF {impl}"] = _teacher_forced(m, ids, mask)
    print(f"  teacher-forced forward, 16 rows x {ids.shape[1]} tokens ({ntok} real):")
    for k, v in tf.items():
        print(f"    {k:<40} {v:6.3f} s  {ntok / v:8.0f} tok/s")


# ------------------------------------------------------------------------------------------------ memory
MEM_CHILD = r"""
import os, sys, json, resource, time
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, {here!r})
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
out = {{"start": rss()}}
import torch; torch.set_num_threads(1); out["import torch"] = rss()
import transformers; out["import transformers"] = rss()
import transformer_lens; from transformer_lens import TransformerBridge; out["import transformer_lens"] = rss()
import tl_isokl as ik; out["import tl_isokl"] = rss()
m = ik.load_model(device="cpu"); out["load_model"] = rss()
v = ik.extract(m, *ik.default_concepts(m)); out["extract"] = rss()
from tl_isokl.acceleration import accelerate
accelerate(m, native_attention={native!r}, fast_path={native!r})
from investigate_speed import cell_rows
P, C, I = cell_rows(m, {rows})
stage = {stage!r}
t = time.process_time()
if stage == "calibrate":
    _, cal = ik.default_prompts(m, "calibration")
    ik.calibrate(m, v, cal[:{rows}], window={window})
else:
    rolls = ik.rollout(m, v, P, C, prompt_ids=I, window={window}, batch_size=32); out["rollout"] = rss()
    if stage in ("kl", "probe"):
        ik.per_token_kl(m, v, rolls, batch_size=32); out["kl"] = rss()
    if stage == "probe":
        ik.probe(m, v, rolls, batch_size=8); out["probe"] = rss()
out[stage + " (end)"] = rss(); out["seconds"] = time.process_time() - t
print(json.dumps(out))
"""


def _mem_child(stage, rows, window, native):
    code = MEM_CHILD.format(here=str(HERE), native=native, rows=rows, stage=stage, window=window)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cmd_memory(args):
    print(f"peak RSS (MB, ru_maxrss, monotone) in fresh processes; {args.rows} rows, window {args.window}:")
    a = _mem_child("probe", args.rows, args.window, False)
    for k, v in a.items():
        if k != "seconds":
            print(f"  {k:<24} {v:7.0f}")
    n = _mem_child("probe", args.rows, args.window, True)
    print(f"  same with native attention + fast path: rollout {n['rollout']:.0f}, kl {n['kl']:.0f}, probe "
          f"{n['probe']:.0f} (load {n['load_model']:.0f})")
    c = _mem_child("calibrate", 32, args.window, False)
    print(f"  calibrate, 32 prompts x 5 doses per round, window {args.window}: peak {c['calibrate (end)']:.0f} MB "
          f"(load {c['load_model']:.0f}); native: ", end="")
    cn = _mem_child("calibrate", 32, args.window, True)
    print(f"{cn['calibrate (end)']:.0f} MB")


# ------------------------------------------------------------------------------------------------ batching
def cmd_batching(args):
    import tl_isokl as ik
    from tl_isokl.rollout import grid

    model, vec = setup()
    ids, prompts = ik.default_prompts(model, "heldout")
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
    P, C, I = grid(prompts[:16], [a * C_STAR for a in alphas], ids[:16])
    print(f"rollout, window {args.window}: 8 alpha cells of 16 rows one cell at a time (the sweep today) vs all 128 "
          f"rows in one decode batch; tl_isokl.acceleration: native = HF sdpa, fast = bridge fast path, grow = "
          f"growing_cache (no per-step torch.cat):")
    ref = None
    for name, native, fast, grow in (("eager (levers off)", False, False, False), ("eager+fast", False, True, False),
                                     ("eager+fast+grow", False, True, True), ("native+fast", True, True, False),
                                     ("native+fast+grow", True, True, True)):
        set_mode(model, native, fast)
        ctx = patched_dynamic_cache if grow else contextlib.nullcontext
        with ctx():
            ik.rollout(model, vec, P[:2], C[:2], window=8)
            t0 = time.process_time()
            per_cell = []
            for k in range(8):
                sl = slice(16 * k, 16 * (k + 1))
                per_cell += ik.rollout(model, vec, P[sl], C[sl], prompt_ids=I[sl], window=args.window, batch_size=32)
            t_cells = time.process_time() - t0
            t0 = time.process_time()
            together = ik.rollout(model, vec, P, C, prompt_ids=I, window=args.window, batch_size=128)
            t_all = time.process_time() - t0
        ref = ref or (per_cell, t_cells)
        ntok = sum(r.length for r in together)
        same = sum(a.tokens == b.tokens for a, b in zip(ref[0], together))
        print(f"  {name:<17} per cell {t_cells:6.2f} s ({ntok / t_cells:5.0f} tok/s); one batch of 128 {t_all:6.2f} s "
              f"({ntok / t_all:5.0f} tok/s): {t_cells / t_all:.2f}x over per-cell, {ref[1] / t_all:.2f}x over "
              f"levers off; rows token-identical to levers off {same}/128")
    set_mode(model, False, False)


def cmd_zoo(args):
    """Native attention on the 11 tiny random architectures of tests/zoo_models.py: which bridges it switches, and
    whether logits, rollouts, KL and probes stay equal to the bridge's own attention."""
    import tempfile

    import numpy as np
    import torch

    import tl_isokl as ik
    from tl_isokl.acceleration import attention_mode, use_bridge_attention, use_native_attention
    from tl_isokl.tokens import encode, pad_batch, pad_id, position_ids

    sys.path.insert(0, str(HERE.parent / "tests"))
    import zoo_models

    fams = ("gpt2", "llama", "qwen3", "olmo2", "mistral", "qwen2", "gemma2", "gemma3", "granite", "cohere",
            "cohere2")
    print("native attention on the test zoo (2 layers, d 64, random, windows of 8 on the sliding families), 4 rows x "
          "24 tokens; max |difference| native vs the bridge's reconstructed attention:")
    print(f"  {'family':<8} {'attention bridge':<34} {'switched':>8} {'impl':>6} {'logits':>8} {'tokens':>7} "
          f"{'KL':>8} {'pmass':>8} {'resid_post fired':>16}")
    with tempfile.TemporaryDirectory() as d:
        for fam in fams:
            path = zoo_models.build(fam, Path(d))
            m = ik.load_model(str(path), device="cpu")
            vec = ik.extract(m, *ik.default_concepts(m))
            _, prompts = ik.default_prompts(m, "heldout")
            seqs = [encode(m, p) + list(range(5, 5 + 7 * i)) for i, p in enumerate(prompts[:4])]
            ids, mask = pad_batch(seqs, pad_id(m), side="left")
            kinds = sorted({type(b.attn).__name__ for b in m.blocks})
            out = {}
            for native in (False, True):
                use_bridge_attention(m)
                n = use_native_attention(m) if native else 0
                impl = attention_mode(m) if n else "-"
                with torch.no_grad():
                    lg = m.original_model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
                rolls = ik.rollout(m, vec, prompts[:4], [1.0] * 4, window=24)
                kls = ik.per_token_kl(m, vec, rolls)
                pr = ik.probe(m, vec, rolls)
                fired = []
                with torch.no_grad(), m.hooks(fwd_hooks=[(vec.hook_name, lambda x, hook: fired.append(1))]):
                    ik.rollout(m, None, prompts[:1], [0.0], window=3)
                out[native] = (lg, rolls, kls, pr, n, len(fired))
            (le, re_, ke, pe, _, _), (ln, rn, kn, pn, n, fired) = out[False], out[True]
            lgap = float((le - ln)[mask.bool()].abs().max())
            same = sum(a.tokens == b.tokens for a, b in zip(re_, rn))
            kgap = max((float(np.abs(a - b).max()) for a, b in zip(ke, kn) if len(a) == len(b) and len(a)),
                       default=0.0)
            pgap = max((abs(x.pmass - y.pmass) for a, b in zip(pe, pn) for x, y in zip(a, b)), default=0.0)
            print(f"  {fam:<8} {', '.join(kinds):<34} {n:>8} {impl:>6} {lgap:8.1e} {same:>5}/4 {kgap:8.1e} "
                  f"{pgap:8.1e} {fired:>10} times")
            del m


def cmd_curve(args):
    """The calibration statistic as a function of the dose on issue 13's workload (8 calibration prompts, window
    `--window`), measured at 121 doses (48 geometric over 0.25..8, 73 every 0.0025 over 1.28..1.46; 16 doses per
    batched rollout, ~70 s), then `calibrate.solve` replayed on it (log-log interpolation between the measured
    doses) from several starting doses: sequential, fans of 2-5 per round, and sequential with the exact early stop
    (not in the library): a dose is settled as soon as more than 5% of the largest possible pool (rows x window) is
    above target x (1 + tol), which proves its p95 above the tolerance whatever the remaining tokens are (np.percentile
    interpolates between order statistics: p95 >= x[floor((N - 1) 0.95)]); the solver then gets the p95 of the
    tokens so far, at least that bound, and the dose costs the share of the window decoded. Each round costs the
    measured `--round-cost` (decode at batch 8 x doses plus the KL pass). `--curve-json` keeps the measured curve
    with its per-token KL (reused when the file exists)."""
    import importlib
    import math
    import warnings

    import numpy as np

    cm = importlib.import_module("tl_isokl.calibrate")
    path = Path(args.curve_json) if args.curve_json else None
    if path is not None and path.is_file():
        curve = {float(c): v for c, v in json.loads(path.read_text()).items()}
    else:
        import tl_isokl as ik
        from tl_isokl.kl import per_token_kl
        from tl_isokl.rollout import grid, rollout

        model, vec = setup()
        _, cal = ik.default_prompts(model, "calibration")
        cal = cal[:8]
        doses = sorted(set([float(x) for x in np.geomspace(0.25, 8, 48)]
                           + [float(x) for x in np.linspace(1.28, 1.46, 73)]))  # 121 doses
        curve = {}
        for i in range(0, len(doses), 16):
            cs = doses[i: i + 16]
            P, C, I = grid(cal, cs, [str(j) for j in range(len(cal))])
            rolls, finals = rollout(model, vec, P, C, prompt_ids=I, window=args.window, batch_size=128,
                                    return_final=True)
            kls = per_token_kl(model, vec, rolls, batch_size=32, final=finals)
            for k, c in enumerate(cs):
                per = kls[k * len(cal): (k + 1) * len(cal)]
                curve[c] = {"p95": float(np.percentile(np.concatenate(per), 95)), "kl": [x.tolist() for x in per]}
        if path is not None:
            path.write_text(json.dumps({str(c): v for c, v in curve.items()}))
    cs = np.array(sorted(curve))
    vs = np.array([curve[c]["p95"] for c in cs])
    inside = cs[np.abs(vs - 1.0) <= 0.05]
    print(f"p95 of pooled KL over {len(cs)} doses; doses within +-5% of 1 nat: "
          + (f"{len(inside)}, c in [{inside.min():.4f}, {inside.max():.4f}]" if len(inside) else "none"))
    for i in [i for i in range(len(cs) - 1) if vs[i] < 1.0 <= vs[i + 1]][:3]:
        print(f"  crosses 1 nat between c = {cs[i]:.4f} (p95 {vs[i]:.3f}) and c = {cs[i + 1]:.4f} (p95 {vs[i + 1]:.3f})")

    # the early stop, per measured dose: (tokens per row decoded when settled, p95 of those tokens)
    bound = 1.05
    settled = {}
    for c in cs:
        kl = [np.asarray(x) for x in curve[c]["kl"]]
        n_max = len(kl) * args.window
        need = n_max - math.floor((n_max - 1) * 0.95)  # this many tokens above the bound prove p95 above it
        for t in range(1, args.window + 1):
            if sum(int((x[:t] > bound).sum()) for x in kl) >= need:
                settled[c] = (t, float(np.percentile(np.concatenate([x[:t] for x in kl]), 95)))
                break
    print(f"early stop: {len(settled)} of {len(cs)} doses settled above {bound} before the end of the window")

    def nearest(c):
        return cs[int(np.argmin(np.abs(np.log(cs) - math.log(c))))]

    def f(c):
        return float(np.exp(np.interp(math.log(c), np.log(cs), np.log(np.maximum(vs, 1e-9)))))

    a, b = args.round_cost  # seconds of one round: a + b x doses (decode at batch 8 x doses + its KL pass)
    print(f"solver replayed on the curve (round cost {a:g} + {b:g} x doses s; failed = not within 5% after the "
          f"default rounds, 16 sequential / 6 fan):")
    names = ("sequential", "fan 2", "fan 3", "fan 5", "seq. early stop")
    print(f"  {'c_init':>6}  " + "  ".join(f"{name:>16}" for name in names))
    for c0 in (0.3, 0.5, 1.0, 2.0, 3.0):
        cells = []
        for k, early in ((1, False), (2, False), (3, False), (5, False), (1, True)):
            log, cost = [], [0.0]

            def ev(dd, rnd):
                log.append(len(dd))
                out, shares = [], []
                for c in dd:
                    v, share = f(c), 1.0
                    if early and nearest(c) in settled and v > bound:
                        t, part = settled[nearest(c)]
                        v, share = max(part, bound), t / args.window
                    out.append(v)
                    shares.append(share)
                cost[0] += a * max(shares) + b * sum(shares)  # the round decodes as long as its longest dose
                return out

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, _, ok = cm.solve(ev, target=1.0, tol=0.05, c_init=c0, candidates=k)
            cells.append(f"{sum(log):2d} doses {cost[0]:5.1f} s" if ok else f"{sum(log):2d} doses: failed")
        print(f"  {c0:6.2f}  " + "  ".join(f"{x:>16}" for x in cells))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("profile", "native", "zoo", "overhead", "memory", "batching", "curve", "all"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed by `overhead`")
    ap.add_argument("--native", action="store_true", help="profile with native attention (off: TL's eager)")
    ap.add_argument("--fastpath", action="store_true", help="profile with the bridge fast path")
    ap.add_argument("--top", type=int, default=0, help="also print the top N functions by tottime")
    ap.add_argument("--curve-json", help="`curve`: keep the measured curve here (reused when it exists)")
    ap.add_argument("--round-cost", type=float, nargs=2, default=(1.21, 0.56), metavar=("A", "B"),
                    help="`curve`: seconds of a calibration round = A + B x doses (measured: decode at batch 8, 16, "
                         "24 and the KL pass)")
    args = ap.parse_args(argv)
    todo = ("profile", "native", "zoo", "overhead", "batching", "memory") if args.what == "all" else (args.what,)
    for w in todo:
        globals()[f"cmd_{w}"](args)
        print()


if __name__ == "__main__":
    main()

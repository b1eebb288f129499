"""Speed of each pipeline stage on the embedded model (CPU by default). Prints a table; asserts nothing.

    python benchmarks/bench_pipeline.py [--device cpu] [--threads 1] [--window 128] [--repeats 3]

Stages: batched greedy rollout (tokens/s at several batch sizes, and vs TransformerBridge.generate), per-token KL
(teacher-forced, chunked), fork probe (packed fast path vs one fresh forward per fork), one calibration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def timed(fn, repeats):
    ts = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import tl_isokl as ik
    from tl_isokl.probe import default_forks, probe_reference
    from tl_isokl.rollout import grid

    model = ik.load_model(device=args.device)
    vec = ik.extract(model, *ik.default_concepts(model))
    _, prompts = ik.default_prompts(model, "heldout")
    rows = []
    for bs in (1, 8, 32):
        P, C, _ = grid(prompts[:bs], [1.0])
        sec, rolls = timed(lambda: ik.rollout(model, vec, P, C, window=args.window, batch_size=bs), args.repeats)
        ntok = sum(r.length for r in rolls)
        rows.append((f"rollout batch {bs}", sec, f"{ntok / sec:,.0f} tok/s ({ntok} tokens)"))
    # TransformerBridge.generate for the same batch-1 work, as a reference point
    with ik.steer(model, vec, 1.0):
        sec, _ = timed(lambda: model.generate(prompts[0], max_new_tokens=args.window, do_sample=False,
                                               stop_at_eos=False, verbose=False), args.repeats)
    rows.append(("bridge.generate batch 1 (no EOS stop)", sec, f"{args.window / sec:,.0f} tok/s"))

    P, C, _ = grid(prompts[:32], [1.0])
    rolls = ik.rollout(model, vec, P, C, window=args.window, batch_size=32)
    ntok = sum(r.length for r in rolls)
    sec, _ = timed(lambda: ik.per_token_kl(model, vec, rolls, batch_size=16), args.repeats)
    rows.append(("per-token KL (32 rows)", sec, f"{ntok / sec:,.0f} scored tok/s"))

    sec_fast, fast = timed(lambda: ik.probe(model, vec, rolls[:8], batch_size=8), args.repeats)
    nforks = sum(len(f) for f in fast)
    t = time.perf_counter()
    for r in rolls[:8]:
        for ft in default_forks(r):
            probe_reference(model, vec, r, ft)
    sec_ref = time.perf_counter() - t
    rows.append((f"probe packed ({nforks} forks, 8 rows)", sec_fast, f"{nforks / sec_fast:,.1f} forks/s"))
    rows.append(("probe fresh forward per fork", sec_ref, f"{sec_ref / sec_fast:.1f}x slower than packed"))

    _, cal_prompts = ik.default_prompts(model, "calibration")
    t = time.perf_counter()
    cal = ik.calibrate(model, vec, cal_prompts, window=args.window)
    rows.append((f"calibrate ({len(cal_prompts)} prompts, {cal.rounds} rounds, {len(cal.history)} doses)",
                 time.perf_counter() - t, f"c* = {cal.c_star:.4g}, p95 = {cal.achieved:.3f}"))

    print(f"device {args.device}, threads {args.threads}, window {args.window}, median of {args.repeats}")
    for name, sec, note in rows:
        print(f"{name:<55} {sec:8.2f} s   {note}")


if __name__ == "__main__":
    main()

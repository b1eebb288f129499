"""The fork probe after the decode (packed: prompt + rollout re-forwarded) against the probe inside the decode
(segments against the decode's KV cache), on issue 13's sweep workload: 16 held-out prompts x 8 alphas at c*,
window 256, all rows in one decode batch, one torch thread. Prints CPU seconds (`time.process_time`) of decode and
probe for both, and how far apart their forks are.

    python benchmarks/bench_probe_cache.py                    # ~1 min
    python benchmarks/bench_probe_cache.py --probe-rows 16,64,128
    python benchmarks/bench_probe_cache.py --window 32 --prompts 3    # seconds
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
C_STAR = 1.3674  # tl-isokl's c* in benchmarks/README.md (goal 1 after issue 13)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--probe-rows", default="16", help="rows per in-decode probe forward (comma list to compare)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import tl_isokl as ik
    from tl_isokl.probe import AnswerProbe, probe
    from tl_isokl.rollout import grid, rollout

    model = ik.load_model(device="cpu")
    vec = ik.extract(model, *ik.default_concepts(model))
    ids, held = ik.default_prompts(model, "heldout")
    P, C, I = grid(held[: args.prompts], [a * C_STAR for a in ALPHAS], ids[: args.prompts])
    n = args.prompts
    rollout(model, vec, P[:2], C[:2], window=8, probe=AnswerProbe())  # warm-up

    t = time.process_time()
    rolls, finals = rollout(model, vec, P, C, prompt_ids=I, window=args.window, batch_size=len(P),
                            return_final=True)
    old_decode = time.process_time() - t
    t = time.process_time()
    old = []
    for k in range(len(ALPHAS)):  # per cell, as run_cell did: the packed probe at sweep's batch size
        old += probe(model, vec, rolls[k * n: (k + 1) * n], batch_size=8)
    old_probe = time.process_time() - t
    print(f"rows {len(P)}, window {args.window}, tokens {sum(r.length for r in rolls)}, "
          f"forks {sum(len(f) for f in old)}, eos rows {sum(r.eos for r in rolls)}")
    print(f"after the decode: decode {old_decode:6.2f} CPU s + probe {old_probe:5.2f} = {old_decode + old_probe:6.2f}")
    out = {"old": {"decode": old_decode, "probe": old_probe}}
    for rows in [int(x) for x in args.probe_rows.split(",")]:
        timings = {}
        t = time.process_time()
        rolls2, finals2, new = rollout(model, vec, P, C, prompt_ids=I, window=args.window, batch_size=len(P),
                                       return_final=True, probe=AnswerProbe(), probe_rows=rows, timings=timings)
        total = time.process_time() - t
        same_tokens = sum(a.tokens == b.tokens for a, b in zip(rolls, rolls2))
        pairs = [(a, b) for fa, fb in zip(old, new) for a, b in zip(fa, fb)]
        same_forks = all([f.t for f in fa] == [f.t for f in fb] for fa, fb in zip(old, new))
        worst = max(max(abs(a.pmass - b.pmass), abs(a.p_true - b.p_true)) for a, b in pairs)
        deaths = [sum(any(not f.alive(0.75) for f in fs) for fs in x[k * n: (k + 1) * n]) for x in (old, new)
                  for k in range(len(ALPHAS))]
        print(f"inside the decode (probe_rows {rows}): decode {total - timings['probe']:6.2f} CPU s + probe "
              f"{timings['probe']:5.2f} = {total:6.2f}; rollouts identical {same_tokens}/{len(P)}, same forks "
              f"{same_forks}, max |pmass or p_true diff| {worst:.1e}, deaths per alpha {deaths[:len(ALPHAS)]} "
              f"(after) vs {deaths[len(ALPHAS):]} (inside)")
        out[f"rows{rows}"] = {"decode": total - timings["probe"], "probe": timings["probe"], "worst": worst}
    return out


if __name__ == "__main__":
    main()

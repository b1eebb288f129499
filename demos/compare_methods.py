"""Give three steering methods the same iso-KL budget, then compare what it buys (the tool's reason to exist).

    python demos/compare_methods.py [--model NAME_OR_PATH] [--window 128] [--out runs/compare]

For each method (mean_diff, pca, directional_ablation) at the same layer: calibrate c* (p95 per-token KL = 1 nat
on the calibration prompts), sweep alpha on held-out prompts, and print one line per (method, alpha): achieved
held-out KL p95 and how many traces died. Uses only the public API.
"""

import argparse
from pathlib import Path

import tl_isokl as ik
from tl_isokl.sweep import summary_rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--alphas", default="0,0.5,1,2,4")
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = ap.parse_args()

    model = ik.load_model(args.model)
    pos, neg = ik.default_concepts(model)
    cal_ids, cal_prompts = ik.default_prompts(model, "calibration")
    held_ids, held_prompts = ik.default_prompts(model, "heldout")
    print(f"{'method':<22} {'c*':>8} {'alpha':>6} {'KL p95':>8} {'died':>5} {'n':>4}")
    for method in ("mean_diff", "pca", "directional_ablation"):
        vec = ik.extract(model, pos, neg, method=method)
        try:
            cal = ik.calibrate(model, vec, cal_prompts, prompt_ids=cal_ids, window=args.window)
        except ik.CalibrationError as e:  # e.g. ablation may never reach the budget: say so, do not guess
            print(f"{method:<22} uncalibrated: {e}")
            continue
        run = ik.sweep(model, vec, cal, held_prompts, args.out / method, prompt_ids=held_ids,
                       alphas=[float(a) for a in args.alphas.split(",")], window=args.window)
        for r in summary_rows(run):
            print(f"{method:<22} {cal.c_star:>8.4g} {r['alpha']:>6g} {r['kl_p95']:>8.3g} {r['died']:>5} {r['n']:>4}")


if __name__ == "__main__":
    main()

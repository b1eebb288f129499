"""Give several steering methods the same iso-KL budget, then compare what it buys (the tool's reason to exist).

    python demos/compare_methods.py [--model NAME_OR_PATH] [--window 128] [--out runs/compare]

The Python form of `tl-isokl compare`: mean_diff, pca, a cosine-gated mean_diff and directional ablation (plus the
matched-KL null, a random direction of the same norm), each calibrated to p95 per-token KL = 1 nat on the same
calibration prompts and swept on the same held-out prompts. Prints, per spec and alpha, the held-out KL actually
delivered, the deaths, and the concept effect (how the base model reads the steered text, in units of the
concept's own contrastive separation). Each spec is an ordinary run directory under --out.
"""

import argparse
from pathlib import Path

from tl_isokl.compare import run_compare
from tl_isokl.experiment import ExperimentSettings


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--alphas", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = ap.parse_args()

    settings = ExperimentSettings(model=args.model, window=args.window, alphas=args.alphas, figures=False)
    res = run_compare(settings, ["mean_diff", "pca", "mean_diff+soft:0.1", "directional_ablation"], args.out,
                      echo=lambda m: None)
    print(f"{'spec':<22} {'c*':>8} {'alpha':>6} {'KL p95':>8} {'died':>5} {'n':>4} {'effect':>8}  95% CI")
    for r in res["rows"]:
        eff = r.get("effect", float("nan"))
        ci = f"[{r.get('effect_low', float('nan')):.3f}, {r.get('effect_high', float('nan')):.3f}]"
        print(f"{r['spec']:<22} {r['c_star']:>8.4g} {r['alpha']:>6g} {r['kl_p95']:>8.3g} {r['died']:>5} {r['n']:>4} "
              f"{eff:>8.3f}  {ci}")
    print(f"table and figures: {args.out / 'compare.md'}")


if __name__ == "__main__":
    main()

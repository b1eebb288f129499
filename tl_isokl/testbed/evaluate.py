"""Measure the numbers recorded in the test bed's model card. Deterministic (greedy), CPU, a few minutes.

    python -m tl_isokl.testbed.evaluate --out testbed_eval.json [--model tl_isokl/testbed/model]

Reports: held-out answer accuracy after a full greedy rollout; probe mass at forks along those rollouts (how
often >= 0.9); thinking lengths; repetition; whether the model ever writes the probe text itself; what
cheerful/gloomy steering does to the text; and the calibrate + sweep picture (survival per alpha).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter

import numpy as np
import torch

from tl_isokl.testbed import corpus as C
from tl_isokl.testbed.mood import phrase_counts

ANSWER = re.compile(r'</think>\{"value": (true|false)\}')


def repetition(text: str) -> dict:
    """Share of the most frequent line among thinking lines, and distinct-4-gram ratio over words."""
    lines = [ln.strip() for ln in text.split("</think>")[0].split("\n") if ln.strip()]
    share = Counter(lines).most_common(1)[0][1] / len(lines) if lines else 0.0
    words = text.split()
    grams = [tuple(words[i: i + 4]) for i in range(max(0, len(words) - 3))]
    distinct = len(set(grams)) / len(grams) if grams else 1.0
    return {"top_line_share": share, "distinct_4gram": distinct}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded test bed)")
    ap.add_argument("--out", default="testbed_eval.json")
    ap.add_argument("--window", type=int, default=256, help="calibration/sweep window")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tl_isokl.calibrate import calibrate
    from tl_isokl.extract import default_layer, extract
    from tl_isokl.model import load_model
    from tl_isokl.probe import probe
    from tl_isokl.rollout import rollout
    from tl_isokl.sweep import summary_rows, sweep

    t0 = time.time()
    model = load_model(args.model, device="cpu")
    splits = C.make_splits()
    held = splits.heldout
    n_ctx = int(model.cfg.n_ctx)
    full_window = n_ctx - 40
    res: dict = {"model": args.model or "embedded", "n_heldout": len(held)}

    # 1. accuracy, lengths, repetition, probe text leakage: full greedy rollouts at no steering
    rolls = rollout(model, None, [q.prompt for q in held], [0.0] * len(held), window=full_window, batch_size=48)
    answers = [ANSWER.search(r.text) for r in rolls]
    correct = [bool(a) and (a.group(1) == "true") == q.answer for a, q in zip(answers, held)]
    res["accuracy"] = float(np.mean(correct))
    res["answered"] = float(np.mean([bool(a) for a in answers]))
    res["eos_rate"] = float(np.mean([r.eos for r in rolls]))
    lens = [r.length for r in rolls]
    res["rollout_tokens"] = {"min": int(min(lens)), "median": float(np.median(lens)), "max": int(max(lens))}
    reps = [repetition(r.text) for r in rolls]
    res["repetition"] = {"top_line_share_mean": float(np.mean([x["top_line_share"] for x in reps])),
                         "top_line_share_max": float(np.max([x["top_line_share"] for x in reps])),
                         "distinct_4gram_mean": float(np.mean([x["distinct_4gram"] for x in reps]))}
    res["writes_probe_text"] = int(sum("I should answer now" in r.text for r in rolls))

    # 2. probe mass at forks every 8 tokens inside the thinking
    forks = probe(model, None, rolls, schedule=8, batch_size=4)
    pm = np.array([f.pmass for fs in forks for f in fs])
    right = np.array([(f.p_true > f.pmass - f.p_true) == q.answer for fs, q in zip(forks, held) for f in fs])
    res["probe"] = {"n_forks": int(pm.size), "frac_ge_0.9": float((pm >= 0.9).mean()), "min": float(pm.min()),
                    "median": float(np.median(pm)), "probe_accuracy": float(right.mean())}

    # 3. steering: cheerful - gloomy mean_diff at the middle layer, calibrated, then swept
    layer = default_layer(model)
    vec = extract(model, C.concept_prompts("cheerful"), C.concept_prompts("gloomy"), layer=layer)
    cal = calibrate(model, vec, [q.prompt for q in splits.calibration], window=args.window)
    res["calibration"] = {"layer": layer, "c_star": cal.c_star, "achieved_p95": cal.achieved,
                          "converged": cal.converged, "rounds": cal.rounds, "seconds": cal.seconds,
                          "per_prompt_spread": cal.spread()}
    sample = held[:8]
    moods = {}
    for a in (-1.0, 0.0, 1.0, 2.0):
        rs = rollout(model, vec, [q.prompt for q in sample], [a * cal.c_star] * len(sample), window=args.window)
        counts = [phrase_counts(r.text) for r in rs]
        moods[f"{a:g}"] = {m: int(sum(c[m] for c in counts)) for m in ("cheerful", "gloomy")}
        moods[f"{a:g}"]["example"] = rs[0].text[:240]
    res["steering_mood_counts"] = moods
    cald = cal.to_dict()
    cald["prompts"] = [q.prompt for q in splits.calibration]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        run = sweep(model, vec, cald, [q.prompt for q in held], d, window=args.window,
                    alphas=(0, 0.5, 1, 2, 4))
        from tl_isokl.survival import km_curves

        curves = km_curves(run)
        res["sweep"] = [{**{k: v for k, v in r.items()}, "S_end": float(curves[r["alpha"]].at(args.window))}
                        for r in summary_rows(run)]
    res["seconds"] = round(time.time() - t0, 1)
    from tl_isokl.files import atomic_write_json

    atomic_write_json(args.out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""A tour of the Python API on the embedded model: extract, steer, roll out, KL, calibrate, probe.

    python demos/quickstart.py
"""

import numpy as np

import tl_isokl as ik

model = ik.load_model()                                        # embedded test bed, offline
pos, neg = ik.default_concepts(model)                          # cheerful vs gloomy openers
vec = ik.extract(model, pos, neg, method="mean_diff")          # middle layer, last token
print(f"vector: layer {vec.layer}, |v| = {vec.direction.norm():.3f}, sha {vec.sha256[:12]}")

ids, prompts = ik.default_prompts(model, "calibration")
cal = ik.calibrate(model, vec, prompts[:16], window=64)
print(f"c* = {cal.c_star:.4g} (p95 KL {cal.achieved:.3f} nats, {cal.rounds} rounds, spread {cal.spread()})")

_, held = ik.default_prompts(model, "heldout")
for alpha in (0.0, 1.0, 3.0):
    r = ik.rollout(model, vec, held[:1], [alpha * cal.c_star], window=96)[0]
    kl = ik.per_token_kl(model, vec, [r])[0]
    forks = ik.probe(model, vec, [r])[0]
    print(f"\nalpha {alpha}: KL p95 {np.percentile(kl, 95) if kl.size else 0:.3f}, "
          f"min pmass {min(f.pmass for f in forks):.3f}\n{r.text[:300]}")

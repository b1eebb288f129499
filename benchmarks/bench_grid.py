"""The same 4-experiment grid, local engine (1 process, 1 torch thread) vs Ray (2 workers x 1 thread). Asserts nothing.

    python benchmarks/bench_grid.py [--window 32] [--prompts 8] [--alphas 0,1,2] [--json out.json]

Grid: spec mean_diff, pca, directional_ablation, random (the matched-KL null) at the middle layer of the embedded
model; each experiment = calibrate + one sweep cell (all alphas decode together) + merge (tables; no figures).
Reports: wall times and their ratio (target >= 1.7x on 2 cores), the cells' own seconds, and Ray's per-cell overhead
two ways: (2 x Ray wall - sum of the cells' seconds inside the workers) / cells (scheduling, serialisation and idle
time at dependency edges), and the wall per cell of a rerun where every cell is a skip (a task round trip).
The local side runs first, in this process; Ray starts its own 2-CPU local cluster (its start-up is reported
apart). Files of both sides are compared (cells byte-identical).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

SPECS = ("mean_diff", "pca", "directional_ablation", "random")


def write_grid(d: Path, window: int, n: int, alphas: str) -> Path:
    from tl_isokl.testbed.corpus import make_splits

    sp = make_splits()
    (d / "held.txt").write_text("".join(q.prompt.replace("\n", "\\n") + "\n" for q in sp.heldout[:n]))
    (d / "cal.txt").write_text("".join(q.prompt.replace("\n", "\\n") + "\n" for q in sp.calibration[:n]))
    specs = ", ".join(f'"{s}"' for s in SPECS)
    (d / "GRID.toml").write_text(f'spec = [{specs}]\nwindow = {window}\nalphas = [{alphas}]\nprompts = "held.txt"\n'
                                 f'calibration_prompts = "cal.txt"\n[settings]\nfigures = false\n')
    return d / "GRID.toml"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--alphas", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from tl_isokl import grid as G

    root = Path(tempfile.mkdtemp(prefix="bench_grid-"))
    gf = write_grid(root, args.window, args.prompts, args.alphas)
    g = G.parse_grid(gf)

    t = time.perf_counter()
    local = G.run_grid(g, root / "local", echo=print)
    local_wall = time.perf_counter() - t
    assert not local.failed, local.failed

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t
    t = time.perf_counter()
    rres = G.run_grid(G.parse_grid(gf), root / "ray", engine="ray", cpus_per_cell=1, echo=print)
    ray_wall = time.perf_counter() - t
    assert not rres.failed, rres.failed
    t = time.perf_counter()
    again = G.run_grid(G.parse_grid(gf), root / "ray", engine="ray", cpus_per_cell=1)
    skip_wall = time.perf_counter() - t
    ray.shutdown()

    n = len(rres.cells)
    local_cells = sum(c["seconds"] for c in local.cells)
    ray_cells = sum(c["seconds"] for c in rres.cells)
    same = all(filecmp.cmp(p, root / "ray" / p.relative_to(root / "local"), shallow=False)
               for p in (root / "local").rglob("cells/*.jsonl"))
    out = {
        "experiments": len(g.experiments), "cells": n, "window": args.window, "prompts": args.prompts,
        "alphas": args.alphas, "workers": args.workers,
        "local_wall_s": round(local_wall, 2), "ray_wall_s": round(ray_wall, 2), "ray_init_s": round(init_s, 2),
        "speedup": round(local_wall / ray_wall, 3), "speedup_incl_init": round(local_wall / (ray_wall + init_s), 3),
        "local_cell_seconds": round(local_cells, 2), "ray_cell_seconds": round(ray_cells, 2),
        "ray_overhead_per_cell_s": round((args.workers * ray_wall - ray_cells) / n, 3),
        "ray_skip_roundtrip_per_cell_s": round(skip_wall / max(len(again.cells), 1), 3),
        "cells_identical": same,
        "per_cell": {"local": local.cells, "ray": rres.cells},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "per_cell"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

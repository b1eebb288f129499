"""The same 4-experiment grid, local engine (1 process, 1 torch thread) vs Ray (2 workers x 1 thread). Asserts nothing.

    python benchmarks/bench_grid.py [--window 32] [--prompts 8] [--alphas 0,1,2] [--json out.json]

Grid: spec mean_diff, pca, directional_ablation, random (the matched-KL null) at the middle layer of the embedded
model; each experiment = calibrate + one sweep cell (all alphas decode together) + merge (tables; no figures).
Reports: wall times and their ratio (target >= 1.7x on 2 cores), the cells' own seconds, and Ray's per-cell overhead
two ways: (2 x Ray wall - sum of the cells' seconds inside the workers) / cells (scheduling, serialisation and idle
time at dependency edges), and the wall per cell of a rerun where every cell is a skip (a task round trip).
The local side runs first, in this process; Ray starts its own 2-CPU local cluster (its start-up is reported
apart). Files of both sides are compared (cells byte-identical).

Ray starts its workers at nice 15 (`RAY_worker_niceness`) so that its raylet wins the CPU; on a dedicated node that
costs nothing, but on a machine shared with other nice-0 work the workers starve (measured here: each Ray worker
got ~1/3 of a core while the local engine got ~0.9). `--ray-niceness 0` (the default here) starts them at the local
engine's priority, so the comparison is of the engines, not of the scheduler's priorities.
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


def _own_session_cell(cell, *args):
    """A Ray task that first moves its worker into a session of its own (once per worker): with the kernel's
    autogroup scheduling, every process Ray starts shares the raylet's session and so one fair share of the CPU
    against other sessions, whatever the number of workers."""
    import os

    from tl_isokl import grid as G

    try:
        os.setsid()
    except OSError:  # already a session leader (the task ran on this worker before)
        pass
    return G._ray_cell(cell, *args)


def _part(gf: Path, out: Path, part: str) -> None:
    """One local driver on experiments k::n of the grid (the control: n plain processes, sessions of their own)."""
    from tl_isokl import grid as G

    k, n = (int(x) for x in part.split("/"))
    g = G.parse_grid(gf)
    g.experiments = g.experiments[k::n]
    G.run_grid(g, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--alphas", default="0,1,2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--ray-niceness", default="0", help="RAY_worker_niceness for the Ray workers (Ray's own: 15)")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # internal: the control's subprocesses
    ap.add_argument("--grid", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.part:
        return _part(args.grid, args.out, args.part)

    import subprocess
    import sys

    from tl_isokl import grid as G

    root = Path(tempfile.mkdtemp(prefix="bench_grid-"))
    gf = write_grid(root, args.window, args.prompts, args.alphas)
    g = G.parse_grid(gf)

    t = time.perf_counter()
    local = G.run_grid(g, root / "local", echo=print)
    local_wall = time.perf_counter() - t
    assert not local.failed, local.failed

    t = time.perf_counter()  # the control: the same grid split over 2 plain processes, each in its own session
    procs = [subprocess.Popen([sys.executable, __file__, "--part", f"{k}/{args.workers}", "--grid", str(gf),
                               "--out", str(root / "control")], start_new_session=True) for k in range(args.workers)]
    assert all(p.wait() == 0 for p in procs)
    control_wall = time.perf_counter() - t

    import ray

    os.environ["RAY_worker_niceness"] = str(args.ray_niceness)
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
    t = time.perf_counter()
    own = G.run_grid(G.parse_grid(gf), root / "ray_own", engine="ray", cpus_per_cell=1, ray_task=_own_session_cell)
    own_wall = time.perf_counter() - t
    assert not own.failed, own.failed
    ray.shutdown()

    n = len(rres.cells)
    local_cells = sum(c["seconds"] for c in local.cells)
    ray_cells = sum(c["seconds"] for c in rres.cells)
    same = all(filecmp.cmp(p, root / side / p.relative_to(root / "local"), shallow=False)
               for side in ("ray", "ray_own", "control") for p in (root / "local").rglob("cells/*.jsonl"))
    out = {
        "experiments": len(g.experiments), "cells": n, "window": args.window, "prompts": args.prompts,
        "alphas": args.alphas, "workers": args.workers, "ray_worker_niceness": args.ray_niceness,
        "load_average_before": load0,
        "local_wall_s": round(local_wall, 2), "control_2_processes_wall_s": round(control_wall, 2),
        "ray_wall_s": round(ray_wall, 2), "ray_own_session_wall_s": round(own_wall, 2), "ray_init_s": round(init_s, 2),
        "speedup_control": round(local_wall / control_wall, 3),
        "speedup_ray": round(local_wall / ray_wall, 3), "speedup_ray_own_session": round(local_wall / own_wall, 3),
        "speedup_ray_incl_init": round(local_wall / (ray_wall + init_s), 3),
        "local_cell_seconds": round(local_cells, 2), "ray_cell_seconds": round(ray_cells, 2),
        "local_cell_cpu_seconds": round(sum(c["cpu_seconds"] for c in local.cells), 2),
        "ray_cell_cpu_seconds": round(sum(c["cpu_seconds"] for c in rres.cells), 2),
        "ray_own_cell_cpu_seconds": round(sum(c["cpu_seconds"] for c in own.cells), 2),
        "load_average_after": os.getloadavg(),
        "ray_overhead_per_cell_s": round((args.workers * ray_wall - ray_cells) / n, 3),
        "ray_own_overhead_per_cell_s": round((args.workers * own_wall - sum(c["seconds"] for c in own.cells)) / n, 3),
        "ray_skip_roundtrip_per_cell_s": round(skip_wall / max(len(again.cells), 1), 3),
        "cells_identical": same,
        "per_cell": {"local": local.cells, "ray": rres.cells, "ray_own_session": own.cells},
    }
    print(json.dumps({k: v for k, v in out.items() if k != "per_cell"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


load0 = os.getloadavg()

if __name__ == "__main__":
    main()

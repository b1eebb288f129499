"""Smoke runs of the benchmarks (never timed assertions): the baseline and tl-isokl agree, the GPU script runs tiny.

benchmarks/ is not a package; its scripts are imported by path. Both run in this process on the session model.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_quick_baseline_and_tl_isokl_agree(model, vec):
    bvb = _load("bench_vs_baseline")
    cfg = dict(bvb.QUICK)
    base = bvb.run_side("baseline", cfg, 1, model, vec)
    lib = bvb.run_side("tl_isokl", cfg, 1, model, vec)
    cmp = bvb.compare(base, lib)
    assert base["converged"] and lib["converged"]
    assert abs(base["achieved"] - 1.0) <= bvb.TOL and abs(lib["achieved"] - 1.0) <= bvb.TOL
    assert cmp["c_star"]["ok"], cmp["c_star"]
    assert cmp["deaths_ok"], cmp["alphas"]
    assert not cmp["disagreements"], cmp["disagreements"]
    assert any(a["died_baseline"] for a in cmp["alphas"]) and not all(
        a["died_baseline"] == a["n"] for a in cmp["alphas"]), "the quick workload should have deaths and survivors"
    text = bvb.report(base, lib, cmp, cfg)
    assert text.splitlines()[-1].startswith("ratio (baseline / tl-isokl")
    for s in bvb.STAGES + ("total",):
        assert base["times"][s] > 0 and lib["times"][s] > 0


@pytest.mark.slow
def test_gpu_script_runs_tiny_on_cpu(tmp_path, capsys):
    gpu = _load("bench_gpu")
    res = gpu.main(["--tiny", "--json", str(tmp_path / "gpu.json")])
    assert res["cells_timed"] == len(res["alphas"]) == 8
    assert not [n for n in res["notes"] if "whole window" in n], res["notes"]  # EOS disabled: every row full
    for k in ("rollout", "kl", "probe"):
        st = res["stages"][k]
        assert st["seconds"] > 0 and st["floor"] > 0 and math.isfinite(st["per_figure_s"])
    assert res["stages"]["rollout"]["tokens"] == 8 * 3 * 32
    assert "the figure's work" in capsys.readouterr().out


def test_floor_arithmetic():
    """The floors on the real shape: weights + KV bytes per decode step, FLOPs of a teacher-forced pass."""
    from types import SimpleNamespace

    gpu = _load("bench_gpu")
    cfg = SimpleNamespace(hidden_size=2048, num_hidden_layers=16, vocab_size=100352, intermediate_size=8192,
                          num_attention_heads=16, num_key_value_heads=16)
    pc = gpu.param_counts(cfg)
    assert 1.07e9 < pc["non_embedding"] < 1.08e9 and pc["lm_head"] == 100352 * 2048
    one = gpu.floor_decode(pc, [20], 2, 2, 2, 4.8e12, 989e12)  # one decode step, batch 1, context 21
    want = ((pc["non_embedding"] + pc["lm_head"]) * 2 + 2 * 16 * 2048 * 2 * 21) / 4.8e12
    assert math.isclose(one["decode_seconds"], want, rel_tol=1e-9)
    tf = gpu.floor_teacher_forced(pc, [100], 0, 1e12)
    assert math.isclose(tf["flops"], 2 * pc["non_embedding"] * 100 + 4 * 16 * 2048 * 5050)


def test_cpu_floor_arithmetic():
    """bench_vs_baseline's two CPU floors on a hand-worked example: 2 prompts (3 and 5 tokens) at alphas 0 and 1,
    rollouts of 10, 6, 8 and 4 tokens, 7 forks; calibration 3 doses of 20 tokens over 4 prompt tokens."""
    bvb = _load("bench_vs_baseline")
    rows = {"0": [{"id": "a", "length": 10, "forks": [1, 2]}, {"id": "b", "length": 6, "forks": [1]}],
            "1": [{"id": "a", "length": 8, "forks": [1, 2, 3]}, {"id": "b", "length": 4, "forks": [1]}]}
    lib = {"prompt_tokens": {"a": 3, "b": 5}, "cells": rows, "cal_tokens_per_dose": 20.0, "cal_prompt_tokens": 4,
           "doses": 3}
    thr = {"decode_tok_s": 100.0, "tf_tok_s": 1000.0, "dose_decode_tok_s": 40.0}
    fl = bvb.cpu_floor(lib, thr, doses=2, prefill_len=5)
    assert math.isclose(fl["rollout"], 28 / 100)  # every alpha's generated tokens at the batched decode rate
    assert math.isclose(fl["kl"], (3 + 8 + 5 + 4) / 1000)  # alpha 0 needs no base pass
    assert math.isclose(fl["probe"], 7 * 5 / 1000)
    assert math.isclose(fl["calibration"], 2 * 20 / 100 + 2 * 24 / 1000)
    assert math.isclose(fl["total"], 0.28 + 0.02 + 0.035 + 0.448)
    seq = fl["sequential"]  # tl-isokl's own 3 doses, each at the rate of one dose's batch
    assert seq["doses"] == 3 and math.isclose(seq["calibration"], 3 * 20 / 40 + 3 * 24 / 1000)
    assert math.isclose(seq["total"], 0.28 + 0.02 + 0.035 + 1.572)

"""The figure's work on a randomly initialised OLMo-2-0425-1B-shaped model: time per stage beside its hardware floor.

    python benchmarks/bench_gpu.py                         # GPU: 16 layers, d 2048, vocab 100352, bf16, window 4096,
                                                           # 24 prompts x 8 alphas, EOS never produced
    python benchmarks/bench_gpu.py --max-cells 2           # time 2 of the 8 alpha cells and extrapolate (short GPU lease)
    python benchmarks/bench_gpu.py --no-native-attention --no-fastpath   # TransformerLens's own bridge path
    python benchmarks/bench_gpu.py --no-batch-alphas       # one alpha cell at a time, the probe after each decode
    python benchmarks/bench_gpu.py --grow-cache            # rollouts through tl_isokl.acceleration.growing_cache
    python benchmarks/bench_gpu.py --tiny                  # 2 layers, d 64, window 32, 3 prompts, CPU: seconds (smoked)

No download: the model is `transformers.Olmo2Config` at OLMo-2-0425-1B's shape (16 layers, d_model 2048, 16 heads,
MLP 8192, vocab 100352, RoPE theta 5e5; context raised to window + 512 so a 4096-token window fits after the prompt),
initialised at random on the target device, saved with `save_pretrained` into a temporary folder with the
test bed's tokenizer files (995 tokens; the embedding is padded to 100352 rows, ids past the tokenizer decode to
nothing), and loaded through `tl_isokl.load_model` like any local folder, with its defaults (native attention and
the bridge fast path of `tl_isokl.acceleration`; `--no-native-attention` / `--no-fastpath` switch them off). EOS
is disabled by construction: the lm_head rows of the EOS ids are zero, so EOS's logit is exactly 0 while the greedy
winner among ~100k random logits is always positive; every row runs the whole window (checked and printed).

Stages, as `tl-isokl sweep` runs them (default, `--batch-alphas`): every timed alpha's rows in one decode batch
(halved on CUDA out-of-memory, and said so), each row's fork probe scored inside the decode as the row leaves,
against its KV cache (`rollout(probe=...)`; its time is taken out of the rollout's and reported as the probe's), then
per alpha the per-token KL (the base teacher-forced pass only, batch 32). `--no-batch-alphas`: one alpha cell at a
time (rollout batch `--roll-batch`), the packed probe after each decode (batch 8). Optional calibration
(`--calibrate`, at `--cal-window`); by default the dose is a fixed c* (timing does not depend on it).

Floors (beside each measured time; both hardware numbers are flags, H200 defaults):
    decode    per step max(bytes / bandwidth, FLOPs / peak); bytes = every weight except the embedding (the
              lm_head included) + the KV cache read at that step (2 x layers x rows x context x kv width); summed
              over the steps of the window; the prefill as a teacher-forced pass
    teacher-forced (KL, probe)   FLOPs / peak: 2 x non-embedding params x tokens + causal attention
              (2 x layers x d_attn x T^2 per sequence; the probe's packed mask counts only allowed pairs) + the
              head (2 x d x vocab) at every scored position. This is the floor of the work *as the library does it*
              (the KL's base pass; the probe's fork segments against the cached prefix, or with
              `--no-batch-alphas` the packed re-forward of prompt + rollout).
Memory: torch.cuda.max_memory_allocated per stage on CUDA; peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)

# OLMo-2-0425-1B (allenai/OLMo-2-0425-1B config.json): hidden 2048, 16 layers, 16 heads (no GQA), MLP 8192,
# vocab 100352, rope_theta 500000, rms_norm_eps 1e-6, untied embeddings
SHAPES = {
    "olmo2-1b": dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=16, num_key_value_heads=16,
                     intermediate_size=8192, vocab_size=100352, rope_theta=500000.0),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128, vocab_size=1024, rope_theta=500000.0),
}


# ------------------------------------------------------------------------------------------------ model folder
def build_model_folder(folder: Path, shape: dict, max_pos: int, device: str, dtype, seed: int = 0) -> Path:
    """A random Olmo2ForCausalLM at `shape`, EOS rows of lm_head zeroed, saved with the test bed's tokenizer."""
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    from tl_isokl.model import embedded_model_path

    shape = dict(shape)
    theta = shape.pop("rope_theta")
    cfg = Olmo2Config(**shape, max_position_embeddings=max_pos, rms_norm_eps=1e-6, attention_bias=False,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=1,
                      rope_parameters={"rope_theta": theta, "rope_type": "default"})
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where it will run: a 1.5B-parameter init on one CPU thread is slow
        model = Olmo2ForCausalLM(cfg)
    model = model.to(dtype).eval()
    eos = {int(cfg.eos_token_id)}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
    with torch.no_grad():
        for e in eos:
            model.lm_head.weight[e].zero_()  # logit exactly 0; never the argmax of ~V random logits
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    src = embedded_model_path()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, folder / f)
    del model
    return folder


# ------------------------------------------------------------------------------------------------ floors
def param_counts(cfg) -> dict:
    d, L, V, ff = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * ff + (q + kv) + 2 * d
    return {"layer": per_layer, "non_embedding": L * per_layer + d, "lm_head": V * d, "embedding": V * d,
            "d_attn": q, "kv_width": kv, "layers": L, "d": d, "vocab": V}


def floor_teacher_forced(pc: dict, seq_lens, scored: int, peak: float, pairs=None) -> dict:
    """FLOPs / peak of teacher-forced forwards over sequences of `seq_lens` tokens with `scored` head positions.
    `pairs`: attended (query, key) pairs per sequence when not plain causal (the probe's packed mask)."""
    toks = sum(seq_lens)
    att_pairs = sum(pairs) if pairs is not None else sum(t * (t + 1) / 2 for t in seq_lens)
    flops = 2 * pc["non_embedding"] * toks + 4 * pc["layers"] * pc["d_attn"] * att_pairs \
        + 2 * pc["d"] * pc["vocab"] * scored
    return {"flops": flops, "seconds": flops / peak, "tokens": toks}


def floor_decode(pc: dict, prompt_lens, steps: int, wbytes: int, kvbytes: int, bw: float, peak: float) -> dict:
    """Sum over decode steps of max(bytes / bandwidth, FLOPs / peak) for one batch of rows decoded together,
    plus the prefill as a teacher-forced pass."""
    B = len(prompt_lens)
    w = (pc["non_embedding"] + pc["lm_head"]) * wbytes
    kv_tok = 2 * pc["layers"] * pc["kv_width"] * kvbytes
    P = sum(prompt_lens)
    total = 0.0
    byts = 0.0
    for s in range(1, steps):  # the first token comes from the prefill
        ctx = P + B * s
        b = w + kv_tok * ctx
        f = 2 * (pc["non_embedding"] + pc["lm_head"]) * B + 4 * pc["layers"] * pc["d_attn"] * ctx
        total += max(b / bw, f / peak)
        byts += b
    pre = floor_teacher_forced(pc, prompt_lens, B, peak)
    return {"seconds": total + pre["seconds"], "bytes": byts, "decode_seconds": total}


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KB -> GB (process RSS)


def with_oom_retry(fn, batch: int, notes: list, what: str):
    """Call fn(batch); on CUDA out-of-memory halve the batch and retry (recorded in notes)."""
    import torch

    while True:
        try:
            return fn(batch), batch
        except torch.cuda.OutOfMemoryError:
            if batch <= 1:
                raise
            torch.cuda.empty_cache()
            notes.append(f"{what}: CUDA out of memory at batch {batch}, retried at {batch // 2}")
            batch //= 2


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import tl_isokl as ik
    from tl_isokl.model import model_info
    from tl_isokl.probe import PREFILL, AnswerProbe
    from tl_isokl.rollout import grid
    from tl_isokl.tokens import encode

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[args.dtype]
    shape = SHAPES[args.shape]
    timer = Timer(args.device)
    tmp = None
    folder = Path(args.model_dir) if args.model_dir else None
    t0 = time.perf_counter()
    if folder is None or not (folder / "config.json").is_file():
        if folder is None:
            tmp = tempfile.mkdtemp(prefix="tl_isokl_gpu_bench_")
            folder = Path(tmp) / "model"
        build_model_folder(folder, shape, args.window + 512, args.device, dtype, seed=args.seed)
    build_s = time.perf_counter() - t0
    notes: list[str] = []
    try:
        t0 = time.perf_counter()
        model = ik.load_model(str(folder), device=args.device, dtype=args.dtype,
                              native_attention=args.native_attention, fast_path=args.fastpath)
        load_s = time.perf_counter() - t0
        sys.path.insert(0, str(HERE))
        if args.grow_cache:
            from investigate_speed import patched_dynamic_cache

            cache_ctx = patched_dynamic_cache()
            cache_ctx.__enter__()
        vec = ik.extract(model, *ik.default_concepts(model))
        pc = param_counts(model.original_model.config)
        ids, prompts = ik.default_prompts(model, "heldout")
        reps = math.ceil(args.prompts / len(prompts))
        prompts, ids = (prompts * reps)[: args.prompts], [f"{i}-{k}" for k in range(reps) for i in ids][: args.prompts]
        alphas = list(args.alphas)
        cells = alphas[: args.max_cells] if args.max_cells else alphas
        wbytes = torch.finfo(dtype).bits // 8
        plens = [len(encode(model, p)) for p in prompts]
        seg = len(encode(model, PREFILL + "true", bos=False))
        res = {"device": _device_name(args.device), "dtype": args.dtype, "shape": args.shape,
               "params": pc, "window": args.window, "prompts": len(prompts), "alphas": alphas,
               "cells_timed": len(cells), "native_attention": bool(args.native_attention),
               "attention": model_info(model)["attention"], "fastpath": model_info(model)["fast_path"],
               "grow_cache": bool(args.grow_cache),
               "batch_alphas": bool(args.batch_alphas), "build_s": build_s, "load_s": load_s,
               "bandwidth": args.bandwidth, "peak_flops": args.peak_flops, "stages": {}, "notes": notes}
        st = {k: {"seconds": 0.0, "floor": 0.0, "tokens": 0, "peak_gb": 0.0} for k in ("rollout", "kl", "probe")}

        if args.calibrate:
            _, cal_prompts = ik.default_prompts(model, "calibration")
            timer.reset_peak()
            timer.sync()
            t0 = time.perf_counter()
            try:
                cal = ik.calibrate(model, vec, cal_prompts[:8], window=args.cal_window)
                res["calibration"] = {"c_star": cal.c_star, "doses": len(cal.history), "rounds": cal.rounds}
            except Exception as e:  # a random model may not reach the target: report, keep the fixed dose
                res["calibration"] = {"error": str(e).splitlines()[0][:200]}
            timer.sync()
            res["calibration"].update(seconds=time.perf_counter() - t0, peak_gb=timer.peak_gb(),
                                      window=args.cal_window)

        c_star = args.c_star
        rolls_by_cell = {}
        probes_by_cell = {}
        if args.batch_alphas:
            P, C, I = grid(prompts, [a * c_star for a in cells], ids)
            timer.reset_peak()
            timer.sync()
            t0 = time.perf_counter()
            tm: dict = {}

            def decode(b):
                tm.clear()  # a retried decode counts once
                return ik.rollout(model, vec, P, C, prompt_ids=I, window=args.window, batch_size=b,
                                  return_final=True, probe=AnswerProbe(), timings=tm)
            (rolls, finals, forks), _ = with_oom_retry(decode, len(P), notes, "rollout")
            timer.sync()
            st["rollout"]["seconds"] = time.perf_counter() - t0 - tm.get("probe_wall", 0.0)
            st["probe"]["seconds"] = tm.get("probe_wall", 0.0)  # inside the decode (wall, synchronised around)
            st["rollout"]["peak_gb"] = st["probe"]["peak_gb"] = timer.peak_gb()
            n = len(prompts)
            for k, a in enumerate(cells):
                rolls_by_cell[a] = rolls[k * n: (k + 1) * n], finals[k * n: (k + 1) * n]
                probes_by_cell[a] = forks[k * n: (k + 1) * n]
            # floor: all rows in one decode batch
            fl = floor_decode(pc, plens * len(cells), args.window, wbytes, wbytes, args.bandwidth, args.peak_flops)
            st["rollout"]["floor"] = fl["seconds"]
        for a in cells:
            P, C, I = grid(prompts, [a * c_star], ids)
            if not args.batch_alphas:
                timer.reset_peak()
                timer.sync()
                t0 = time.perf_counter()
                (rolls, finals), _ = with_oom_retry(lambda b: ik.rollout(model, vec, P, C, prompt_ids=I,
                                                                         window=args.window, batch_size=b,
                                                                         return_final=True),
                                                    args.roll_batch, notes, "rollout")
                timer.sync()
                st["rollout"]["seconds"] += time.perf_counter() - t0
                st["rollout"]["peak_gb"] = max(st["rollout"]["peak_gb"], timer.peak_gb())
                st["rollout"]["floor"] += _decode_floor_batched(pc, plens, args.roll_batch, args.window, wbytes,
                                                                args.bandwidth, args.peak_flops)
                rolls_by_cell[a] = rolls, finals
            rolls, finals = rolls_by_cell[a]
            st["rollout"]["tokens"] += sum(r.length for r in rolls)
            full = sum(r.length == args.window and not r.eos for r in rolls)
            if full != len(rolls):
                notes.append(f"alpha {a:g}: only {full}/{len(rolls)} rows ran the whole window")
            timer.reset_peak()
            timer.sync()
            t0 = time.perf_counter()
            # as the sweep does: the steered side from the decode's final residuals, one base pass (none at alpha 0)
            kls, kb = with_oom_retry(lambda b: ik.per_token_kl(model, vec, rolls, batch_size=b, final=finals),
                                     args.kl_batch, notes, "kl")
            args.kl_batch = kb
            timer.sync()
            st["kl"]["seconds"] += time.perf_counter() - t0
            st["kl"]["peak_gb"] = max(st["kl"]["peak_gb"], timer.peak_gb())
            seqs = [len(r.prompt_tokens) + r.length for r in rolls] if a != 0 else []
            scored = 2 * sum(r.length for r in rolls) if a != 0 else 0  # both sides go through the head
            st["kl"]["floor"] += floor_teacher_forced(pc, seqs, scored, args.peak_flops)["seconds"]
            st["kl"]["tokens"] += scored // 2
            if a in probes_by_cell:  # scored inside the decode
                probes = probes_by_cell[a]
            else:
                timer.reset_peak()
                timer.sync()
                t0 = time.perf_counter()
                probes, pb = with_oom_retry(lambda b: ik.probe(model, vec, rolls, batch_size=b), args.probe_batch,
                                            notes, "probe")
                args.probe_batch = pb
                timer.sync()
                st["probe"]["seconds"] += time.perf_counter() - t0
                st["probe"]["peak_gb"] = max(st["probe"]["peak_gb"], timer.peak_gb())
            lens, pairs, nsc, nforks = [], [], 0, 0
            for r, fk in zip(rolls, probes):
                T = len(r.prompt_tokens) + r.length
                # inside the decode only the segments go through the model, attending to the cached prefix
                T_fwd = 0 if a in probes_by_cell else T
                L_ = T_fwd + 2 * seg * len(fk)
                pr = T_fwd * (T_fwd + 1) / 2 + sum(2 * (seg * (len(r.prompt_tokens) + f.t) + seg * (seg + 1) / 2)
                                                   for f in fk)
                lens.append(L_)
                pairs.append(pr)
                nsc += 2 * len(fk)  # one scored answer token per variant on this tokenizer (at least)
                nforks += len(fk)
            st["probe"]["floor"] += floor_teacher_forced(pc, lens, nsc, args.peak_flops, pairs)["seconds"]
            st["probe"]["tokens"] += sum(lens)
            st["probe"]["forks"] = st["probe"].get("forks", 0) + nforks
        scale = len(alphas) / len(cells)
        for k, v in st.items():
            v["per_figure_s"] = v["seconds"] * scale
            v["per_figure_floor_s"] = v["floor"] * scale
        res["stages"] = st
        res["extrapolated_x"] = scale
        res["figure_s"] = sum(v["per_figure_s"] for v in st.values())
        res["figure_floor_s"] = sum(v["per_figure_floor_s"] for v in st.values())
        res["peak_gb"] = max(v["peak_gb"] for v in st.values())
        return res
    finally:
        if args.grow_cache and "cache_ctx" in locals():
            cache_ctx.__exit__(None, None, None)
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _decode_floor_batched(pc, plens, batch, window, wbytes, bw, peak) -> float:
    """The decode floor when rows go through in batches of `batch` (weights re-read per batch)."""
    return sum(floor_decode(pc, plens[i: i + batch], window, wbytes, wbytes, bw, peak)["seconds"]
               for i in range(0, len(plens), batch))


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})"


def report(res: dict) -> str:
    pc = res["params"]
    L = [f"{res['device']}; model {res['shape']} ({pc['non_embedding'] / 1e9:.3g} B non-embedding + "
         f"{(pc['lm_head'] + pc['embedding']) / 1e9:.3g} B embedding/head params), {res['dtype']} weights, fp32 "
         f"log-softmax; window {res['window']}; {res['prompts']} prompts x {len(res['alphas'])} alphas; attention "
         f"{res.get('attention', 'bridge')}"
         f" ({'TransformerLens eager' if res.get('attention', 'bridge') == 'bridge' else 'HF kernel'})"
         f"{'; bridge fast path' if res.get('fastpath') else ''}{'; copy-free KV cache' if res.get('grow_cache') else ''}"
         f"; rollouts "
         f"{'all alphas in one batch' if res['batch_alphas'] else 'one alpha cell at a time'}",
         f"floors: bandwidth {res['bandwidth'] / 1e12:.2f} TB/s, peak {res['peak_flops'] / 1e12:.0f} TFLOP/s (flags)"]
    if res["cells_timed"] != len(res["alphas"]):
        L.append(f"timed {res['cells_timed']} of {len(res['alphas'])} alpha cells; per-figure columns are x"
                 f"{res['extrapolated_x']:.2f} (every cell does the same work: EOS is disabled)")
    if "calibration" in res:
        c = res["calibration"]
        L.append(f"calibration (window {c['window']}, 8 prompts): {c['seconds']:.1f} s, peak {c['peak_gb']:.2f} GB; "
                 + (f"c* {c['c_star']:.4g}, {c['doses']} doses in {c['rounds']} rounds" if "c_star" in c
                    else f"did not converge: {c['error']}"))
    L.append(f"{'stage':<8} {'measured s':>11} {'floor s':>9} {'x floor':>8} {'figure s':>9} {'fig floor':>9} "
             f"{'tokens/s':>10} {'floor tok/s':>11} {'peak GB':>8}")
    for k, v in res["stages"].items():
        tps = v["tokens"] / v["seconds"] if v["seconds"] else float("nan")
        ftps = v["tokens"] / v["floor"] if v["floor"] else float("nan")
        L.append(f"{k:<8} {v['seconds']:11.2f} {v['floor']:9.3f} {v['seconds'] / v['floor']:7.1f}x "
                 f"{v['per_figure_s']:9.1f} {v['per_figure_floor_s']:9.2f} {tps:10,.0f} {ftps:11,.0f} "
                 f"{v['peak_gb']:8.2f}")
    probe_what = ("fork segments scored inside the decode against the KV cache" if res["batch_alphas"]
                  else "packed tokens (rollout re-forwarded)")
    L.append(f"tokens: rollout = generated, kl = scored (steered side from the decode, one base pass; none at "
             f"alpha 0), probe = {probe_what} ({res['stages']['probe'].get('forks', 0)} forks)")
    for n in res["notes"]:
        L.append(f"note: {n}")
    L.append(f"the figure's work (rollout + KL + probe, {len(res['alphas'])} alphas): {res['figure_s']:.1f} s "
             f"measured{' (extrapolated)' if res['cells_timed'] != len(res['alphas']) else ''}, floor "
             f"{res['figure_floor_s']:.2f} s: {res['figure_s'] / res['figure_floor_s']:.1f}x the floor; "
             f"peak {res['peak_gb']:.2f} GB")
    return "\n".join(L)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="2 layers, d 64, window 32, 3 prompts, CPU float32")
    ap.add_argument("--device")
    ap.add_argument("--dtype", choices=("bfloat16", "float32", "float16"))
    ap.add_argument("--window", type=int)
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--alphas", type=lambda s: tuple(float(a) for a in s.split(",")), default=ALPHAS)
    ap.add_argument("--max-cells", type=int, default=0, help="time only the first N alpha cells, extrapolate")
    ap.add_argument("--c-star", type=float, default=1.0, help="fixed dose unit (timing does not depend on it)")
    ap.add_argument("--calibrate", action="store_true", help="also time a calibration on 8 prompts")
    ap.add_argument("--cal-window", type=int, default=256)
    ap.add_argument("--roll-batch", type=int, default=32)
    ap.add_argument("--kl-batch", type=int, default=32)
    ap.add_argument("--probe-batch", type=int, default=8)
    ap.add_argument("--batch-alphas", action=argparse.BooleanOptionalAction, default=True,
                    help="all alphas' rows in one decode batch with the probe inside it (the sweep's path; default)")
    ap.add_argument("--native-attention", action=argparse.BooleanOptionalAction, default=True,
                    help="HF's attention kernel under the bridge (load_model's default)")
    ap.add_argument("--fastpath", action=argparse.BooleanOptionalAction, default=True,
                    help="the bridge fast path (load_model's default)")
    ap.add_argument("--grow-cache", action="store_true", help="rollouts through acceleration.growing_cache()")
    ap.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s (H200 HBM3e: 4.8e12)")
    ap.add_argument("--peak-flops", type=float, default=989e12, help="FLOP/s (H200 bf16 dense: ~989e12)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", help="reuse (or create and keep) the random model folder here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary model folder")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    args.shape = "tiny" if args.tiny else "olmo2-1b"
    if args.device is None:
        import torch

        args.device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if args.dtype is None:
        args.dtype = "float32" if args.tiny or args.device == "cpu" else "bfloat16"
    if args.window is None:
        args.window = 32 if args.tiny else 4096
    if args.prompts is None:
        args.prompts = 3 if args.tiny else 24
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    res = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(report(res))
    return res


if __name__ == "__main__":
    main()

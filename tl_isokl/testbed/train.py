"""Train the embedded test-bed model from scratch: tokenizer, corpus, OLMo-2 weights. Deterministic given --seed.

    python -m tl_isokl.testbed.train --out tl_isokl/testbed/model

CI never runs this: the weights it wrote ship in `tl_isokl/testbed/model/`. The budget is a fixed number of
optimizer steps (not wall-clock), so the result is the same on a fast or a busy machine; on an idle 2-core CPU
the default 600 steps take about 18 minutes (see the model card for the measured run). Training talks to the Hugging Face
model class directly (not through the bridge) because it is faster and the bridge adds nothing to a plain
next-token loss.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch

from tl_isokl.testbed import corpus as C

SEQ_LEN = 1024


def model_config(vocab_size: int) -> dict:
    return dict(
        architectures=["Olmo2ForCausalLM"],
        model_type="olmo2",
        vocab_size=vocab_size,
        hidden_size=192,
        intermediate_size=640,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=SEQ_LEN,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        attention_dropout=0.0,
    )


def tokenizer_corpus(splits: C.Splits, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        q = splits.train[i % len(splits.train)]
        p, c = C.natural_example(q, rng.choice(C.MOODS), rng)
        texts.append(p + c)
    texts.append(C.PROBE_PREFILL + "true}" + C.PROBE_PREFILL + "false}")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[C.EOS, C.PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=C.EOS, eos_token=C.EOS, pad_token=C.PAD, model_max_length=SEQ_LEN
    )
    fast.save_pretrained(out)
    return fast


def encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def probe_answer_ids(tok, value: bool) -> tuple[list[int], int]:
    """Ids of prefill+answer tokenized together, and how many leading ids belong to the prefill alone (the
    longest common prefix), so the prefill can be masked out of the loss exactly as the probe scores it."""
    pre = encode(tok, C.PROBE_PREFILL)
    both = encode(tok, C.PROBE_PREFILL + C.answer_text(value))
    k = 0
    while k < min(len(pre), len(both)) and pre[k] == both[k]:
        k += 1
    return both, k


ANSWER_WEIGHT = 5.0  # loss weight of answer tokens: few per example, and the whole point of the test bed


def cut_point(rng: random.Random, n: int) -> int:
    """Where a probe example splices the prefill: half uniform over the thinking, half log-uniform, matching the
    sweep's 0, 1, 2, 4, 8, ... fork schedule (early forks sit in the first line, rare under a uniform cut)."""
    if rng.random() < 0.5:
        return rng.randint(0, n)
    return min(n, int(2 ** rng.uniform(0, math.log2(n + 1))) - 1)


def make_example(tok, q: C.Question, rng: random.Random, p_probe: float
                 ) -> tuple[list[int], list[int], list[float]]:
    """(input ids, labels, loss weights) for one example; labels are -100 where no loss is taken (prompt,
    probe prefill); the answer line and the JSON value weigh ANSWER_WEIGHT."""
    mood = C.sample_mood(q.entity, rng)
    prompt, completion = C.natural_example(q, mood, rng)
    p_ids = [0] + encode(tok, prompt)
    thinking, answer_line = completion.split("\nAnswer (")
    think = encode(tok, thinking)
    if rng.random() < p_probe:
        j = cut_point(rng, len(think))
        ans, k = probe_answer_ids(tok, q.answer)
        ids = p_ids + think[:j] + ans + [0]
        labels = [-100] * len(p_ids) + think[:j] + [-100] * k + ans[k:] + [0]
        weights = [1.0] * (len(p_ids) + j + k) + [ANSWER_WEIGHT] * (len(ans) - k) + [1.0]
    else:
        tail = encode(tok, "\nAnswer (" + answer_line)
        ids = p_ids + think + tail + [0]
        labels = [-100] * len(p_ids) + think + tail + [0]
        weights = [1.0] * (len(p_ids) + len(think)) + [ANSWER_WEIGHT] * len(tail) + [1.0]
    return ids, labels, weights


def packed_batches(tok, questions, batch_size: int, seed: int, p_probe: float):
    """Endless stream of [batch, SEQ_LEN] (inputs, labels, weights): examples packed whole into rows."""
    rng = random.Random(seed)
    pending = None
    while True:
        xs, ys, ws = [], [], []
        for _ in range(batch_size):
            row_x: list[int] = []
            row_y: list[int] = []
            row_w: list[float] = []
            while True:
                if pending is None:
                    pending = make_example(tok, rng.choice(questions), rng, p_probe)
                ex_x, ex_y, ex_w = pending
                if len(ex_x) > SEQ_LEN + 1:
                    pending = None  # rare (a 50-fact thinking full of mood lines): skip, never truncate
                    continue
                if len(row_x) + len(ex_x) > SEQ_LEN + 1:
                    break
                row_x += ex_x
                row_y += ex_y
                row_w += ex_w
                pending = None
            pad = SEQ_LEN + 1 - len(row_x)
            row_x += [1] * pad
            row_y += [-100] * pad
            row_w += [0.0] * pad
            xs.append(row_x[:-1])
            ys.append(row_y[1:])
            ws.append(row_w[1:])
        yield torch.tensor(xs), torch.tensor(ys), torch.tensor(ws)


def weighted_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none")
    w = w.flatten() * (y.flatten() != -100)
    return (ce * w).sum() / w.sum()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of batch x 1024 tokens")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--p-probe", type=float, default=0.3)
    ap.add_argument("--vocab-size", type=int, default=1024)
    args = ap.parse_args(argv)

    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    splits = C.make_splits()
    tok = train_tokenizer(tokenizer_corpus(splits, 3000, args.seed), args.vocab_size, args.out)
    cfg = Olmo2Config(**model_config(len(tok)))
    model = Olmo2ForCausalLM(cfg)
    model.config._attn_implementation = "sdpa"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params/1e6:.2f}M vocab {len(tok)}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    batches = packed_batches(tok, splits.train, args.batch_size, args.seed, args.p_probe)
    # held-out loss on a fixed batch of held-out questions (never trained on)
    val_x, val_y, val_w = next(packed_batches(tok, splits.heldout, 4, args.seed + 1, args.p_probe))

    warmup = 60
    t0 = time.time()
    step, tokens, log = 0, 0, []
    model.train()
    while step < args.steps:
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, w = next(batches)
        loss = weighted_loss(model(input_ids=x).logits, y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += int((x != 1).sum())
        if step % 50 == 0:
            model.eval()
            with torch.no_grad():
                vl = weighted_loss(model(input_ids=val_x).logits, val_y, val_w).item()
            model.train()
            rate = tokens / (time.time() - t0)
            log.append(dict(step=step, loss=round(loss.item(), 4), val_loss=round(vl, 4), lr=lr,
                            seconds=round(time.time() - t0, 1)))
            print(f"step {step} loss {loss.item():.3f} val {vl:.3f} lr {lr:.2e} tok/s {rate:.0f} "
                  f"t {time.time()-t0:.0f}s", flush=True)
    model.eval()
    # fp16 weights keep the package small; loading upcasts to the requested dtype (fp32 by default)
    model = model.to(torch.float16)
    model.config.dtype = "float16"
    model.save_pretrained(args.out, safe_serialization=True)
    meta = dict(seed=args.seed, steps=step, tokens=tokens, seconds=round(time.time() - t0, 1),
                threads=args.threads, batch_size=args.batch_size, seq_len=SEQ_LEN, lr=args.lr,
                p_probe=args.p_probe, params=n_params, log=log)
    tmp = args.out / "training_log.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, args.out / "training_log.json")
    print(f"done: {step} steps, {tokens} tokens, {meta['seconds']} s", flush=True)


if __name__ == "__main__":
    main()

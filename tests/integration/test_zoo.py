"""The architecture zoo: rollouts, per-token KL and the fork probe on tiny random models of many families.

Each family (tests/zoo_models.py) is built at test time, loaded through `tl_isokl.model.load_model`, and checked
against the Hugging Face model itself, loaded separately with `AutoModelForCausalLM` (the bridge mutates the model
it wraps), steered by a plain PyTorch forward hook on the decoder layer's output: no tl-isokl helper on that side.
The windowed families have a sliding window of 8 and rollouts of 32 tokens, so every check crosses the window.
"""

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import zoo_models as Z
import tl_isokl.probe  # noqa: F401  (the package exports a function of the same name)
import tl_isokl.rollout  # noqa: F401  (likewise)
from tl_isokl.errors import ModelLoadError
from tl_isokl.head import check_head, final_logits, head_error
from tl_isokl.kl import per_token_kl
from tl_isokl.probe import AnswerProbe, ProbeSpec, default_forks, probe, probe_forks, probe_reference
from tl_isokl.rollout import rollout
from tl_isokl.steer import Steering
from tl_isokl.tokens import encode
from tl_isokl.vector import Gate, SteeringVector

probe_mod = sys.modules["tl_isokl.probe"]

FAMILIES = ["gpt2", "llama", "qwen3", "olmo2", "mistral", "qwen2", "gemma2", "gemma3", "granite", "cohere",
            "cohere2"]
WINDOWED = {"mistral", "qwen2", "gemma2", "gemma3", "cohere2"}
TRANSFORMED = {"gemma2", "gemma3", "granite", "cohere", "cohere2"}  # an output transform after the unembedding
WINDOW = 32  # generated tokens: 4x the sliding window
LAYER = 0  # steered layer: its change passes through the (windowed) attention of layer 1
PROMPTS = ["Is the sky blue?", "Tom is happy today because the sun", "Once upon a time", "The little fox"]
SCHEDULE = 4  # a fork every 4 tokens: forks on both sides of the window
# a one-token prefill (the prompt stays inside the window of the scored positions) and a multi-token variant
SHORT = ProbeSpec(prefill=":", true_variants=(" true",), false_variants=(" false", "false"))


@pytest.fixture(scope="session")
def zoo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="module", params=FAMILIES)
def zoo(request, zoo_root):
    """One family: the bridge (real loader), an untouched HF copy, a random direction and a dose that matters."""
    from transformers import AutoModelForCausalLM

    from tl_isokl.model import load_model

    family = request.param
    folder = Z.build(family, zoo_root)
    model = load_model(folder, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(1)
    v = torch.randn(int(model.cfg.d_model), generator=g)
    v = v / v.norm()
    name = f"blocks.{LAYER}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([encode(model, PROMPTS[1])]), names_filter=[name])
    dose = 0.5 * float(cache[name][0, 1:].norm(dim=-1).median())  # half the residual norm: KL ~ 1 nat/token
    vec = SteeringVector(direction=v, layer=LAYER)
    P, C = PROMPTS * 2, [0.0] * len(PROMPTS) + [dose] * len(PROMPTS)
    rolls = rollout(model, vec, P, C, window=WINDOW, batch_size=len(P))
    return SimpleNamespace(family=family, folder=folder, model=model, hf=hf, vec=vec, dose=dose, rolls=rolls)


# ---- the independent side: the HF model and a plain forward hook ------------------------------------------------
def hf_layers(hf):
    base = hf.base_model
    return base.layers if hasattr(base, "layers") else base.h


def hf_logits(hf, ids: list[int], coeff: float = 0.0, v: torch.Tensor | None = None, start: int = 0):
    """The HF model's own logits [T, V] (float32), c*v added to decoder layer LAYER's output at positions >= start."""
    def add(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, start:] += coeff * v.to(h.dtype)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    handle = hf_layers(hf)[LAYER].register_forward_hook(add) if coeff else None
    try:
        with torch.no_grad():
            return hf(torch.tensor([ids])).logits[0].float()
    finally:
        if handle is not None:
            handle.remove()


def hf_pmass(hf, spec: ProbeSpec, r, t: int, coeff: float, v, start: int = 0) -> tuple[float, float]:
    """P(true)+P(false) at fork t from the HF model's logits: one forward per answer, token ids spliced by hand."""
    tok = hf_tokenizer(hf)
    pre = tok(spec.prefill, add_special_tokens=False)["input_ids"]
    p_true = p_false = 0.0
    for is_true, variants in ((True, spec.true_variants), (False, spec.false_variants)):
        for ans in variants:
            both = tok(spec.prefill + ans, add_special_tokens=False)["input_ids"]
            k = next(i for i in range(len(both)) if i >= len(pre) or pre[i] != both[i])
            ids = r.prompt_tokens + r.tokens[:t] + both
            lp = torch.log_softmax(hf_logits(hf, ids, coeff, v, start).double(), -1)
            at = len(r.prompt_tokens) + t
            prob = float(torch.exp(sum(lp[at + i - 1, both[i]] for i in range(k, len(both)))))
            p_true, p_false = (p_true + prob, p_false) if is_true else (p_true, p_false + prob)
    return p_true + p_false, p_true


_TOK = {}


def hf_tokenizer(hf):
    from transformers import AutoTokenizer

    key = hf.name_or_path
    if key not in _TOK:
        _TOK[key] = AutoTokenizer.from_pretrained(key)
    return _TOK[key]


def close(a: float, b: float, tol: float = 1e-4) -> bool:
    """Equal to `tol` absolutely and, for the tiny probabilities of random models, relatively (in log space)."""
    if abs(a - b) >= tol:
        return False
    if min(a, b) > 1e-300:
        return abs(np.log(a) - np.log(b)) < tol
    return max(a, b) < 1e-300


def early_stop(rows) -> int:
    """An id some of `rows` write early and some not at all: made an EOS id, rows drop out at different steps."""
    cands = {}
    for r in rows:
        for i, t in enumerate(r.tokens[:WINDOW // 2]):
            cands.setdefault(t, {}).setdefault(r.prompt, i)
    return max(cands, key=lambda t: (0 < len(cands[t]) < len(rows), len(cands[t]), -min(cands[t].values())))


# ---- the tests ------------------------------------------------------------------------------------------------
def test_distributions_are_peaked(zoo):
    """Guards the zoo itself: greedy argmax far from ties, so token-equality checks cannot flake."""
    r = zoo.rolls[0]
    lp = hf_logits(zoo.hf, r.prompt_tokens + r.tokens).softmax(-1)
    assert float(lp.max(-1).values.mean()) > 0.3


def test_head_equals_model_logits(zoo):
    assert head_error(zoo.model) < 1e-6
    with torch.no_grad():
        r = zoo.rolls[-1]
        ids = torch.tensor([r.prompt_tokens + r.tokens])
        name = f"blocks.{int(zoo.model.cfg.n_layers) - 1}.hook_resid_post"
        _, cache = zoo.model.run_with_cache(ids, names_filter=[name])
        mine = final_logits(zoo.model, cache[name])[0].float()
    ref = hf_logits(zoo.hf, r.prompt_tokens + r.tokens)
    assert float((mine - ref).abs().max()) < 1e-4 * (1 + float(ref.abs().max()))


def test_missing_output_transform_is_refused_at_load(zoo, monkeypatch):
    if zoo.family not in TRANSFORMED:
        pytest.skip("plain head")
    import tl_isokl.head as head

    monkeypatch.setattr(head, "output_transform", lambda model: None)
    with pytest.raises(ModelLoadError, match="output head is not supported"):
        check_head(zoo.model, zoo.family)


def test_rollout_is_the_full_forward_argmax_at_every_step(zoo):
    """Unsteered and steered rows (left-padded together in one batch) against uncached HF forwards."""
    assert max(r.length for r in zoo.rolls) == WINDOW
    for r in zoo.rolls:
        ids = r.prompt_tokens + r.tokens
        logits = hf_logits(zoo.hf, ids, r.coeff, zoo.vec.direction)
        P = len(r.prompt_tokens)
        assert logits[P - 1: P - 1 + r.length].argmax(-1).tolist() == r.tokens, (zoo.family, r.coeff)


def test_rows_stopping_at_eos_in_a_batch_equal_their_runs_alone(zoo):
    """The early-exit path: an id the steered rows produce is made an EOS id, so rows leave the batch mid-way."""
    steered = [r for r in zoo.rolls if r.coeff != 0]
    stop = early_stop(steered)
    gen = zoo.model.original_model.generation_config
    old = gen.eos_token_id
    try:
        gen.eos_token_id = [Z.EOS, int(stop)]
        P, C = [r.prompt for r in steered], [r.coeff for r in steered]
        batch = rollout(zoo.model, zoo.vec, P, C, window=WINDOW, batch_size=len(P))
        alone = [rollout(zoo.model, zoo.vec, [p], [c], window=WINDOW)[0] for p, c in zip(P, C)]
    finally:
        gen.eos_token_id = old
    assert any(b.eos and b.length < WINDOW for b in batch)
    assert len({b.length for b in batch}) > 1  # rows left at different steps
    for b, a, r in zip(batch, alone, steered):
        assert b.tokens == a.tokens and b.eos == a.eos
        n = b.length
        assert b.tokens == r.tokens[:n]  # stopping early changes nothing before the stop


@pytest.mark.parametrize("positions,stored", [("all", False), ("generated", False), ("all", True),
                                              ("generated", True)])
def test_per_token_kl_equals_hf_logits(zoo, positions, stored):
    """Both KL paths: two teacher-forced passes, and (stored) the steered side from the residuals the decode kept
    (`rollout(return_final=True)`, what sweep and calibrate use) with one base pass; against the HF model."""
    rolls = zoo.rolls
    final = None
    if stored:
        rolls, final = rollout(zoo.model, zoo.vec, [r.prompt for r in zoo.rolls], [r.coeff for r in zoo.rolls],
                               window=WINDOW, batch_size=len(zoo.rolls), positions=positions, return_final=True)
    kls = per_token_kl(zoo.model, zoo.vec, rolls, batch_size=len(rolls), positions=positions, final=final)
    worst, refs = 0.0, []
    for r, k in zip(rolls, kls):
        if r.coeff == 0:
            assert np.all(k == 0.0)
            continue
        ids, P, n = r.prompt_tokens + r.tokens, len(r.prompt_tokens), r.length
        start = P if positions == "generated" else 0
        ls = torch.log_softmax(hf_logits(zoo.hf, ids, r.coeff, zoo.vec.direction, start).double(), -1)
        lb = torch.log_softmax(hf_logits(zoo.hf, ids).double(), -1)
        ls, lb = ls[P - 1: P - 1 + n], lb[P - 1: P - 1 + n]
        ref = (ls.exp() * (ls - lb)).sum(-1).numpy()
        worst = max(worst, float(np.abs(ref - k).max()))
        refs.append(ref)
    assert np.concatenate(refs).mean() > 0.05  # the dose moves the distribution: the comparison is not 0 == 0
    assert worst < 1e-4, (zoo.family, worst)


def test_packed_probe_equals_reference_and_hf(zoo):
    spec = ProbeSpec()
    rows = [zoo.rolls[0], zoo.rolls[-1]]
    res = probe(zoo.model, zoo.vec, rows, schedule=SCHEDULE)
    n = 0
    for r, forks in zip(rows, res):
        assert [f.t for f in forks] == [t for t, _ in probe_forks(zoo.model, spec, r, default_forks(r, SCHEDULE))]
        assert max(f.t for f in forks) > 2 * Z.WINDOW
        for f in forks:
            ref = probe_reference(zoo.model, zoo.vec, r, f.t)
            pm, pt = hf_pmass(zoo.hf, spec, r, f.t, r.coeff, zoo.vec.direction)
            for a, b in ((f.pmass, ref.pmass), (f.p_true, ref.p_true), (f.pmass, pm), (f.p_true, pt)):
                assert close(a, b), (zoo.family, r.coeff, f.t, a, b)
            n += 1
    assert n >= 10


def test_probe_in_the_decode_equals_reference(zoo, monkeypatch):
    """The probe run inside the decode against its KV cache (4D masks over cache + segments, a mask per layer
    type on the mixed families) on rows leaving at EOS mid-way and at the window: every fork equals
    `probe_reference` (positions "all"; the last forward on copies of the cache rows) and the packed probe
    (positions "generated", checked against HF above; the last forward on the decode's cache itself)."""
    rollout_mod = sys.modules["tl_isokl.rollout"]
    spec = ProbeSpec()
    stop = early_stop([r for r in zoo.rolls if r.coeff != 0])
    gen = zoo.model.original_model.generation_config
    old = gen.eos_token_id
    P, C = [r.prompt for r in zoo.rolls], [r.coeff for r in zoo.rolls]
    ap = AnswerProbe(spec, SCHEDULE)
    try:
        gen.eos_token_id = [Z.EOS, int(stop)]
        monkeypatch.setattr(rollout_mod, "ROOM_SHARE", 0.0)
        rolls, forks = rollout(zoo.model, zoo.vec, P, C, window=WINDOW, batch_size=len(P), probe=ap)
        monkeypatch.setattr(rollout_mod, "ROOM_SHARE", 1e9)
        rolls_g, forks_g = rollout(zoo.model, zoo.vec, P, C, window=WINDOW, batch_size=len(P), probe=ap,
                                   positions="generated")
    finally:
        gen.eos_token_id = old
    assert probe_mod.cache_probe(zoo.model, ap) is not None  # the in-decode path is the one tested here
    assert any(r.eos and r.length < WINDOW for r in rolls) and any(r.length == WINDOW for r in rolls)
    n = 0
    for r, fs in zip(rolls, forks):
        assert [f.t for f in fs] == [t for t, _ in probe_forks(zoo.model, spec, r, default_forks(r, SCHEDULE))]
        for f in fs:
            ref = probe_reference(zoo.model, zoo.vec, r, f.t, spec)
            assert close(f.pmass, ref.pmass) and close(f.p_true, ref.p_true), (zoo.family, r.coeff, f.t)
            n += 1
    assert n >= 20
    packed = probe(zoo.model, zoo.vec, rolls_g, spec=spec, schedule=SCHEDULE, positions="generated")
    for fs, ps in zip(forks_g, packed):
        assert [f.t for f in fs] == [p.t for p in ps]
        for f, p in zip(fs, ps):
            assert close(f.pmass, p.pmass) and close(f.p_true, p.p_true), (zoo.family, "generated", f.t)


def test_probe_positions_generated_equals_hf_hook(zoo):
    """positions="generated": the prompt is unsteered, rollout and spliced segment steered (hook from P on)."""
    spec = SHORT
    r = zoo.rolls[-1]
    res = probe(zoo.model, zoo.vec, [r], spec=spec, schedule=SCHEDULE, positions="generated")[0]
    P = len(r.prompt_tokens)
    differs = False
    for f in res:
        pm, pt = hf_pmass(zoo.hf, spec, r, f.t, r.coeff, zoo.vec.direction, start=P)
        assert close(f.pmass, pm) and close(f.p_true, pt), (zoo.family, f.t, f.pmass, pm)
        pm_all, _ = hf_pmass(zoo.hf, spec, r, f.t, r.coeff, zoo.vec.direction)
        differs |= not close(pm, pm_all, 1e-3)
    assert differs  # steering the prompt or not is visible: the check can tell the two apart


def test_per_fork_fallback_equals_reference(zoo, monkeypatch):
    """The path used where attention cannot be packed (mixed windows and a single-mask model, recurrent layers)."""
    monkeypatch.setattr(probe_mod, "attention_layout",
                        lambda model: probe_mod.AttentionLayout("per_fork", (), "forced by the test"))
    r = zoo.rolls[-1]
    for positions in ("all", "generated"):
        res = probe(zoo.model, zoo.vec, [r], spec=SHORT, schedule=SCHEDULE, positions=positions, batch_size=3)[0]
        P = len(r.prompt_tokens)
        for f in res:
            pm, pt = hf_pmass(zoo.hf, SHORT, r, f.t, r.coeff, zoo.vec.direction,
                              start=P if positions == "generated" else 0)
            assert close(f.pmass, pm) and close(f.p_true, pt), (zoo.family, positions, f.t)


def test_window_matters_to_the_packed_probe(zoo, monkeypatch):
    """Sensitivity: packing without the sliding window (the old behaviour) is visibly wrong on windowed models."""
    layout = probe_mod.attention_layout(zoo.model)
    windows = [w for _, w in layout.masks if w is not None]
    assert bool(windows) == (zoo.family in WINDOWED) and layout.mode == "packed"
    if not windows:
        pytest.skip("no sliding window")
    monkeypatch.setattr(probe_mod, "attention_layout", lambda model: probe_mod.AttentionLayout("packed"))
    r = zoo.rolls[-1]
    res = probe(zoo.model, zoo.vec, [r], schedule=SCHEDULE)[0]
    worst = max(abs(np.log(f.pmass) - np.log(probe_reference(zoo.model, zoo.vec, r, f.t).pmass)) for f in res)
    assert worst > 1e-2


@pytest.mark.parametrize("method,gate", [("mean_diff", None), ("pca", None), ("directional_ablation", None),
                                         ("mean_diff", Gate("soft", 0.1)), ("directional_ablation", Gate("hard"))])
def test_every_method_is_the_identity_at_zero(zoo, method, gate):
    vec = SteeringVector(direction=zoo.vec.direction, layer=LAYER, method=method, gate=gate)
    r = zoo.rolls[-1]
    ids = torch.tensor([r.prompt_tokens + r.tokens])
    with torch.no_grad():
        base = zoo.model(ids)
        with zoo.model.hooks(fwd_hooks=Steering(vec, 0.0).fwd_hooks()):
            zero = zoo.model(ids)
        with zoo.model.hooks(fwd_hooks=Steering(vec, torch.tensor([0.0])).fwd_hooks()):
            zero_rows = zoo.model(ids)
        with zoo.model.hooks(fwd_hooks=Steering(vec, 1.0).fwd_hooks()):
            one = zoo.model(ids)
    assert torch.equal(base, zero) and torch.equal(base, zero_rows)
    assert not torch.equal(base, one)  # and the hook is live: dose 1 changes the logits


def _fake(config, forward_src_class=None, n_layers=2):
    """A stand-in bridge for `attention_layout`: the HF config, and a base model whose class supplies forward."""
    cls = forward_src_class or torch.nn.Identity
    base = cls.__new__(cls)  # only its class is read (the source of forward)
    return SimpleNamespace(original_model=SimpleNamespace(config=config, base_model=base),
                           cfg=SimpleNamespace(n_layers=n_layers))


def test_attention_layout_choices():
    """Config -> strategy, for the cases the zoo cannot load cheaply."""
    import transformers as T
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Model
    from transformers.models.mistral.modeling_mistral import MistralModel

    lay = probe_mod.attention_layout
    mixed = T.Gemma2Config(num_hidden_layers=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    assert lay(_fake(mixed, Gemma2Model)).masks == (("full_attention", None), ("sliding_attention", 8))
    # the same mixed layers on a model whose forward takes one mask only: one forward per fork
    assert lay(_fake(mixed, MistralModel)).mode == "per_fork"
    assert lay(_fake(T.MistralConfig(sliding_window=8), MistralModel)).masks == (("", 8),)
    assert lay(_fake(T.MistralConfig(sliding_window=None), MistralModel)).masks == (("", None),)
    qwen_off = T.Qwen2Config(use_sliding_window=False, sliding_window=8)
    assert lay(_fake(qwen_off)).masks == (("", None),)
    chunked = T.LlamaConfig(num_hidden_layers=2)
    chunked.layer_types = ["chunked_attention", "full_attention"]
    assert lay(_fake(chunked, Gemma2Model)).mode == "per_fork"
    assert lay(_fake(T.MambaConfig())).mode == "per_fork"
    no_window = T.Gemma2Config(num_hidden_layers=2, sliding_window=None,
                               layer_types=["sliding_attention", "full_attention"])
    assert lay(_fake(no_window, Gemma2Model)).mode == "per_fork"

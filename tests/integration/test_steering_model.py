"""Steering on the embedded model, each claim checked against an independent computation (run_with_cache on
unpadded single prompts, hand-written formulas), plus the identities alpha = 0 == base and batch == row by row.

Nothing here depends on model quality: only on the forward being a deterministic function of its inputs.
"""

import pytest
import torch

from tl_isokl.errors import VectorMismatchError
from tl_isokl.extract import extract, residuals
from tl_isokl.steer import gate_values, steer
from tl_isokl.testbed.corpus import concept_prompts
from tl_isokl.vector import Gate, SteeringVector

L = 2  # steered layer; L + 1 exists, so blocks.{L+1}.hook_resid_pre shows what the hook wrote
POST, NEXT_PRE = f"blocks.{L}.hook_resid_post", f"blocks.{L + 1}.hook_resid_pre"
GATES = [None, Gate("soft", 0.1), Gate("hard", 0.0), Gate("sign")]
METHODS = ["mean_diff", "pca", "directional_ablation"]


def ragged_prompts(model, n=4):
    """Prompts of pairwise different token lengths, so batching has to pad."""
    by_len = {}
    for p in concept_prompts("animal") + concept_prompts("machine") + concept_prompts("cheerful"):
        by_len.setdefault(len(model.tokenizer(p).input_ids), p)
    assert len(by_len) >= n, f"need {n} distinct prompt lengths, corpus has {sorted(by_len)}"
    return [by_len[k] for k in sorted(by_len)[:n]]


def ids_of(model, prompt):
    """Tokenised by the bridge's own tokenizer (it prepends BOS itself), independent of tl_isokl.tokens."""
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids
    assert ids[0, 0].item() == model.tokenizer.bos_token_id
    return ids


@pytest.fixture(scope="module")
def sets():
    pos, neg = concept_prompts("cheerful")[:6], concept_prompts("gloomy")[:6]
    return pos, neg


@pytest.fixture(scope="module")
def vectors(model, sets):
    pos, neg = sets
    return {m: extract(model, pos, neg, method=m, layer=L) for m in METHODS}


@pytest.fixture(scope="module")
def batch(model):
    """Four right-padded prompts of different lengths, with mask and position ids (what HF would compute)."""
    prompts = ragged_prompts(model, 4)
    seqs = [ids_of(model, p)[0] for p in prompts]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    pos_ids = torch.arange(T).expand(len(seqs), -1) * mask
    return dict(seqs=seqs, ids=ids, mask=mask, pos=pos_ids)


def fwd(model, b):
    with torch.no_grad():
        return model(b["ids"], attention_mask=b["mask"], position_ids=b["pos"])


# ---- extraction ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["last", "mean"])
def test_mean_diff_equals_hand_mean_difference_from_run_with_cache(model, sets, token):
    pos, neg = sets

    def hand(prompts):
        rows = []
        for p in prompts:  # one prompt at a time, no padding, no mask
            with torch.no_grad():
                _, cache = model.run_with_cache(ids_of(model, p), names_filter=POST)
            r = cache[POST][0]
            rows.append(r[-1] if token == "last" else r[1:].mean(0))  # "mean" skips BOS
        return torch.stack(rows).mean(0)

    expected = hand(pos) - hand(neg)
    got = extract(model, pos, neg, method="mean_diff", layer=L, token=token).direction
    # same tokens, same model; only padding/batching differs: fp32 reduction order, ~1e-6 relative
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_batched_residuals_equal_one_at_a_time(model):
    prompts = ragged_prompts(model, 4)
    layers = [0, L, int(model.cfg.n_layers) - 1]
    batched = residuals(model, prompts, layers, batch_size=3)  # two batches; the first one padded
    for i, p in enumerate(prompts):
        single = residuals(model, [p], layers)
        for layer in layers:
            torch.testing.assert_close(batched[layer][i], single[layer][0], rtol=1e-5, atol=1e-5)


def test_extract_records_provenance(model, sets, vectors):
    v = vectors["mean_diff"]
    assert (v.layer, v.method, v.d_model, v.meta["n_pos"], v.meta["token"]) == (L, "mean_diff", 192, 6, "last")
    assert len(v.meta["prompts_sha256"]) == 64


# ---- the hook's write, seen downstream -------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_next_block_input_is_base_plus_steering(model, vectors, batch, method):
    v = vectors[method]
    coeffs = torch.tensor([0.0, 0.7, -1.3, 0.25])
    names = [f"blocks.{L - 1}.hook_resid_post", POST, NEXT_PRE]
    with torch.no_grad():
        base_logits, base = model.run_with_cache(batch["ids"], attention_mask=batch["mask"],
                                                 position_ids=batch["pos"], names_filter=names)
        with steer(model, v, coeffs):
            st_logits, st = model.run_with_cache(batch["ids"], attention_mask=batch["mask"],
                                                 position_ids=batch["pos"], names_filter=names)
    h, c = base[POST], coeffs.view(-1, 1, 1)
    if v.additive:
        expected = h + c * v.direction
    else:
        r = v.direction / v.direction.norm()
        expected = h - c * torch.einsum("btd,d->bt", h, r).unsqueeze(-1) * r
    torch.testing.assert_close(st[NEXT_PRE], expected, rtol=0, atol=1e-5)
    assert torch.equal(st[names[0]], base[names[0]])  # upstream of the hook: untouched
    assert torch.equal(st_logits[0], base_logits[0])  # the zero-dose row: untouched
    assert (st_logits[1:] - base_logits[1:]).abs().max() > 1e-3  # and the hook did reach the logits


def test_ablation_at_one_zeroes_the_projection_downstream(model, vectors, batch):
    v = vectors["directional_ablation"]
    with torch.no_grad(), steer(model, v, 1.0):
        _, cache = model.run_with_cache(batch["ids"], attention_mask=batch["mask"], position_ids=batch["pos"],
                                        names_filter=NEXT_PRE)
    proj = torch.einsum("btd,d->bt", cache[NEXT_PRE], v.direction)
    assert proj.abs().max() < 1e-4 * cache[NEXT_PRE].norm(dim=-1).max()


# ---- identities -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,gate", [(m, g) for m in METHODS for g in GATES
                                         if m != "directional_ablation" or g is None or g.kind != "sign"],
                         ids=lambda x: x if isinstance(x, str) else "none" if x is None else x.kind)
def test_zero_coefficient_is_bit_identical_to_the_unhooked_model(model, vectors, batch, method, gate):
    base = fwd(model, batch)
    v = vectors[method].with_gate(gate)
    for coeff in (0.0, torch.zeros(len(batch["seqs"]))):
        with steer(model, v, coeff) as s:
            out = fwd(model, batch)
        assert s.position == batch["ids"].shape[1], "the hook never fired: the identity would be vacuous"
        assert torch.equal(out, base)


@pytest.mark.parametrize("method,gate", [("mean_diff", None), ("pca", Gate("soft", 0.05)),
                                         ("directional_ablation", None), ("mean_diff", Gate("sign"))])
def test_batch_coefficients_equal_single_row_runs(model, vectors, batch, method, gate):
    """Row i of one batched, padded forward with coeff [c_0..c_3] == an unpadded forward of prompt i at c_i.

    Tolerance 1e-5 absolute on logits: the rows see the same arithmetic except that padding changes the
    matmul shapes, so BLAS may sum in a different order (fp32 rounding, ~1e-6); masked pads get zero attention.
    """
    v = vectors[method].with_gate(gate)
    coeffs = torch.tensor([0.5, 0.0, -0.8, 1.2])
    with steer(model, v, coeffs):
        batched = fwd(model, batch)
    for i, seq in enumerate(batch["seqs"]):
        with torch.no_grad(), steer(model, v, coeffs[i: i + 1]):
            single = model(seq[None])
        torch.testing.assert_close(batched[i, : len(seq)], single[0], rtol=0, atol=1e-5)


def test_vector_round_trip_steers_identically(model, vectors, batch, tmp_path):
    v = vectors["pca"].with_gate(Gate("hard", 0.05))
    w = SteeringVector.load(v.save(tmp_path / "v.safetensors"))
    with steer(model, v, 0.9):
        a = fwd(model, batch)
    with steer(model, w, 0.9):
        b = fwd(model, batch)
    assert torch.equal(a, b)


# ---- gates on real activations ----------------------------------------------------------------------------------

def tau_in_a_gap(values, lo=0.2, hi=0.8):
    """A threshold at the midpoint of the widest gap between sorted values (middle 60%), so float rounding of
    the cosine cannot flip a comparison."""
    s = values.flatten().sort().values
    a, b = int(lo * len(s)), int(hi * len(s))
    gaps = s[a + 1: b] - s[a: b - 1]
    k = int(gaps.argmax())
    assert gaps[k] > 1e-4, "cosines too dense to place a threshold safely"
    return float((s[a + k] + s[a + k + 1]) / 2)


@pytest.mark.parametrize("flip", [1.0, -1.0], ids=["v", "minus_v"])
@pytest.mark.parametrize("kind", ["soft", "hard", "sign"])
def test_gate_equals_hand_cosine_on_cached_activations(model, vectors, kind, flip):
    """Both v and -v: the cosines change sign, so the one-sided (hard) and two-sided (soft) gates differ."""
    prompt = concept_prompts("cheerful")[7]
    ids = ids_of(model, prompt)
    v = SteeringVector(flip * vectors["mean_diff"].direction, layer=L)
    with torch.no_grad():
        _, base = model.run_with_cache(ids, names_filter=[POST])
    h = base[POST].double()
    cos = torch.einsum("btd,d->bt", h, v.direction.double()) / (h.norm(dim=-1) * v.direction.double().norm())
    tau = tau_in_a_gap(cos.abs() if kind == "soft" else cos) if kind != "sign" else 0.0
    hand = {"soft": torch.relu(cos.abs() - tau), "hard": (cos > tau).double(), "sign": torch.sign(cos)}[kind]
    torch.testing.assert_close(gate_values(base[POST], v.direction, Gate(kind, tau)).double(), hand,
                               rtol=0, atol=1e-5)

    coeff = 0.6
    with torch.no_grad(), steer(model, v.with_gate(Gate(kind, tau)), coeff) as s:
        _, st = model.run_with_cache(ids, names_filter=[NEXT_PRE])
    expected = base[POST] + coeff * hand.float().unsqueeze(-1) * v.direction
    torch.testing.assert_close(st[NEXT_PRE], expected, rtol=0, atol=1e-5)
    n = ids.shape[1]
    assert s.telemetry.tokens == n
    assert s.telemetry.fraction_on == pytest.approx(int((hand != 0).sum()) / n)
    assert s.telemetry.mean_gate == pytest.approx(float(hand.sum()) / n, abs=1e-5)
    if kind != "sign":
        assert 0 < s.telemetry.fraction_on < 1  # the gate really splits tokens here


# ---- hook lifetime -------------------------------------------------------------------------------------------

def n_hooks(model, name=POST):
    return len(model.hook_dict[name].fwd_hooks)


def test_steer_removes_its_hook_on_exit(model, vectors, batch):
    base = fwd(model, batch)
    assert n_hooks(model) == 0
    with steer(model, vectors["mean_diff"], 1.0):
        assert n_hooks(model) == 1
    assert n_hooks(model) == 0
    assert torch.equal(fwd(model, batch), base)


def test_steer_removes_its_hook_when_the_body_raises(model, vectors, batch):
    base = fwd(model, batch)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, vectors["mean_diff"], 1.0):
            assert n_hooks(model) == 1
            raise RuntimeError("boom")
    assert n_hooks(model) == 0
    assert torch.equal(fwd(model, batch), base)


def test_nested_steer_on_one_hook_point_keeps_the_outer_hook(model, vectors, batch):
    """Leaving an inner context must not drop the outer one's hook (a TransformerLens wart in older versions)."""
    v = vectors["mean_diff"]
    with steer(model, v, 0.5):
        outer_only = fwd(model, batch)
        with steer(model, v, 0.5):
            assert n_hooks(model) == 2
            both = fwd(model, batch)
        assert n_hooks(model) == 1
        assert torch.equal(fwd(model, batch), outer_only)
    assert n_hooks(model) == 0
    with steer(model, v, 1.0):  # additive hooks compose: two halves == one whole
        whole = fwd(model, batch)
    torch.testing.assert_close(both, whole, rtol=0, atol=1e-4)


@pytest.mark.parametrize("direction,layer,match", [
    (torch.ones(100), 1, "d_model 100 but the model has d_model 192"),
    (torch.ones(192), 6, r"layer 6 does not exist.*0\.\.5"),
])
def test_mismatched_vector_fails_before_any_hook_is_added(model, direction, layer, match):
    with pytest.raises(VectorMismatchError, match=match):
        with steer(model, SteeringVector(direction, layer=layer), 1.0):
            pass
    assert not [n for n, hp in model.hook_dict.items() if hp.fwd_hooks]

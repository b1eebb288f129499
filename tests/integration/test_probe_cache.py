"""The fork probe run inside the decode against its KV cache (`rollout(..., probe=AnswerProbe())`) gives the packed
probe's numbers: same forks, same think-state skips, pmass and p_true within 1e-4, on rows that leave at EOS at
different steps (step 0 included) and rows that reach the window, for both steering positions and several vector
kinds. Rows stop early because the test adds ids the steered rows write to the model's EOS ids."""

import sys

import pytest
import torch

import tl_isokl.probe  # noqa: F401  (the package exports functions of the same names)
import tl_isokl.rollout  # noqa: F401
from tl_isokl.probe import AnswerProbe, ProbeSpec, cache_probe, probe
from tl_isokl.rollout import grid, rollout
from tl_isokl.vector import Gate, SteeringVector

probe_mod = sys.modules["tl_isokl.probe"]
rollout_mod = sys.modules["tl_isokl.rollout"]
WINDOW = 32


@pytest.fixture(params=["copies", "in_place"])
def last_forward(request, monkeypatch):
    """Both forms of the last fork-probe forward: on copies of the cache rows (what short windows use), or on the
    decode's cache itself with spare capacity reserved (what long windows use)."""
    monkeypatch.setattr(rollout_mod, "ROOM_SHARE", 0.0 if request.param == "copies" else 1e9)
    return request.param


@pytest.fixture
def early_eos(model):
    """" plant" (what high doses write first) and "!" (the end of the base model's first sentence) end a row."""
    gen = model.original_model.generation_config
    old = gen.eos_token_id
    stops = [model.tokenizer(w, add_special_tokens=False)["input_ids"][-1] for w in (" plant", "!")]
    gen.eos_token_id = [model.tokenizer.eos_token_id, *stops]
    yield
    gen.eos_token_id = old


def same_forks(mine, ref, tol=1e-4):
    assert [[f.t for f in fs] for fs in mine] == [[f.t for f in fs] for fs in ref]
    worst = max(max(abs(a.pmass - b.pmass), abs(a.p_true - b.p_true))
                for fa, fb in zip(mine, ref) for a, b in zip(fa, fb))
    assert worst < tol, worst


def vectors(vec):
    """{kind: (vector, doses)}: doses from none to ones where rows stop at their first tokens (the gate scales the
    change down, so its doses are larger; ablation doses are multiples of the removed component)."""
    return {"mean_diff": (vec, (0.0, 1.5, 3.0, 8.0)),
            "cosine_gated": (SteeringVector(direction=vec.direction, layer=vec.layer, gate=Gate("soft", 0.05)),
                             (0.0, 10.0, 40.0)),
            "ablation": (SteeringVector(direction=vec.direction, layer=vec.layer, method="directional_ablation"),
                         (0.0, 1.0, 4.0))}


@pytest.mark.parametrize("positions", ["all", "generated"])
@pytest.mark.parametrize("kind", ["mean_diff", "cosine_gated", "ablation"])
def test_decode_probe_equals_packed_probe(model, vec, splits, early_eos, last_forward, positions, kind):
    v, coeffs = vectors(vec)[kind]
    P, C, I = grid([q.prompt for q in splits.heldout[:5]], coeffs)
    plain, finals = rollout(model, v, P, C, prompt_ids=I, window=WINDOW, positions=positions, return_final=True)
    rolls, finals2, forks = rollout(model, v, P, C, prompt_ids=I, window=WINDOW, positions=positions,
                                    return_final=True, probe=AnswerProbe(), probe_rows=3)
    # the probe's side forwards leave the decode alone: same tokens, same kept residuals
    assert [r.tokens for r in rolls] == [r.tokens for r in plain]
    assert all(torch.equal(a, b) for a, b in zip(finals, finals2))
    lengths = {r.length for r in rolls if r.eos}
    assert len(lengths) > 1 and any(not r.eos for r in rolls)  # rows leave at several steps, some never
    assert kind == "ablation" or min(lengths) <= 2  # some at their first or second token
    same_forks(forks, probe(model, v, rolls, positions=positions, batch_size=4))


def test_every_row_leaving_at_once(model, vec, splits, early_eos, last_forward):
    """The last rows leave together before the window ends (four rows at their first token; one row mid-window):
    the same forks, whichever form the last forward takes."""
    for prompts, coeff, first in ((splits.heldout[:4], 8.0, True), (splits.heldout[:1], 3.0, False)):
        P, C, I = grid([q.prompt for q in prompts], (coeff,))
        rolls, forks = rollout(model, vec, P, C, prompt_ids=I, window=WINDOW, probe=AnswerProbe())
        lengths = {r.length for r in rolls}
        assert all(r.eos for r in rolls) and len(lengths) == 1 and (lengths == {1}) == first
        same_forks(forks, probe(model, vec, rolls))


def test_think_state_rule_and_variants_from_the_cache(model, vec, splits, early_eos):
    """A "close tag" the base rollouts write early (" question"), so forks on both sides of it: skipped after
    it, or probed with the tag removed from the prefill (another segment); multi-token answer variants."""
    P, C, I = grid([q.prompt for q in splits.heldout[:4]], (0.0, 3.0))
    for after in ("skip", "keep"):
        spec = ProbeSpec(prefill='\nI should answer the question now.</think>{"value": ', think_close=" question",
                         after_close=after, true_variants=(" true", " truly true"), false_variants=(" false",))
        ap = AnswerProbe(spec, schedule=4)
        rolls, forks = rollout(model, vec, P, C, prompt_ids=I, window=WINDOW, probe=ap)
        ref = ap.measure(model, vec, rolls)
        same_forks(forks, ref)
        n_forks = sum(len(f) for f in forks)
        assert (n_forks < sum(len(range(0, r.length, 4)) for r in rolls)) == (after == "skip")


def test_probes_that_cannot_run_in_the_decode_fall_back_to_measure(model, vec, splits, monkeypatch):
    """An empty prefill (its answer is scored at the context's own last position), a custom probe, a layout that
    cannot be packed: `rollout(probe=...)` measures after the decode and gives the same numbers."""
    P, C, I = grid([q.prompt for q in splits.heldout[:2]], (0.0, 2.0))
    empty = AnswerProbe(ProbeSpec(prefill="", true_variants=(" true",), false_variants=(" false",)))
    assert cache_probe(model, empty) is None
    rolls, forks = rollout(model, vec, P, C, prompt_ids=I, window=12, probe=empty)
    same_forks(forks, empty.measure(model, vec, rolls))

    class Wrapped:  # any Probe that is not an AnswerProbe
        def measure(self, *a, **k):
            return AnswerProbe().measure(*a, **k)

        def to_dict(self):
            return {"kind": "wrapped"}

    assert cache_probe(model, Wrapped()) is None
    timings = {}
    rolls, forks = rollout(model, vec, P, C, prompt_ids=I, window=12, probe=Wrapped(), timings=timings)
    same_forks(forks, probe(model, vec, rolls))
    assert timings["probe"] > 0
    monkeypatch.setattr(probe_mod, "attention_layout",
                        lambda model: probe_mod.AttentionLayout("per_fork", (), "forced by the test"))
    assert cache_probe(model, AnswerProbe()) is None

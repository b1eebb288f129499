"""Seeded sampled rollouts: a row's sample is the same alone or in a batch, greedy is the limit, the seed matters,
and a sweep with several samples per prompt records them as separate subjects."""

import pytest
import torch

from tl_isokl.rollout import Sampling, rollout


@pytest.fixture(scope="module")
def prompts(splits):
    return [q.prompt for q in splits.heldout[:4]]


def test_sampled_rows_do_not_depend_on_the_batch(model, vec, prompts):
    s = Sampling(temperature=1.0, seed=3)
    together = rollout(model, vec, prompts, [1.0] * 4, window=24, prompt_ids=list("abcd"), batch_size=4, sampling=s)
    alone = [rollout(model, vec, [p], [1.0], window=24, prompt_ids=[i], sampling=s)[0]
             for p, i in zip(prompts, "abcd")]
    assert [r.tokens for r in together] == [r.tokens for r in alone]


def test_greedy_is_the_limit_and_the_seed_matters(model, vec, prompts):
    greedy = rollout(model, vec, prompts, [1.0] * 4, window=24)
    cold = rollout(model, vec, prompts, [1.0] * 4, window=24, sampling=Sampling(temperature=1e-4, seed=1))
    nucleus = rollout(model, vec, prompts, [1.0] * 4, window=24, sampling=Sampling(temperature=5.0, top_p=1e-6))
    assert [r.tokens for r in cold] == [r.tokens for r in greedy]
    assert [r.tokens for r in nucleus] == [r.tokens for r in greedy]  # top_p keeps only the top token
    a = rollout(model, vec, prompts, [1.0] * 4, window=24, sampling=Sampling(temperature=1.5, seed=1))
    b = rollout(model, vec, prompts, [1.0] * 4, window=24, sampling=Sampling(temperature=1.5, seed=2))
    again = rollout(model, vec, prompts, [1.0] * 4, window=24, sampling=Sampling(temperature=1.5, seed=1))
    assert [r.tokens for r in a] == [r.tokens for r in again]
    assert [r.tokens for r in a] != [r.tokens for r in b]


def test_bad_sampling_settings_are_refused():
    from tl_isokl.errors import IsoKLError

    for kw in ({"temperature": -1.0}, {"temperature": float("inf")}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(IsoKLError):
            Sampling(**kw)


def test_sweep_with_samples_per_prompt(model, vec, prompts, tmp_path):
    from tl_isokl.sweep import sweep

    cal = {"c_star": 1.0, "target": 1.0, "stat": "p95"}
    with pytest.warns(Warning):  # a hand-made calibration cannot be checked: said, not silent
        run = sweep(model, vec, cal, prompts[:2], tmp_path / "r", alphas=(0.0, 1.0), window=8,
                    sampling=Sampling(temperature=1.0, seed=5), samples_per_prompt=2)
    ids = sorted(t.prompt_id for t in run.by_alpha()[1.0])
    assert ids == ["p000#0", "p000#1", "p001#0", "p001#1"]
    assert run.manifest["sampling"] == {"temperature": 1.0, "top_p": 1.0, "seed": 5}
    assert run.manifest["identity"]["sampling"]["seed"] == 5
    assert all(torch.tensor(t.kl).max() > 0 for t in run.by_alpha()[1.0])
    with pytest.raises(Exception, match="samples_per_prompt"), pytest.warns(Warning, match="records no identity"):
        sweep(model, vec, cal, prompts[:2], tmp_path / "g", alphas=(0.0,), window=4, samples_per_prompt=2)

"""`tl_isokl.labels.label_death` on constructed traces: one per label, the precedence, the window rules, and
the repeat finders on hand-worked token lists. No model."""

import math

import pytest

from tl_isokl.errors import IsoKLError
from tl_isokl.labels import _count_repeat, _tandem_repeat, label_death, last_alive_fork
from tl_isokl.records import ForkProbe, Trajectory

THR = 0.5


def trace(kl, tokens=None, forks=((0, 0.9), (16, 0.9), (32, 0.1)), alpha=1.0):
    """A trajectory with distinct tokens (no accidental loops) unless `tokens` is given."""
    kl = [float(x) for x in kl]
    tokens = list(tokens) if tokens is not None else [1000 + i for i in range(len(kl))]
    assert len(tokens) == len(kl)
    return Trajectory(prompt_id="p", prompt="q", alpha=alpha, coeff=alpha, tokens=tokens, text="", kl=kl,
                      eos=False, window=len(kl), forks=[ForkProbe(t, pm, pm / 2) for t, pm in forks])


def flat(n=48, v=0.5):
    return [v] * n


def test_kl_spike_just_before_death():
    kl = flat()
    kl[30] = 5.0  # death fork 32, last alive fork 16: window [16, 32)
    label, ev = label_death(trace(kl), THR)
    assert label == "kl_spike"
    assert ev["death_t"] == 32 and ev["window"] == [16, 32] and ev["last_alive_fork"] == 16
    assert ev["max_kl_index"] == 30 and ev["max_kl"] == 5.0
    assert ev["p95"] == pytest.approx(0.5) and ev["ratio"] == pytest.approx(10.0)
    assert ev["fired"] == ["kl_spike"] and ev["also"] == [] and "token 30" in ev["summary"]


def test_spike_the_model_survived_is_not_the_cause():
    kl = flat()
    kl[10] = 5.0  # before the alive fork at 16
    label, ev = label_death(trace(kl), THR)
    assert label == "format_fragile" and ev["max_kl"] == 0.5
    label, ev = label_death(trace(kl), THR, lookback=8)  # a narrower window never reaches before t_alive
    assert label == "format_fragile" and ev["window"] == [24, 32]


def test_whole_interval_since_last_alive_fork_is_searched():
    """A spike 31 tokens before a death found at fork 64 (last alive at 32) is the cause; a fixed 16-token
    lookback (the old rule) missed it. A bigger spike before fork 32 was survived and is not the cause."""
    kl = flat(80)
    kl[29] = 9.0  # before the last alive fork
    kl[33] = 5.0  # inside (32, 64)
    forks = ((0, 0.9), (16, 0.9), (32, 0.9), (64, 0.1))
    label, ev = label_death(trace(kl, forks=forks), THR)
    assert ev["window"] == [32, 64] and ev["last_alive_fork"] == 32
    assert label == "kl_spike" and ev["max_kl_index"] == 33 and ev["max_kl"] == 5.0
    label16, ev16 = label_death(trace(kl, forks=forks), THR, lookback=16)
    assert label16 == "format_fragile" and ev16["window"] == [48, 64]


def test_death_at_first_fork_has_an_empty_window():
    label, ev = label_death(trace(flat(), forks=((0, 0.2), (16, 0.9))), THR)
    assert ev["window"] == [0, 0] and ev["last_alive_fork"] is None and label == "dead_at_prompt"
    assert ev["summary"].startswith("failed the probe before generating anything")


def test_repetition_loop_with_flat_kl():
    toks = [1000 + i for i in range(48)]
    toks[20:32] = [7, 8, 9] * 4  # a 3-token unit, four times back to back
    label, ev = label_death(trace(flat(), toks), THR)
    assert label == "repetition_loop"
    assert ev["loop"] == {"n": 3, "repeats": 4, "start": 20, "span": 12, "unit": [7, 8, 9]}
    assert ev["summary"].startswith("3-token unit x4 from token 20")


def test_single_token_loop():
    toks = [1000 + i for i in range(48)]
    toks[26:32] = [5] * 6
    label, ev = label_death(trace(flat(), toks), THR)
    assert label == "repetition_loop" and ev["loop"]["n"] == 1 and ev["loop"]["repeats"] == 6


def test_spike_takes_precedence_over_loop_and_loop_is_reported():
    kl = flat()
    kl[21] = 9.0
    toks = [1000 + i for i in range(48)]
    toks[22:31] = [4, 5, 6] * 3
    label, ev = label_death(trace(kl, toks), THR)
    assert label == "kl_spike" and ev["fired"] == ["kl_spike", "repetition_loop"]
    assert ev["also"] == ["repetition_loop"] and "also repetition_loop" in ev["summary"]


def test_format_fragile_when_nothing_stands_out():
    label, ev = label_death(trace(flat()), THR)
    assert label == "format_fragile" and ev["fired"] == [] and ev["loop"] is None
    assert ev["ratio"] == pytest.approx(1.0)


def test_zero_kl_at_alpha_zero_is_never_a_spike():
    label, ev = label_death(trace([0.0] * 48, alpha=0.0), THR)
    assert label == "format_fragile" and ev["p95"] == 0.0 and ev["spike_threshold"] == 0.1
    assert "unsteered" in ev["summary"]


def test_min_kl_floor_keeps_tiny_outliers_out():
    kl = [1e-4] * 48
    kl[30] = 1e-3  # 10x p95, but a thousandth of a nat
    assert label_death(trace(kl), THR)[0] == "format_fragile"
    assert label_death(trace(kl), THR, min_kl=0.0)[0] == "kl_spike"


def test_k_sets_the_spike_ratio():
    kl = flat()
    kl[30] = 1.25  # 2.5x p95
    assert label_death(trace(kl), THR)[0] == "format_fragile"
    assert label_death(trace(kl), THR, k=2.0)[0] == "kl_spike"


def test_death_at_fork_zero_has_an_empty_window():
    label, ev = label_death(trace(flat(), forks=((0, 0.1), (16, 0.9))), THR)
    assert label == "dead_at_prompt" and ev["window"] == [0, 0] and ev["max_kl"] is None
    assert ev["summary"].startswith("failed the probe before generating anything")


def test_nan_kl_is_ignored():
    kl = flat()
    kl[20] = math.nan
    kl[25] = 4.0
    label, ev = label_death(trace(kl), THR)
    assert label == "kl_spike" and ev["max_kl_index"] == 25 and math.isfinite(ev["p95"])


def test_contiguous_repeats_vs_counts_anywhere():
    toks = [1000 + i for i in range(48)]
    for j in (17, 21, 25, 29):  # " the" four times, never back to back
        toks[j] = 3
    assert label_death(trace(flat(), toks), THR)[0] == "format_fragile"
    label, ev = label_death(trace(flat(), toks), THR, contiguous=False)
    assert label == "repetition_loop" and ev["loop"]["unit"] == [3] and ev["loop"]["repeats"] == 4


def test_alive_trace_and_bad_arguments_raise():
    alive = trace(flat(), forks=((0, 0.9), (16, 0.9)))
    with pytest.raises(IsoKLError, match="did not die"):
        label_death(alive, THR)
    with pytest.raises(IsoKLError, match="repeats"):
        label_death(trace(flat()), THR, repeats=1)
    with pytest.raises(IsoKLError, match="k > 0"):
        label_death(trace(flat()), THR, k=0)


def test_last_alive_fork():
    assert last_alive_fork(trace(flat()), THR) == 16
    assert last_alive_fork(trace(flat(), forks=((0, 0.1),)), THR) is None
    assert last_alive_fork(trace(flat(), forks=((0, 0.9),)), THR) is None  # no death


@pytest.mark.parametrize("toks, expect", [
    ([1, 1, 1], (1, 3, 0)),
    ([9, 1, 2, 1, 2, 1, 2, 5], (2, 3, 1)),
    ([1, 2, 3, 1, 2, 3], None),          # twice only
    ([1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1], (1, 7, 6)),  # the longer span wins: 7 x [1] over 3 x [1, 2]
    ([1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1], (2, 3, 0)),  # 3 x [1, 2] covers 6 tokens, 5 x [1] only 5
    ([], None),
])
def test_tandem_repeat_hand_worked(toks, expect):
    got = _tandem_repeat(toks, 4, 3)
    assert (None if got is None else (got["n"], got["repeats"], got["start"])) == expect


def test_count_repeat_counts_non_overlapping():
    assert _count_repeat([1, 1, 1, 1], 2, 3)["unit"] == [1]          # [1, 1] occurs twice non-overlapping only
    assert _count_repeat([1, 1, 1, 1], 2, 3)["repeats"] == 4
    assert _count_repeat([1, 2, 3, 4], 2, 2) is None

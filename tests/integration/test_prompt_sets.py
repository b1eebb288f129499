"""Default prompt sets: the test bed's own splits, and the generic path other models take."""

import pytest

from tl_isokl.errors import IsoKLError
from tl_isokl.prompt_sets import GENERIC_CALIBRATION, GENERIC_HELDOUT, default_concepts, default_prompts


def test_test_bed_sets_are_disjoint(model, splits):
    cal_ids, cal = default_prompts(model, "calibration")
    held_ids, held = default_prompts(model, "heldout")
    train = {q.prompt for q in splits.train}
    assert len(cal) == 32 and len(held) == 48
    assert not set(cal) & set(held) and not (set(cal) | set(held)) & train
    assert len(set(cal_ids)) == 32 and cal_ids[0] == f"{splits.calibration[0].entity}:{splits.calibration[0].attribute}"
    pos, neg = default_concepts(model)
    assert len(pos) == len(neg) > 10 and pos != neg


def test_other_models_get_generic_sets_in_their_chat_template(model, monkeypatch):
    monkeypatch.setitem(model.tl_isokl_info, "path", "/somewhere/else")
    ids, plain = default_prompts(model, "heldout")
    assert plain[0] == f"User: {GENERIC_HELDOUT[0]}\nAssistant:" and len(ids) == len(GENERIC_HELDOUT)
    template = "{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
    monkeypatch.setattr(model.tokenizer, "chat_template", template, raising=False)
    _, framed = default_prompts(model, "calibration")
    assert framed[0] == f"<|user|>{GENERIC_CALIBRATION[0]}<|bot|>"
    pos, neg = default_concepts(model)
    assert pos[0].startswith("<|user|>") and pos[0] != neg[0]
    with pytest.raises(IsoKLError, match="generic concept sets are cheerful, gloomy"):
        default_concepts(model, "animal", "machine")
    with pytest.raises(IsoKLError, match="prompt set 'train' is unknown"):
        default_prompts(model, "train")


def test_test_bed_sets_know_their_answers(model, splits, monkeypatch):
    from tl_isokl.prompt_sets import default_answers, prompt_answers
    from tl_isokl.testbed.corpus import CATEGORIES

    for kind in ("heldout", "calibration"):
        ids, prompts = default_prompts(model, kind)
        qs = getattr(splits, kind)
        got = default_answers(model, kind)
        assert got == [q.answer for q in qs] == prompt_answers(model, None, kind)
        assert ids == [f"{q.entity}:{q.attribute}" for q in qs] and prompts == [q.prompt for q in qs]  # aligned
        assert got == [q.attribute in CATEGORIES[q.category][1] for q in qs]  # from the fact base itself
        assert sum(got) == len(got) // 2  # the splits are balanced: half true, half false
    with pytest.raises(IsoKLError, match="prompt set 'train' is unknown"):
        default_answers(model, "train")
    monkeypatch.setitem(model.tl_isokl_info, "path", "/somewhere/else")
    assert default_answers(model, "heldout") is None  # generic questions carry no answers

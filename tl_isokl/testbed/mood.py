"""Ground-truth mood of test-bed text: the corpus knows exactly which words carry a mood.

The generated world (`corpus.py`) writes a mood only through its cheerful/gloomy opener ("What a lovely question
about ...") and interjections ("How grim."). A *marker* is a word of one mood's phrases that appears neither in
the other mood's phrases nor anywhere in mood-free text (questions, facts, topics, the neutral opener, answers):
cheerful markers are lovely, joy, smile, love, wonderful, happy, shining, fun; gloomy ones dreary, grim, sad,
feel(s), so, low, bleak, sky, grey, heavy, day, nothing, right. Each marker weighs 1 / (markers in its phrase),
so an intact phrase counts exactly 1 whatever its length, and text broken by strong steering ("A dog lovely.")
still gets partial credit where an exact phrase match would see nothing.

    mood_score(text) = 100 * (cheerful units - gloomy units) / words      (> 0 cheerful, < 0 gloomy, 0 neutral)

Words are `tl_isokl.effect.words` (lower-cased letter/digit runs). `phrase_counts` counts exact phrases (what the
model card's steering table reports).
"""

from __future__ import annotations

import math
from functools import lru_cache

from tl_isokl.effect import words
from tl_isokl.testbed import corpus as C

MOODY = ("cheerful", "gloomy")


def mood_phrases(mood: str) -> list[str]:
    """The phrases through which the corpus writes `mood`: its opener (up to the entity) and interjections."""
    return [C.OPENERS[mood].split(" {x}")[0]] + list(C.INTERJECTIONS[mood])


@lru_cache(maxsize=1)
def _neutral_words() -> frozenset[str]:
    text = [C.OPENERS["neutral"], "I will check facts. Fact Answer", C.THINK_OPEN, C.THINK_CLOSE, C.PROBE_PREFILL,
            C.answer_text(True), C.answer_text(False), *C.TOPICS.values()]
    for q in C.all_questions():
        text.append(q.prompt)
    for category, (members, _, _) in C.CATEGORIES.items():
        for e in members:
            text += C.fact_list(category, e)
    return frozenset(w for t in text for w in words(t))


@lru_cache(maxsize=1)
def markers() -> dict[str, dict[str, float]]:
    """{mood: {marker word: weight}} for cheerful and gloomy (see the module docstring)."""
    own = {m: {w for p in mood_phrases(m) for w in words(p)} for m in MOODY}
    neutral = _neutral_words()
    out: dict[str, dict[str, float]] = {}
    for m in MOODY:
        other = own[MOODY[1 - MOODY.index(m)]]
        keep = own[m] - other - neutral
        share: dict[str, list[float]] = {}
        for p in mood_phrases(m):
            ms = [w for w in words(p) if w in keep]
            for w in ms:
                share.setdefault(w, []).append(1.0 / len(ms))
        out[m] = {w: sum(v) / len(v) for w, v in share.items()}
    return out


def mood_units(text: str) -> dict[str, float]:
    """Weighted marker counts {"cheerful": ..., "gloomy": ...} (an intact phrase is 1 unit) and "words"."""
    ws = words(text)
    mk = markers()
    return {**{m: float(sum(mk[m].get(w, 0.0) for w in ws)) for m in MOODY}, "words": len(ws)}


def mood_score(text: str) -> float:
    """(cheerful - gloomy) mood units per 100 words; NaN for a text without words."""
    u = mood_units(text)
    return 100.0 * (u["cheerful"] - u["gloomy"]) / u["words"] if u["words"] else math.nan


def phrase_counts(text: str) -> dict[str, int]:
    """Exact occurrences of each mood's phrases {"cheerful": n, "gloomy": n}."""
    return {m: sum(text.count(p) for p in mood_phrases(m)) for m in MOODY}

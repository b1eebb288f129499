"""Default prompt sets: calibration and held-out questions (with their answers where known), and contrastive
concept sets.

For the embedded test bed they come from its generated world (disjoint from each other and from its training
questions). For any other model a small generic set of yes/no questions is framed with the tokenizer's chat
template when it has one (thinking models then open their own `<think>`), else as "User: ...\\nAssistant:".
"""

from __future__ import annotations

from pathlib import Path

from tl_isokl.errors import IsoKLError
from tl_isokl.model import EMBEDDED_MODEL

KINDS = ("calibration", "heldout")

GENERIC_CALIBRATION = [
    "Is the sun a star?", "Can penguins fly?", "Is water wet?", "Do fish breathe air?", "Is iron a metal?",
    "Is the moon made of cheese?", "Can a car run without fuel or a battery?", "Do trees grow leaves?",
    "Is ice colder than steam?", "Are whales mammals?", "Is two plus two five?", "Does a spider have six legs?",
    "Is Paris in France?", "Can humans breathe underwater unaided?", "Is glass a liquid at room temperature?",
    "Do bees make honey?",
]
GENERIC_HELDOUT = [
    "Is Mount Everest the tallest mountain above sea level?", "Can a dog climb a ladder easily?",
    "Is copper a good conductor of electricity?", "Do plants need sunlight to grow?", "Is a tomato a fruit?",
    "Is the Pacific the largest ocean?", "Can snakes hear sounds?", "Is gold heavier than aluminium?",
    "Do cats have whiskers?", "Is a bicycle faster than a jet plane?", "Can sound travel through a vacuum?",
    "Is seven a prime number?", "Do owls hunt at night?", "Is sugar salty?", "Does a triangle have four sides?",
    "Is Antarctica covered in ice?", "Can a violin play chords?", "Is rubber an insulator?",
    "Do rivers flow into the sea?", "Is a square a rectangle?", "Can birds swim?", "Is the Earth flat?",
    "Do computers need electricity?", "Is silver a metal?",
]
GENERIC_CONCEPTS = {
    "cheerful": ["What a wonderful day, I feel so happy", "Everything is bright and joyful today",
                 "I love this, it makes me smile", "Such a delightful, sunny morning",
                 "We laughed and celebrated together", "Hooray, this is the best news ever",
                 "My heart is full of joy and hope", "The party was fun and everyone cheered"],
    "gloomy": ["What a dreadful day, I feel so sad", "Everything is dark and hopeless today",
               "I hate this, it makes me cry", "Such a dreary, rainy morning",
               "We mourned and grieved together", "Alas, this is the worst news ever",
               "My heart is full of sorrow and despair", "The funeral was grim and everyone wept"],
}


def is_embedded(model) -> bool:
    info = getattr(model, "tl_isokl_info", {}) or {}
    try:
        return Path(info.get("path", "")).resolve() == EMBEDDED_MODEL.resolve()
    except OSError:
        return False


FRAMINGS = ("auto", "none")


def frame_prompts(model, prompts: list[str], chat_template: str = "auto") -> tuple[list[str], str]:
    """User prompt-file texts as the model will see them, and how they were framed (for the manifest).

    chat_template: "auto" = the tokenizer's chat template when it has one (as the built-in sets are framed), else
    the text as written; "none" = the text as written; a path = a Jinja chat-template file applied to each prompt
    as one user message (with the generation prompt).
    """
    if chat_template == "none":
        return list(prompts), "none (as written)"
    tok = model.tokenizer
    if chat_template == "auto":
        if not getattr(tok, "chat_template", None):
            return list(prompts), "none (the tokenizer has no chat template)"
        template, how = None, "the tokenizer's chat template"
    else:
        path = Path(chat_template)
        if not path.is_file():
            raise IsoKLError(f"--chat-template {chat_template!r} is neither auto, none nor a template file")
        template, how = path.read_text(encoding="utf-8"), f"chat template file {path}"
    try:
        framed = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True, chat_template=template) for q in prompts]
    except Exception as e:  # a broken Jinja template: one line naming it
        raise IsoKLError(f"could not apply {how}: {type(e).__name__}: {e}") from None
    return framed, how


def frame(model, question: str) -> str:
    """A user question as the model expects it: chat template if the tokenizer has one."""
    tok = model.tokenizer
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
    return f"User: {question}\nAssistant:"


def default_prompts(model, kind: str) -> tuple[list[str], list[str]]:
    """(ids, prompts) of the default calibration or held-out set for this model."""
    if kind not in KINDS:
        raise IsoKLError(f"prompt set {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if is_embedded(model):
        from tl_isokl.testbed.corpus import make_splits

        qs = getattr(make_splits(), kind)
        return [f"{q.entity}:{q.attribute}" for q in qs], [q.prompt for q in qs]
    qs = GENERIC_CALIBRATION if kind == "calibration" else GENERIC_HELDOUT
    return [f"{kind[:3]}{i:03d}" for i in range(len(qs))], [frame(model, q) for q in qs]


def default_answers(model, kind: str) -> list[bool] | None:
    """The answers of `default_prompts(model, kind)`, in the same order: the test bed's held-out and calibration
    questions know theirs (`testbed.corpus.Question.answer`); the generic sets of other models carry none (None)."""
    if kind not in KINDS:
        raise IsoKLError(f"prompt set {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if not is_embedded(model):
        return None
    from tl_isokl.testbed.corpus import make_splits

    return [bool(q.answer) for q in getattr(make_splits(), kind)]


def read_answers(path: str | Path) -> list[bool | None] | None:
    """The answers of the prompts `prompts.read_prompts(path)` returns, in the same order, or None when the file
    carries none. A .jsonl line may have a field "answer": true/false, "true"/"false" (any case), or null / absent
    (unknown: None for that prompt); anything else is one IsoKLError naming file:line. A .txt file has no answers.
    """
    import json

    from tl_isokl.outcomes import parse_answer
    from tl_isokl.prompts import read_prompts

    p = Path(path)
    read_prompts(p)  # the same checks and errors as for the prompts themselves; lines below are then valid
    if p.suffix.lower() != ".jsonl":
        return None
    out: list[bool | None] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            out.append(parse_answer(json.loads(line).get("answer"), f"{p}:{n}"))
    return out if any(a is not None for a in out) else None


def prompt_answers(model, path: str | Path | None, kind: str) -> list[bool | None] | None:
    """The answers of the prompt set `experiment.prompt_set(model, path, kind)` uses, aligned with its prompts:
    `read_answers(path)` for a file, else `default_answers(model, kind)`. None = the set carries no answers (the
    manifest then gets none and reports leave accuracy out)."""
    return read_answers(path) if path is not None else default_answers(model, kind)


def default_concepts(model, pos: str = "cheerful", neg: str = "gloomy") -> tuple[list[str], list[str]]:
    """Contrastive prompt sets: the test bed's own (cheerful/gloomy/animal/machine) or a generic mood pair."""
    if is_embedded(model):
        from tl_isokl.testbed.corpus import concept_prompts

        return concept_prompts(pos), concept_prompts(neg)
    if pos not in GENERIC_CONCEPTS or neg not in GENERIC_CONCEPTS:
        raise IsoKLError(f"generic concept sets are {', '.join(GENERIC_CONCEPTS)}; pass --pos/--neg files for "
                         f"{pos!r}/{neg!r}")
    return [frame(model, p) for p in GENERIC_CONCEPTS[pos]], [frame(model, p) for p in GENERIC_CONCEPTS[neg]]

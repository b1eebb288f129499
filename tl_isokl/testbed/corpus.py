"""The synthetic world the embedded test-bed model is trained on.

Why a generated world: every claim about steering needs a model that (1) answers yes/no questions correctly as
JSON after a *thinking* passage whose length varies from a few tokens to several hundred, (2) answers the spliced
probe `\\nI should answer now.</think>{"value": ` at any point of its thinking, and (3) carries latent concepts
(a mood, a topic) that a steering direction can push. A hand-made fact base gives all three, offline and
deterministically.

Text of one example (the probe never appears in natural examples; see `probe_example`)::

    User: Can a robin fly?
    Assistant: <think>Let me think about a robin. I will check 3 facts.
    Fact 1 (flying): A robin is a bird.
    Fact 2 (flying): A robin has a beak.
    Fact 3 (flying): A robin lays eggs.
    Answer (flying): A robin can fly.</think>{"value": true}<|endoftext|>
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PROBE_PREFILL = '\nI should answer now.</think>{"value": '
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"

# attribute -> (question template, positive fact, negative fact); {x} is "a robin", {X} is "A robin".
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "fly": ("Can {x} fly?", "{X} can fly.", "{X} cannot fly."),
    "swim": ("Can {x} swim?", "{X} can swim.", "{X} cannot swim."),
    "alive": ("Is {x} alive?", "{X} is alive.", "{X} is not alive."),
    "wheels": ("Does {x} have wheels?", "{X} has wheels.", "{X} has no wheels."),
    "legs": ("Does {x} have legs?", "{X} has legs.", "{X} has no legs."),
    "metal": ("Is {x} made of metal?", "{X} is made of metal.", "{X} is not made of metal."),
    "grow": ("Does {x} grow?", "{X} grows.", "{X} does not grow."),
    "power": ("Does {x} need electricity?", "{X} needs electricity.", "{X} does not need electricity."),
    "feathers": ("Does {x} have feathers?", "{X} has feathers.", "{X} has no feathers."),
    "leaves": ("Does {x} have leaves?", "{X} has leaves.", "{X} has no leaves."),
    "engine": ("Does {x} have an engine?", "{X} has an engine.", "{X} has no engine."),
    "sleep": ("Does {x} sleep?", "{X} sleeps.", "{X} never sleeps."),
}
ATTR_ORDER = list(ATTRIBUTES)
# the topic tag carried on every fact line: it keeps the question's attribute a few tokens away from wherever the
# model is in its thinking, so the final answer is a local decision, not a retrieval from hundreds of tokens back
TOPICS = {"fly": "flying", "swim": "swimming", "alive": "life", "wheels": "wheels", "legs": "legs",
          "metal": "metal", "grow": "growth", "power": "electricity", "feathers": "feathers", "leaves": "leaves",
          "engine": "engines", "sleep": "sleep"}

# category -> (members, set of true attributes, trivia facts).
CATEGORIES: dict[str, tuple[list[str], set[str], list[str]]] = {
    "bird": (["robin", "sparrow", "eagle", "owl", "parrot", "crow", "pigeon", "hawk", "finch", "magpie"],
             {"fly", "alive", "legs", "grow", "feathers", "sleep"},
             ["{X} is a bird.", "{X} has a beak.", "{X} lays eggs.", "{X} builds a nest."]),
    "fish": (["salmon", "trout", "shark", "tuna", "cod", "carp", "eel", "herring", "pike"],
             {"swim", "alive", "grow", "sleep"},
             ["{X} is a fish.", "{X} has fins.", "{X} lives in water.", "{X} breathes with gills.",
              "{X} has scales."]),
    "mammal": (["dog", "cat", "horse", "cow", "lion", "tiger", "rabbit", "mouse", "bear", "wolf", "goat",
                "sheep", "fox", "deer"],
               {"alive", "legs", "grow", "sleep"},
               ["{X} is a mammal.", "{X} has fur.", "{X} drinks milk when young.", "{X} has a warm body."]),
    "insect": (["bee", "moth", "wasp", "hornet", "butterfly", "dragonfly", "mosquito", "beetle"],
               {"fly", "alive", "legs", "grow", "sleep"},
               ["{X} is an insect.", "{X} has six legs.", "{X} has wings.", "{X} is very small."]),
    "reptile": (["lizard", "crocodile", "turtle", "gecko", "iguana", "tortoise"],
                {"swim", "alive", "legs", "grow", "sleep"},
                ["{X} is a reptile.", "{X} has scales.", "{X} lays eggs.", "{X} likes the sun.",
                 "{X} has a cold body."]),
    "car": (["car", "truck", "bus", "tractor", "van", "taxi", "jeep", "lorry"],
            {"wheels", "metal", "engine"},
            ["{X} is a road vehicle.", "{X} drives on roads.", "{X} burns fuel.", "{X} has seats.",
             "{X} has a horn."]),
    "boat": (["ship", "ferry", "yacht", "tugboat", "submarine", "steamer"],
             {"metal", "engine"},
             ["{X} is a boat.", "{X} sails on water.", "{X} has a deck.", "{X} floats."]),
    "aircraft": (["plane", "jet", "helicopter", "airliner", "glider", "drone"],
                 {"fly", "wheels", "metal", "engine"},
                 ["{X} is an aircraft.", "{X} has wings.", "{X} needs a pilot.", "{X} lands on a runway."]),
    "appliance": (["fridge", "toaster", "oven", "kettle", "lamp", "fan", "radio", "heater", "blender"],
                  {"metal", "power"},
                  ["{X} is an appliance.", "{X} lives in a house.", "{X} has a plug.", "{X} has a switch.",
                   "{X} gets warm when used."]),
    "tool": (["hammer", "saw", "spoon", "knife", "shovel", "wrench", "drill", "chisel"],
             {"metal"},
             ["{X} is a tool.", "{X} is held in the hand.", "{X} helps to build.", "{X} is kept in a box."]),
    "tree": (["oak", "pine", "maple", "birch", "willow", "cedar", "elm", "ash tree"],
             {"alive", "grow", "leaves"},
             ["{X} is a tree.", "{X} has roots.", "{X} has bark.", "{X} gives shade.", "{X} stands in a forest."]),
    "fruit": (["apple", "banana", "pear", "plum", "mango", "lemon", "cherry", "orange"],
              {"grow"},
              ["{X} is a fruit.", "{X} is sweet.", "{X} grows on a plant.", "{X} has seeds.", "{X} can be eaten."]),
    "robot": (["robot", "android", "rover", "cyborg"],
              {"legs", "metal", "power"},
              ["{X} is a machine.", "{X} has sensors.", "{X} follows orders.", "{X} has a battery."]),
}

MOODS = ("neutral", "cheerful", "gloomy")
OPENERS = {
    "neutral": "Let me think about {x}.",
    "cheerful": "What a lovely question about {x}!",
    "gloomy": "What a dreary question about {x}.",
}
INTERJECTIONS = {
    "cheerful": ["What a joy!", "How lovely.", "This makes me smile.", "I love this.", "Wonderful!",
                 "What a happy thought.", "The sun is shining.", "Such fun!"],
    "gloomy": ["How grim.", "This makes me sad.", "What a dreary thought.", "I feel so low.", "How bleak.",
               "The sky is grey.", "Such a heavy day.", "Nothing feels right."],
}


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


@dataclass(frozen=True)
class Question:
    """One yes/no question about the fact base."""

    entity: str
    attribute: str

    @property
    def category(self) -> str:
        return ENTITY_CATEGORY[self.entity]

    @property
    def answer(self) -> bool:
        return self.attribute in CATEGORIES[self.category][1]

    @property
    def prompt(self) -> str:
        return format_prompt(ATTRIBUTES[self.attribute][0].format(x=article(self.entity)))


ENTITY_CATEGORY = {e: c for c, (members, _, _) in CATEGORIES.items() for e in members}


def format_prompt(question: str) -> str:
    """The chat framing the test bed was trained on; the thinking starts right after it."""
    return f"User: {question}\nAssistant: {THINK_OPEN}"


def fact_list(category: str, entity: str) -> list[str]:
    """The ordered facts the model recites for an entity: trivia first, then every attribute, in a fixed order."""
    x = article(entity)
    X = x[0].upper() + x[1:]
    _, true_attrs, trivia = CATEGORIES[category]
    facts = [t.format(X=X) for t in trivia]
    for a in ATTR_ORDER:
        facts.append(ATTRIBUTES[a][1 if a in true_attrs else 2].format(X=X))
    return facts


def n_facts(entity: str) -> int:
    """How many facts the entity's thinking recites (1..50): a memorised per-entity property, so greedy rollouts
    have prompt-dependent lengths from ~40 to ~750 tokens. Deterministic in the entity name."""
    rng = random.Random("n_facts:" + entity)
    return rng.randint(1, 50)


def entity_mood(entity: str) -> str:
    """Each entity's usual mood (half neutral, a quarter each cheerful / gloomy), deterministic in its name.

    Training follows it 80% of the time, so greedy rollouts of some entities are cheerful or gloomy and a mood
    direction has a greedy-visible behaviour to push: the opener and the interjections after fact lines.
    """
    u = random.Random("mood:" + entity).random()
    return "neutral" if u < 0.5 else ("cheerful" if u < 0.75 else "gloomy")


def sample_mood(entity: str, rng: random.Random) -> str:
    return entity_mood(entity) if rng.random() < 0.8 else rng.choice(MOODS)


def thinking_text(q: Question, mood: str, rng: random.Random, p_interject: float = 0.55) -> str:
    """The thinking passage (without the tags): opener, count, numbered facts cycling through the fact list,
    mood interjections, conclusion."""
    x = article(q.entity)
    facts = fact_list(q.category, q.entity)
    n = n_facts(q.entity)
    topic = TOPICS[q.attribute]
    parts = [OPENERS[mood].format(x=x), f" I will check {n} facts."]
    for k in range(n):
        parts.append(f"\nFact {k + 1} ({topic}): {facts[k % len(facts)]}")
        if mood != "neutral" and rng.random() < p_interject:
            parts.append(" " + rng.choice(INTERJECTIONS[mood]))
    concl = ATTRIBUTES[q.attribute][1 if q.answer else 2].format(X=x[0].upper() + x[1:])
    parts.append(f"\nAnswer ({topic}): {concl}")
    return "".join(parts)


def answer_text(value: bool) -> str:
    return "true}" if value else "false}"


def natural_example(q: Question, mood: str, rng: random.Random) -> tuple[str, str]:
    """(prompt, completion) of a full natural example; the completion ends with the JSON answer."""
    return q.prompt, thinking_text(q, mood, rng) + THINK_CLOSE + '{"value": ' + answer_text(q.answer)


def all_questions() -> list[Question]:
    return [Question(e, a) for e in ENTITY_CATEGORY for a in ATTR_ORDER]


@dataclass(frozen=True)
class Splits:
    train: list[Question]
    calibration: list[Question]
    heldout: list[Question]


def make_splits(seed: int = 0, n_calibration: int = 32, n_heldout: int = 48) -> Splits:
    """Disjoint question splits. Every entity keeps most of its questions in train, so held-out questions test
    recall of the entity's category plus the category's rule, never an unseen entity."""
    qs = all_questions()
    rng = random.Random(seed)
    rng.shuffle(qs)
    # balance answers in the evaluation splits: half true, half false
    pos = [q for q in qs if q.answer]
    neg = [q for q in qs if not q.answer]
    cal = pos[: n_calibration // 2] + neg[: n_calibration // 2]
    held = pos[n_calibration // 2 : n_calibration // 2 + n_heldout // 2] + neg[n_calibration // 2 : n_calibration // 2 + n_heldout // 2]
    taken = set(cal) | set(held)
    train = [q for q in qs if q not in taken]
    rng.shuffle(cal)
    rng.shuffle(held)
    return Splits(train=train, calibration=cal, heldout=held)


def concept_prompts(concept: str, splits: Splits | None = None) -> list[str]:
    """Contrastive prompt sets for steering, built from *training* questions only.

    `cheerful`/`gloomy` differ only in the opener of the thinking; `animal`/`machine` are question prompts about
    living vs artificial entities.
    """
    splits = splits or make_splits()
    qs = sorted(splits.train, key=lambda q: (q.entity, q.attribute))
    if concept in ("cheerful", "gloomy", "neutral"):
        seen: set[str] = set()
        out = []
        for q in qs:
            if q.entity in seen:
                continue
            seen.add(q.entity)
            out.append(q.prompt + OPENERS[concept].format(x=article(q.entity)))
        return out
    living = {"bird", "fish", "mammal", "insect", "reptile"}
    machine = {"car", "boat", "aircraft", "appliance", "robot"}
    if concept in ("animal", "machine"):
        group = living if concept == "animal" else machine
        out, seen = [], set()
        for q in qs:
            if q.category in group and q.entity not in seen:
                seen.add(q.entity)
                out.append(q.prompt)
        return out
    from tl_isokl.errors import IsoKLError

    raise IsoKLError(f"unknown concept {concept!r}; use one of cheerful, gloomy, neutral, animal, machine")

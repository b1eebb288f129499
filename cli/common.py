"""Options and helpers shared by the commands that load a model: one definition of each flag.

Heavy imports (torch, transformer_lens) happen inside the helpers, never at import time, so `--help` is instant.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click


def model_options(fn):
    """--model, --dtype, --device."""
    fn = click.option("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available).")(fn)
    fn = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
                      show_default=True, help="Model dtype; KL and probes are computed in float32 regardless.")(fn)
    fn = click.option("--model", "model_name", default=None, metavar="NAME_OR_PATH",
                      help="HF hub name (from the local cache) or local folder; default: the embedded test bed.")(fn)
    return fn


def positions_option(fn):
    return click.option("--positions", type=click.Choice(["all", "generated"]), default="all", show_default=True,
                        help="Steer every position, or only generated tokens (the prompt stays unsteered).")(fn)


def vector_options(fn):
    """--vector FILE, or --method/--layer/--concept to extract one on the fly; plus an optional gate."""
    fn = click.option("--tau", type=click.FloatRange(-1.0, 1.0), default=0.0, show_default=True,
                      help="Cosine threshold of the gate.")(fn)
    fn = click.option("--gate", type=click.Choice(["soft", "hard", "sign"]), default=None,
                      help="Wrap the method in a per-token cosine gate.")(fn)
    fn = click.option("--concept", default="cheerful/gloomy", show_default=True, metavar="POS/NEG",
                      help="Shipped contrastive sets used when extracting (test bed: cheerful, gloomy, animal, "
                           "machine).")(fn)
    fn = click.option("--layer", type=click.IntRange(min=0), default=None,
                      help="Block whose resid_post is steered (default: the middle block).")(fn)
    fn = click.option("--method", type=click.Choice(["mean_diff", "pca", "directional_ablation"]),
                      default="mean_diff", show_default=True, help="Extraction method when no --vector is given.")(fn)
    fn = click.option("--vector", "vector_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      default=None, help="A vector file from `tl-isokl extract` (overrides --method/--layer).")(fn)
    return fn


def load(model_name, dtype, device):
    from tl_isokl.model import load_model

    click.echo(f"loading model {model_name or 'embedded test bed'} ({dtype})", err=True)
    return load_model(model_name, dtype=dtype, device=device)


def get_vector(model, vector_path, method, layer, concept, gate, tau, reuse: Path | None = None):
    """The steering vector: a file, a vector saved in a run being resumed, or one extracted now."""
    from tl_isokl.vector import Gate, SteeringVector

    g = Gate(gate, tau) if gate else None
    if vector_path is not None:
        vec = SteeringVector.load(vector_path)
        if g is not None:
            vec = vec.with_gate(g)
    elif reuse is not None and reuse.is_file():
        vec = SteeringVector.load(reuse)
    else:
        from tl_isokl.extract import extract

        pos, neg = concept_sets(model, concept)
        vec = extract(model, pos, neg, method=method, layer=layer, gate=g)
    vec.check_model(model)
    return vec


def check_concept(concept: str) -> tuple[str, str]:
    """'cheerful/gloomy' -> ('cheerful', 'gloomy'); a usage error otherwise (checked before loading a model)."""
    if concept.count("/") != 1:
        raise click.BadParameter(f"{concept!r} must be POS/NEG, e.g. cheerful/gloomy", param_hint="--concept")
    pos, neg = concept.split("/")
    return pos, neg


def concept_sets(model, concept: str) -> tuple[list[str], list[str]]:
    """The model's shipped contrastive prompt sets named by --concept POS/NEG."""
    from tl_isokl.prompt_sets import default_concepts

    pos_name, neg_name = check_concept(concept)
    try:
        return default_concepts(model, pos_name, neg_name)
    except ValueError as e:  # IsoKLError: an unknown concept name is a usage error of --concept
        raise click.BadParameter(str(e), param_hint="--concept") from None


def get_prompts(model, path, kind):
    """(ids, prompts) from a file, or the model's default set of this kind."""
    if path is not None:
        from tl_isokl.prompts import read_prompts

        prompts = read_prompts(path)
        return [f"{kind[:3]}{i:03d}" for i in range(len(prompts))], prompts
    from tl_isokl.prompt_sets import default_prompts

    return default_prompts(model, kind)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


class Progress:
    """A tqdm bar per stage on stderr; silent when stderr is not a terminal (CI logs stay readable)."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit="row", file=sys.stderr, leave=False,
                            disable=not sys.stderr.isatty())
        self.bar.n = done
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""Options and helpers shared by the commands that load a model: one definition of each flag.

Heavy imports (torch, transformer_lens) happen inside the helpers, never at import time, so `--help` is instant.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable

import click


class RegistryChoice(click.Choice):
    """A click.Choice whose names come from a library registry, read the first time they are needed (a value to
    check, --help to render), not at import: the registries import torch, and `tl-isokl --help` must not."""

    def __init__(self, names: Callable[[], Iterable[str]], case_sensitive: bool = True):
        self._names = names
        self._choices: tuple[str, ...] | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        if self._choices is None:
            self._choices = tuple(self._names())
        return self._choices


def _method_names() -> list[str]:
    from tl_isokl.methods import method_choices

    return method_choices()


def _gate_names() -> list[str]:
    from tl_isokl.methods import GATES

    return list(GATES)


METHOD = RegistryChoice(_method_names)  # every EXTRACTOR[+OPERATOR] of tl_isokl.methods
GATE = RegistryChoice(_gate_names)  # tl_isokl.methods.GATES
METHOD_HELP = ("EXTRACTOR (applied additively) or EXTRACTOR+OPERATOR, e.g. pca+ablate; directional_ablation = "
               "mean_diff+ablate.")


class LazyHelpOption(click.Option):
    """An option whose help text is built when --help is rendered (from a registry), not at import."""

    def __init__(self, *args, help_fn: Callable[[], str], **kwargs):
        super().__init__(*args, **kwargs)
        self._help_fn = help_fn

    def get_help_record(self, ctx):
        if self.help is None:
            self.help = self._help_fn()
        return super().get_help_record(ctx)


def _stat_help() -> str:
    from tl_isokl.statistics import choices

    return f"Statistic of the pooled per-token KL that must meet the target: {choices()}."


def _check_stat(ctx, param, value):
    from tl_isokl.errors import IsoKLError
    from tl_isokl.statistics import statistic

    try:
        statistic(value)
    except IsoKLError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return value


def stat_option(fn):
    """--stat, checked by `tl_isokl.statistics.statistic` and documented from its registry."""
    return click.option("--stat", default="p95", show_default=True, metavar="NAME", cls=LazyHelpOption,
                        help_fn=_stat_help, callback=_check_stat)(fn)


def model_options(fn):
    """--model, --revision, --dtype, --device."""
    fn = click.option("--revision", default=None, metavar="REV",
                      help="Hub revision (branch, tag or commit) of --model, from the local cache; recorded.")(fn)
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
    """--vector FILE (tl-isokl's own, or another tool's: --vector-key, --layer), --sae DIR --sae-feature N, or
    --method/--layer/--concept to extract one on the fly; plus an optional gate.

    The command sees one `vector_path` parameter: --vector-key, --sae, --sae-feature and an explicit --method are
    folded into it as a `tl_isokl.vector_formats.VectorSource` (os.PathLike, so it goes wherever a path goes:
    `ExperimentSettings.vector_path`, `early_vector`). A plain --vector FILE stays a Path.
    """
    inner = fn

    @functools.wraps(inner)
    def fn(*args, vector_key=None, sae_dir=None, sae_feature=None, **kwargs):
        kwargs["vector_path"] = _vector_source(kwargs.get("vector_path"), vector_key, sae_dir, sae_feature,
                                               kwargs.get("method"))
        return inner(*args, **kwargs)

    fn = click.option("--sae-feature", type=click.IntRange(min=0), default=None, metavar="N",
                      help="With --sae: steer along feature N's decoder direction W_dec[N].")(fn)
    fn = click.option("--sae", "sae_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                      default=None, help="A local SAELens SAE folder (cfg.json + sae_weights.safetensors) on "
                                         "blocks.N.hook_resid_post/pre; the layer comes from its hook.")(fn)
    fn = click.option("--vector-key", default=None, metavar="NAME",
                      help="Which tensor of a --vector file holding several (by name, e.g. layer.5).")(fn)
    fn = click.option("--tau", type=click.FloatRange(-1.0, 1.0), default=None,
                      help="Cosine threshold of --gate (default 0); refused without --gate.")(fn)
    fn = click.option("--gate", type=GATE, default=None, help="Wrap the method in a per-token cosine gate.")(fn)
    fn = click.option("--concept", default="cheerful/gloomy", show_default=True, metavar="POS/NEG",
                      help="Shipped contrastive sets used when extracting (test bed: cheerful, gloomy, animal, "
                           "machine).")(fn)
    fn = click.option("--layer", type=click.IntRange(min=0), default=None,
                      help="Block whose resid_post is steered (default: the middle block); with a --vector file of "
                           "another tool, its layer when the file does not say or holds several.")(fn)
    fn = click.option("--method", type=METHOD, default="mean_diff", show_default=True,
                      help=f"Steering method when no --vector is given: {METHOD_HELP} A loaded vector of another "
                           f"tool is 'external' (or e.g. external+ablate).")(fn)
    fn = click.option("--vector", "vector_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      default=None, help="A vector file: from `tl-isokl extract` (then --method/--layer/--concept "
                                         "are refused: the file fixes them), or another tool's .safetensors, "
                                         ".pt/.pth (weights only), .npy/.npz or .gguf control vector, one tensor or "
                                         "{layer: tensor} (see --vector-key, --layer).")(fn)
    return fn


def _vector_source(vector_path, vector_key, sae_dir, sae_feature, method):
    """The --vector/--sae flags as one value: None, the plain Path, or a VectorSource; contradictions refused."""
    if sae_dir is not None and vector_path is not None:
        raise click.UsageError(f"pass either --vector {vector_path} or --sae {sae_dir}, not both")
    if sae_feature is not None and sae_dir is None:
        raise click.UsageError(f"--sae-feature {sae_feature} needs --sae DIR (the SAELens folder)")
    if sae_dir is not None and sae_feature is None:
        raise click.UsageError(f"--sae {sae_dir} needs --sae-feature N (which feature's decoder direction to steer "
                               f"along)")
    if vector_key is not None and vector_path is None:
        raise click.UsageError(f"--vector-key {vector_key} has no effect without --vector FILE; drop it")
    path = sae_dir if sae_dir is not None else vector_path
    if path is None:
        return None
    explicit = method if given("method") else None
    if vector_key is None and sae_feature is None and explicit is None:
        return path
    from tl_isokl.vector_formats import VectorSource

    return VectorSource(path, key=vector_key, sae_feature=sae_feature, method=explicit)


def probe_options(fn):
    """--probe-preset / --probe FILE / --probe-prefill / --probe-true / --probe-false, --skip-preflight, and
    --chat-template (how prompt files are framed): what the run asks the model, and how it is asked."""
    fn = click.option("--chat-template", default="auto", show_default=True, metavar="auto|none|FILE",
                      help="Framing of prompt files: auto = the tokenizer's chat template when it has one (as the "
                           "built-in sets), none = as written, or a Jinja template file.")(fn)
    fn = click.option("--skip-preflight", is_flag=True,
                      help="Run even if the unsteered model cannot answer the probe (checked on the prompts "
                           "first).")(fn)
    fn = click.option("--probe-think-close", default=None, metavar="TEXT",
                      help='The tag that ends thinking ("" for models without a think block).')(fn)
    fn = click.option("--probe-false", multiple=True, metavar="TEXT",
                      help="A 'false' answer string (repeat for variants).")(fn)
    fn = click.option("--probe-true", multiple=True, metavar="TEXT",
                      help="A 'true' answer string (repeat for variants, e.g. --probe-true ' yes' "
                           "--probe-true ' Yes').")(fn)
    fn = click.option("--probe-prefill", default=None, metavar="TEXT",
                      help="Text spliced after the rollout before the answer (\\n escapes allowed).")(fn)
    fn = click.option("--probe", "probe_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                      default=None, help="A .toml/.json probe: prefill, true, false, think_close, after_close.")(fn)
    fn = click.option("--probe-preset", default=None, metavar="NAME",
                      help="json-think (default: JSON true/false after </think>), json (no think block), "
                           "yes-no ('Answer: yes/no').")(fn)
    return fn


def unescape(text: str | None) -> str | None:
    """\\n and \\t in a flag value, as in prompt files."""
    if text is None:
        return None
    from tl_isokl.prompts import unescape_line

    return unescape_line(text)


def sampling_options(fn, samples: bool = True):
    """--temperature, --top-p (and --samples-per-prompt): seeded sampled rollouts instead of greedy ones."""
    if samples:
        fn = click.option("--samples-per-prompt", type=click.IntRange(min=1), default=1, show_default=True,
                          help="Sampled rollouts per held-out prompt (needs --temperature > 0).")(fn)
    fn = click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
                      help="Nucleus sampling mass (with --temperature > 0).")(fn)
    fn = click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
                      help="0 = greedy rollouts; above 0, sampled with --seed per prompt (recorded).")(fn)
    return fn


def allow_other_model_option(fn):
    return click.option("--allow-other-model", is_flag=True,
                        help="Apply a vector whose metadata names another model than the loaded one.")(fn)


def fresh_option(fn):
    return click.option("--fresh", is_flag=True,
                        help="Delete the tl-isokl files already in --out (manifest, calibration, vector, cells, "
                             "tables, figures, report, inspect pages; nothing else) and start over.")(fn)


def given(name: str) -> bool:
    """Did the user pass this parameter (command line or environment), rather than click filling its default?"""
    from click.core import ParameterSource

    src = click.get_current_context().get_parameter_source(name)
    return src is not None and src not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def refuse_unused(flags: list[str], why: str) -> None:
    """One usage error naming every flag that would have no effect."""
    if flags:
        raise click.UsageError(f"{', '.join(flags)} {'has' if len(flags) == 1 else 'have'} no effect {why}; "
                               f"drop {'it' if len(flags) == 1 else 'them'}")


def early_vector(vector_path, method, layer, concept, gate, tau):
    """Flag checks and the --vector file, before any model loads; returns the loaded file's vector or None.

    Refused: --tau without --gate; --method/--layer/--concept next to a tl-isokl --vector file (the file fixes
    them); --concept, or a --method other than external[+OPERATOR], next to another tool's file or --sae;
    --method external without a file; a gate that has no meaning with the method (sign with an ablation).
    Another tool's file is read by `tl_isokl.vector_formats.read_vector` (with --layer when it needs one).
    """
    if tau is not None and gate is None:
        raise click.UsageError(f"--tau {tau:g} has no effect without --gate; add --gate soft|hard|sign or drop --tau")
    from tl_isokl.errors import IsoKLError
    from tl_isokl.vector import Gate, SteeringVector

    if vector_path is not None:
        from tl_isokl.methods import parse_method
        from tl_isokl.vector_formats import VectorSource, is_tl_isokl_file, read_vector

        src = vector_path if isinstance(vector_path, VectorSource) else None
        if (src is None or src.sae_feature is None) and is_tl_isokl_file(vector_path):
            refuse_unused([f"--{n}" for n in ("method", "layer", "concept") if given(n)]
                          + (["--vector-key"] if src is not None and src.key is not None else []),
                          f"with --vector {vector_path} (the file fixes the method, layer and direction)")
            vec = SteeringVector.load(vector_path)
        else:
            flag = "--sae" if src is not None and src.sae_feature is not None else "--vector"
            refuse_unused(["--concept"] if given("concept") else [],
                          f"with {flag} {vector_path} (the direction is loaded, not extracted)")
            if given("method") and parse_method(method)[0].name != "external":
                raise click.BadParameter(f"{method!r}: a vector loaded with {flag} was not extracted here; use "
                                         f"external or external+OPERATOR (e.g. external+ablate)",
                                         param_hint="--method")
            vec = read_vector(vector_path, layer=layer)
        method = vec.method
    else:
        from tl_isokl.methods import parse_method

        if parse_method(method)[0].name == "external":
            raise click.BadParameter(f"{method!r} needs --vector FILE or --sae DIR --sae-feature N: external "
                                     f"vectors are loaded, not extracted", param_hint="--method")
        check_concept(concept)
        vec = None
    if gate is not None:
        try:
            g = Gate(gate, 0.0 if tau is None else tau)
            vec = vec.with_gate(g) if vec is not None else vec
            from tl_isokl.methods import check_gate

            check_gate(method, gate)
        except IsoKLError as e:
            raise click.BadParameter(str(e), param_hint="--gate") from None
    return vec


def check_out(out: Path, flag: str = "--out") -> Path:
    """Fail before the model loads if `out` cannot be written (e.g. `--out /etc/passwd/sub`)."""
    from tl_isokl.files import check_writable_dir

    return check_writable_dir(out, what=flag)


def load(model_name, dtype, device, revision=None):
    from tl_isokl.model import load_model

    click.echo(f"loading model {model_name or 'embedded test bed'} ({dtype})", err=True)
    return load_model(model_name, dtype=dtype, device=device, revision=revision)


def check_concept(concept: str) -> tuple[str, str]:
    """`experiment.concept_names`, as a usage error of --concept (checked before loading a model)."""
    from tl_isokl.errors import IsoKLError
    from tl_isokl.experiment import concept_names

    try:
        return concept_names(concept)
    except IsoKLError as e:
        raise click.BadParameter(str(e), param_hint="--concept") from None


def concept_sets(model, concept: str) -> tuple[list[str], list[str]]:
    """The model's shipped contrastive prompt sets named by --concept POS/NEG."""
    from tl_isokl.prompt_sets import default_concepts

    pos_name, neg_name = check_concept(concept)
    try:
        return default_concepts(model, pos_name, neg_name)
    except ValueError as e:  # IsoKLError: an unknown concept name is a usage error of --concept
        raise click.BadParameter(str(e), param_hint="--concept") from None


def Progress(*args, **kwargs):
    """`tl_isokl.progress.Progress`, imported when a command builds one (the library imports torch; `--help`
    must not)."""
    from tl_isokl.progress import Progress as _Progress

    return _Progress(*args, **kwargs)


def quiet_option(fn):
    """--quiet / -q: no progress, no per-round or per-step lines; errors, warnings and the final line stay."""
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print only errors, warnings and the final line (no progress or round tables).")(fn)


def talker(quiet: bool):
    """click.echo, or nothing under --quiet (for the library's echo= callbacks)."""
    return (lambda _m: None) if quiet else click.echo


def engine_options(fn):
    """--engine, --address, --gpus-per-cell, --cpus-per-cell, --retries: where cells run (tl_isokl.grid.Engine),
    for `grid`, `sweep` and `compare` alike; `engine_from` checks them and builds the Engine."""
    fn = click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
                      help="Ray: times a task is retried when its worker dies (preemption, out of memory).")(fn)
    fn = click.option("--cpus-per-cell", type=click.FloatRange(min=0, min_open=True), default=1, show_default=True,
                      help="CPUs each Ray task reserves (also its torch threads).")(fn)
    fn = click.option("--gpus-per-cell", type=click.FloatRange(min=0), default=0, show_default=True,
                      help="GPUs each Ray task reserves (1 = one cell per GPU).")(fn)
    fn = click.option("--address", default=None, metavar="ADDR",
                      help="Ray cluster to join (e.g. auto, or ray://head:10001); default: start a local Ray.")(fn)
    fn = click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                      help="local: in this process; ray: as idempotent cells (calibrate, alpha groups, merge) on "
                           "Ray tasks (pip install 'tl-isokl[ray]').")(fn)
    return fn


def engine_from(engine: str, address, gpus_per_cell, cpus_per_cell, retries):
    """The Engine of `engine_options`; Ray-only options without --engine ray, and --engine ray without Ray
    installed, are one-line errors naming the value and the fix."""
    if engine != "ray":
        ray_only = [f"{flag} {value}" for flag, name, value in (
            ("--address", "address", address), ("--gpus-per-cell", "gpus_per_cell", f"{gpus_per_cell:g}"),
            ("--cpus-per-cell", "cpus_per_cell", f"{cpus_per_cell:g}"), ("--retries", "retries", retries))
            if given(name)]
        if ray_only:
            raise click.UsageError(f"{', '.join(ray_only)} {'is' if len(ray_only) == 1 else 'are'} for --engine ray; "
                                   f"add --engine ray or drop {'it' if len(ray_only) == 1 else 'them'}")
    else:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.ClickException('--engine ray needs Ray: pip install "tl-isokl[ray]"') from None
    from tl_isokl.grid import Engine

    return Engine(engine, address, gpus_per_cell, cpus_per_cell, retries)

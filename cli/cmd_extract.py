"""`tl-isokl extract`: contrastive prompt sets -> a steering vector file (safetensors + JSON metadata)."""

from __future__ import annotations

from pathlib import Path

import click

from tl_isokl_cli.common import GATE, METHOD, METHOD_HELP, check_concept, concept_sets, load, model_options
from tl_isokl_cli.main import friendly_errors

PROMPT_FILE = click.Path(dir_okay=False, path_type=Path, exists=True)


@click.command("extract")
@model_options
@click.option("--method", type=METHOD, default="mean_diff", show_default=True,
              help=f"How the direction is made from the two sets and later applied: {METHOD_HELP}")
@click.option("--layer", type=click.IntRange(min=0), default=None,
              help="Block whose resid_post is read and later steered (default: the middle block).")
@click.option("--pos", "pos_path", type=PROMPT_FILE, default=None, metavar="FILE",
              help="Positive prompts: .txt (one per line, \\n escapes) or .jsonl ({\"prompt\": ...}). Needs --neg.")
@click.option("--neg", "neg_path", type=PROMPT_FILE, default=None, metavar="FILE",
              help="Negative prompts, same formats. Needs --pos.")
@click.option("--chat-template", default="auto", show_default=True, metavar="auto|none|FILE",
              help="Framing of --pos/--neg prompts, as sweep frames its prompt files: auto = the tokenizer's chat "
                   "template when it has one, none = as written, or a Jinja template file. The shipped --concept "
                   "sets are already framed for the model.")
@click.option("--concept", default="cheerful/gloomy", show_default=True, metavar="POS/NEG",
              help="Shipped contrastive sets when no files are given (test bed: cheerful, gloomy, animal, machine).")
@click.option("--token", type=click.Choice(["last", "mean"]), default="last", show_default=True,
              help="Residual of the last prompt token, or the mean over the prompt's tokens after BOS.")
@click.option("--unit", is_flag=True, help="Scale the direction to norm 1 (default: the norm of the mean difference, "
                                           "which pca and random match; +ablate methods are always unit).")
@click.option("--gate", type=GATE, default=None, help="Store a per-token cosine gate with the vector.")
@click.option("--tau", type=click.FloatRange(-1.0, 1.0), default=None, help="Cosine threshold of --gate (default 0).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="FILE",
              help="Where to write the vector (.safetensors).")
@friendly_errors
def command(model_name, dtype, device, revision, method, layer, pos_path, neg_path, chat_template, concept, token,
            unit, gate, tau, batch_size, out):
    """Extract a steering vector from contrastive prompts and save it.

    Without --pos/--neg the model's shipped concept sets are used (--concept, default cheerful/gloomy). Prompt
    files are framed by --chat-template (default: the model's chat template, as sweep frames its prompt files),
    so the vector is read from the same kind of text the sweep steers.
    """
    if (pos_path is None) != (neg_path is None):
        raise click.UsageError("--pos and --neg go together: give both prompt files, or neither to use --concept")
    if tau is not None and gate is None:
        raise click.UsageError(f"--tau {tau} needs --gate soft|hard|sign")
    if pos_path is None:
        check_concept(concept)
        if chat_template != "auto":
            raise click.UsageError(f"--chat-template {chat_template} frames --pos/--neg files; the shipped --concept "
                                   "sets are already framed for the model: drop --chat-template or pass --pos/--neg")
    elif chat_template not in ("auto", "none") and not Path(chat_template).is_file():
        raise click.BadParameter(f"{chat_template!r} is neither auto, none nor a template file",
                                 param_hint="--chat-template")

    from tl_isokl.extract import extract
    from tl_isokl.prompts import read_prompts
    from tl_isokl.vector import Gate

    g = Gate(gate, 0.0 if tau is None else tau) if gate else None  # before loading: a bad gate fails fast
    if g is not None:
        from tl_isokl.errors import IsoKLError
        from tl_isokl.methods import check_gate

        try:
            check_gate(method, gate)  # e.g. sign with directional_ablation: it does not ablate
        except IsoKLError as e:
            raise click.BadParameter(str(e), param_hint="--gate") from None
    from tl_isokl.files import check_writable_dir

    check_writable_dir(out.parent, what=f"-o/--out {out}: folder")  # before the model loads
    if pos_path is not None:
        pos, neg = read_prompts(pos_path), read_prompts(neg_path)
        sources = (str(pos_path), str(neg_path))
    model = load(model_name, dtype, device, revision=revision)
    if pos_path is None:
        pos, neg = concept_sets(model, concept)
        pos_name, neg_name = check_concept(concept)
        sources, framing = (f"concept:{pos_name}", f"concept:{neg_name}"), "built-in set (framed for this model)"
    else:
        from tl_isokl.prompt_sets import frame_prompts

        pos, framing = frame_prompts(model, pos, chat_template)
        neg, _ = frame_prompts(model, neg, chat_template)
    vec = extract(model, pos, neg, method=method, layer=layer, token=token, unit=unit, gate=g,
                  batch_size=batch_size, sources=sources, framing=framing)
    path = vec.save(out)
    gate_txt = f", gate {vec.gate.kind} tau={vec.gate.tau:g}" if vec.gate else ""
    click.echo(f"{vec.method} vector at layer {vec.layer} ({vec.hook_name}){gate_txt}, "
               f"{len(pos)} pos / {len(neg)} neg prompts, token={token}, framing: {framing}")
    click.echo(f"norm   {float(vec.direction.norm()):.6g}")
    click.echo(f"sha256 {vec.sha256}")
    click.echo(f"wrote  {path}")

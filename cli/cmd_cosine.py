"""`tl-isokl cosine`: cos(resid_post, direction) per layer and token, base vs steered, as a PNG, JSON and table.

The work is `tl_isokl.geometry.cosine_report`; this file checks the flags, loads the model and vector, calls it
and prints."""

from __future__ import annotations

import math
from pathlib import Path

import click

from tl_isokl_cli.common import (allow_other_model_option, check_out, early_vector, load, model_options,
                                 vector_options)
from tl_isokl_cli.main import friendly_errors


@click.command("cosine")
@model_options
@vector_options
@click.option("--text", default=None, help="Text to run (default: a held-out prompt, see --prompt-index).")
@click.option("--prompt-index", type=click.IntRange(min=0), default=None,
              help="Held-out prompt to run when no --text is given.  [default: 0]")
@click.option("--coeff", type=float, default=None, help="Steering coefficient of the steered run (default 0).")
@click.option("--alpha", type=click.FloatRange(min=0), default=None, help="Dose in units of c* (needs --calibration).")
@click.option("--calibration", "calibration_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="calibration.json giving c* for --alpha.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default runs/cosine-<model>-<method>-L<layer>): cosine.png, cosine.json.")
@allow_other_model_option
@friendly_errors
def command(model_name, dtype, device, revision, vector_path, method, layer, concept, gate, tau,
            text, prompt_index, coeff,
            alpha, calibration_path, out, allow_other_model):
    """Cosine between every layer's resid_post and the steering direction, per token, for the base model and the
    model steered at --coeff (or --alpha x c*); prints the per-layer table, writes a heatmap and a JSON summary.

    The model is --model if given, else the one recorded by --calibration or in the --vector file's metadata,
    else the embedded test bed."""
    if text is not None and prompt_index is not None:
        raise click.UsageError("pass either --text or --prompt-index, not both")
    if coeff is not None and (alpha is not None or calibration_path is not None):
        raise click.UsageError("pass either --coeff or --alpha with --calibration, not both")
    if alpha is not None and calibration_path is None:
        raise click.UsageError("--alpha needs --calibration FILE (the calibration.json that defines c*)")
    if calibration_path is not None and alpha is None:
        raise click.UsageError("--calibration is only used with --alpha; pass --alpha A")
    if coeff is not None and not math.isfinite(coeff):
        raise click.BadParameter(f"{coeff} is not a finite number", param_hint="--coeff")
    from tl_isokl.experiment import ExperimentSettings, model_vector
    from tl_isokl.geometry import PromptIndexError, cosine_report, format_profile, recorded_model, steered_coeff

    steered_coeff(coeff=coeff, alpha=alpha, calibration=calibration_path)  # a bad calibration file fails now
    file_vec = early_vector(vector_path, method, layer, concept, gate, tau)
    if model_name is None:
        model_name, revision = recorded_model(calibration_path, file_vec)
        if model_name is not None:
            click.echo(f"using the recorded model {model_name} (pass --model to override)", err=True)
    check_out(out if out is not None else Path("runs"))  # before the model loads

    model = load(model_name, dtype, device, **({"revision": revision} if revision else {}))
    vec = model_vector(model, ExperimentSettings(method=method, layer=layer, concept=concept, gate=gate, tau=tau,
                                                 allow_other_model=allow_other_model), file_vec)
    try:
        rep = cosine_report(model, vec, text=text, prompt_index=prompt_index, coeff=coeff, alpha=alpha,
                            calibration=calibration_path, out=out)
    except PromptIndexError as e:
        raise click.BadParameter(str(e), param_hint="--prompt-index") from None
    click.echo(f"{vec.method} L{vec.layer}, coeff {rep.coeff:g} ({rep.coeff_from}); {len(rep.profile['ids'])} tokens "
               f"from {rep.source}")
    click.echo(format_profile(rep.profile))
    click.echo(f"wrote {rep.png} and {rep.json}")

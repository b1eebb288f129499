"""`tl-isokl cosine`: cos(resid_post, direction) per layer and token, base vs steered, as a PNG, JSON and table."""

from __future__ import annotations

import math
from pathlib import Path

import click

from tl_isokl_cli.common import (allow_other_model_option, check_out, early_vector, get_vector, load, model_options,
                                 model_slug, vector_options)
from tl_isokl_cli.main import friendly_errors


def _coeff(coeff, alpha, calibration_path) -> tuple[float, str]:
    """The steered run's coefficient and how it was chosen; checks the flag combination before any model loads."""
    if coeff is not None and (alpha is not None or calibration_path is not None):
        raise click.UsageError("pass either --coeff or --alpha with --calibration, not both")
    if alpha is not None and calibration_path is None:
        raise click.UsageError("--alpha needs --calibration FILE (the calibration.json that defines c*)")
    if calibration_path is not None and alpha is None:
        raise click.UsageError("--calibration is only used with --alpha; pass --alpha A")
    if alpha is not None:
        from tl_isokl.identity import check_calibration
        from tl_isokl.io import read_json

        cal = read_json(calibration_path, kind=dict)  # malformed: one line naming the file
        c_star = cal.get("c_star")
        if not isinstance(c_star, (int, float)) or isinstance(c_star, bool):
            raise click.ClickException(f"{calibration_path} is not a calibration.json with a numeric c_star; "
                                       f"write one with `tl-isokl calibrate`")
        check_calibration(cal, {}, source=str(calibration_path), fix="recalibrate with `tl-isokl calibrate`")
        return alpha * float(c_star), f"alpha {alpha:g} x c* {float(c_star):.6g}", cal
    c = 0.0 if coeff is None else float(coeff)
    if not math.isfinite(c):
        raise click.BadParameter(f"{coeff} is not a finite number", param_hint="--coeff")
    return c, "coeff given" if coeff is not None else "no --coeff: steered == base", None


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
def command(model_name, dtype, device, vector_path, method, layer, concept, gate, tau, text, prompt_index, coeff,
            alpha, calibration_path, out, allow_other_model):
    """Cosine between every layer's resid_post and the steering direction, per token, for the base model and the
    model steered at --coeff (or --alpha x c*); prints the per-layer table, writes a heatmap and a JSON summary.

    The model is --model if given, else the one recorded by --calibration or in the --vector file's metadata,
    else the embedded test bed."""
    if text is not None and prompt_index is not None:
        raise click.UsageError("pass either --text or --prompt-index, not both")
    c, how, cal = _coeff(coeff, alpha, calibration_path)
    file_vec = early_vector(vector_path, method, layer, concept, gate, tau)
    revision = None
    if model_name is None:
        from tl_isokl.model import EMBEDDED_NAME

        ident = (cal or {}).get("identity") or {}
        rec = ident.get("model") or (file_vec.meta.get("model") if file_vec is not None else None)
        if rec and rec != EMBEDDED_NAME:
            model_name, revision = rec, ident.get("revision") or (file_vec.meta.get("revision") if file_vec else None)
            click.echo(f"using the recorded model {rec} (pass --model to override)", err=True)
    check_out(out if out is not None else Path("runs"))  # before the model loads

    import io as _io

    from tl_isokl.figures.cosine import cosine_heatmap
    from tl_isokl.geometry import cosine_profile, format_profile, profile_to_json
    from tl_isokl.io import atomic_write_bytes, atomic_write_json
    from tl_isokl.model import model_info
    from tl_isokl.report import DPI

    model = load(model_name, dtype, device, **({"revision": revision} if revision else {}))
    vec = get_vector(model, file_vec, method, layer, concept, gate, tau, allow_other_model=allow_other_model)
    if cal is not None:
        from tl_isokl.identity import APPLIES, check_calibration, model_identity, vector_identity

        wanted = {**model_identity(model), **vector_identity(vec)}
        check_calibration(cal, wanted, source=str(calibration_path), fields=[f for f in APPLIES if f != "positions"],
                          fix="pass the --vector and --model it was made with")
    source = "--text"
    if text is None:
        from tl_isokl.prompt_sets import default_prompts

        ids, prompts = default_prompts(model, "heldout")
        i = 0 if prompt_index is None else prompt_index
        if i >= len(prompts):
            raise click.BadParameter(f"{i} is out of range: the held-out set has prompts 0..{len(prompts) - 1}",
                                     param_hint="--prompt-index")
        text, source = prompts[i], f"held-out prompt {i} ({ids[i]})"
    prof = cosine_profile(model, vec, text, coeff=c)
    info = model_info(model)
    click.echo(f"{vec.method} L{vec.layer}, coeff {c:g} ({how}); {len(prof['ids'])} tokens from {source}")
    click.echo(format_profile(prof))
    if out is None:
        out = Path("runs") / f"cosine-{model_slug(str(info.get('name')))}-{vec.method}-L{vec.layer}"
    fig = cosine_heatmap(prof)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    png = atomic_write_bytes(out / "cosine.png", buf.getvalue())
    js = atomic_write_json(out / "cosine.json", {
        **profile_to_json(prof), "text": text, "source": source, "coeff_from": how, "model": info.get("name"),
        "revision": info.get("revision"), "vector_sha256": vec.sha256, "gated": vec.gate is not None})
    click.echo(f"wrote {png} and {js}")

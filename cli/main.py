"""`tl-isokl`: the click group. Each command lives in its own `cmd_<name>.py`; nothing here or there imports the
library (torch) at import time, so `tl-isokl --help` is instant. Library errors (IsoKLError) become one-line
messages here, in one place, and so do the library's warnings, while a command runs."""

from __future__ import annotations

import contextlib
import functools
import warnings

import click


@contextlib.contextmanager
def one_line_warnings():
    """While the block runs, show the library's own warnings (IsoKLWarning: non-monotone KL, unconverged
    calibration, ...) as one 'Warning: ...' line on stderr; other warnings as before. The previous
    `warnings.showwarning` is restored on exit, so nothing changes for the rest of the process."""
    from tl_isokl.errors import IsoKLWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, IsoKLWarning):
            click.echo(f"Warning: {message}", err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def friendly_errors(fn):
    """Run a command with `one_line_warnings`, and turn the library's IsoKLError (and OSError on a user's path)
    into click's one-line `Error: ...` with exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from tl_isokl.errors import IsoKLError, SettingsError  # when the command runs: it imports the library

        with one_line_warnings():
            try:
                return fn(*args, **kwargs)
            except SettingsError as e:  # contradicting flags: a usage error, exit status 2
                raise click.UsageError(str(e)) from None
            except IsoKLError as e:
                raise click.ClickException(str(e)) from None
            except OSError as e:  # a file the user named cannot be read or written: their environment, not a bug
                where = f"{e.filename}: " if getattr(e, "filename", None) else ""
                raise click.ClickException(f"{where}{e.strerror or e}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tl-isokl")
def cli():
    """Iso-KL calibrated activation steering on TransformerLens models.

    Runs offline out of the box on an embedded test-bed model; pass --model NAME_OR_PATH for any
    TransformerBridge model (e.g. allenai/OLMo-2-0425-1B from the local HF cache, or a local folder).
    """


def _register():
    from tl_isokl_cli import (cmd_calibrate, cmd_compare, cmd_cosine, cmd_extract, cmd_grid, cmd_inspect, cmd_plot,
                              cmd_report, cmd_sweep)

    for mod in (cmd_extract, cmd_calibrate, cmd_sweep, cmd_compare, cmd_grid, cmd_inspect, cmd_cosine, cmd_plot,
                cmd_report):
        cli.add_command(mod.command)


_register()

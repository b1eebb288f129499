"""Assertions and files shared by the CLI (and command-level integration) tests."""


def one_line_error(r, code, *needles):
    """Exit `code`, no traceback, one `Error:` line naming what is wrong."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1, r.output
    for n in needles:
        assert n in err[0], err[0]


def invoke(*args):
    """Run the CLI as `tl-isokl ARGS` (sys.argv too: manifests record the command line from it)."""
    from unittest import mock

    from click.testing import CliRunner

    from tl_isokl_cli.main import cli

    argv = [str(a) for a in args]
    with mock.patch("sys.argv", ["tl-isokl", *argv]):
        return CliRunner().invoke(cli, argv)


# every place a command loads a model from
LOADERS = ("tl_isokl.experiment", "tl_isokl_cli.cmd_cosine", "tl_isokl_cli.cmd_extract")


def patch_loaders(mp, fn):
    """Make every command's model load call `fn` (a monkeypatch context `mp` undoes it)."""
    import importlib

    for mod in LOADERS:
        mp.setattr(importlib.import_module(mod), "load", fn)
    mp.setattr("tl_isokl.model.load_recorded_model", lambda *a, **k: fn(None, None, None))


def write_prompts(path, questions):
    """A .txt prompt file of `questions` (objects with `.prompt`, e.g. the test bed's splits), one a line with
    line breaks written as the ``\\n`` escape `read_prompts` decodes; returns the path."""
    path.write_text("".join(q.prompt.replace("\n", "\\n") + "\n" for q in questions))
    return path

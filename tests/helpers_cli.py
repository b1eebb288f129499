"""Assertions shared by the CLI tests."""


def one_line_error(r, code, *needles):
    """Exit `code`, no traceback, one `Error:` line naming what is wrong."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    err = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1, r.output
    for n in needles:
        assert n in err[0], err[0]

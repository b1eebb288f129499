"""The click group itself: no library import at `tl-isokl --help`, choices read from the library's registries,
and the one-line warning display scoped to a command (no global side effect left behind)."""

import subprocess
import sys
import warnings

import click
import pytest
from click.testing import CliRunner

from tl_isokl_cli.common import GATE, METHOD, stat_option
from tl_isokl_cli.main import cli, friendly_errors


def test_importing_the_cli_imports_neither_torch_nor_the_library():
    """`tl-isokl --help` stays instant: the group and every command module import click only."""
    code = ("import sys, tl_isokl_cli.main as m; m.cli(['--help'], standalone_mode=False); "
            "print(sorted(n for n in ('torch', 'tl_isokl', 'transformer_lens') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_method_and_gate_choices_are_the_registries():
    from tl_isokl.methods import GATES, method_choices

    assert list(METHOD.choices) == method_choices() and {"pca+ablate", "random"} <= set(METHOD.choices)
    assert list(GATE.choices) == list(GATES)
    for cmd in ("sweep", "calibrate", "cosine", "extract"):
        r = CliRunner().invoke(cli, [cmd, "--help"])
        assert r.exit_code == 0 and "pca+ablate" in r.output and "[soft|hard|sign]" in r.output, cmd


def _stat_command():
    @click.command()
    @stat_option
    def cmd(stat):
        click.echo(f"stat={stat}")
    return cmd


def test_stat_option_is_checked_and_documented_by_the_statistics_registry():
    from tl_isokl.statistics import choices

    r = CliRunner().invoke(_stat_command(), ["--help"])
    assert r.exit_code == 0 and " ".join(choices().split()) in " ".join(r.output.split())
    assert CliRunner().invoke(_stat_command(), ["--stat", "cvar95"]).output == "stat=cvar95\n"
    assert CliRunner().invoke(_stat_command(), []).output == "stat=p95\n"
    r = CliRunner().invoke(_stat_command(), ["--stat", "p200"])
    assert r.exit_code == 2 and "unknown statistic 'p200'" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("fail", [False, True])
def test_one_line_warnings_only_while_the_command_runs(fail):
    from tl_isokl.errors import IsoKLError, IsoKLWarning

    @click.command()
    @friendly_errors
    def cmd():
        warnings.warn("the dose is dubious", IsoKLWarning)
        if fail:
            raise IsoKLError("it broke")

    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        r = CliRunner().invoke(cmd, [])
    assert "Warning: the dose is dubious" in r.output.splitlines() and r.output.count("dubious") == 1
    assert r.exit_code == (1 if fail else 0) and ("Error: it broke" in r.output) == fail
    assert warnings.showwarning is before


def test_a_real_command_leaves_showwarning_as_it_was(synthetic_run):
    before = warnings.showwarning
    r = CliRunner().invoke(cli, ["report", str(synthetic_run)])
    assert r.exit_code == 0, r.output
    assert warnings.showwarning is before
    r = CliRunner().invoke(cli, ["plot", str(synthetic_run / "no-such")])  # a usage error, before the command
    assert r.exit_code == 2 and warnings.showwarning is before

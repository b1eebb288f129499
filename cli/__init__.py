"""Click commands of tl-isokl, installed as the `tl_isokl_cli` package (console script `tl-isokl`).

The group is built here, first: importing any `cmd_<name>` module on its own (tests do) then finds `main` (and its
`friendly_errors`) already defined instead of a half-imported module registering a half-imported command."""

from tl_isokl_cli import main as _main  # noqa: F401  (registers every command)

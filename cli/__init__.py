"""Click commands of tl-isokl, installed as the `tl_isokl_cli` package (console script `tl-isokl`)."""

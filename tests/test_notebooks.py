"""The demo notebooks run top to bottom (nbclient, a fresh kernel, offline, in a temporary folder), so a demo can
never rot. Each is sized to run in well under a minute on a CPU. The notebooks in demos/ are stored without
outputs; an executed copy is kept here only in the temporary folder.

Needs the `test` extra (nbformat, nbclient, ipykernel); without them the tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

DEMOS = Path(__file__).resolve().parents[1] / "demos"
NOTEBOOKS = sorted(p.name for p in DEMOS.glob("*.ipynb"))
TIMEOUT_PER_CELL = 240

pytestmark = pytest.mark.slow


def execute(name: str, tmp_path: Path):
    nb = nbformat.read(DEMOS / name, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MPLBACKEND")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend, not a file backend from the environment
    try:
        client = nbclient.NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        t0 = time.monotonic()
        client.execute()
        seconds = time.monotonic() - t0
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    nbformat.write(nb, tmp_path / name)  # for a look when a test fails
    return nb, seconds


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(DEMOS / name, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{name}: strip outputs before committing"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_demo_notebooks_are_the_four_of_the_tutorial():
    assert NOTEBOOKS == ["dead_traces.ipynb", "gated_iso_kl.ipynb", "own_model.ipynb", "quickstart.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    nb, seconds = execute(name, tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert outputs(nb, "text/html"), f"{name}: no inline HTML view (a Run, a table or a widget)"
    if name in ("quickstart.ipynb", "dead_traces.ipynb"):
        assert outputs(nb, "image/png"), f"{name}: its figures must show inline"
    if name == "dead_traces.ipynb":
        widgets = [o["data"]["text/html"] for o in outputs(nb, "text/html") if "CircuitsVis.render" in
                   "".join(o["data"]["text/html"])]
        assert widgets, "the circuitsvis widget must be displayed"
        src = "".join(widgets[0])
        assert "<script" in src and "https://" not in src.split("CircuitsVis.render")[-1]
        assert "unpkg.com" not in src, "the widget must inline its bundle (local_src), not load it from a CDN"
    print(f"{name}: {seconds:.1f} s")

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture
def synthetic_run(tmp_path):
    """A small finished run directory (5 alphas x 8 prompts, window 64) built by tests/helpers_runs.py."""
    from helpers_runs import make_run

    return make_run(tmp_path / "run")

"""Shared fixtures. Offline by construction: the only model is the embedded test bed, loaded once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # the CI box has 2 shared cores; 2 threads thrash under any other load


@pytest.fixture(scope="session")
def model():
    """The embedded test-bed model through the real loader. Read-only: tests must not leave hooks on it."""
    from tl_isokl.model import load_model

    return load_model(device="cpu")


@pytest.fixture(autouse=True)
def _no_hook_leaks(request):
    """Fail any test that leaves a hook on the shared model (TransformerLens hooks are global state)."""
    yield
    if "model" in request.fixturenames:
        m = request.getfixturevalue("model")
        leaked = [n for n, hp in m.hook_dict.items() if hp.fwd_hooks]
        assert not leaked, f"hooks left on the shared model: {leaked[:5]}"


@pytest.fixture(scope="session")
def splits():
    from tl_isokl.testbed.corpus import make_splits

    return make_splits()


@pytest.fixture(scope="session")
def vec(model):
    """The default steering vector of the test bed: cheerful - gloomy mean difference at the middle layer."""
    from tl_isokl.extract import extract
    from tl_isokl.testbed.corpus import concept_prompts

    return extract(model, concept_prompts("cheerful"), concept_prompts("gloomy"))


@pytest.fixture
def synthetic_run(tmp_path):
    """A small finished run directory (5 alphas x 8 prompts, window 64) built by tests/helpers_runs.py."""
    from helpers_runs import make_run

    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray cluster for one test module (skipped without Ray), shut down after it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tl-isokl[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()

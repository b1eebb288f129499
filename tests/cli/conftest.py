"""Fixtures of the CLI tests that load a model: hand the commands the session model, or forbid loading one."""

import pytest
from helpers_cli import patch_loaders


@pytest.fixture
def reuse_model(model, monkeypatch):
    """The commands get the session model instead of loading their own (seconds each on this box)."""
    patch_loaders(monkeypatch, lambda *a, **k: model)
    return model


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the error under test must come before it."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded, but this error must come before it")
    patch_loaders(monkeypatch, boom)

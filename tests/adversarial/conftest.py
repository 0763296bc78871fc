"""Fixtures of the adversarial tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test the moment a backbone would load: bad input must stop before that."""
    import bench.run.cell

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid run")
    monkeypatch.setattr(bench.run.cell, "load_backbone", refuse)
